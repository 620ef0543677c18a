"""MNIST autoregression: the data, the paper's CNN, the 5-channel inputs, the losses and the samples (METHODS.md §3)."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from lodo.tasks import TASKS
from lodo.tasks.cnn import Atan, AutoregressionCNN, ResidualBlock
from lodo.tasks.mnist import (
    MnistAutoregression,
    build_inputs,
    generate_samples,
    sample_grid,
    save_image_grid,
    save_input_channels,
)
from lodo.tasks.mnist_data import IDX_FILES, MnistDataError, load_mnist, read_zarr_archive, verify

CONFIG = Path(__file__).parents[1] / "configs" / "task" / "mnist_autoregression.yaml"


@pytest.fixture(scope="module")
def task():
    """A read-only task for tests that do not train (one validation and one test image keep metrics cheap)."""
    return MnistAutoregression(batch_size=16, validation_images=1, test_images=1, seed=0)


def reference_inputs(image: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """METHODS.md §3's input definition written out pixel by pixel, for one image: (5, 28, 28) float64."""
    inputs = torch.zeros(5, 28, 28, dtype=torch.float64)
    for r in range(28):
        for c in range(28):
            visible = r < row or (r == row and c < col)
            inputs[0, r, c] = float(image[r, c]) * visible / 256
            inputs[1, r, c] = 1.0 if c <= col else -1.0
            inputs[2, r, c] = 1.0 if visible else -1.0
            inputs[3, r, c] = 2 * r / 28 - 1
            inputs[4, r, c] = 2 * c / 28 - 1
    return inputs


class RasterPosition(nn.Module):
    """A stand-in CNN that predicts, with certainty, class = (query pixel's raster index) mod 256."""

    def forward(self, inputs):
        position = (inputs[:, 2] > 0).flatten(1).sum(1)  # visible pixels precede the query in raster order
        return 100.0 * F.one_hot(position % 256, 256).to(inputs.dtype)


class Uniform(nn.Module):
    """A stand-in CNN whose logits are all zero: every intensity has probability 1/256."""

    def forward(self, inputs):
        return torch.zeros(len(inputs), 256, dtype=inputs.dtype)


# --- the CNN ---------------------------------------------------------------------------------------------------


def test_cnn_has_the_papers_94696_parameters():
    model = AutoregressionCNN()
    assert sum(p.numel() for p in model.parameters()) == 94_696
    assert sum(p.numel() for p in model.stem.parameters()) == 120
    assert sum(p.numel() for p in ResidualBlock().parameters()) == 4_460
    assert sum(p.numel() for p in model.dense.parameters()) == 5_376
    # The paper's flattening order: stem W, b; per block W1, b1, Wd, bd, W2, b2; dense W, b.
    shapes = [tuple(p.shape) for p in model.parameters()]
    block = [(40, 20, 1, 1), (40,), (120, 1, 3, 3), (120,), (20, 120, 1, 1), (20,)]
    assert shapes == [(20, 5, 1, 1), (20,)] + 20 * block + [(256, 20), (256,)]


def test_the_reduced_cnn_is_a_separate_task_with_7432_parameters_and_the_papers_task_keeps_94696():
    from lodo.tasks import MnistAutoregression, MnistAutoregressionSmall, task_class

    small = MnistAutoregressionSmall(batch_size=2, validation_images=0, test_images=0, samples=0)
    assert task_class("mnist_small") is MnistAutoregressionSmall and small.num_parameters == 7_432
    assert len(small.model.blocks) == 5 and small.model.dense.in_features == 8  # one block per stage, 8 channels
    assert MnistAutoregression.network == {"channels": 20, "blocks_per_stage": 4}  # the paper's CNN, untouched
    batch = small.sample_batch()
    assert small.loss(batch).shape == () and batch.inputs.shape == (2, 5, 28, 28)


