"""All of an optimizer's parameters as one flat vector x ∈ ℝⁿ (LODO and the quasi-Newton baselines, METHODS.md §1)."""

from __future__ import annotations

import torch


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    """The gradients of ``params`` as one vector (zeros for a parameter without one)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


@torch.no_grad()
def add_flat(params: list[torch.Tensor], delta: torch.Tensor, alpha: float = 1.0) -> None:
    """x ← x + alpha·delta for the flat vector ``delta``, in place, parameter by parameter."""
    chunks = delta.split([p.numel() for p in params])
    torch._foreach_add_(params, [c.view_as(p) for c, p in zip(chunks, params, strict=True)], alpha=alpha)
