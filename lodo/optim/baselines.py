"""The paper's other baselines (METHODS.md §A.3.4–A.3.12) and their registry entries.

Two small first-order optimizers live here because no library matches the reference closely enough:

* :class:`Yogi` — pytorch-optimizer's ``Yogi`` always bias-corrects both moments (its ``adam_debias`` switch
  only drops the first-moment correction) and starts the moments at 1e-6; the reference (METHODS.md §A.3.5) has no bias
  correction, zero initial moments and a fixed ε = 1e-3.
* :class:`LARS` — pytorch-optimizer's ``LARS`` skips the trust ratio (and the weight decay) for every
  parameter with ``ndim ≤ 1`` and multiplies it by a trust coefficient, so on the quadratic and on Rosenbrock
  (one vector each) it would be plain momentum SGD; the reference (METHODS.md §A.3.4) scales every layer group, with no
  trust coefficient.

The quasi-Newton baselines are in :mod:`lodo.optim.quasi_newton`, the learned LSTM optimizer in
:mod:`lodo.optim.l2l`. Registry convention used here: ``evaluations_per_step=0`` means "variable" (L-BFGS with
a line search evaluates as often as its line search needs; the training loop counts every evaluation as a
step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer

from lodo.optim.quasi_newton import BFGS, OLBFGS, LBFGSNoLineSearch, LevenbergMarquardt
from lodo.optim.registry import OptimizerSpec, register

VARIABLE_EVALUATIONS = 0  # OptimizerSpec.evaluations_per_step for optimizers whose count per step() varies


class Yogi(Optimizer):
    r"""Yogi (Zaheer et al. 2018) exactly as in the paper's code (METHODS.md §A.3.5): no bias correction, v₀ = 0.

    ::

        input: lr, β₁ (beta1), β₂ (beta2), ε = 1e-3 (fixed, not tuned);  m₀ = v₀ = 0
        m ← β₁ m + (1 − β₁) g
        v ← v − (1 − β₂) sign(v − g²) g²        # additive, sign-controlled second moment
        x ← x − lr · m / (√v + ε)

    Args:
        params: parameters or parameter groups.
        lr: step size.
        beta1, beta2: decay rates of the first and second moments, in [0, 1).
        eps: ε added to √v (the paper keeps it at 1e-3).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-3,
    ):
        if not lr > 0:
            raise ValueError(f"Invalid lr: {lr}; it must be positive")
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= beta < 1:
                raise ValueError(f"Invalid {name}: {beta}; it must lie in [0, 1)")
        if not eps > 0:
            raise ValueError(f"Invalid eps: {eps}; it must be positive")
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["beta1"], group["beta2"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
                grad_sq = grad * grad
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.addcmul_(torch.sign(exp_avg_sq - grad_sq), grad_sq, value=-(1 - beta2))
                p.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-group["lr"])
                state["step"] += 1
        return loss