def test_cnn_initialization_is_seeded_normal_with_std_one_over_root_fan_in_plus_one():
    model = AutoregressionCNN(torch.Generator().manual_seed(0))
    again = AutoregressionCNN(torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    for name, fan_in in (("expand", 20), ("depthwise", 9), ("project", 120)):
        # Weights and biases of all 20 blocks pooled: thousands of draws, so 5% is a loose bound.
        values = torch.cat([p.flatten() for b in model.blocks for p in getattr(b, name).parameters()])
        assert values.std().item() == pytest.approx(1 / math.sqrt(fan_in + 1), rel=0.05), name
    dense = torch.cat([p.flatten() for p in model.dense.parameters()])
    assert dense.std().item() == pytest.approx(1 / math.sqrt(21), rel=0.05)


def test_in_place_evaluation_forward_equals_the_training_forward():
    model = AutoregressionCNN(torch.Generator().manual_seed(0))
    inputs = torch.randn(2, 5, 28, 28)
    with torch.no_grad():
        evaluation = model(inputs)
    assert torch.equal(evaluation, model(inputs).detach())


def test_atan_gradient_and_double_gradient():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.equal(Atan.apply(x), torch.atan(x))
    assert torch.autograd.gradcheck(Atan.apply, (x,))
    assert torch.autograd.gradgradcheck(Atan.apply, (x,))


def test_average_pooling_divides_edge_windows_by_their_valid_count():
    # The 7 → 4 stage: TF "SAME" pooling averages only the cells inside the image.
    pool = AutoregressionCNN().pool
    assert torch.equal(pool(torch.ones(1, 1, 7, 7)), torch.ones(1, 1, 4, 4))
    x = torch.arange(49.0).view(1, 1, 7, 7)
    out = pool(x)[0, 0]
    assert out.shape == (4, 4)
    assert out[0, 0].item() == pytest.approx((0 + 1 + 7 + 8) / 4)
    assert out[0, 3].item() == pytest.approx((6 + 13) / 2)
    assert out[3, 3].item() == pytest.approx(48.0)
    sizes = [28]
    while sizes[-1] > 1:
        sizes.append(pool(torch.zeros(1, 1, sizes[-1], sizes[-1])).shape[-1])
    assert sizes == [28, 14, 7, 4, 2, 1]


# --- the data --------------------------------------------------------------------------------------------------


def test_data_is_the_real_mnist():
    mnist = load_mnist()
    assert np.bincount(mnist.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(mnist.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    pixels = mnist.train_images / 255.0
    assert pixels.mean() == pytest.approx(0.13066, abs=1e-5)
    assert pixels.std() == pytest.approx(0.30811, abs=1e-5)
    assert load_mnist() is mnist  # cached in-process
    assert not mnist.train_images.flags.writeable


def test_split_sizes():
    full = MnistAutoregression()
    assert (len(full.train_images), len(full.validation_images), len(full.test_images)) == (59_936, 64, 10_000)
    images = torch.from_numpy(load_mnist().train_images.copy())
    assert torch.equal(full.validation_images, images[-64:])
    assert torch.equal(full.train_images[-1], images[59_935])


def write_idx(path: Path, array: np.ndarray) -> None:
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mnist_idx")
    for name, array in load_mnist()._asdict().items():
        gzipped = name == "test_labels"  # one gzipped file exercises that path; the others stay fast to write
        write_idx(directory / (IDX_FILES[name] + (".gz" if gzipped else "")), array)
    return directory


def test_idx_directory_gives_the_same_data(idx_dir):
    from_idx, from_wheel = load_mnist(idx_dir), load_mnist()
    assert from_idx is not from_wheel
    for a, b in zip(from_idx, from_wheel):
        assert np.array_equal(a, b)
    task = MnistAutoregression(data_dir=str(idx_dir), batch_size=4)
    assert len(task.train_images) == 59_936


def corrupt_copy(idx_dir: Path, directory: Path, name: str, edit) -> Path:
    directory.mkdir()
    for other, filename in IDX_FILES.items():
        source = next(idx_dir.glob(filename + "*"))
        if other == name:
            (directory / filename).write_bytes(edit(source.read_bytes()))
        else:
            (directory / source.name).symlink_to(source)
    return directory


def test_corrupt_or_missing_data_gives_a_clear_error(idx_dir, tmp_path):
    with pytest.raises(MnistDataError, match="is not a directory"):
        load_mnist(tmp_path / "absent")
    with pytest.raises(MnistDataError, match="neither train-images-idx3-ubyte nor train-images-idx3-ubyte.gz"):
        load_mnist(tmp_path)

    def flip_last_pixel(data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1])

    corrupt = corrupt_copy(idx_dir, tmp_path / "pixel", "test_images", flip_last_pixel)
    with pytest.raises(MnistDataError, match=f"MNIST from {corrupt}.*SHA-256"):
        load_mnist(corrupt)
    truncated = corrupt_copy(idx_dir, tmp_path / "short", "train_images", lambda data: data[:-5])
    with pytest.raises(MnistDataError, match="train-images-idx3-ubyte is truncated"):
        load_mnist(truncated)
    header = corrupt_copy(idx_dir, tmp_path / "header", "train_labels", lambda data: b"\x00\x00\x0d\x01" + data[4:])
    with pytest.raises(MnistDataError, match="train-labels-idx1-ubyte is not an IDX file"):
        load_mnist(header)
    with pytest.raises(MnistDataError, match="does not exist"):
        read_zarr_archive(tmp_path / "absent.zarr.zip")
    (tmp_path / "bogus.zarr.zip").write_bytes(b"not a zip file")
    with pytest.raises(MnistDataError, match="bogus.zarr.zip could not be read"):
        read_zarr_archive(tmp_path / "bogus.zarr.zip")
    arrays = load_mnist()._asdict()
    arrays["train_labels"] = arrays["train_labels"].copy()
    arrays["train_labels"][0] = 0
    with pytest.raises(MnistDataError, match="train_labels digit counts"):
        verify(arrays, Path("somewhere"))


# --- inputs, batches and the loss ------------------------------------------------------------------------------


def test_input_channels_follow_the_spec():
    image = torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    queries = [(0, 0), (2, 3), (5, 0), (13, 27), (27, 27)]
    rows, cols = torch.tensor([q[0] for q in queries]), torch.tensor([q[1] for q in queries])
    inputs = build_inputs(image.expand(len(queries), 28, 28), rows, cols, torch.float64)
    assert inputs.shape == (5, 5, 28, 28) and inputs.is_contiguous(memory_format=torch.channels_last)
    for k, (row, col) in enumerate(queries):
        assert torch.equal(inputs[k], reference_inputs(image, row, col)), (row, col)
    # By hand, query (2, 3): the query pixel and everything after it in raster order are hidden.
    x = inputs[1]
    assert x[0, 2, 3] == 0 and x[2, 2, 3] == -1
    assert x[0, 2, 2] == image[2, 2] / 256 and x[2, 2, 2] == 1 and x[2, 1, 27] == 1 and x[2, 3, 0] == -1
    assert x[1, 0, 3] == 1 and x[1, 27, 4] == -1
    assert x[3, 14, 0] == 0 and x[3, 0, 0] == -1 and x[4, 0, 7] == -0.5
    nchw = build_inputs(image.expand(2, 28, 28), rows[:2], cols[:2], torch.float32, channels_last=False)
    assert nchw.is_contiguous() and torch.allclose(nchw, inputs[:2].float())


def test_batches_are_seeded_and_targets_are_the_query_pixels(task):
    first = MnistAutoregression(batch_size=8, seed=3).sample_batch()
    same = MnistAutoregression(batch_size=8, seed=3).sample_batch()
    other = MnistAutoregression(batch_size=8, seed=4).sample_batch()
    assert torch.equal(first.inputs, same.inputs) and torch.equal(first.targets, same.targets)
    assert not torch.equal(first.indices, other.indices)
    assert first.inputs.shape == (8, 5, 28, 28) and first.targets.dtype == torch.long
    images = task.train_images[first.indices]
    assert torch.equal(first.targets, images[torch.arange(8), first.rows, first.cols].long())


def test_loss_at_initialization_is_finite_and_near_uniform(task):
    batch = task.sample_batch()
    with torch.no_grad():
        loss = task.loss(batch)
        logits = task.model(batch.inputs)
    # The initial logits are nearly constant across images with a spread of ~2 across classes (every bias is drawn
    # N(0, 1/21) and the residual stream grows over 20 blocks), so the loss starts a nat or more above ln 256
    # depending on the seed; averaged over every possible target it is ln 256 plus a little (Jensen).
    assert torch.isfinite(loss) and 4.0 < loss.item() < 11.0
    average_over_targets = (torch.logsumexp(logits, -1) - logits.mean(-1)).mean().item()
    assert math.log(256) <= average_over_targets < math.log(256) + 4


def test_same_batch_reevaluation_gives_the_identical_loss(task):
    batch = task.sample_batch()
    assert torch.equal(task.loss(batch), task.loss(batch))


def test_adam_lowers_the_loss():
    task = MnistAutoregression(batch_size=16, seed=0)
    fixed = MnistAutoregression(batch_size=32, seed=1).sample_batch()
    with torch.no_grad():
        before = task.loss(fixed).item()
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-3)
    for _ in range(5):
        optimizer.zero_grad()
        task.loss(task.sample_batch()).backward()
        optimizer.step()
    with torch.no_grad():
        after = task.loss(fixed).item()
    assert after < before - 1.0


def test_float64_option():
    task32 = MnistAutoregression(batch_size=2, seed=0)
    task64 = MnistAutoregression(batch_size=2, seed=0, dtype=torch.float64)
    nchw = MnistAutoregression(batch_size=2, seed=0, dtype=torch.float64, channels_last=False)
    assert all(p.dtype == torch.float64 for p in task64.parameters())
    for p32, p64 in zip(task32.parameters(), task64.parameters()):
        assert torch.equal(p32, p64.float())  # the same seeded draws in either dtype
    batch, again = task64.sample_batch(), nchw.sample_batch()
    loss = task64.loss(batch)
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    assert nchw.loss(again).item() == pytest.approx(loss.item(), abs=1e-10)


# --- evaluation ------------------------------------------------------------------------------------------------


def test_batched_pixel_loss_equals_the_per_pixel_definition(task):
    images = task.train_images[:2]
    positions = torch.tensor([0, 1, 29, 405, 783])
    slow = []
    with torch.no_grad():
        for image in images:
            for position in positions.tolist():
                row, col = divmod(position, 28)
                inputs = reference_inputs(image, row, col)[None].float()
                target = image[row, col].long().view(1)
                slow.append(F.cross_entropy(task.model(inputs), target).item())
    task.metric_batch = 3  # chunks that straddle the two images
    try:
        fast = task.pixel_loss(images, positions)
    finally:
        task.metric_batch = 256
    assert fast == pytest.approx(sum(slow) / len(slow), rel=1e-5)


def test_metrics_and_final_metrics(task, monkeypatch):
    # A stand-in CNN with uniform logits makes both losses exactly ln 256 (the real CNN is checked just above).
    monkeypatch.setattr(task, "model", Uniform())
    assert task.metric_names() == ["validation_loss"]
    assert task.metrics() == {"validation_loss": pytest.approx(math.log(256), abs=1e-6)}
    assert task.final_metrics() == {"test_loss": pytest.approx(math.log(256), abs=1e-6)}
    none = MnistAutoregression(validation_images=0, test_images=0)
    assert (none.metric_names(), none.metrics(), none.final_metrics()) == ([], {}, {})


# --- samples and pictures ---------------------------------------------------------------------------------------


def test_generation_fills_pixels_in_raster_order(task, monkeypatch):
    monkeypatch.setattr(task, "model", RasterPosition())
    samples = generate_samples(task, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (16, 28, 28) and samples.dtype == torch.uint8
    assert torch.equal(samples, (torch.arange(784) % 256).to(torch.uint8).view(28, 28).expand(16, 28, 28))


def test_generation_samples_by_inverse_cdf_with_a_seeded_generator(task, monkeypatch):
    monkeypatch.setattr(task, "model", Uniform())
    samples = generate_samples(task, generator=torch.Generator().manual_seed(0))
    again = generate_samples(task, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)
    assert samples.double().mean().item() == pytest.approx(127.5, abs=3)  # 12,544 uniform draws on 0..255
    grid = sample_grid(samples)
    assert grid.shape == (112, 112)
    assert torch.equal(grid[28:56, 84:112], samples[7])  # row 1, column 3 of the 4×4 grid


def test_pictures_are_written(task, monkeypatch, tmp_path):
    monkeypatch.setattr(task, "model", Uniform())
    paths = task.save_artifacts(tmp_path / "run")
    assert list(paths) == ["input_channels", "samples"]
    assert all(Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in paths.values())
    save_input_channels(tmp_path / "inputs.png", task.train_images)
    save_image_grid(tmp_path / "grid.png", torch.zeros(112, 112, dtype=torch.uint8))
    assert (tmp_path / "inputs.png").stat().st_size > 0 and (tmp_path / "grid.png").stat().st_size > 0


def test_the_number_of_samples_is_a_parameter(task, monkeypatch, tmp_path):
    monkeypatch.setattr(task, "model", Uniform())
    monkeypatch.setattr(task, "samples", 4)
    grids = []
    monkeypatch.setattr("lodo.tasks.mnist.save_image_grid", lambda path, image: grids.append(image.shape))
    assert list(task.save_artifacts(tmp_path / "four")) == ["input_channels", "samples"]
    assert grids == [(28, 112)]  # one row of 4 digits
    monkeypatch.setattr(task, "samples", 0)
    assert list(task.save_artifacts(tmp_path / "none")) == ["input_channels"]
    assert not (tmp_path / "none" / "samples.png").exists()
    with pytest.raises(ValueError, match="samples must be a non-negative multiple of 4"):
        MnistAutoregression(samples=6)


@pytest.mark.slow
def test_samples_of_the_real_cnn(task, tmp_path):
    # 784 forward passes of 16 images: a minute or two on an idle 2-core CPU.
    path = task.save_artifacts(tmp_path)["samples"]
    assert path == str(tmp_path / "samples.png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- configuration ---------------------------------------------------------------------------------------------


def test_config_builds_the_task():
    config = OmegaConf.to_container(OmegaConf.load(CONFIG))
    assert TASKS[config.pop("name")] is MnistAutoregression
    assert config.pop("metric_interval") == 1000
    config.update(validation_images=1, test_images=1)
    task = MnistAutoregression(seed=0, dtype=None, device="cpu", **config)
    assert task.batch_size == 256 and task.channels_last and len(task.test_images) == 1
    assert task.provides == frozenset({"closure", "model"}) and task.model is not None
