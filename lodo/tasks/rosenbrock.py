"""The paper's rescaled two-dimensional Rosenbrock function (METHODS.md §3)."""

from __future__ import annotations

import torch

from lodo.tasks.base import Task


class Rosenbrock(Task):
    """f(x, y) = 0.01·(1 − x)² + (y − x²)², the standard Rosenbrock divided by 100; deterministic.

    Starts at (−0.5, 2) where f = 3.085 (0.0225 + 3.0625; METHODS.md §3.2); the minimum is
    f(1, 1) = 0. The position after each step is tracked as the metrics ``x`` and ``y`` for the trajectory figure.
    """

    name = "rosenbrock"
    provides = frozenset({"closure", "hessian"})
    default_dtype = torch.float64
    start = (-0.5, 2.0)
    minimum = (1.0, 1.0)

    def __init__(self, seed: int = 0, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
        self.xy = torch.tensor(self.start, dtype=dtype or self.default_dtype, device=device, requires_grad=True)

    @staticmethod
    def function(x, y):
        """The function itself, on tensors or arrays (used by the heat map too)."""
        return 0.01 * (1 - x) ** 2 + (y - x**2) ** 2

    def parameters(self) -> list[torch.Tensor]:
        return [self.xy]

    def sample_batch(self) -> None:
        return None

    def loss_at(self, values: list[torch.Tensor], batch: None) -> torch.Tensor:
        (xy,) = values
        return self.function(xy[0], xy[1])

    def loss(self, batch: None) -> torch.Tensor:
        return self.loss_at([self.xy], batch)

    def metric_names(self, optimizer=None) -> list[str]:
        return ["x", "y"]

    def metrics(self, optimizer=None) -> dict[str, float]:
        x, y = self.xy.detach().tolist()
        return {"x": x, "y": y}
