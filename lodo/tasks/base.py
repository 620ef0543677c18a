"""The small interface between a task and the training loop.

A task owns its parameters (a list of leaf tensors, or an ``nn.Module``), draws minibatches, and evaluates a
differentiable loss on a given minibatch at the current parameters. The loop never looks inside a batch: it asks
for a fresh one with :meth:`Task.sample_batch` and hands the same object back to :meth:`Task.loss` whenever an
optimizer's closure re-evaluates "on the same batch" (METHODS.md §A.1.3). Tracked metrics are evaluated by
:meth:`Task.metrics`, which the loop keeps off the training clock.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Task:
    """Base class of every task.

    Subclasses set ``name`` and ``provides`` and implement :meth:`parameters`, :meth:`sample_batch` and
    :meth:`loss`. ``provides`` lists what the task can give an optimizer beyond a gradient: ``"closure"``
    (re-evaluation on the same batch), ``"hessian"`` (the exact Hessian, :meth:`hessian`, which the training loop
    passes to ``optimizer.step(closure, hessian=...)`` for the iteration's batch when the optimizer's class names it
    in ``step_inputs``) and ``"model"`` (an ``nn.Module`` whose layers can be hooked, :attr:`model`). What an
    optimizer needs of these is declared in the registry (:class:`lodo.optim.registry.OptimizerSpec`).
    """

    name: ClassVar[str]
    provides: ClassVar[frozenset[str]] = frozenset({"closure"})
    default_dtype: ClassVar[torch.dtype] = torch.float64
    model: nn.Module | None = None

    def parameters(self) -> list[torch.Tensor]:
        """The trainable leaf tensors, in a fixed order (the order of the paper's flat vector)."""
        raise NotImplementedError

    def sample_batch(self) -> Any:
        """Draw the randomness of one evaluation (a fresh minibatch, or noise) and return it."""
        raise NotImplementedError

    def loss(self, batch: Any) -> torch.Tensor:
        """The scalar training loss at the current parameters on ``batch``; differentiable."""
        raise NotImplementedError

    def metrics(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
        """Tracked quantities (validation loss, Hessian error, ...), evaluated off the training clock."""
        return {}

    def metric_names(self, optimizer: torch.optim.Optimizer | None = None) -> list[str]:
        """Names of the columns :meth:`metrics` returns for this optimizer (used as CSV headers)."""
        return []

    def final_metrics(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
        """Metrics evaluated once after training (e.g. MNIST test loss); stored in the run's summary."""
        return {}

    def save_artifacts(self, directory) -> dict[str, str]:
        """Write pictures of the trained task (e.g. generated samples) into ``directory``; return name → path."""
        return {}

    def state_dict(self) -> dict:
        """What changes during training: the parameters and the task's random generator (for checkpoints)."""
        state = {"parameters": [p.detach().clone() for p in self.parameters()]}
        if getattr(self, "generator", None) is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for parameter, value in zip(self.parameters(), state["parameters"], strict=True):
                parameter.copy_(value)
        if "generator" in state:
            self.generator.set_state(state["generator"])

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def hessian(self, batch: Any) -> torch.Tensor:
        """The exact n×n Hessian of the loss on ``batch`` w.r.t. the flat parameter vector (small n only)."""
        params = self.parameters()
        sizes = [p.numel() for p in params]

        def loss_of_flat(x: torch.Tensor) -> torch.Tensor:
            return self.loss_at([c.view_as(p) for c, p in zip(x.split(sizes), params)], batch)

        flat = torch.cat([p.detach().reshape(-1) for p in params])
        return torch.autograd.functional.hessian(loss_of_flat, flat)

    def loss_at(self, values: list[torch.Tensor], batch: Any) -> torch.Tensor:
        """The loss with the parameters replaced by ``values``; needed only by tasks that provide a Hessian."""
        raise NotImplementedError(f"{type(self).__name__} does not provide an exact Hessian")
