"""LODO: Learning to Optimize quasi-newton methods (Liao et al., TMLR 2023) as a ``torch.optim.Optimizer``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from lodo.optim import native
from lodo.optim.flat import add_flat, flat_grad
from lodo.optim.preconditioners import (
    DiagonalPreconditioner,
    GlobalPreconditioner,
    KroneckerPreconditioner,
    ResidualPreconditioner,
)

PRECONDITIONERS = ("kronecker", "diagonal", "global", "residual")
META_OPTIMIZERS = ("adam", "sgd")
BACKENDS = ("auto", "native", "torch")
# Up to this n, backend="auto" takes the C path. Measured on one thread (README, *Performance*): it takes 0.26× the
# PyTorch path's optimizer step at n = 10³, 0.66× at 10⁴, about the same at 3·10⁴ and 1.2× at 10⁵, where both
# stream θ from memory and PyTorch's kernels also use the other threads.
NATIVE_MAX_N = 10_000


class LODO(Optimizer):
    r"""LODO: momentum SGD through a preconditioner G(θ) that is meta-learned online by a one-step hypergradient.

    All parameters are treated as one flat vector x ∈ ℝⁿ, as in the paper. Call ``step()`` after
    ``loss.backward()``; the gradient g_{t+1} it sees is the one at the point the previous step moved to::

        input: α₀ (lr), meta_lr, β (beta), preconditioner P(θ), meta-optimizer (Adam, ε = 1e-7, or SGD)
        G(θ) = α₀ P(θ),  P = Eᵀ G̃ᵀ G̃ E,  G̃ = B_{N−1} Π_{N−1} ⋯ B_0 Π_0,  P(θ₀) = I
        m₀ = 0
        for t = 0, 1, …  (g_{t+1} = ∇f_{t+1}(x_{t+1}) computed by the caller on a fresh minibatch)
            θ_{t+1} ← MetaStep(θ_t, −[∂(G(θ_t) m_t)/∂θ_t]ᵀ g_{t+1})   # hypergradient of f_{t+1}(x_{t+1}) w.r.t. θ_t
            m_{t+1} ← β m_t + (1 − β) g_{t+1}                            # EMA momentum, before G, no bias correction
            x_{t+2} ← x_{t+1} − G(θ_{t+1}) m_{t+1}                        # the graph of this step is kept for the next

    The first call has no previous step: its hypergradient is zero, and like the authors' code the meta-Adam still
    counts it (its update is exactly zero). Gradients reach θ through one step only: no unrolling, no
    Hessian-vector products.

    Args:
        params: the parameters to optimize (one parameter group; they are flattened together).
        lr: α₀, the fixed global step scale (never learned).
        meta_lr: learning rate of the meta-optimizer over θ.
        beta: momentum decay β ∈ [0, 1); 0 gives LODO-No-Momentum.
        depth: number of block-diagonal layers N (``None``: 16, or 64 for the residual ablation); 0 is momentum SGD.
        block_size: k, the size of each dense block (the Kronecker preconditioner only).
        preconditioner: ``"kronecker"`` (the paper's LODO), ``"diagonal"``, ``"global"`` or ``"residual"``.
        meta_optimizer: ``"adam"`` (Keras defaults β₁ = 0.9, β₂ = 0.999, ε = 1e-7) or ``"sgd"`` (LODO-SGD).
        seed: seeds the permutations and the initial blocks; ``None`` draws one from torch's global generator.
        state_dtype: dtype of θ, its meta-optimizer moments and the momentum (``None``: that of the parameters);
            e.g. ``torch.float32`` for a float64 model halves LODO's memory.
        fused: run the meta-Adam as torch's fused kernel (CPU and CUDA; the default): one pass over θ and its
            moments. ``False`` runs torch's foreach Adam instead, about seven passes; the two round differently,
            so they agree to round-off, not bitwise.
        compile: run the Kronecker preconditioner's forward and backward through ``torch.compile`` (Inductor
            generates fused kernels; the first steps pay the compilation, and results agree with the default only
            to round-off). Off by default: see README, *Performance*, for what it saves.
        backend: how the Kronecker and residual preconditioners run. ``"native"``: a small C library
            (:mod:`lodo.optim.native`, built with the system C compiler on first use in a second or two and cached
            per user) for the whole stack, forward and hand-written backward; CPU, float32/float64 only.
            ``"torch"``: PyTorch operations (any device and dtype; what the GPU uses). ``"auto"`` (the default)
            takes ``"native"`` where it applies and pays, i.e. on the CPU in float32/float64 for n ≤ 10⁴
            (``NATIVE_MAX_N``), and ``"torch"`` elsewhere, or (with one warning) when the library cannot be built.
            The two agree to round-off, not bitwise. At the paper's n = 100 LODO's training step is ~3.6×
            faster with it (README, *Performance*).

    Memory between steps: θ, its hypergradient (left in ``.grad``) and two meta-Adam moments (4 × ≈128n values),
    the inputs of the 2N block products that the last step keeps for the next hypergradient (2N·h ≈ 64n), and
    the momentum (n); nothing else grows with n.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1.0,
        meta_lr: float = 1e-3,
        beta: float = 0.9,
        depth: int | None = None,
        block_size: int = 4,
        preconditioner: str = "kronecker",
        meta_optimizer: str = "adam",
        seed: int | None = None,
        state_dtype: torch.dtype | None = None,
        fused: bool = True,
        compile: bool = False,
        backend: str = "auto",
    ):
        if not lr > 0:
            raise ValueError(f"Invalid lr (α₀): {lr}; it must be positive")
        if not meta_lr >= 0:
            raise ValueError(f"Invalid meta_lr: {meta_lr}; it must be non-negative")
        if not 0 <= beta < 1:
            raise ValueError(f"Invalid beta: {beta}; it must lie in [0, 1)")
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"Invalid preconditioner: {preconditioner!r}; choose one of {PRECONDITIONERS}")
        if meta_optimizer not in META_OPTIMIZERS:
            raise ValueError(f"Invalid meta_optimizer: {meta_optimizer!r}; choose one of {META_OPTIMIZERS}")
        if backend not in BACKENDS:
            raise ValueError(f"Invalid backend: {backend!r}; choose one of {BACKENDS}")
        if depth is None:
            depth = 64 if preconditioner == "residual" else 16
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"Invalid depth: {depth}; it must be a non-negative integer")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"Invalid block_size: {block_size}; it must be a positive integer")
        defaults = dict(lr=lr, meta_lr=meta_lr, beta=beta)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LODO treats all parameters as one vector: pass a single parameter group")
        params = self.param_groups[0]["params"]
        if len({(p.dtype, p.device) for p in params}) != 1:
            raise ValueError("LODO needs all parameters on one device with one dtype")
        self.state_dtype = state_dtype or params[0].dtype
        self.n = sum(p.numel() for p in params)
        if seed is None:
            seed = int(torch.randint(2**62, ()))
        generator = torch.Generator().manual_seed(seed)
        self.backend = self._choose_backend(backend, preconditioner, params[0].device, compile)
        if preconditioner == "kronecker":
            module = KroneckerPreconditioner(self.n, depth, block_size, generator, self.backend)
        elif preconditioner == "residual":
            module = ResidualPreconditioner(self.n, depth, generator, self.backend)
        elif preconditioner == "diagonal":
            module = DiagonalPreconditioner(self.n, generator)
        else:
            module = GlobalPreconditioner(self.n, generator)
        self.preconditioner: nn.Module = module.to(device=params[0].device, dtype=self.state_dtype)
        meta_params = list(self.preconditioner.parameters())
        self._thetas = native.thetas(module) if self.backend == "native" else None
        if not meta_params:  # depth 0: G = α₀I, nothing to learn
            self.meta_optimizer = None
        elif meta_optimizer == "adam":
            # fused (or foreach): the same arithmetic per element as one Adam per tensor, so bitwise equal to it.
            self.meta_optimizer = torch.optim.Adam(
                meta_params, lr=meta_lr, betas=(0.9, 0.999), eps=1e-7, foreach=not fused, fused=fused or None
            )
        else:
            self.meta_optimizer = torch.optim.SGD(meta_params, lr=meta_lr)
        self._last_step: torch.Tensor | None = None  # G(θ_t) m_t with its graph, for the next hypergradient
        self._compiled = None
        if compile:
            if preconditioner != "kronecker":
                raise ValueError(f"compile=True applies to the Kronecker preconditioner only, not {preconditioner!r}")
            self._compiled = torch.compile(self.preconditioner.plain_forward, dynamic=False)

    def _choose_backend(self, backend: str, preconditioner: str, device: torch.device, compile: bool) -> str:
        applies = preconditioner in ("kronecker", "residual")
        supported = device.type == "cpu" and self.state_dtype in native.REALS
        pays = self.n <= NATIVE_MAX_N and not compile
        if backend == "torch" or (backend == "auto" and not (applies and supported and pays)):
            return "torch"
        if compile:
            raise ValueError("backend='native' and compile=True exclude each other")
        if not applies:
            raise ValueError("backend='native' applies to the kronecker and residual preconditioners only")
        if not supported:
            raise ValueError(f"backend='native' needs CPU float32/float64 state, not {device}, {self.state_dtype}")
        try:
            native.library(self.state_dtype)
        except native.NativeUnavailable as error:
            if backend == "native":
                raise RuntimeError(f"backend='native': the C library could not be built: {error}") from error
            native.warn_once(f"LODO falls back to backend='torch': the C library could not be built: {error}")
            return "torch"
        return "native"

    @property
    def num_meta_parameters(self) -> int:
        """The number of learned preconditioner weights θ (≈128n for the default Kronecker preconditioner)."""
        return sum(p.numel() for p in self.preconditioner.parameters())

    def _kept_step(self, momentum: torch.Tensor) -> torch.Tensor | native.KeptStep:
        """G(θ)·m with what the next hypergradient needs: autograd's graph, or on the C path its kept activations."""
        if self.backend == "native":
            return native.KeptStep(self.preconditioner, self._thetas, momentum, self.param_groups[0]["lr"])
        with torch.enable_grad():
            return self._precondition(momentum)

    def _precondition(self, v: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None and torch.is_grad_enabled() and v.dim() == 1:
            return self.param_groups[0]["lr"] * self._compiled(v)
        return self.param_groups[0]["lr"] * self.preconditioner(v)

    @torch.no_grad()
    def apply_preconditioner(self, v: torch.Tensor) -> torch.Tensor:
        """G(θ)·v for v of shape (…, n), without forming G."""
        return self._precondition(v.to(self.state_dtype)).to(v.dtype)

    @torch.no_grad()
    def preconditioner_matrix(self) -> torch.Tensor:
        """The dense n×n matrix G(θ) (for small n: tests, the theory figure, the Hessian error)."""
        eye = torch.eye(self.n, dtype=self.state_dtype, device=self.param_groups[0]["params"][0].device)
        return self._precondition(eye)  # rows of G = columns of G: G is symmetric

    def preconditioner_state(self) -> dict[str, torch.Tensor]:
        """A copy of the learned preconditioner: θ and the fixed permutations it is defined with, by name.

        This is ``state_dict()["preconditioner"]`` (so an ``optimizer.pt`` written by a run holds it under that key),
        without the momentum, the step count or the meta-optimizer's moments. :meth:`load_preconditioner` takes it.
        """
        return {key: value.detach().clone() for key, value in self.preconditioner.state_dict().items()}

    @torch.no_grad()
    def load_preconditioner(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the preconditioner G(θ) by a saved one (:meth:`preconditioner_state`), e.g. θ of an earlier run.

        The saved preconditioner must be of the same kind and size: the same ``preconditioner``, n, ``depth`` and
        ``block_size`` (the same keys and shapes); otherwise a ``ValueError`` names the first difference and nothing
        is changed. Values are copied into θ in place and cast to this optimizer's ``state_dtype`` and device. The
        momentum, the step count and the meta-optimizer's moments are left as they are; the next ``step()`` takes
        its hypergradient with respect to the loaded θ. To keep the loaded θ frozen, construct the optimizer with
        ``meta_lr=0``: the meta-Adam's (or SGD's) update of θ is then exactly zero (the frozen-preconditioner test,
        ``configs/experiment/quadratic_frozen.yaml``).
        """
        if not isinstance(state, dict):
            raise ValueError(f"load_preconditioner needs a dict of tensors by name, got {type(state).__name__}")
        if "preconditioner" in state and isinstance(state["preconditioner"], dict):
            raise ValueError(
                "load_preconditioner got a whole LODO state_dict: pass its 'preconditioner' entry "
                "(or resume everything with load_state_dict)"
            )
        own = self.preconditioner.state_dict()
        kind = type(self.preconditioner).__name__
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        if missing or unexpected:

            def names(keys: list[str]) -> str:
                return ", ".join(keys[:3]) + (f", … ({len(keys)} in all)" if len(keys) > 3 else "") or "none"

            raise ValueError(
                f"the saved preconditioner does not match this LODO's {kind} (n={self.n}): missing {names(missing)}; "
                f"unexpected {names(unexpected)}; it was saved from another preconditioner kind or depth"
            )
        for key, value in own.items():
            saved = state[key]
            if not isinstance(saved, torch.Tensor) or saved.shape != value.shape:
                shape = tuple(saved.shape) if isinstance(saved, torch.Tensor) else type(saved).__name__
                raise ValueError(
                    f"the saved preconditioner does not match this LODO's {kind} (n={self.n}): {key!r} has shape "
                    f"{shape}, expected {tuple(value.shape)}; it was saved for another n, depth or block_size"
                )
        self.preconditioner.load_state_dict(state)
        self._last_step = None  # a kept G(θ)·m belongs to the old θ: the next step rebuilds it from the loaded one

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params = group["params"]
        grad = flat_grad(params).to(self.state_dtype)
        state = self.state[params[0]]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["momentum"] = torch.zeros_like(grad)
        momentum = state["momentum"]

        if self.meta_optimizer is not None:
            if state["step"] == 0:  # as in the authors' code: a zero hypergradient, but the meta-Adam's count advances
                for p in self.preconditioner.parameters():
                    p.grad = torch.zeros_like(p)
            else:
                if self.backend == "torch":  # (the C backward overwrites θ's gradients instead)
                    self.meta_optimizer.zero_grad()  # None: autograd stores the hypergradient without a copy
                if self._last_step is None:  # after load_state_dict: rebuild G(θ_t) m_t, bitwise as before
                    self._last_step = self._kept_step(momentum)
                # f_{t+1}(x_{t+1}) with x_{t+1} = x_t − G(θ_t) m_t: ∂f/∂θ = −(∂(G m_t)/∂θ)ᵀ g_{t+1}.
                self._last_step.backward(-grad)
            for meta_group in self.meta_optimizer.param_groups:
                meta_group["lr"] = group["meta_lr"]
            self.meta_optimizer.step()
        self._last_step = None

        momentum.mul_(group["beta"]).add_(grad, alpha=1 - group["beta"])
        if self.meta_optimizer is None:
            step = self._precondition(momentum)
        else:
            step = self._last_step = self._kept_step(momentum)
        add_flat(params, step.detach().to(params[0].dtype), alpha=-1)
        state["step"] += 1
        return loss

    def state_dict(self) -> dict:
        state_dict = super().state_dict()
        state_dict["preconditioner"] = self.preconditioner.state_dict()
        if self.meta_optimizer is not None:
            state_dict["meta_optimizer"] = self.meta_optimizer.state_dict()
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self.preconditioner.load_state_dict(state_dict.pop("preconditioner"))
        meta_state = state_dict.pop("meta_optimizer", None)
        if self.meta_optimizer is not None:
            self.meta_optimizer.load_state_dict(meta_state)
        super().load_state_dict(state_dict)
        saved = state_dict["state"].get(0, {}).get("momentum")
        if saved is not None:  # Optimizer.load_state_dict casts state to the parameters' dtype: undo that
            first = self.param_groups[0]["params"][0]
            self.state[first]["momentum"] = saved.to(device=first.device, dtype=self.state_dtype, copy=True)
        self._last_step = None