class LARS(Optimizer):
    r"""LARS (You et al. 2017) as in the paper's code (METHODS.md §A.3.4), one trust ratio per parameter tensor.

    ::

        input: lr, μ (momentum), wd (weight_decay), optional decay_steps T;  v₀ = 0
        η_t ← lr · (1 − t/T)²  if T is set, else lr          # the reference's global schedule, optional here
        for each parameter tensor x_l with gradient g_l:
            λ_l ← ‖x_l‖ / (‖g_l‖ + wd ‖x_l‖)                  # local learning rate; no trust coefficient
            v_l ← μ v_l + η_t λ_l (g_l + wd x_l);   x_l ← x_l − v_l

    Differences from the reference: (1) the layer groups are torch's parameter tensors, where the reference
    grouped each (weight, bias) pair of the MNIST CNN and each coordinate of Rosenbrock; (2) λ_l = 1 where
    ‖x_l‖ = 0 or the denominator is 0 (the reference would freeze a zero-initialized tensor forever, or divide
    0 by 0); (3) the reference always multiplied lr by (1 − p)², p being the run's completed fraction of its
    milestones (the slower of steps and time); here that schedule is off unless ``decay_steps`` is given, and
    then p = t/T counts ``step()`` calls.

    Args:
        params: parameters or parameter groups.
        lr: the global learning rate.
        momentum: μ ∈ [0, 1).
        weight_decay: wd ≥ 0, added to the gradient and to the trust ratio's denominator.
        decay_steps: T, the length of the optional (1 − t/T)² schedule (``None``: constant lr).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        decay_steps: int | None = None,
    ):
        if not lr > 0:
            raise ValueError(f"Invalid lr: {lr}; it must be positive")
        if not 0 <= momentum < 1:
            raise ValueError(f"Invalid momentum: {momentum}; it must lie in [0, 1)")
        if not weight_decay >= 0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}; it must be non-negative")
        if decay_steps is not None and (isinstance(decay_steps, bool) or decay_steps < 1):
            raise ValueError(f"Invalid decay_steps: {decay_steps}; it must be a positive integer or None")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, decay_steps=decay_steps))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum, weight_decay, decay_steps = (
                group["momentum"],
                group["weight_decay"],
                group["decay_steps"],
            )
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["momentum_buffer"] = torch.zeros_like(p)
                lr = group["lr"]
                if decay_steps is not None:
                    lr = lr * max(0.0, 1.0 - float(state["step"]) / decay_steps) ** 2
                param_norm, grad_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                denominator = grad_norm + weight_decay * param_norm
                trust_ratio = torch.where(
                    (param_norm > 0) & (denominator > 0),
                    param_norm / denominator,
                    torch.ones_like(param_norm),
                )
                update = p.grad.add(p, alpha=weight_decay).mul_(trust_ratio * lr)
                buffer = state["momentum_buffer"]
                buffer.mul_(momentum).add_(update)
                p.sub_(buffer)
                state["step"] += 1
        return loss


# --- registry entries: a builder per optimizer (no defaults: configs/optimizer/<name>.yaml), then its spec ------

_SMALL_N = ("noisy_quadratic", "rosenbrock")


def _yogi(params, task, *, lr, beta_1, beta_2):
    return Yogi(params, lr=lr, beta1=beta_1, beta2=beta_2)


register(
    OptimizerSpec(
        name="yogi",
        label="Yogi",
        build=_yogi,
        tuned=("lr", "beta_1", "beta_2"),
        description="Yogi as in the paper's code: no bias correction, v₀ = 0, fixed ε = 1e-3 (METHODS.md §A.3.5)",
    )
)


def _lars(params, task, *, lr, momentum, weight_decay, decay_steps):
    return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay, decay_steps=decay_steps)


register(
    OptimizerSpec(
        name="lars",
        label="LARS",
        build=_lars,
        tuned=("lr", "momentum", "weight_decay"),
        description="LARS: trust ratio ‖x‖/(‖g‖ + wd‖x‖) per parameter tensor, heavy-ball momentum (METHODS.md §A.3.4)",
    )
)


def _lbfgs_no_line_search(params, task, *, eta_0, tau, epsilon, memory):
    return LBFGSNoLineSearch(params, eta_0=eta_0, tau=tau, epsilon=epsilon, memory=memory)


register(
    OptimizerSpec(
        name="lbfgs_no_line_search",
        label="L-BFGS-no-line-search",
        build=_lbfgs_no_line_search,
        tuned=("eta_0", "tau", "epsilon"),
        needs=frozenset({"closure"}),
        evaluations_per_step=2,
        description="online L-BFGS, no line search, scaled by the newest pair (METHODS.md §A.3.6, §7.4)",
    )
)


def _olbfgs(params, task, *, eta_0, tau, epsilon, memory):
    return OLBFGS(params, eta_0=eta_0, tau=tau, epsilon=epsilon, memory=memory)


register(
    OptimizerSpec(
        name="olbfgs",
        label="O-LBFGS",
        build=_olbfgs,
        tuned=("eta_0", "tau", "epsilon"),
        needs=frozenset({"closure"}),
        evaluations_per_step=2,
        description="O-LBFGS (Schraudolph et al. 2007): online L-BFGS with averaged scaling (METHODS.md §A.3.7)",
    )
)


def _bfgs(params, task, *, lr, h0_scale):
    return BFGS(params, lr=lr, h0_scale=h0_scale)


register(
    OptimizerSpec(
        name="bfgs",
        label="BFGS",
        build=_bfgs,
        tuned=("lr", "h0_scale"),
        tasks=_SMALL_N,
        tasks_reason="it keeps a dense n×n inverse-Hessian approximation (the paper ran it on the quadratic)",
        description="BFGS: dense inverse-Hessian update, fixed step, no line search (METHODS.md §A.3.11)",
    )
)


def _levenberg_marquardt(params, task, *, lam):
    return LevenbergMarquardt(params, lam=lam)  # the training loop passes step(closure, hessian=...)


register(
    OptimizerSpec(
        name="levenberg_marquardt",
        label="Levenberg-Marquardt",
        build=_levenberg_marquardt,
        tuned=("lam",),
        needs=LevenbergMarquardt.step_inputs,  # {"hessian"}: the exact Hessian, passed to every step()
        description="Levenberg–Marquardt with the exact Hessian: x − (HH + λ diag HH)⁻¹Hg (METHODS.md §A.3.10)",
    )
)


def _lbfgs(params, task, *, lr, history_size, max_iter, max_line_search):
    """torch.optim.LBFGS with a strong-Wolfe line search; ``max_iter`` L-BFGS iterations per ``step()`` call.

    With ``max_iter=1`` (the config's value) the training loop records one row per L-BFGS iteration and its
    milestones work as for every other optimizer. The price: each ``step()`` starts by evaluating the closure
    at the point where the previous line search stopped, which on a deterministic task repeats an evaluation
    the line search already made (at most one extra evaluation per iteration; every evaluation is counted as a
    step).
    """
    return torch.optim.LBFGS(
        params,
        lr=lr,
        max_iter=max_iter,
        max_eval=max_iter * (max_line_search + 1),  # torch caps the line search at max_eval − evaluations so far
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )


register(
    OptimizerSpec(
        name="lbfgs",
        label="L-BFGS",
        build=_lbfgs,
        tuned=("lr",),
        needs=frozenset({"closure"}),
        tasks=_SMALL_N,
        tasks_reason=(
            "a strong-Wolfe line search assumes a deterministic objective and costs a variable number "
            "of evaluations per iteration; the paper's code never ran it (METHODS.md §A.3.8) and found "
            "L-BFGS types diverge on MNIST"
        ),
        evaluations_per_step=VARIABLE_EVALUATIONS,
        in_paper=False,
        description="torch.optim.LBFGS, strong-Wolfe line search, 1 iteration per step(); not in the paper",
    )
)


def _l2lbgdbgd(params, task, *, weights):
    from lodo.optim.l2l import L2LOptimizer  # imported here so `python -m lodo.optim.l2l` runs cleanly

    return L2LOptimizer(params, weights=weights)


register(
    OptimizerSpec(
        name="l2lbgdbgd",
        label="L2LBGDBGD",
        build=_l2lbgdbgd,
        tuned=(),
        description="L2LBGDBGD: coordinate-wise LSTM optimizer meta-trained on noisy quadratics (METHODS.md §A.3.12)",
    )
)
