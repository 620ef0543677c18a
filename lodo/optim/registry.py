"""One registry of every optimizer the suite runs: how to build it and what it needs from a task.

An :class:`OptimizerSpec` names the optimizer and its display label, builds it from a list of parameters and flat
keyword hyperparameters (the keys of ``configs/optimizer/<name>.yaml``), declares what it needs from a task beyond a
gradient (``"closure"``, ``"hessian"``, ``"model"``; see :class:`lodo.tasks.Task`), which tasks it supports, how many
loss/gradient evaluations one ``step()`` makes, and which hyperparameters the paper's tuner searches.

One style everywhere (here, in :mod:`lodo.optim.baselines` and in :mod:`lodo.optim.modern`): each optimizer is a
small builder followed by its ``register(OptimizerSpec(...))`` call. A builder takes ``(params, task)`` and then
exactly the keys of its config file as keyword-only arguments, with no defaults of its own: the suite's
generation-0 values live only in ``configs/optimizer/<name>.yaml`` (:func:`config_values`), and the optimizer
classes keep torch-style constructor defaults as library API (``tests/test_optimizer_defaults.py`` checks that
the three agree, or lists why not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lodo.optim.lodo import LODO


@dataclass(frozen=True)
class OptimizerSpec:
    name: str  # the registry name: configs/optimizer/<name>.yaml, `optimizer=<name>` on the command line
    label: str  # the display name in figures, tables and reports (the paper's, e.g. "LODO-Diagonal")
    build: Callable[..., torch.optim.Optimizer]  # build(params, task, **hparams), hparams = the config's keys
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


def optimizer_label(name: str) -> str:
    """The display label of the registered optimizer ``name`` (e.g. ``"LODO-Diagonal"``); any other name as is."""
    try:
        return optimizer_spec(name).label
    except ValueError:
        return name


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


def config_values(name: str) -> dict:
    """The generation-0 hyperparameters of optimizer ``name``: ``configs/optimizer/<name>.yaml`` without its
    ``name`` key (empty for an optimizer without a config file)."""
    from omegaconf import OmegaConf

    from lodo.paths import configs_dir

    path = configs_dir() / "optimizer" / f"{name}.yaml"
    if not path.is_file():
        return {}
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    values.pop("name", None)
    return values


def build_optimizer(name: str, params: list[torch.Tensor], task=None, **hparams) -> torch.optim.Optimizer:
    """Build the registered optimizer ``name`` over ``params`` with flat keyword hyperparameters.

    ``hparams`` override the generation-0 values of ``configs/optimizer/<name>.yaml`` (:func:`config_values`); a
    run passes its whole resolved ``optimizer`` config, so nothing is filled in for it.
    """
    spec = optimizer_spec(name)
    return spec.build(params, task, **{**config_values(name), **hparams})


# --- LODO and its ablations (METHODS.md §2) ---------------------------------------------------------------------
# ``options``: LODO's keyword arguments that are not in the configs (seed, backend, state_dtype, fused, compile),
# e.g. `+optimizer.backend=torch` on the command line.

_LODO_TUNED = ("lr", "meta_lr", "beta")


def _lodo(params, task, *, lr, meta_lr, beta, depth, block_size, **options):
    return LODO(params, lr=lr, meta_lr=meta_lr, beta=beta, depth=depth, block_size=block_size, **options)


register(
    OptimizerSpec(
        name="lodo",
        label="LODO",
        build=_lodo,
        tuned=_LODO_TUNED,
        description="LODO: block-diagonal × permutation preconditioner, meta-learned online",
    )
)


def _lodo_diagonal(params, task, *, lr, meta_lr, beta, **options):
    return LODO(params, preconditioner="diagonal", lr=lr, meta_lr=meta_lr, beta=beta, **options)


register(
    OptimizerSpec(
        name="lodo_diagonal",
        label="LODO-Diagonal",
        build=_lodo_diagonal,
        tuned=_LODO_TUNED,
        description="LODO-Diagonal: a learned diagonal preconditioner",
    )
)


def _lodo_global(params, task, *, lr, meta_lr, beta, **options):
    return LODO(params, preconditioner="global", lr=lr, meta_lr=meta_lr, beta=beta, **options)


register(
    OptimizerSpec(
        name="lodo_global",
        label="LODO-Global",
        build=_lodo_global,
        tuned=_LODO_TUNED,
        description="LODO-Global: one learned step-size scalar",
    )
)


def _lodo_residuals(params, task, *, lr, meta_lr, beta, depth, **options):
    return LODO(params, preconditioner="residual", lr=lr, meta_lr=meta_lr, beta=beta, depth=depth, **options)


register(
    OptimizerSpec(
        name="lodo_residuals",
        label="LODO-Residuals",
        build=_lodo_residuals,
        tuned=_LODO_TUNED,
        description="LODO-Residuals: 64 residual permutation layers",
    )
)


def _lodo_no_momentum(params, task, *, lr, meta_lr, depth, block_size, **options):
    return LODO(params, beta=0.0, lr=lr, meta_lr=meta_lr, depth=depth, block_size=block_size, **options)


register(
    OptimizerSpec(
        name="lodo_no_momentum",
        label="LODO-No-Momentum",
        build=_lodo_no_momentum,
        tuned=("lr", "meta_lr"),
        description="LODO-No-Momentum: β = 0",
    )
)


def _lodo_sgd(params, task, *, lr, meta_lr, beta, depth, block_size, **options):
    return LODO(
        params, meta_optimizer="sgd", lr=lr, meta_lr=meta_lr, beta=beta, depth=depth, block_size=block_size, **options
    )


register(
    OptimizerSpec(
        name="lodo_sgd",
        label="LODO-SGD",
        build=_lodo_sgd,
        tuned=_LODO_TUNED,
        description="LODO-SGD: plain SGD as the meta-optimizer",
    )
)


# --- torch.optim baselines with the paper's Keras conventions (METHODS.md §A.3.1–A.3.3) -------------------------------


def _adam(params, task, *, lr, beta_1, beta_2):
    return torch.optim.Adam(params, lr=lr, betas=(beta_1, beta_2), eps=1e-7)  # Keras's ε, not torch's 1e-8


register(
    OptimizerSpec(
        name="adam",
        label="Adam",
        build=_adam,
        tuned=("lr", "beta_1", "beta_2"),
        description="Adam (torch.optim, ε = 1e-7)",
    )
)


def _momentum(params, task, *, lr, momentum):
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


register(
    OptimizerSpec(
        name="momentum",
        label="Momentum",
        build=_momentum,
        tuned=("lr", "momentum"),
        description="heavy-ball momentum SGD (torch.optim)",
    )
)


def _rmsprop(params, task, *, lr, rho, momentum):
    return torch.optim.RMSprop(params, lr=lr, alpha=rho, momentum=momentum, eps=1e-7)  # Keras's ε


register(
    OptimizerSpec(
        name="rmsprop",
        label="RMSprop",
        build=_rmsprop,
        tuned=("lr", "rho", "momentum"),
        description="RMSprop (torch.optim, ε = 1e-7)",
    )
)


# The other optimizers register themselves as their modules load. Importing them here, last, gives whoever imports
# the registry every optimizer, while `import lodo` / `from lodo import LODO` (which do not import the registry)
# load LODO alone.
from lodo.optim import baselines, modern  # noqa: E402, F401
