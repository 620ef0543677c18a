"""One test matrix for every registered optimizer on every task it supports (optax's shared-test style).

Each pair trains a few steps at the optimizer's config (generation-0) values and checks a finite loss, the
declared evaluation count, and an exact ``state_dict`` round trip. Incompatible pairs must be refused with a
message naming the pair and the reason, both by the registry and by ``python -m lodo.run`` at config time.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import lodo.optim  # noqa: F401  (registers every optimizer)
from lodo.optim.registry import OPTIMIZERS, build_optimizer, check_compatible, config_values, incompatibility
from lodo.tasks import TASKS
from lodo.train import train

ROOT = Path(__file__).resolve().parent.parent
OPTIMIZER_CONFIGS = ROOT / "configs" / "optimizer"

# Small instances: a 10-dimensional quadratic, and the MNIST tasks (the paper's CNN and the reduced one) with tiny
# batches and no metric images, samples or test loss (their class defaults evaluate 10,000 test images at the end).
_MNIST_KWARGS = {"batch_size": 8, "validation_images": 0, "test_images": 0, "metric_batch": 8, "samples": 0}
TASK_KWARGS = {"noisy_quadratic": {"n": 10}, "mnist_autoregression": _MNIST_KWARGS, "mnist_small": _MNIST_KWARGS}
ITERATIONS = {"mnist_autoregression": 1, "mnist_small": 1}  # per phase (train, then continue): 2 steps on MNIST
DEFAULT_ITERATIONS = 3
# On the 95k-parameter CNN these optimizers finish their pair in about 1.5–3.5 s on one CPU thread; the others
# (LODO with its ≈12M preconditioner weights: 15–100 s; PSGD-Kron: ≈5 s) and any optimizer added later are slow.
FAST_ON_MNIST = {
    *("adam", "momentum", "rmsprop", "yogi", "lars", "kfac", "sgd_hd", "soap", "shampoo"),
    *("lbfgs_no_line_search", "olbfgs", "l2lbgdbgd", "lodo_diagonal", "lodo_global"),
}


def is_slow(name: str, task_name: str) -> bool:
    return task_name.startswith("mnist") and name not in FAST_ON_MNIST


def make_task(task_name: str):
    return TASKS[task_name](seed=0, **TASK_KWARGS.get(task_name, {}))


def make_optimizer(name: str, task):
    torch.manual_seed(0)  # optimizers that draw from the global generator (e.g. LODO without a seed) repeat
    return build_optimizer(name, task.parameters(), task, **config_values(name))


def serialized(state_dict: dict) -> dict:
    """A state dict after a trip through ``torch.save``/``torch.load``, as a checkpoint would see it."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def compatible_pairs():
    for name in OPTIMIZERS:
        for task_name in TASKS:
            if incompatibility(name, task_name) is None:
                marks = [pytest.mark.slow] if is_slow(name, task_name) else []
                yield pytest.param(name, task_name, id=f"{name}-{task_name}", marks=marks)


INCOMPATIBLE = [(name, task) for name in OPTIMIZERS for task in TASKS if incompatibility(name, task)]


