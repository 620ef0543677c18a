"""SGD-HD: SGD with hypergradient descent on the learning rate (Baydin et al., ICLR 2018), a baseline.

Not in the paper, and not part of LODO (LODO's own hypergradient step is in :mod:`lodo.optim.lodo`): a modern
relative of LODO-Global (METHODS.md §2), which also learns one global step size online from a one-step
hypergradient, but with plain SGD on α instead of Adam on a scalar preconditioner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer


class SGDHD(Optimizer):
    r"""SGD-HD: (momentum) SGD whose learning rate α follows the one-step hypergradient of the loss.

    One learning rate per parameter group, shared by all its parameters (Baydin et al. 2018, "SGD-HD"; with
    ``momentum > 0`` it is the heavy-ball form of their SGDN-HD)::

        input: α₀ (lr), β_hd (hypergrad_lr), μ (momentum)
        d₀ = 0
        for t = 1, 2, …  (g_t = ∇f_t(x_{t−1}) computed by the caller)
            α_t ← α_{t−1} + β_hd ⟨g_t, d_{t−1}⟩   # ∂f_t(x_{t−1})/∂α_{t−1} = −⟨g_t, d_{t−1}⟩
            d_t ← μ d_{t−1} + g_t                 # d_t = g_t when μ = 0 (torch.optim.SGD's buffer)
            x_t ← x_{t−1} − α_t d_t

    Since x_{t−1} = x_{t−2} − α_{t−1} d_{t−1}, the hypergradient is −⟨g_t, d_{t−1}⟩. The first step has no
    previous direction and leaves α unchanged. As in the paper, the dependence of d_{t−1} on α through earlier
    steps is ignored. The current α is kept in ``param_groups[i]["lr"]``, so it is visible to loggers and
    round-trips through ``state_dict()``; d_{t−1} is the ``momentum_buffer``.

    Args:
        params: the parameters to optimize, or parameter groups (each group learns its own α).
        lr: α₀, the initial learning rate.
        hypergrad_lr: β_hd, the step size of the descent on α (Baydin et al. use 1e-3 for SGD-HD).
        momentum: heavy-ball momentum μ ∈ [0, 1).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        hypergrad_lr: float = 1e-3,
        momentum: float = 0.0,
    ):
        if not lr >= 0:
            raise ValueError(f"Invalid lr (α₀): {lr}; it must be non-negative")
        if not hypergrad_lr >= 0:
            raise ValueError(f"Invalid hypergrad_lr (β_hd): {hypergrad_lr}; it must be non-negative")
        if not 0 <= momentum < 1:
            raise ValueError(f"Invalid momentum: {momentum}; it must lie in [0, 1)")
        super().__init__(params, dict(lr=lr, hypergrad_lr=hypergrad_lr, momentum=momentum))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            grads = [p.grad for p in params]
            if all("momentum_buffer" in s for s in states):
                # ∂f_t(x_{t−1})/∂α_{t−1} = −⟨g_t, d_{t−1}⟩; one descent step on α with rate β_hd.
                hypergradient = -float(sum(torch.sum(g * s["momentum_buffer"]) for g, s in zip(grads, states)))
                group["lr"] = group["lr"] - group["hypergrad_lr"] * hypergradient
            for p, g, s in zip(params, grads, states, strict=True):
                if "momentum_buffer" not in s:
                    s["momentum_buffer"] = g.clone()
                else:
                    s["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(s["momentum_buffer"], alpha=-group["lr"])
        return loss
