"""MNIST autoregression with the paper's 94,696-parameter CNN (METHODS.md §3, §A.5.3)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lodo.tasks.base import Task
from lodo.tasks.cnn import AutoregressionCNN
from lodo.tasks.mnist_data import load_mnist

SIZE = 28
PIXELS = SIZE * SIZE
TRAIN_IMAGES = 59_936  # the first 59,936 training images; the last 64 are the validation set (METHODS.md §3)
log = logging.getLogger("lodo.tasks.mnist")


def build_inputs(
    images: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> torch.Tensor:
    """The (B, 5, 28, 28) CNN inputs of uint8 ``images`` (B, 28, 28) queried at pixels (``rows``, ``cols``).

    METHODS.md §3: ch0 = image·visible/256 with visible(r, c) = r < r_q or (r = r_q and c < c_q), so the query pixel
    itself is hidden; ch1 = 2·[c ≤ c_q] − 1; ch2 = 2·visible − 1; ch3 = 2r/28 − 1; ch4 = 2c/28 − 1 (r: row,
    the height axis; c: column). Built as (B, 28, 28, 5) and permuted, which is the channels_last layout for free.
    """
    device, batch = images.device, images.shape[0]
    r = torch.arange(SIZE, device=device).view(1, SIZE, 1)
    c = torch.arange(SIZE, device=device).view(1, 1, SIZE)
    rq, cq = rows.to(device).view(-1, 1, 1), cols.to(device).view(-1, 1, 1)
    visible = ((r < rq) | ((r == rq) & (c < cq))).to(dtype)
    shape = (batch, SIZE, SIZE)
    channels = (
        images.to(dtype) * visible / 256,
        (2 * (c <= cq).to(dtype) - 1).expand(shape),
        2 * visible - 1,
        (2 * r.to(dtype) / SIZE - 1).expand(shape),
        (2 * c.to(dtype) / SIZE - 1).expand(shape),
    )
    inputs = torch.stack(channels, dim=-1).permute(0, 3, 1, 2)
    return inputs if channels_last else inputs.contiguous()


@dataclass
class MnistBatch:
    """One minibatch: which images, which query pixels, and the inputs and targets built from them."""

    indices: torch.Tensor  # (B,) indices into the training set
    rows: torch.Tensor  # (B,) query-pixel rows
    cols: torch.Tensor  # (B,) query-pixel columns
    inputs: torch.Tensor  # (B, 5, 28, 28)
    targets: torch.Tensor  # (B,) the query pixels' intensities 0..255


class MnistAutoregression(Task):
    """Predict one MNIST pixel's intensity (256 classes) from the pixels before it in raster order (METHODS.md §3).

    Each fresh batch draws ``batch_size`` training images with replacement and one uniform query pixel per image;
    the loss is the mean 256-way cross-entropy in nats of :class:`~lodo.tasks.cnn.AutoregressionCNN`. A "same
    batch" re-evaluation (an L-BFGS-type closure) reuses the whole :class:`MnistBatch`, images *and* query pixels,
    so curvature pairs are consistent; the authors' code re-drew the query pixels even then (METHODS.md §A.5.3,
    §A.11.10).

    Data: the first 59,936 MNIST training images train; the last ``validation_images`` (of 64) give the tracked
    validation loss and the first ``test_images`` test images the final test loss (0 skips either), each averaged
    over all 784 positions, ``metric_batch`` (image, position) pairs per forward pass; ``samples`` digits are
    generated after training (a multiple of 4, 0: none; 784 CNN passes). Initialization and batches
    come from one generator seeded by ``seed`` (METHODS.md §7.5). float32 by default, float64 as an option
    (METHODS.md §7.8);
    ``channels_last`` speeds up float32 on CPU, but slows float64 there (oneDNN has no float64 kernels).
    """

    name = "mnist_autoregression"
    network = {"channels": 20, "blocks_per_stage": 4}  # the paper's CNN: 94,696 parameters
    provides = frozenset({"closure", "model"})
    default_dtype = torch.float32
    progress = False  # progress bars for the evaluations and the sampling (the runner sets it from `progress`)

    def __init__(
        self,
        batch_size: int = 256,
        data_dir: str | Path | None = None,
        validation_images: int = 64,
        test_images: int = 10_000,
        metric_batch: int = 256,
        samples: int = 16,
        channels_last: bool = True,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if not 0 <= validation_images <= 64:
            raise ValueError(f"validation_images must be in 0..64, got {validation_images}")
        if not 0 <= test_images <= 10_000:
            raise ValueError(f"test_images must be in 0..10000, got {test_images}")
        if metric_batch < 1:
            raise ValueError(f"metric_batch must be a positive integer, got {metric_batch}")
        if samples < 0 or samples % 4:
            raise ValueError(f"samples must be a non-negative multiple of 4 (rows of the 4-wide grid), got {samples}")
        self.batch_size, self.metric_batch, self.channels_last = batch_size, metric_batch, channels_last
        self.samples, self._validation_announced = samples, False
        self.seed, self.dtype, self.device = seed, dtype or self.default_dtype, torch.device(device)
        mnist = load_mnist(data_dir)
        images = torch.from_numpy(mnist.train_images.copy()).to(self.device)
        self.train_images = images[:TRAIN_IMAGES]
        self.validation_images = images[TRAIN_IMAGES:][:validation_images]
        self.test_images = torch.from_numpy(mnist.test_images[:test_images].copy()).to(self.device)
        self.generator = torch.Generator().manual_seed(seed)
        self.model = AutoregressionCNN(self.generator, **self.network).to(dtype=self.dtype, device=self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.model.parameters())

    def inputs(self, images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return build_inputs(images, rows, cols, self.dtype, self.channels_last)

    def sample_batch(self) -> MnistBatch:
        b, g = self.batch_size, self.generator
        indices = torch.randint(len(self.train_images), (b,), generator=g).to(self.device)
        rows = torch.randint(SIZE, (b,), generator=g).to(self.device)
        cols = torch.randint(SIZE, (b,), generator=g).to(self.device)
        images = self.train_images[indices]
        targets = images[torch.arange(b, device=self.device), rows, cols].long()
        return MnistBatch(indices, rows, cols, self.inputs(images, rows, cols), targets)

    def loss(self, batch: MnistBatch) -> torch.Tensor:
        return F.cross_entropy(self.model(batch.inputs), batch.targets)

    def announce(self, what: str, images: int, batch: int) -> int:
        """Log what an evaluation or the sampling costs before it starts; return its number of CNN passes."""
        passes = math.ceil(images * PIXELS / batch) if what != "samples" else PIXELS
        log.info("%s: %d images x %d positions = %d CNN passes of up to %d", what, images, PIXELS, passes, batch)
        return passes

    @torch.no_grad()
    def pixel_loss(self, images: torch.Tensor, positions: torch.Tensor | None = None, label: str = "") -> float:
        """Mean cross-entropy (nats) over every (image, raster position) pair; all 784 positions by default.

        Pairs run image-major through the CNN in chunks of ``metric_batch``; the sum is accumulated in float64.
        A progress bar (with an estimate of the time left) appears if it takes more than two seconds.
        """
        positions = torch.arange(PIXELS) if positions is None else torch.as_tensor(positions).flatten()
        positions = positions.to(self.device)
        pairs, total = len(images) * len(positions), 0.0
        chunks = range(0, pairs, self.metric_batch)
        bar = tqdm(chunks, desc=label, unit="pass", disable=not self.progress, delay=2, leave=False)
        for start in bar:
            pair = torch.arange(start, min(start + self.metric_batch, pairs), device=self.device)
            image, position = images[pair // len(positions)], positions[pair % len(positions)]
            rows, cols = position // SIZE, position % SIZE
            targets = image[torch.arange(len(pair), device=self.device), rows, cols].long()
            logits = self.model(self.inputs(image, rows, cols))
            total += float(F.cross_entropy(logits, targets, reduction="sum").double())
        return total / pairs if pairs else float("nan")

    def metric_names(self, optimizer=None) -> list[str]:
        return ["validation_loss"] if len(self.validation_images) else []

    def metrics(self, optimizer=None) -> dict[str, float]:
        if not len(self.validation_images):
            return {}
        if not self._validation_announced:
            self.announce("validation loss (each time)", len(self.validation_images), self.metric_batch)
            self._validation_announced = True
        return {"validation_loss": self.pixel_loss(self.validation_images, label="validation loss")}

    def final_metrics(self, optimizer=None) -> dict[str, float]:
        if not len(self.test_images):
            return {}
        self.announce("test loss", len(self.test_images), self.metric_batch)
        return {"test_loss": self.pixel_loss(self.test_images, label="test loss")}

    def save_artifacts(self, directory) -> dict[str, str]:
        """``input_channels.png`` (the paper's 5-channel input, drawn for 5 training images) and ``samples.png``:
        ``samples`` digits generated pixel by pixel (seeded by the task's seed), 4 per row (none if 0)."""
        channels = Path(directory) / "input_channels.png"
        save_input_channels(channels, self.train_images, seed=self.seed)
        artifacts = {"input_channels": str(channels)}
        if not self.samples:
            return artifacts
        path = Path(directory) / "samples.png"
        self.announce("samples", self.samples, self.samples)
        samples = generate_samples(
            self, self.samples, generator=torch.Generator().manual_seed(self.seed), progress=self.progress
        )
        save_image_grid(path, sample_grid(samples))
        return {**artifacts, "samples": str(path)}


class MnistAutoregressionSmall(MnistAutoregression):
    """The same autoregression task with a reduced CNN — NOT the paper's network: 8 channels instead of 20 and one
    residual block per stage instead of four (7,432 parameters instead of 94,696), same layers, pooling, inputs,
    loss and initialization.

    Why it exists: on a 2-core CPU the paper's CNN affords a few dozen steps per run inside `make reproduce`, too few
    for optimizers to separate; this network runs ~20× faster per step, so a default-scale experiment can train it
    long enough that differences between optimizers can exceed the spread over seeds. Results on it are labelled
    `mnist_small` everywhere and never stand in for the paper's MNIST numbers.
    """

    name = "mnist_small"
    network = {"channels": 8, "blocks_per_stage": 1}


@torch.no_grad()
def generate_samples(
    task: MnistAutoregression, count: int = 16, generator: torch.Generator | None = None, progress: bool = False
) -> torch.Tensor:
    """``count`` uint8 images (count, 28, 28) sampled from the CNN pixel by pixel in raster order (784 passes).

    Each pixel is drawn by inverse CDF as in the authors' code: class = #{k : u > cumsum(p)_k}, u ~ U(0, 1), with
    ``u`` from ``generator`` (drawn on the CPU, so a seed gives the same samples on every device).
    """
    images = torch.zeros(count, SIZE, SIZE, dtype=torch.uint8, device=task.device)
    for position in tqdm(range(PIXELS), desc="samples", unit="pass", disable=not progress, delay=2, leave=False):
        row, col = divmod(position, SIZE)
        rows = torch.full((count,), row, device=task.device)
        cols = torch.full((count,), col, device=task.device)
        probabilities = torch.softmax(task.model(task.inputs(images, rows, cols)).double(), dim=-1)
        u = torch.rand(count, 1, generator=generator, dtype=torch.float64).to(task.device)
        classes = (u > probabilities.cumsum(-1)).sum(-1).clamp(max=255)  # clamp: the cumsum may end below u
        images[:, row, col] = classes.to(torch.uint8)
    return images


def sample_grid(samples: torch.Tensor, columns: int = 4) -> torch.Tensor:
    """Tile (N, 28, 28) images into one (N/columns·28, columns·28) image, row by row (16 samples → 112×112)."""
    rows = len(samples) // columns
    return samples.reshape(rows, columns, SIZE, SIZE).permute(0, 2, 1, 3).reshape(rows * SIZE, columns * SIZE)


def save_image_grid(path: str | Path, image: torch.Tensor) -> None:
    """Save one uint8 image as a PNG: gray, vmin 0, vmax 255, axes off (METHODS.md §A.5.3)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(image.cpu().numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axes.axis("off")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def save_input_channels(path: str | Path, images: torch.Tensor, examples: int = 5, seed: int = 0) -> None:
    """Draw the 5-channel CNN input of ``examples`` random images with random query pixels (METHODS.md §A.5.3).

    One row per example, one column per channel, values mapped to gray levels by 127.5·(v + 1); ``images`` is a
    uint8 (N, 28, 28) tensor such as :attr:`MnistAutoregression.train_images`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(len(images), (examples,), generator=generator)
    rows, cols = torch.randint(SIZE, (2, examples), generator=generator)
    inputs = build_inputs(images.cpu()[indices], rows, cols, torch.float64, channels_last=False)
    gray = (127.5 * (inputs + 1)).numpy()
    figure = Figure(figsize=(5, examples))
    FigureCanvasAgg(figure)
    grid = figure.subplots(examples, 5, squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.05})
    for example in range(examples):
        for channel in range(5):
            axes = grid[example, channel]
            axes.imshow(gray[example, channel], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            axes.axis("off")
            if example == 0:
                axes.set_title(f"channel {channel}", fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
