"""LODO's C path (``backend="native"``, lodo/optim/native.c) against the preconditioners' plain definitions
(their ``reference`` method) and test_lodo_fast's plain LODO.

The C kernel sums in its own order, so it agrees with them to round-off, not bitwise: ~1e-12 relative in float64
after 20 optimizer steps, ~1e-4 in float32. No test here depends on timing.
"""

import warnings

import pytest
import torch
from test_lodo_fast import SHAPES, perturbed, train_beside_reference

from lodo import LODO
from lodo.optim import native
from lodo.optim.lodo import NATIVE_MAX_N
from lodo.tasks import NoisyQuadratic

try:
    native.library(torch.float64)
    native.library(torch.float32)
except native.NativeUnavailable as error:  # no C compiler on this machine: LODO runs in PyTorch
    pytest.skip(f"the C library cannot be built here: {error}", allow_module_level=True)

TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, **TOLERANCES[a.dtype])


def train(task, optimizer, steps: int = 20) -> None:
    for _ in range(steps):
        batch = task.sample_batch()
        task.x.grad = None
        task.loss(batch).backward()
        optimizer.step()


@pytest.mark.parametrize(
    "depth,block_size,dtype",
    [(16, 4, torch.float64), (1, 4, torch.float64), (3, 3, torch.float64), (5, 1, torch.float64)]
    + [(16, 4, torch.float32)],
)
def test_native_step_matches_the_reference_to_round_off(depth, block_size, dtype):
    optimizer, reference, task, twin, initial = train_beside_reference(depth, block_size, dtype, backend="native")
    assert close(task.x.detach(), twin.x.detach())
    for a, b in zip(optimizer.preconditioner.blocks, reference.blocks):
        assert close(a.detach(), b.detach())
        assert close(optimizer.meta_optimizer.state[a]["exp_avg"], reference.meta.state[b]["exp_avg"])
    assert not torch.equal(optimizer.preconditioner.blocks[0], initial)  # θ has been learning


@pytest.mark.parametrize("preconditioner", ["kronecker", "residual"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_and_torch_backends_agree(preconditioner, dtype):
    """20 steps of each backend from the same seeds: x, θ and G."""
    results = []
    for backend in ("native", "torch"):
        task = NoisyQuadratic(n=20, min_eigenvalue=0.05, seed=1, dtype=dtype)
        optimizer = LODO(task.parameters(), lr=0.3, meta_lr=1e-2, beta=0.5, seed=0, backend=backend,
                         preconditioner=preconditioner, depth=16 if preconditioner == "kronecker" else 8)  # fmt: skip
        assert optimizer.backend == backend
        train(task, optimizer)
        results.append((task.x.detach(), optimizer.preconditioner_matrix(), *optimizer.preconditioner.parameters()))
    assert all(close(a.detach(), b.detach()) for a, b in zip(*results))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lead", [(), (2, 3)])
@pytest.mark.parametrize("kind,n,depth,block_size", [*SHAPES, ("kronecker", 13, 16, 4)])
def test_native_product_and_backward_match_the_plain_definition(kind, n, depth, block_size, dtype, lead):
    """The C forward and backward (for θ and for inputs that need gradients, batched) against autograd through
    the plain ``reference``."""
    pre = perturbed(kind, n, depth, block_size, backend="native").to(dtype)
    v = torch.randn(*lead, n, dtype=dtype, requires_grad=True)
    cotangent = torch.randn(*lead, n, dtype=dtype)
    fast = torch.autograd.grad(pre(v), [v, *pre.parameters()], cotangent)
    plain = torch.autograd.grad(pre.reference(v), [v, *pre.parameters()], cotangent)
    assert all(close(a, b) for a, b in zip(fast, plain))
    with torch.no_grad():
        assert close(pre(v), pre.reference(v))


@pytest.mark.parametrize("kwargs", [dict(), dict(depth=1), dict(block_size=1), dict(preconditioner="residual")])
def test_native_apply_preconditioner_and_matrix_match_torch(kwargs):
    """Batched inputs (…, n) and the dense G, after a few steps, through both backends."""
    matrices, applied = [], []
    v = torch.randn(2, 3, 12, dtype=torch.float64)
    for backend in ("native", "torch"):
        task = NoisyQuadratic(n=12, min_eigenvalue=0.05, seed=0)
        optimizer = LODO(task.parameters(), lr=0.5, meta_lr=1e-2, beta=0.5, seed=0, backend=backend, **kwargs)
        train(task, optimizer, 10)
        matrices.append(optimizer.preconditioner_matrix())
        applied.append(optimizer.apply_preconditioner(v))
    assert close(*matrices) and close(*applied)
    assert close(applied[0], v @ matrices[0])


@pytest.mark.parametrize("n,block_size,depth", [(2, 4, 16), (100, 4, 16), (37, 3, 5), (10, 1, 4), (9, 7, 2)])
def test_native_preconditioner_starts_as_lr_times_identity(n, block_size, depth):
    x = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    optimizer = LODO([x], lr=0.37, depth=depth, block_size=block_size, seed=1, backend="native")
    G = optimizer.preconditioner_matrix()
    assert (G - 0.37 * torch.eye(n, dtype=torch.float64)).abs().max() < 1e-12


def test_auto_takes_the_native_path_on_the_cpu_for_small_n_only():
    x = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    assert LODO([x], seed=0).backend == "native"
    assert LODO([x], seed=0, preconditioner="residual").backend == "native"
    assert LODO([x], seed=0, state_dtype=torch.float32).backend == "native"
    assert LODO([x], seed=0, preconditioner="diagonal").backend == "torch"
    assert LODO([x], seed=0, state_dtype=torch.bfloat16).backend == "torch"
    large = torch.zeros(NATIVE_MAX_N + 1, requires_grad=True)
    assert LODO([large], seed=0, depth=1).backend == "torch"
    assert LODO([large], seed=0, depth=1, backend="native").backend == "native"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(backend="c"), "backend"),
        (dict(backend="native", preconditioner="diagonal"), "kronecker and residual"),
        (dict(backend="native", state_dtype=torch.bfloat16), "float32/float64"),
        (dict(backend="native", compile=True), "compile"),
    ],
)
def test_invalid_backends_fail_eagerly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LODO([torch.zeros(3, requires_grad=True)], **kwargs)


def test_a_failed_build_is_an_error_when_forced_and_one_warning_in_auto_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("LODO_CACHE", str(tmp_path))  # an empty cache: the library has to be built
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native, "_libraries", {})
    monkeypatch.setattr(native, "_warned", [])
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="could not be built"):
        LODO([x], backend="native")
    with pytest.warns(RuntimeWarning, match="falls back to backend='torch'"):
        assert LODO([x]).backend == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LODO([x]).backend == "torch"  # warned once per process only


def test_the_library_is_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LODO_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_libraries", {})
    native.library(torch.float64)
    built = list(tmp_path.glob("lodo_native_double_*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_libraries", {})
    native.library(torch.float64)  # a new process: loads the cached file, no second build
    assert built[0].stat().st_mtime_ns == stamp and list(tmp_path.iterdir()) == built
