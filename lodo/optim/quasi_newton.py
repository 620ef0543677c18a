"""Quasi-Newton baselines of the paper's noisy-quadratic comparison (METHODS.md §A.3.6, §A.3.7, §A.3.10, §A.3.11).

* :class:`LBFGSNoLineSearch` — online L-BFGS without a line search (Schraudolph, Yu & Günter 2007), scaled by
  the newest curvature pair (METHODS.md §7.4).
* :class:`OLBFGS` — the same with Schraudolph et al.'s averaged scaling over the whole memory.
* :class:`BFGS` — a dense inverse-Hessian approximation with a fixed step (small n only).
* :class:`LevenbergMarquardt` — damped Newton steps with the task's exact Hessian (small n only).

Like LODO, each optimizer treats all of its parameters as one flat vector x ∈ ℝⁿ (one parameter group, one
dtype, one device) and keeps its state under the first parameter. The two L-BFGS variants need a closure that
re-evaluates the loss on the same minibatch: they call it twice per ``step()`` (two "steps" of the paper's
budget, METHODS.md §A.1.2). :func:`two_loop_recursion` (the L-BFGS direction) and :func:`bfgs_inverse_update_`
(the BFGS update) are exposed for tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer

from lodo.optim.flat import add_flat, flat_grad


def _single_group(optimizer: Optimizer) -> list[torch.Tensor]:
    if len(optimizer.param_groups) != 1:
        raise ValueError(f"{type(optimizer).__name__} treats all parameters as one vector: pass one parameter group")
    params = optimizer.param_groups[0]["params"]
    if len({(p.dtype, p.device) for p in params}) != 1:
        raise ValueError(f"{type(optimizer).__name__} needs all parameters on one device with one dtype")
    return params


def _require_closure(optimizer: Optimizer, closure) -> None:
    if closure is None:
        raise ValueError(
            f"{type(optimizer).__name__}.step needs a closure that zeroes the gradients, evaluates the loss "
            "on the current minibatch, calls backward() and returns the loss"
        )


def two_loop_recursion(
    grad: torch.Tensor, s: list[torch.Tensor], y: list[torch.Tensor], scale: float | torch.Tensor
) -> torch.Tensor:
    r"""The L-BFGS direction p = −H̃g from pairs (s_i, y_i), oldest first, and an initial scale γ (H̃₀ = γI).

    The reference's loop (METHODS.md §A.3.6, steps 2–5), which is Nocedal's two-loop recursion::

        p ← −g
        for i = newest … oldest:  α_i ← (s_i·p)/(s_i·y_i);  p ← p − α_i y_i
        p ← γ p
        for i = oldest … newest:  b ← (y_i·p)/(y_i·s_i);    p ← p + (α_i − b) s_i

    With exact pairs y_i = H s_i of n H-conjugate steps, p = −H⁻¹g for any γ.
    """
    p = -grad
    alphas = []
    for s_i, y_i in zip(reversed(s), reversed(y), strict=True):
        alpha = torch.dot(s_i, p) / torch.dot(s_i, y_i)
        p = p - alpha * y_i
        alphas.append(alpha)
    p = scale * p
    for s_i, y_i, alpha in zip(s, y, reversed(alphas), strict=True):
        b = torch.dot(y_i, p) / torch.dot(y_i, s_i)
        p = p + (alpha - b) * s_i
    return p


@torch.no_grad()
def bfgs_inverse_update_(inverse_hessian: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""The BFGS update of a symmetric inverse-Hessian approximation Ĥ, in place, for the pair (s, y)::

        ρ ← s·y;   Ĥ ← Ĥ + ((ρ + yᵀĤy)/ρ²) s sᵀ − (Ĥy sᵀ + s yᵀĤ)/ρ

    Afterwards Ĥ y = s (the secant equation). A pair with ρ = 0 leaves Ĥ unchanged (the update is undefined).
    """
    rho = torch.dot(s, y)
    if rho == 0:
        return inverse_hessian
    hy = inverse_hessian @ y
    inverse_hessian.add_(torch.outer(s, s), alpha=float((rho + torch.dot(y, hy)) / rho**2))
    inverse_hessian.sub_((torch.outer(hy, s) + torch.outer(s, hy)) / rho)
    return inverse_hessian


