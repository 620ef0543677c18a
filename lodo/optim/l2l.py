"""L2LBGDBGD: Andrychowicz et al.'s coordinate-wise LSTM optimizer, meta-trained on noisy quadratics.

The paper's "L2LBGDBGD" baseline (METHODS.md §A.3.12) is "learning to learn by gradient descent by gradient
descent": a two-layer LSTM, shared across coordinates, reads each coordinate's preprocessed gradient and
outputs that coordinate's step. It is meta-trained offline on the noisy-quadratic distribution, then used
frozen.

* :func:`preprocess_gradient` — Andrychowicz App. A with p = 10.
* :class:`CoordinatewiseLSTM` — LSTMCell(2→20) → LSTMCell(20→20) → Linear(20→1).
* :func:`meta_train` — Adam(0.03) over epochs of 20 training fits (100 optimizee steps, truncated BPTT over
  windows of 20, meta-loss = the window's summed loss) and 20 evaluation fits; the best epoch's weights are
  kept.
* :class:`L2LOptimizer` — the frozen LSTM as a ``torch.optim.Optimizer``: x ← x + 0.1·LSTM(∇f).

``python -m lodo.optim.l2l --help`` meta-trains and writes the weights and a record of how they were made; the
shipped weights are package data, ``lodo/optim/l2lbgdbgd/`` (with a README on how they were made).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torch.optim import Optimizer

# The shipped weights: package data, in an editable install and in a wheel alike (what ``weights: null`` loads).
DEFAULT_WEIGHTS = Path(str(resources.files("lodo.optim") / "l2lbgdbgd" / "weights.pt"))


def preprocess_gradient(grad: torch.Tensor, factor: float = 10.0) -> torch.Tensor:
    r"""Andrychowicz et al. 2016, App. A: each gradient coordinate g becomes two inputs (shape (…, 2)).

    ::

        (log(|g| + 1e-8)/p, sign g)   if |g| ≥ e^{−p}
        (−1, e^p · g)                  otherwise
    """
    magnitude = grad.abs()
    large = magnitude >= math.exp(-factor)
    log_part = torch.where(large, torch.log(magnitude + 1e-8) / factor, torch.full_like(grad, -1.0))
    sign_part = torch.where(large, torch.sign(grad), math.exp(factor) * grad)
    return torch.stack([log_part, sign_part], dim=-1)


class CoordinatewiseLSTM(nn.Module):
    """A two-layer LSTM, then Linear(h→1), applied to every coordinate independently (a batch of n)."""

    def __init__(self, hidden_size: int = 20, preprocess_factor: float = 10.0):
        super().__init__()
        self.hidden_size, self.preprocess_factor = hidden_size, preprocess_factor
        self.cell1 = nn.LSTMCell(2, hidden_size)
        self.cell2 = nn.LSTMCell(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, 1)

    def initial_state(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero (hidden, cell) states for n coordinates, each of shape (2 layers, n, hidden_size)."""
        weight = self.output.weight
        zeros = torch.zeros(2, n, self.hidden_size, dtype=weight.dtype, device=weight.device)
        return zeros, zeros.clone()

    def forward(
        self, grad: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One step for the flat gradient ``grad`` (n,): returns the raw output (n,) and the new state."""
        hidden, cell = state
        inputs = preprocess_gradient(grad.to(self.output.weight.dtype), self.preprocess_factor)
        h1, c1 = self.cell1(inputs, (hidden[0], cell[0]))
        h2, c2 = self.cell2(h1, (hidden[1], cell[1]))
        return self.output(h2).squeeze(-1), (torch.stack([h1, h2]), torch.stack([c1, c2]))


def resolve_weights(path: str | Path | None) -> Path:
    """The weights file: ``None`` for the shipped weights (:data:`DEFAULT_WEIGHTS`), else a path, absolute or relative
    to the working directory."""
    path = Path(path).expanduser() if path is not None else DEFAULT_WEIGHTS
    if path.is_file():
        return path
    raise FileNotFoundError(
        f"L2LBGDBGD weights {str(path)!r} not found (a relative path is read from the working directory); "
        "meta-train them with `python -m lodo.optim.l2l`"
    )


def load_network(path: str | Path | None = None) -> tuple[CoordinatewiseLSTM, dict]:
    """The meta-trained LSTM at ``path`` (default: the shipped weights) and its meta-training settings."""
    checkpoint = torch.load(resolve_weights(path), map_location="cpu", weights_only=True)
    settings = checkpoint["settings"]
    net = CoordinatewiseLSTM(settings["hidden_size"], settings["preprocess_factor"])
    net.load_state_dict(checkpoint["state_dict"])
    return net, settings


class L2LOptimizer(Optimizer):
    r"""The frozen meta-trained LSTM optimizer of Andrychowicz et al. 2016 (L2LBGDBGD, METHODS.md §A.3.12).

    Every coordinate of every parameter is an independent member of the LSTM's batch, with its own hidden
    state::

        input: LSTM weights φ (meta-trained, fixed), out_mul (0.1);  (h, c)₀ = 0 per coordinate
        u, (h, c) ← LSTM_φ(preprocess(g), (h, c))       # preprocess: Andrychowicz App. A, p = 10
        x ← x + out_mul · u

    The LSTM runs in its weights' dtype (float32); its per-coordinate states are stored in each parameter's
    state and survive a ``state_dict`` round trip exactly. It was meta-trained on 100-dimensional noisy
    quadratics; it runs on any task (it is coordinate-wise) but nothing promises it generalizes.

    Args:
        params: parameters or parameter groups.
        weights: the weights file written by ``python -m lodo.optim.l2l`` (``None``: the shipped
            ``lodo/optim/l2lbgdbgd/weights.pt``); a relative path is read from the working directory.
        out_mul: the output scale (``None``: the value it was meta-trained with, 0.1).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        weights: str | Path | None = None,
        out_mul: float | None = None,
    ):
        net, settings = load_network(weights)
        out_mul = settings["out_mul"] if out_mul is None else out_mul
        if not out_mul > 0:
            raise ValueError(f"Invalid out_mul: {out_mul}; it must be positive")
        super().__init__(params, dict(out_mul=out_mul))
        device = self.param_groups[0]["params"][0].device
        self.net = net.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["hidden"], state["cell"] = self.net.initial_state(p.numel())
                update, (state["hidden"], state["cell"]) = self.net(
                    p.grad.reshape(-1), (state["hidden"], state["cell"])
                )
                p.add_(update.view_as(p).to(p.dtype), alpha=group["out_mul"])
                state["step"] += 1
        return loss

    def state_dict(self) -> dict:
        state_dict = super().state_dict()
        state_dict["net"] = self.net.state_dict()
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        net_state = state_dict.pop("net", None)
        if net_state is not None:
            self.net.load_state_dict(net_state)
        super().load_state_dict(state_dict)
        # Optimizer.load_state_dict casts state to each parameter's dtype; the LSTM state lives in the net's
        # dtype.
        dtype = self.net.output.weight.dtype
        for state in self.state.values():
            for key in ("hidden", "cell"):
                if key in state:
                    state[key] = state[key].to(dtype)


