"""LODO's preconditioners on the CPU through a small C library (``native.c``), for float32 and float64.

The library has no torch headers, so the system C compiler builds it in a second or two (not the minute of a torch
extension): on first use, once per dtype, into a per-user cache folder keyed by a hash of the source and the flags
(``$LODO_CACHE``, else ``$XDG_CACHE_HOME/lodo`` or ``~/.cache/lodo``). It is loaded with ctypes (which releases
the GIL during a call) and works on the data of contiguous CPU tensors. :class:`~lodo.optim.lodo.LODO` chooses it
with ``backend="auto"``; see its docstring.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ["-O3", "-shared", "-fPIC", "-std=c99"]
REALS = {torch.float64: "double", torch.float32: "float"}
_libraries: dict[torch.dtype, ctypes.CDLL | Exception] = {}
_lock = threading.Lock()
_warned: list[str] = []


class NativeUnavailable(RuntimeError):
    """The C library cannot be built or loaded here (no compiler, a read-only cache, …)."""


def cache_dir() -> Path:
    if os.environ.get("LODO_CACHE"):
        return Path(os.environ["LODO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lodo"


def _build(dtype: torch.dtype) -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise NativeUnavailable("no C compiler found (set CC, or install gcc)")
    source = SOURCE.read_bytes()
    flags = [*FLAGS, f"-DREAL={REALS[dtype]}"]
    key = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()[:16]
    library = cache_dir() / f"lodo_native_{REALS[dtype]}_{key}.so"
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        # Built under a temporary name and renamed: concurrent processes (parallel sweeps) never see half a file.
        with tempfile.TemporaryDirectory(dir=library.parent) as folder:
            built = Path(folder) / library.name
            result = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built)], capture_output=True, text=True)
            if result.returncode != 0:
                raise NativeUnavailable(f"{compiler} failed on {SOURCE.name}:\n{result.stderr.strip()}")
            os.replace(built, library)
    return ctypes.CDLL(str(library))


def library(dtype: torch.dtype) -> ctypes.CDLL:
    """The C library for ``dtype`` (float32 or float64), built on first use; :class:`NativeUnavailable` if not."""
    with _lock:
        if dtype not in _libraries:
            try:
                _libraries[dtype] = _build(dtype)
            except Exception as error:  # noqa: BLE001 (no compiler, no writable cache, no home folder: all alike)
                _libraries[dtype] = error if isinstance(error, NativeUnavailable) else NativeUnavailable(repr(error))
        found = _libraries[dtype]
    if isinstance(found, Exception):
        raise found
    return found


def warn_once(message: str) -> None:
    """One warning per process for a failed build (``backend="auto"`` then runs in PyTorch)."""
    if not _warned:
        _warned.append(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def usable(v: torch.Tensor, thetas: tuple[torch.Tensor, ...]) -> bool:
    """Whether the C path can take this call: CPU tensors of one dtype it was built for, θ contiguous."""
    dtype = thetas[0].dtype
    return (
        v.device.type == "cpu"
        and v.dtype == dtype
        and dtype in REALS
        and all(t.device.type == "cpu" and t.is_contiguous() for t in thetas)
    )


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _address(tensor: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr() if tensor is not None else None)


def _sizes(pre, rows: int) -> list[ctypes.c_long]:
    """The leading size arguments of the C functions for the preconditioner ``pre`` and ``rows`` vectors."""
    if _is_kronecker(pre):
        return [ctypes.c_long(s) for s in (rows, pre.n, pre.block_size, pre.width // pre.block_size, pre.depth)]
    return [ctypes.c_long(s) for s in (rows, pre.n, pre.width, pre.depth)]


def _is_kronecker(pre) -> bool:
    return hasattr(pre, "block_size")


def thetas(pre) -> tuple[torch.Tensor, ...]:
    """θ in the order the C functions take it: the Kronecker blocks, or LODO-Residuals' (d, w) (w: depth × h)."""
    return tuple(pre.blocks) if _is_kronecker(pre) else (pre.diagonal, pre.weights)