class LBFGSNoLineSearch(Optimizer):
    r"""Online L-BFGS without a line search (Schraudolph, Yu & Günter 2007; METHODS.md §A.3.6).

    Each ``step(closure)`` makes two evaluations on the same minibatch::

        input: η₀ (eta_0), τ (tau), ε (epsilon), memory M;  t = 0, empty pair buffer
        g  ← ∇f(x_t; batch)                               # closure() #1, its loss is returned
        γ  ← ε if t = 0 else (s_{t−1}·y_{t−1})/(y_{t−1}·y_{t−1})     # the NEWEST pair (METHODS.md §7.4)
        p  ← two_loop_recursion(g, last M pairs, γ)       # ≈ −H⁻¹ g
        s_t ← η₀ τ/(τ + t) · p;   x_{t+1} ← x_t + s_t
        g′ ← ∇f(x_{t+1}; same batch)                      # closure() #2
        y_t ← g′ − g;  push (s_t, y_t), dropping the oldest beyond M;  t ← t + 1

    METHODS.md §7.4: the authors' code scaled by (s★·y_{t−1})/(y_{t−1}·y_{t−1}) where s★ was the *oldest* buffered s
    (a variable left over from the first loop); this implementation uses the newest pair, as the method
    intends. As in the reference there is no curvature safeguard (s·y > 0 is not checked), so negative
    curvature can make the iterates diverge, which the training loop records as a result; only a pair with
    s·y = 0 exactly, for which the update is undefined (0/0 in the reference), is not stored.

    Args:
        params: the parameters (one group; flattened together into x).
        eta_0: η₀, the initial step size of the 1/t-type gain schedule η₀ τ/(τ + t).
        tau: τ, the schedule's time constant.
        epsilon: ε, the scale of the very first step (no curvature pair exists yet).
        memory: M, the number of curvature pairs kept (48 in the paper's runs).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        eta_0: float = 1e-3,
        tau: float = 1e4,
        epsilon: float = 1e-10,
        memory: int = 48,
    ):
        if not eta_0 > 0:
            raise ValueError(f"Invalid eta_0 (η₀): {eta_0}; it must be positive")
        if not tau > 0:
            raise ValueError(f"Invalid tau (τ): {tau}; it must be positive")
        if not epsilon > 0:
            raise ValueError(f"Invalid epsilon (ε): {epsilon}; it must be positive")
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 1:
            raise ValueError(f"Invalid memory (M): {memory}; it must be a positive integer")
        super().__init__(params, dict(eta_0=eta_0, tau=tau, epsilon=epsilon, memory=memory))
        _single_group(self)

    def _scale(self, s: list[torch.Tensor], y: list[torch.Tensor]) -> torch.Tensor:
        return torch.dot(s[-1], y[-1]) / torch.dot(y[-1], y[-1])  # METHODS.md §7.4: the newest pair

    def _grad_difference(self, grad_new: torch.Tensor, grad: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return grad_new - grad

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        _require_closure(self, closure)
        group = self.param_groups[0]
        params = group["params"]
        state = self.state[params[0]]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["s"], state["y"] = [], []
        t = int(state["step"])
        s_list, y_list = state["s"], state["y"]

        with torch.enable_grad():
            loss = closure()
        grad = flat_grad(params)
        scale = self._scale(s_list, y_list) if s_list else group["epsilon"]
        direction = two_loop_recursion(grad, s_list, y_list, scale)
        step = group["eta_0"] * group["tau"] / (group["tau"] + t) * direction
        add_flat(params, step)
        with torch.enable_grad():
            closure()  # the same minibatch at x_{t+1}: an exact curvature pair on the noisy quadratic
        y = self._grad_difference(flat_grad(params), grad, step)
        if torch.dot(step, y) != 0:  # s·y = 0 (e.g. a zero step at an exact minimum) defines no update
            s_list.append(step)
            y_list.append(y)
        while len(s_list) > group["memory"]:
            s_list.pop(0)
            y_list.pop(0)
        state["step"] += 1
        return loss


class OLBFGS(LBFGSNoLineSearch):
    r"""O-LBFGS (Schraudolph, Yu & Günter 2007; METHODS.md §A.3.7): online L-BFGS with averaged scaling.

    Identical to :class:`LBFGSNoLineSearch` (two evaluations per ``step()`` on the same minibatch, gain
    η₀ τ/(τ + t), first step ε·(−g)) except for the initial inverse-Hessian scale and the curvature pair::

        γ   ← (1/m) Σ_{i=1..m} (s_i·y_i)/(y_i·y_i)   over the m = min(t, M) buffered pairs
        y_t ← g′ − g + λ s_t                          # λ = 0 in the paper's runs

    Args:
        params, eta_0, tau, epsilon, memory: as for :class:`LBFGSNoLineSearch`.
        lam: λ ≥ 0, Schraudolph et al.'s model-trust term added to y (fixed at 0 by the reference; not tuned).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        eta_0: float = 1e-3,
        tau: float = 1e4,
        epsilon: float = 1e-10,
        memory: int = 48,
        lam: float = 0.0,
    ):
        if not lam >= 0:
            raise ValueError(f"Invalid lam (λ): {lam}; it must be non-negative")
        super().__init__(params, eta_0=eta_0, tau=tau, epsilon=epsilon, memory=memory)
        for group in self.param_groups:
            group.setdefault("lam", lam)

    def _scale(self, s: list[torch.Tensor], y: list[torch.Tensor]) -> torch.Tensor:
        ratios = [torch.dot(s_i, y_i) / torch.dot(y_i, y_i) for s_i, y_i in zip(s, y, strict=True)]
        return torch.stack(ratios).mean()

    def _grad_difference(self, grad_new: torch.Tensor, grad: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        y = grad_new - grad
        lam = self.param_groups[0]["lam"]
        return y + lam * step if lam else y


class BFGS(Optimizer):
    r"""BFGS with a dense inverse-Hessian approximation Ĥ and a fixed step, no line search (METHODS.md §A.3.11).

    One gradient per ``step()``, as in the reference (its extra evaluation at x₀ is this class's first call)::

        input: lr, h0_scale;  Ĥ ← h0_scale · I (n×n)
        g ← ∇f(x_t)                                       # the closure's, or the caller's, fresh minibatch
        if t > 0:  y ← g − g_prev;  ρ ← s·y
                   Ĥ ← Ĥ + ((ρ + yᵀĤy)/ρ²) s sᵀ − (Ĥy sᵀ + s yᵀĤ)/ρ   # the standard BFGS inverse update
        s ← −lr · Ĥ g;   x_{t+1} ← x_t + s;   g_prev ← g

    The curvature pair mixes two minibatches (the reference draws a new batch for g′), and there is no
    curvature check (a pair with s·y = 0 exactly, where the update is undefined, is skipped). Deviation: Ĥ is
    kept in the parameters' dtype (float64 on the paper's small tasks), where the reference kept it in float32
    (METHODS.md §A.11.8). Memory and time are O(n²) per step: for small n only.

    Args:
        params: the parameters (one group; flattened together into x).
        lr: the fixed step size multiplying the quasi-Newton direction.
        h0_scale: Ĥ₀ = h0_scale · I.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 1e-2, h0_scale: float = 1.0):
        if not lr > 0:
            raise ValueError(f"Invalid lr: {lr}; it must be positive")
        if not h0_scale > 0:
            raise ValueError(f"Invalid h0_scale: {h0_scale}; it must be positive")
        super().__init__(params, dict(lr=lr, h0_scale=h0_scale))
        _single_group(self)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params = group["params"]
        grad = flat_grad(params)
        state = self.state[params[0]]
        if not state:
            state["step"] = torch.tensor(0.0)
            n = grad.numel()
            state["inverse_hessian"] = group["h0_scale"] * torch.eye(n, dtype=grad.dtype, device=grad.device)
        inverse_hessian = state["inverse_hessian"]
        if "prev_grad" in state:
            bfgs_inverse_update_(inverse_hessian, state["prev_step"], grad - state["prev_grad"])
        step = -group["lr"] * (inverse_hessian @ grad)
        add_flat(params, step)
        state["prev_grad"], state["prev_step"] = grad, step
        state["step"] += 1
        return loss


class LevenbergMarquardt(Optimizer):
    r"""Levenberg–Marquardt on the gradient's residual with the exact Hessian (METHODS.md §A.3.10).

    One evaluation per ``step(closure, hessian=H)``. The caller passes the exact n×n Hessian H of the loss at the
    current parameters on the minibatch the closure evaluates (:attr:`step_inputs` says so; the suite's training
    loop computes it with :meth:`lodo.tasks.Task.hessian` for the iteration's batch)::

        input: λ (lam);  per step: the closure and H = ∇²f(x_t; batch)
        g ← ∇f(x_t; batch)                               # closure(), or the gradient already in .grad
        x_{t+1} ← x_t − (H H + λ diag(H H))⁻¹ H g        # Fletcher's damping, constant λ

    λ → 0 gives Newton's step x − H⁻¹g; large λ a small, diagonally scaled gradient step. A singular system
    raises ``torch.linalg.LinAlgError``, which the training loop records as divergence.

    Args:
        params: the parameters (one group; flattened together into x, in the order of the Hessian's rows).
        lam: λ ≥ 0, the constant damping.

    Example::

        optimizer = LevenbergMarquardt([x], lam=1e-3)
        optimizer.step(closure, hessian=torch.autograd.functional.hessian(f, x.detach()))
    """

    # Keyword arguments of step() beyond the closure that the caller supplies, named as in a task's ``provides``
    # (lodo.tasks.Task): the training loop passes them, and the registry declares them as what the optimizer needs.
    step_inputs: frozenset[str] = frozenset({"hessian"})

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lam: float = 1.0):
        if not lam >= 0:
            raise ValueError(f"Invalid lam (λ): {lam}; it must be non-negative")
        super().__init__(params, dict(lam=lam))
        _single_group(self)

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], torch.Tensor] | None = None, hessian: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """One damped Newton step; ``hessian`` is the exact n×n Hessian at the current parameters (required)."""
        if not isinstance(hessian, torch.Tensor):
            raise ValueError(
                "LevenbergMarquardt.step needs hessian=: the exact n×n Hessian of the loss at the current "
                f"parameters on the closure's minibatch, as a tensor (got {type(hessian).__name__})"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params = group["params"]
        grad = flat_grad(params)
        hessian = hessian.detach().to(grad)
        n = grad.numel()
        if hessian.shape != (n, n):
            raise ValueError(f"hessian has shape {tuple(hessian.shape)}, expected ({n}, {n})")
        gram = hessian @ hessian
        system = gram + group["lam"] * torch.diag(torch.diagonal(gram))
        add_flat(params, -torch.linalg.solve(system, hessian @ grad))
        state = self.state[params[0]]
        state["step"] = state.get("step", torch.tensor(0.0)) + 1
        return loss