@pytest.mark.parametrize(("name", "task_name"), list(compatible_pairs()))
def test_optimizer_trains_counts_evaluations_and_round_trips_its_state(name, task_name):
    spec = OPTIMIZERS[name]
    per_step = spec.evaluations_per_step  # 0: variable (e.g. L-BFGS with a line search)
    steps = ITERATIONS.get(task_name, DEFAULT_ITERATIONS) * max(per_step, 1)
    task = make_task(task_name)
    optimizer = make_optimizer(name, task)
    losses: list[float] = []
    summary = train(task, optimizer, steps=steps, progress=False, on_row=lambda row: losses.append(row["loss"]))
    assert summary["status"] == "completed", summary["reason"]
    assert losses and all(math.isfinite(loss) for loss in losses)
    if per_step:
        assert summary["steps"] == summary["iterations"] * per_step
    else:
        assert summary["steps"] >= summary["iterations"]

    # Save everything a checkpoint holds: optimizer state, parameters, how many batches were drawn, global RNG.
    saved_state = serialized(optimizer.state_dict())
    saved_params = [p.detach().clone() for p in task.parameters()]
    batches_drawn, rng = summary["iterations"], torch.get_rng_state()

    torch.set_rng_state(rng)
    train(task, optimizer, steps=steps, progress=False)

    fresh = make_task(task_name)
    for _ in range(batches_drawn):  # the batch stream is seeded: replaying it restores its state
        fresh.sample_batch()
    with torch.no_grad():
        for p, value in zip(fresh.parameters(), saved_params, strict=True):
            p.copy_(value)
    restored = make_optimizer(name, fresh)
    restored.load_state_dict(saved_state)
    torch.set_rng_state(rng)
    train(fresh, restored, steps=steps, progress=False)
    for p, q in zip(task.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q), f"{name} on {task_name}: parameters differ after a state_dict round trip"


def test_registry_declarations_are_consistent():
    for name, spec in OPTIMIZERS.items():
        assert spec.evaluations_per_step >= 0, name
        if spec.tasks is not None:
            assert set(spec.tasks) <= set(TASKS), f"{name} names unknown tasks {spec.tasks}"
            assert spec.tasks_reason, f"{name} restricts its tasks without saying why"
        config = OPTIMIZER_CONFIGS / f"{name}.yaml"
        assert config.exists(), f"{name} has no configs/optimizer/{name}.yaml"
        assert OmegaConf.load(config).name == name
        missing = set(spec.tuned) - set(config_values(name))
        assert not missing, f"{name}'s config lacks the tuned hyperparameters {sorted(missing)}"


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_what_step_takes_beyond_the_closure_is_declared_in_the_registry(name):
    """The training loop passes an optimizer's ``step_inputs`` (e.g. the exact Hessian): the registry's ``needs``
    must include them, so that a task that cannot supply them is refused before a run starts."""
    cheapest = ("rosenbrock", "noisy_quadratic", *sorted(TASKS))
    task_name = next(t for t in cheapest if incompatibility(name, t) is None)
    optimizer = make_optimizer(name, make_task(task_name))
    assert set(getattr(optimizer, "step_inputs", ())) <= OPTIMIZERS[name].needs


@pytest.mark.parametrize(("name", "task_name"), INCOMPATIBLE, ids=[f"{o}-{t}" for o, t in INCOMPATIBLE])
def test_incompatible_pair_is_refused_with_the_reason(name, task_name):
    with pytest.raises(ValueError) as error:
        check_compatible(name, task_name)
    message = str(error.value)
    assert repr(name) in message and repr(task_name) in message
    assert incompatibility(name, task_name) in message


def test_runner_refuses_an_incompatible_pair_at_config_time(tmp_path):
    configs = {p.stem for p in OPTIMIZER_CONFIGS.glob("*.yaml")}
    tasks = {p.stem for p in (ROOT / "configs" / "task").glob("*.yaml")}
    pairs = [(o, t) for o, t in INCOMPATIBLE if o in configs and t in tasks]
    if not pairs:
        pytest.skip("no incompatible optimizer/task pair is registered")
    # Prefer a pair whose task is cheap to build, in case a regression lets it get that far.
    name, task_name = min(pairs, key=lambda pair: pair[1].startswith("mnist"))
    result = subprocess.run(
        [sys.executable, "-m", "lodo.run", f"task={task_name}", f"optimizer={name}", "logger=none"]
        + ["progress=false", "steps=2", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        timeout=300,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"optimizer {name!r} cannot run on task {task_name!r}" in output
    assert incompatibility(name, task_name) in output
    assert not (tmp_path / "config.yaml").exists()  # refused before anything was built or written