def new_activations(pre, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """Room for what the backward needs: the 2N layer inputs (Kronecker) or 2L + 1 vectors (residual), each h."""
    count = 2 * pre.depth + (0 if _is_kronecker(pre) else 1)
    return torch.empty(count, rows, pre.width, dtype=dtype)


def forward(pre, v: torch.Tensor, thetas: tuple, activations: torch.Tensor | None = None) -> torch.Tensor:
    """P(θ)·v for v (…, n) and the preconditioner module ``pre``, keeping the layer inputs in ``activations``."""
    v = v.detach().contiguous()
    out, rows = torch.empty_like(v), v.numel() // v.shape[-1]
    if _is_kronecker(pre):  # native.c calls the two index tables "forward" and "reverse" gathers
        library(v.dtype).kronecker_forward(
            *_sizes(pre, rows), _address(v), _pointers(thetas), _address(pre.gather_pi),
            _address(pre.gather_pi_t), _address(activations), _address(out),
        )  # fmt: skip
    else:
        library(v.dtype).residual_forward(
            *_sizes(pre, rows), _address(v), _address(pre.perms), _address(pre.inverse_perms),
            _address(thetas[1]), _address(thetas[0]), _address(activations), _address(out),
        )  # fmt: skip
    return out


def backward(pre, grad, thetas: tuple, activations, grads: list, input_grad: torch.Tensor | None = None) -> None:
    """θ's gradients (written into ``grads``) and v's (into ``input_grad`` when given) for the cotangent ``grad``."""
    grad = grad.contiguous()
    rows = grad.numel() // grad.shape[-1]
    if _is_kronecker(pre):
        # native.c's forward_inverse and reverse_inverse: the inverses of the two tables, which are each other.
        library(grad.dtype).kronecker_backward(
            *_sizes(pre, rows), _address(grad), _pointers(thetas), _address(pre.gather_pi_t),
            _address(pre.gather_pi), _address(activations), _pointers(grads), _address(input_grad),
        )  # fmt: skip
    else:
        library(grad.dtype).residual_backward(
            *_sizes(pre, rows), _address(grad), _address(pre.perms), _address(pre.inverse_perms),
            _address(thetas[1]), _address(thetas[0]), _address(activations), _address(grads[1]),
            _address(grads[0]), _address(input_grad),
        )  # fmt: skip


class Product(torch.autograd.Function):
    """P(θ)·v as one autograd node, forward and backward in C: ``Product.apply(v, pre, *thetas(pre))``."""

    @staticmethod
    def forward(ctx, v, pre, *thetas):
        activations = new_activations(pre, v.numel() // v.shape[-1], v.dtype)
        ctx.pre, ctx.activations = pre, activations
        ctx.save_for_backward(*thetas)  # saved, so that changing θ in place before the backward is an error
        return forward(pre, v, thetas, activations)

    @staticmethod
    def backward(ctx, grad):
        thetas = ctx.saved_tensors
        grads = [torch.empty_like(theta) for theta in thetas]
        input_grad = torch.empty(grad.shape, dtype=grad.dtype) if ctx.needs_input_grad[0] else None
        backward(ctx.pre, grad, thetas, ctx.activations, grads, input_grad)
        ctx.activations = None
        return input_grad, None, *grads


class KeptStep:
    """``scale``·P(θ)·v with what its backward needs kept, but no autograd graph: LODO's step on this path.

    At small n autograd's engine (a node, one gradient accumulation per layer) costs more than the C backward
    itself, and LODO needs one vector-Jacobian product of this one step only. :meth:`backward` writes
    ∂(scale·P(θ)v)/∂θᵀ·cotangent straight into θ's ``.grad`` (allocated when ``None``, else overwritten, so
    that the same buffers serve every step). ``thetas``: :func:`thetas` of ``pre`` (iterating a ParameterList
    costs more than the C forward at n = 100, so LODO keeps the tuple).
    """

    def __init__(self, pre, thetas: tuple, v: torch.Tensor, scale: float):
        self.pre, self.scale, self.thetas = pre, scale, thetas
        self.activations = new_activations(pre, 1, v.dtype)
        self.value = forward(pre, v, self.thetas, self.activations).mul_(scale)

    def backward(self, cotangent: torch.Tensor) -> None:
        for theta in self.thetas:
            if theta.grad is None:
                theta.grad = torch.empty_like(theta)
        grads = [theta.grad for theta in self.thetas]
        backward(self.pre, cotangent * self.scale, self.thetas, self.activations, grads)

    def detach(self) -> torch.Tensor:
        """The step's value (the name of what LODO calls on autograd's tensor)."""
        return self.value