# --- meta-training (METHODS.md §A.3.12) ---------------------------------------------------------------------


def _fit(
    net: CoordinatewiseLSTM,
    task,
    steps: int,
    unroll: int,
    out_mul: float,
    meta_optimizer: torch.optim.Optimizer | None = None,
) -> list[float]:
    """Optimize one task for ``steps`` steps with the LSTM; with a meta-optimizer, train it by truncated BPTT.

    As in the authors' vendored code: the LSTM reads the (detached) gradient at the current point, the
    meta-loss of a window is the sum of the ``unroll`` losses in it (the window's first loss is at a detached
    point), and the point and LSTM state are detached at each window's end. Without a meta-optimizer nothing
    is unrolled.
    """
    train = meta_optimizer is not None
    (x,) = (p.detach().clone() for p in task.parameters())
    x.requires_grad_(True)
    state = net.initial_state(x.numel())
    losses, window_loss = [], 0.0
    for t in range(1, steps + 1):
        loss = task.loss_at([x], task.sample_batch())
        losses.append(float(loss.detach()))
        (grad,) = torch.autograd.grad(loss, x, retain_graph=train)
        with torch.set_grad_enabled(train):
            update, state = net(grad.detach(), state)
            x = x + out_mul * update.to(x.dtype)
        if train:
            window_loss = window_loss + loss
        if not train or t % unroll == 0:
            if train:
                meta_optimizer.zero_grad()
                window_loss.backward()
                meta_optimizer.step()
                window_loss = 0.0
            x = x.detach().requires_grad_(True)
            state = tuple(s.detach() for s in state)
    return losses


