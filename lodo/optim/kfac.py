"""K-FAC (Martens & Grosse, ICML 2015) for an ``nn.Module`` as a ``torch.optim.Optimizer``; not in the paper.

METHODS.md §4 asks for K-FAC as an extra baseline on the CNN. Convolutions follow the KFC convention of Grosse &
Martens (ICML 2016), and grouped/depthwise convolutions get one pair of Kronecker factors per group, batched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer

FISHER_TYPES = ("mc", "empirical")
_UNFOLD_CHUNK = 1 << 24  # elements per chunk of unfolded patches (64 MiB in float32), to bound peak memory


@dataclass(eq=False)
class KFACLayer:
    """One preconditioned layer: a ``Linear``, or a zero-padded ``Conv2d`` with ``groups`` blocks.

    The weight of group g, viewed as a matrix W_g of shape (out/groups, in/groups·kh·kw), with the bias b_g
    appended as a last column when it is trained: the gradient of [W_g, b_g] is Σ_t g_t a_tᵀ over spatial
    positions t, with a_t the input patch (plus a homogeneous 1) and g_t the gradient w.r.t. the layer's
    output at t.
    """

    name: str
    module: nn.Module
    groups: int
    has_bias: bool
    # Sums over the minibatch being captured: Σ_n (1/T) Σ_t p pᵀ, Σ_n (1/T) Σ_t p, examples, Σ_n Σ_t g̃ g̃ᵀ.
    patch_outer: torch.Tensor | None = None
    patch_sum: torch.Tensor | None = None
    input_count: int = 0
    grad_outer: torch.Tensor | None = None
    grad_count: int = 0
    outputs: list[torch.Tensor] = field(default_factory=list)  # outputs kept for the Monte-Carlo backward

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    def clear(self) -> None:
        self.patch_outer = self.patch_sum = self.grad_outer = None
        self.input_count = self.grad_count = 0
        self.outputs = []

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """Input patches, shape (N, groups, in/groups·kh·kw, T), in the weight's flattening order."""
        m = self.module
        if isinstance(m, nn.Linear):  # extra leading dimensions are treated as positions
            return x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2).unsqueeze(1)
        n = x.shape[0]
        if m.kernel_size == (1, 1) and m.stride == (1, 1) and _conv_padding(m) == (0, 0):
            return x.reshape(n, self.groups, -1, x.shape[2] * x.shape[3])
        unfolded = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=_conv_padding(m), stride=m.stride)
        return unfolded.view(n, self.groups, -1, unfolded.shape[-1])  # channels are group-major, as the weight

    def accumulate_inputs(self, x: torch.Tensor) -> None:
        chunk = max(1, _UNFOLD_CHUNK // max(1, x[:1].numel() * _kernel_area(self.module)))
        for xs in x.split(chunk):
            p = self.patches(xs)  # (n, γ, d, T)
            positions = p.shape[-1]
            flat = p.permute(1, 2, 0, 3).reshape(p.shape[1], p.shape[2], -1)  # (γ, d, n·T)
            outer = torch.bmm(flat, flat.transpose(1, 2)) / positions
            total = flat.sum(-1) / positions
            self.patch_outer = outer if self.patch_outer is None else self.patch_outer + outer
            self.patch_sum = total if self.patch_sum is None else self.patch_sum + total
            self.input_count += p.shape[0]

    def accumulate_output_grads(self, grad: torch.Tensor, scale: float) -> None:
        """Add Σ_n Σ_t g̃ g̃ᵀ for per-example output gradients g̃ = ``scale`` · ``grad``."""
        n = grad.shape[0]
        if isinstance(self.module, nn.Linear):
            g = grad.reshape(n, -1, grad.shape[-1]).transpose(1, 2).unsqueeze(1)
        else:
            g = grad.reshape(n, self.groups, grad.shape[1] // self.groups, -1)
        flat = g.permute(1, 2, 0, 3).reshape(g.shape[1], g.shape[2], -1)  # (γ, out/γ, n·T)
        outer = torch.bmm(flat, flat.transpose(1, 2)) * scale**2
        self.grad_outer = outer if self.grad_outer is None else self.grad_outer + outer
        self.grad_count += n

    def batch_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This minibatch's A = E_n[(1/T) Σ_t a aᵀ] with a = [p; 1] and G = E_n[Σ_t g̃ g̃ᵀ], each (γ, ·, ·)."""
        a = self.patch_outer
        if self.has_bias:
            s = self.patch_sum.unsqueeze(-1)
            corner = torch.full_like(s[:, :1], float(self.input_count))
            a = torch.cat([torch.cat([a, s], -1), torch.cat([s.transpose(1, 2), corner], -1)], 1)
        return a / self.input_count, self.grad_outer / self.grad_count

    def gradient_matrix(self) -> torch.Tensor:
        """The gradient as the batched matrix V = [∇W_g, ∇b_g], shape (γ, out/γ, d (+1))."""
        w = self.weight.grad.reshape(self.groups, self.weight.shape[0] // self.groups, -1)
        if not self.has_bias:
            return w
        return torch.cat([w, self.module.bias.grad.reshape(self.groups, -1, 1)], -1)

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Undo :meth:`gradient_matrix`: the (weight, bias) tensors of a (γ, out/γ, d (+1)) matrix."""
        if not self.has_bias:
            return [v.reshape(self.weight.shape)]
        return [v[..., :-1].reshape(self.weight.shape), v[..., -1].reshape(self.module.bias.shape)]

    def parameters(self) -> list[torch.Tensor]:
        return [self.weight, self.module.bias] if self.has_bias else [self.weight]


def _conv_padding(m: nn.Conv2d) -> tuple[int, int]:
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size, strict=True))
    return tuple(m.padding)


def _kernel_area(m: nn.Module) -> int:
    return m.kernel_size[0] * m.kernel_size[1] if isinstance(m, nn.Conv2d) else 1


def _supported(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    if type(m) is not nn.Conv2d or m.padding_mode != "zeros":
        return False
    # "same" padding with an even effective kernel pads asymmetrically, which unfold cannot express.
    return m.padding != "same" or all(d * (k - 1) % 2 == 0 for d, k in zip(m.dilation, m.kernel_size, strict=True))


class KFAC(Optimizer):
    r"""K-FAC: momentum SGD on the gradient preconditioned by a damped Kronecker-factored Fisher, per layer.

    For each ``nn.Linear`` and ``nn.Conv2d`` layer (grouped and depthwise included: one factor pair per
    group), with a the input (conv: the input patch at position t, KFC) plus a homogeneous 1 for the bias, g̃
    the per-example gradient of the loss w.r.t. the layer's output, N the batch size and T the positions::

        input: α (lr), λ (damping), μ (momentum), ε (factor_decay), κ (kl_clip), intervals T_f, T_inv
        every T_f steps:   A ← ε A + (1 − ε) (1/N) Σ_n (1/T) Σ_t a aᵀ   # first update: A ← the batch value
                           G ← ε G + (1 − ε) (1/N) Σ_n Σ_t g̃ g̃ᵀ         # and the same for G
        every T_inv steps: π = √((tr A / dim A) / (tr G / dim G))       # Martens & Grosse §6.3, per group
                           Ā⁻¹ ← (A + π√λ I)⁻¹,  Ḡ⁻¹ ← (G + √λ/π I)⁻¹
        each step:         Δ = Ḡ⁻¹ [∇W, ∇b] Ā⁻¹                         # = (Ā ⊗ Ḡ)⁻¹ vec[∇W, ∇b]
                           ν = min(1, √(κ / (α² Σ_layers ⟨Δ, ∇⟩)))      # KL clipping (Ba et al. 2017)
                           d ← μ d + ν Δ;   x ← x − α d                 # d₀ = 0, as torch.optim.SGD

    With ``kl_clip=None``, ν = 1. Parameters of the optimizer that no supported layer owns (other layer types,
    free ``nn.Parameter``\ s, ``padding_mode != "zeros"``) take Δ = ∇, the plain gradient, in the same
    momentum rule, without clipping.

    Conventions, stated because they change the meaning of λ and α:

    * **Fisher.** ``fisher="mc"`` (default) is the true Fisher of Martens & Grosse: targets are sampled from
      the model's own predictive distribution and g̃ is the gradient of their sum-reduced cross-entropy,
      obtained by one extra backward pass (``torch.autograd.grad`` on the layer outputs, no parameter
      gradients) on factor-update steps only. It assumes the model returns (N, classes) logits of a
      categorical cross-entropy. The empirical Fisher (``fisher="empirical"``, uncentred covariance of the
      observed per-example gradients) costs nothing extra and works with any loss, but is not a curvature
      approximation in general (Kunstner et al. 2019).
    * **Batch scaling.** The loss is assumed to be the *mean* over the batch (the leading dimension of each
      layer's input) of per-example losses; the empirical g̃ is therefore N times the output gradient the
      backward pass sees. A and G are per-example expectations, so λ does not depend on the batch size and Δ
      is on the scale of the mean loss's natural gradient.
    * **Convolutions (KFC).** A averages over positions, G sums over them; only their product (A ⊗ G) is fixed
      by KFC, and π-damping makes the split irrelevant. This matches curvlinops' ``kfac_approx="expand"``.
      Linear layers with extra leading dimensions treat them as positions too. Zero padding appears as zeros
      in the patch, the homogeneous coordinate is 1 at every position.
    * **Grouped conv.** Group g reads input channels g·C_in/γ … and writes output channels g·C_out/γ …; its
      factors are (C_in/γ·kh·kw + 1)² and (C_out/γ)². A depthwise 3×3 conv with multiplier 3 gets, per input
      channel, a 10×10 A and a 3×3 G, stored batched as (channels, 10, 10) and (channels, 3, 3).
    * **Damping.** Tikhonov damping factored with Martens & Grosse's π-correction (per group); inverses are
      explicit Cholesky inverses computed in float64. The adaptive λ (Levenberg–Marquardt rule) and the
      exact-F quadratic-model rescaling of the step of Martens & Grosse §6.4–7 are not implemented: they need
      extra Fisher-vector products and loss evaluations per step. Here α, λ and μ are fixed hyperparameters
      (the suite tunes them), as in Ba, Grosse & Martens (ICLR 2017) and common implementations.

    Activations are captured by forward hooks during the forward pass before a factor-update ``step()``: with
    a closure, inside that call (earlier captures are discarded); without one, from the forwards since the
    last step. Only forwards run with gradients enabled are captured.

    Args:
        model: the network whose ``Linear`` and ``Conv2d`` layers are preconditioned.
        params: the parameters to optimize (default: ``model``'s parameters that require gradients).
        lr: α, the step size.
        damping: λ > 0, the Tikhonov damping of the Fisher.
        momentum: μ ∈ [0, 1), heavy-ball momentum on the preconditioned step.
        factor_decay: ε ∈ [0, 1), the running-average decay of A and G (per factor update).
        factor_update_interval: T_f, steps between updates of A and G.
        inverse_update_interval: T_inv, steps between recomputations of the damped inverses.
        fisher: ``"mc"`` (sampled targets, true Fisher) or ``"empirical"`` (observed targets).
        kl_clip: κ, the bound on the squared step length in the Fisher norm (``None``: no clipping).
        seed: seeds the target sampling of ``fisher="mc"`` (``None``: drawn from torch's global generator).
    """

    def __init__(
        self,
        model: nn.Module,
        params: Iterable[torch.Tensor] | Iterable[dict] | None = None,
        lr: float = 0.01,
        damping: float = 1e-2,
        momentum: float = 0.9,
        factor_decay: float = 0.95,
        factor_update_interval: int = 10,
        inverse_update_interval: int = 10,
        fisher: str = "mc",
        kl_clip: float | None = 1e-3,
        seed: int | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise ValueError(f"K-FAC needs an nn.Module to hook, got {type(model).__name__}")
        if not lr > 0:
            raise ValueError(f"Invalid lr: {lr}; it must be positive")
        if not damping > 0:
            raise ValueError(f"Invalid damping: {damping}; it must be positive (the damped factors are inverted)")
        if not 0 <= momentum < 1:
            raise ValueError(f"Invalid momentum: {momentum}; it must lie in [0, 1)")
        if not 0 <= factor_decay < 1:
            raise ValueError(f"Invalid factor_decay: {factor_decay}; it must lie in [0, 1)")
        for name, value in [
            ("factor_update_interval", factor_update_interval),
            ("inverse_update_interval", inverse_update_interval),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}: {value}; it must be a positive integer")
        if fisher not in FISHER_TYPES:
            raise ValueError(f"Invalid fisher: {fisher!r}; choose one of {FISHER_TYPES}")
        if kl_clip is not None and not kl_clip > 0:
            raise ValueError(f"Invalid kl_clip: {kl_clip}; it must be positive or None")
        if params is None:
            params = [p for p in model.parameters() if p.requires_grad]
        defaults = dict(lr=lr, damping=damping, momentum=momentum)
        super().__init__(params, defaults)
        self.model = model
        self.factor_decay = factor_decay
        self.factor_update_interval = factor_update_interval
        self.inverse_update_interval = inverse_update_interval
        self.fisher = fisher
        self.kl_clip = kl_clip
        if seed is None:
            seed = int(torch.randint(2**62, ()))
        self.generator = torch.Generator().manual_seed(seed)

        optimized = {p for group in self.param_groups for p in group["params"]}
        self.layers: list[KFACLayer] = []
        for name, module in model.named_modules():
            if _supported(module) and module.weight in optimized:
                bias = getattr(module, "bias", None)
                groups = getattr(module, "groups", 1)
                self.layers.append(KFACLayer(name, module, groups, bias is not None and bias in optimized))
        owned = {p for layer in self.layers for p in layer.parameters()}
        self.fallback_params = [p for group in self.param_groups for p in group["params"] if p not in owned]
        self._group_of = {p: group for group in self.param_groups for p in group["params"]}
        self._capturing = True  # the first step updates the factors
        self._handles = [layer.module.register_forward_hook(self._make_forward_hook(layer)) for layer in self.layers]
        if fisher == "mc":
            self._handles.append(model.register_forward_hook(self._monte_carlo_hook))

    # --- capture --------------------------------------------------------------------------------------------

    def _make_forward_hook(self, layer: KFACLayer):
        def hook(module, inputs, output):
            if not (self._capturing and torch.is_grad_enabled() and output.requires_grad):
                return
            with torch.no_grad():
                layer.accumulate_inputs(inputs[0].detach())
            if self.fisher == "empirical":
                batch = inputs[0].shape[0]  # the mean loss's output gradient is g̃ / N
                output.register_hook(lambda grad: layer.accumulate_output_grads(grad.detach(), float(batch)))
            else:
                layer.outputs.append(output)

        return hook

    def sample_targets(self, logits: torch.Tensor) -> torch.Tensor:
        """Targets drawn from the model's predictive distribution softmax(logits) by the seeded generator."""
        probabilities = torch.softmax(logits.detach().to(torch.float64), -1).cpu()
        return torch.multinomial(probabilities, 1, generator=self.generator).squeeze(1).to(logits.device)

    def _monte_carlo_hook(self, module, inputs, logits):
        outputs = [(layer, out) for layer in self.layers for out in layer.outputs]
        for layer in self.layers:
            layer.outputs = []
        if not (outputs and self._capturing and torch.is_grad_enabled()):
            return
        if not (isinstance(logits, torch.Tensor) and logits.ndim == 2):
            raise ValueError(
                "K-FAC with fisher='mc' needs the model to return (batch, classes) logits of a categorical "
                "cross-entropy; use fisher='empirical' for other losses"
            )
        if not (logits.requires_grad and bool(torch.isfinite(logits).all())):
            return  # a diverged forward: no factor update; its loss is non-finite and the training loop says so
        # One extra backward of the sum-reduced sampled loss: its output gradients are the per-example g̃.
        sampled_loss = F.cross_entropy(logits, self.sample_targets(logits), reduction="sum")
        grads = torch.autograd.grad(sampled_loss, [o for _, o in outputs], retain_graph=True, allow_unused=True)
        with torch.no_grad():
            for (layer, _), grad in zip(outputs, grads, strict=True):
                if grad is not None:
                    layer.accumulate_output_grads(grad, 1.0)

    # --- factors and inverses -------------------------------------------------------------------------------

    def _update_factors(self) -> None:
        for layer in self.layers:
            if layer.outputs:
                raise ValueError(
                    f"K-FAC with fisher='mc' saw layer {layer.name!r} run but not the model's own forward: "
                    "the loss must be computed from model(inputs); use fisher='empirical' otherwise"
                )
            if layer.input_count == 0 or layer.grad_count == 0:
                layer.clear()
                continue
            a, g = layer.batch_factors()
            state = self.state[layer.weight]
            if "A" not in state:
                state["A"], state["G"] = a, g
            else:
                state["A"].lerp_(a, 1 - self.factor_decay)
                state["G"].lerp_(g, 1 - self.factor_decay)
            layer.clear()

    def _update_inverses(self) -> None:
        for layer in self.layers:
            state = self.state[layer.weight]
            if "A" not in state:
                continue
            damping = self._group_of[layer.weight]["damping"]
            a, g = state["A"].to(torch.float64), state["G"].to(torch.float64)
            mean_a = a.diagonal(dim1=-2, dim2=-1).mean(-1)
            mean_g = g.diagonal(dim1=-2, dim2=-1).mean(-1)
            valid = (mean_a > 0) & (mean_g > 0)
            pi = torch.where(valid, (mean_a / mean_g.where(valid, 1.0)).sqrt(), 1.0)
            root = math.sqrt(damping)
            state["A_inverse"] = _damped_inverse(a, pi * root).to(state["A"].dtype)
            state["G_inverse"] = _damped_inverse(g, root / pi).to(state["G"].dtype)

    def preconditioned_gradients(self) -> dict[torch.Tensor, torch.Tensor]:
        """Δ = Ḡ⁻¹ [∇W, ∇b] Ā⁻¹ for every layer with inverses and a gradient (parameter → Δ, no clipping)."""
        directions = {}
        for layer in self.layers:
            state = self.state[layer.weight]
            if "A_inverse" not in state or any(p.grad is None for p in layer.parameters()):
                continue
            v = state["G_inverse"] @ layer.gradient_matrix() @ state["A_inverse"]
            directions.update(zip(layer.parameters(), layer.split(v), strict=True))
        return directions

    # --- the step -------------------------------------------------------------------------------------------

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            for layer in self.layers:  # captures from forwards outside this step (e.g. metrics) do not count
                layer.clear()
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            self._step()
        return loss

    def _step(self) -> None:
        first = self.param_groups[0]["params"][0]
        counter = self.state[first].setdefault("step", torch.tensor(0.0))
        step = int(counter)
        if step % self.factor_update_interval == 0:
            self._update_factors()
        if step % self.inverse_update_interval == 0 or any(
            "A" in self.state[layer.weight] and "A_inverse" not in self.state[layer.weight] for layer in self.layers
        ):
            self._update_inverses()
        directions = self.preconditioned_gradients()

        scale = 1.0
        if self.kl_clip is not None and directions:
            # Σ α² ⟨Δ, ∇⟩ is the squared step length in the damped Fisher norm (Ba, Grosse & Martens 2017).
            vg = float(sum(self._group_of[p]["lr"] ** 2 * torch.sum(d * p.grad) for p, d in directions.items()))
            if vg > 0:  # one device sync per step
                scale = min(1.0, math.sqrt(self.kl_clip / vg))
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                direction = directions[p] * scale if p in directions else p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = direction.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(direction)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        counter += 1
        self._capturing = (step + 1) % self.factor_update_interval == 0

    # --- state ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        state_dict = super().state_dict()
        state_dict["generator"] = self.generator.get_state()
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        generator = state_dict.pop("generator", None)
        super().load_state_dict(state_dict)
        if generator is not None:
            self.generator.set_state(generator)
        first = self.param_groups[0]["params"][0]
        step = int(self.state[first].get("step", 0))
        self._capturing = step % self.factor_update_interval == 0
        for layer in self.layers:
            layer.clear()

    def remove_hooks(self) -> None:
        """Detach K-FAC's hooks from the model (the optimizer then stops updating its factors)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _damped_inverse(m: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(M + shift·I)⁻¹ for a batch of symmetric PSD matrices M (γ, d, d) and shifts (γ,)."""
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    damped = (m + m.transpose(-1, -2)) / 2 + shift[:, None, None] * eye
    factor, info = torch.linalg.cholesky_ex(damped)
    if bool((info != 0).any()):  # only if round-off broke positive definiteness: fall back to a solve
        return torch.linalg.inv(damped)
    return torch.cholesky_inverse(factor)
