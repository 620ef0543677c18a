"""One registry of every optimizer the suite runs: how to build it and what it needs from a task.

An :class:`OptimizerSpec` names the optimizer, builds it from a list of parameters and flat keyword
hyperparameters (the keys of ``configs/optimizer/<name>.yaml``), declares what it needs from a task beyond a
gradient (``"closure"``, ``"hessian"``, ``"model"``; see :class:`lodo.tasks.Task`), which tasks it supports, how many
loss/gradient evaluations one ``step()`` makes, and which hyperparameters the paper's tuner searches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lodo.optim.lodo import LODO


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    build: Callable[..., torch.optim.Optimizer]  # build(params, task, **hparams)
    tuned: tuple[str, ...]
    needs: frozenset[str] = frozenset()
    tasks: tuple[str, ...] | None = None  # None: every task that provides what it needs
    tasks_reason: str = ""
    evaluations_per_step: int = 1
    in_paper: bool = True
    description: str = ""


OPTIMIZERS: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    if spec.name in OPTIMIZERS:
        raise ValueError(f"optimizer {spec.name!r} is registered twice")
    OPTIMIZERS[spec.name] = spec
    return spec


def optimizer_spec(name: str) -> OptimizerSpec:
    """The spec registered under ``name``; an unknown name lists the valid ones."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[name]


def incompatibility(optimizer: str, task: str) -> str | None:
    """Why ``optimizer`` cannot run on ``task``, or ``None`` if the pair is valid."""
    from lodo.tasks import task_class

    spec, provides = optimizer_spec(optimizer), task_class(task).provides
    missing = sorted(spec.needs - provides)
    if missing:
        return f"{optimizer} needs {', '.join(missing)} from the task, which {task} does not provide"
    if spec.tasks is not None and task not in spec.tasks:
        return f"{optimizer} runs only on {', '.join(spec.tasks)}: {spec.tasks_reason}"
    return None


def check_compatible(optimizer: str, task: str) -> None:
    """Raise a ``ValueError`` naming the pair and the reason if ``optimizer`` cannot run on ``task``."""
    reason = incompatibility(optimizer, task)
    if reason:
        raise ValueError(f"optimizer {optimizer!r} cannot run on task {task!r}: {reason}")


def build_optimizer(name: str, params: list[torch.Tensor], task=None, **hparams) -> torch.optim.Optimizer:
    """Build the registered optimizer ``name`` over ``params`` with flat keyword hyperparameters."""
    return optimizer_spec(name).build(params, task, **hparams)


# --- LODO and its ablations (SPEC §2) ---------------------------------------------------------------------------


def _lodo(**fixed):
    def build(params, task, **hparams):
        return LODO(params, **{**fixed, **hparams})

    return build


_LODO_TUNED = ("lr", "meta_lr", "beta")
for _name, _fixed, _description in [
    ("lodo", {}, "LODO: block-diagonal × permutation preconditioner, meta-learned online"),
    ("lodo_diagonal", {"preconditioner": "diagonal"}, "LODO-Diagonal: a learned diagonal preconditioner"),
    ("lodo_global", {"preconditioner": "global"}, "LODO-Global: one learned step-size scalar"),
    ("lodo_residuals", {"preconditioner": "residual"}, "LODO-Residuals: 64 residual permutation layers"),
    ("lodo_no_momentum", {"beta": 0.0}, "LODO-No-Momentum: β = 0"),
    ("lodo_sgd", {"meta_optimizer": "sgd"}, "LODO-SGD: plain SGD as the meta-optimizer"),
]:
    register(
        OptimizerSpec(
            _name,
            _lodo(**_fixed),
            tuple(t for t in _LODO_TUNED if t not in _fixed),
            description=_description,
        )
    )


# --- torch.optim baselines with the paper's Keras conventions (reference §3.1–3.3) -------------------------------


def _adam(params, task, lr=1e-3, beta_1=0.9, beta_2=0.999, eps=1e-7):
    return torch.optim.Adam(params, lr=lr, betas=(beta_1, beta_2), eps=eps)


def _momentum(params, task, lr=0.01, momentum=0.0):
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def _rmsprop(params, task, lr=1e-3, rho=0.9, momentum=0.0, eps=1e-7):
    return torch.optim.RMSprop(params, lr=lr, alpha=rho, momentum=momentum, eps=eps)


register(OptimizerSpec("adam", _adam, ("lr", "beta_1", "beta_2"), description="Adam (torch.optim, ε = 1e-7)"))
register(OptimizerSpec("momentum", _momentum, ("lr", "momentum"), description="heavy-ball momentum SGD (torch.optim)"))
register(OptimizerSpec("rmsprop", _rmsprop, ("lr", "rho", "momentum"), description="RMSprop (torch.optim, ε = 1e-7)"))