def meta_train(
    epochs: int = 50,
    train_fits: int = 20,
    eval_fits: int = 20,
    fit_steps: int = 100,
    unroll: int = 20,
    meta_lr: float = 0.03,
    out_mul: float = 0.1,
    hidden_size: int = 20,
    preprocess_factor: float = 10.0,
    n: int = 100,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> tuple[dict, dict]:
    """Meta-train the LSTM on fresh seeded noisy quadratics; return the best state dict and a history.

    Every training fit draws a new :class:`lodo.tasks.NoisyQuadratic` (same spectrum, new eigenbasis and
    random walk) from a seed sequence derived from ``seed``. The ``eval_fits`` evaluation tasks are drawn once
    and reused every epoch, so epochs are compared on the same problems (the authors drew fresh ones). An
    epoch's score is the mean over evaluation fits of the summed loss of the fit; the best epoch's weights are
    kept.
    """
    from lodo.tasks import NoisyQuadratic

    for name, value in (("epochs", epochs), ("train_fits", train_fits), ("eval_fits", eval_fits)):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if not 1 <= unroll <= fit_steps:
        raise ValueError(f"need 1 <= unroll <= fit_steps, got unroll={unroll}, fit_steps={fit_steps}")
    torch.manual_seed(seed)
    net = CoordinatewiseLSTM(hidden_size, preprocess_factor)
    meta_optimizer = torch.optim.Adam(net.parameters(), lr=meta_lr)
    seeds = torch.Generator().manual_seed(seed)

    def draw_seed() -> int:
        return int(torch.randint(2**62, (), generator=seeds))

    eval_seeds = [draw_seed() for _ in range(eval_fits)]
    best_score, best_state, best_epoch, scores = math.inf, copy.deepcopy(net.state_dict()), 0, []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        net.train()
        for _ in range(train_fits):
            _fit(net, NoisyQuadratic(n=n, seed=draw_seed()), fit_steps, unroll, out_mul, meta_optimizer)
        net.eval()
        totals = [sum(_fit(net, NoisyQuadratic(n=n, seed=s), fit_steps, unroll, out_mul)) for s in eval_seeds]
        score = sum(totals) / len(totals)
        scores.append(score)
        if score < best_score:  # a diverged (non-finite) epoch is never kept
            best_score, best_state, best_epoch = score, copy.deepcopy(net.state_dict()), epoch
        if log is not None:
            log(
                f"epoch {epoch}/{epochs}: mean summed eval loss {score:.6g} "
                f"(best {best_score:.6g} at epoch {best_epoch}), {time.perf_counter() - start:.0f} s"
            )
    history = {
        "eval_scores": scores,
        "best_epoch": best_epoch,
        "best_score": best_score,
        "wall_time_s": time.perf_counter() - start,
    }
    return best_state, history


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lodo.optim.l2l",
        description="Meta-train the L2LBGDBGD LSTM optimizer on noisy quadratics (METHODS.md §A.3.12); save it.",
    )
    parser.add_argument("--epochs", type=int, default=50, help="meta-training epochs (paper: 50)")
    parser.add_argument("--train-fits", type=int, default=20, help="training fits per epoch (paper: 20)")
    parser.add_argument("--eval-fits", type=int, default=20, help="evaluation fits per epoch (paper: 20)")
    parser.add_argument("--fit-steps", type=int, default=100, help="optimizee steps per fit (paper: 100)")
    parser.add_argument("--unroll", type=int, default=20, help="truncated-BPTT window (paper: 20)")
    parser.add_argument("--meta-lr", type=float, default=0.03, help="Adam learning rate (paper: 0.03)")
    parser.add_argument("--out-mul", type=float, default=0.1, help="output scale (paper: 0.1)")
    parser.add_argument("--hidden-size", type=int, default=20, help="LSTM width (paper: 20)")
    parser.add_argument("--n", type=int, default=100, help="quadratic dimension (paper: 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_WEIGHTS,
        help="weights file (.pt); a .json beside it (default: the shipped file, which `weights: null` loads)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {
        "epochs": args.epochs,
        "train_fits": args.train_fits,
        "eval_fits": args.eval_fits,
        "fit_steps": args.fit_steps,
        "unroll": args.unroll,
        "meta_lr": args.meta_lr,
        "out_mul": args.out_mul,
        "hidden_size": args.hidden_size,
        "preprocess_factor": 10.0,
        "n": args.n,
        "seed": args.seed,
    }
    state_dict, history = meta_train(**settings)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state_dict, "settings": settings}, args.output)
    record = {
        "command": "python -m lodo.optim.l2l " + shlex.join(sys.argv[1:] if argv is None else argv),
        "settings": settings,
        **history,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    args.output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {args.output} (best epoch {history['best_epoch']}, {history['wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
