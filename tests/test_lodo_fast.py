"""The optimized LODO step (``backend="torch"``) against a straightforward reference, bit for bit (issue 6), and the
benchmark's smoke test. The C path (``backend="native"``) is checked against the same reference in test_lodo_native.

The reference below is LODO written plainly: autograd through every layer and every multiply-add, gathers by
indexing with the paper's permutations π_ℓ (layout changes spelled out as separate index operations),
``torch.optim.Adam(fused=True)`` on each layer's blocks. The optimized step (one autograd node with a hand-written
backward, the permutations folded into ``index_select`` gathers, whole-layer products, one meta-Adam over all
layers, gradients handed over without copies) must give the same bits; so must the residual ablation's one-node
backward against autograd through its layers. Both keep blocks as (k, k, C): the same sums in the same order. The
(C, k, k) ``@`` form of the paper's code sums in another order, so it is checked to round-off.
"""

import csv

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lodo import LODO
from lodo.bench import COLUMNS, main, state_bytes
from lodo.optim.preconditioners import KroneckerPreconditioner, ResidualPreconditioner
from lodo.tasks import NoisyQuadratic


class ReferenceLODO:
    """LODO (the paper's algorithm) in the plainest PyTorch, starting from the θ and permutations of ``like``."""

    def __init__(self, params, like: LODO, lr: float, meta_lr: float, beta: float):
        self.params, self.lr, self.beta = list(params), lr, beta
        pre = like.preconditioner
        self.n, self.width, self.k = pre.n, pre.width, pre.block_size
        self.perms = [perm.clone() for perm in pre.perms]
        self.blocks = [w.detach().clone().requires_grad_() for w in pre.blocks]
        self.meta = torch.optim.Adam(self.blocks, lr=meta_lr, betas=(0.9, 0.999), eps=1e-7, fused=True)
        self.momentum, self.last_step, self.t = None, None, 0

    def precondition(self, v):
        return self.lr * kronecker_plain(v, self.perms, self.blocks, self.width, self.k)

    def step(self):
        grad = torch.cat([p.grad.reshape(-1) for p in self.params])
        for w in self.blocks:
            w.grad = torch.zeros_like(w)
        if self.t > 0:
            self.last_step.backward(-grad)  # the hypergradient: −(∂(G m_t)/∂θ)ᵀ g_{t+1}
        self.meta.step()
        if self.momentum is None:
            self.momentum = torch.zeros_like(grad)
        self.momentum.mul_(self.beta).add_(grad, alpha=1 - self.beta)
        self.last_step = self.precondition(self.momentum)
        with torch.no_grad():
            for p, chunk in zip(self.params, self.last_step.detach().split([p.numel() for p in self.params])):
                p.sub_(chunk.view_as(p))
        self.t += 1


def assert_same_state(optimizer: LODO, reference: ReferenceLODO, params, reference_params):
    for a, b in zip(params, reference_params):
        assert torch.equal(a, b)
    for a, b in zip(optimizer.preconditioner.blocks, reference.blocks):
        assert torch.equal(a, b)
        assert torch.equal(optimizer.meta_optimizer.state[a]["exp_avg_sq"], reference.meta.state[b]["exp_avg_sq"])


@pytest.mark.parametrize(
    "depth,block_size,dtype",
    [(16, 4, torch.float64), (3, 3, torch.float64), (5, 1, torch.float64), (16, 4, torch.float32)],
)
def test_matches_the_reference_bitwise_on_a_noisy_quadratic(depth, block_size, dtype):
    optimizer, reference, task, twin, initial = train_beside_reference(depth, block_size, dtype, backend="torch")
    assert_same_state(optimizer, reference, task.parameters(), twin.parameters())
    assert not torch.equal(optimizer.preconditioner.blocks[0], initial)  # θ has been learning


def train_beside_reference(depth: int, block_size: int, dtype: torch.dtype, backend: str, steps: int = 20):
    """LODO on ``backend`` and :class:`ReferenceLODO`, ``steps`` steps each on twin noisy quadratics (n = 30), fed
    the same batches; returns both optimizers, both tasks and LODO's first-layer blocks before training."""
    task, twin = (NoisyQuadratic(n=30, min_eigenvalue=0.01, seed=3, dtype=dtype) for _ in range(2))
    hparams = dict(lr=0.3, meta_lr=1e-2, beta=0.5)
    optimizer = LODO(task.parameters(), depth=depth, block_size=block_size, seed=0, backend=backend, **hparams)
    assert optimizer.backend == backend
    reference = ReferenceLODO(twin.parameters(), optimizer, **hparams)
    initial = optimizer.preconditioner.blocks[0].detach().clone()
    for _ in range(steps):
        batch = task.sample_batch()
        for t, opt in ((task, optimizer), (twin, reference)):
            t.x.grad = None
            t.loss(batch).backward()
            opt.step()
    return optimizer, reference, task, twin, initial


def test_matches_the_reference_bitwise_on_a_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    twin = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    twin.load_state_dict(model.state_dict())
    hparams = dict(lr=0.05, meta_lr=1e-3, beta=0.9)
    optimizer = LODO(model.parameters(), seed=0, backend="torch", **hparams)
    reference = ReferenceLODO(twin.parameters(), optimizer, **hparams)
    for _ in range(20):
        inputs = torch.randn(32, 4)
        targets = inputs.sum(1, keepdim=True)
        for m, opt in ((model, optimizer), (twin, reference)):
            m.zero_grad()
            F.mse_loss(m(inputs), targets).backward()
            opt.step()
    assert_same_state(optimizer, reference, model.parameters(), twin.parameters())


def kronecker_plain(v, perms, blocks, width, k):
    """P(θ)·v through autograd, layer by layer: z ← z[π_ℓ], then z ← z·B(θ⁽ℓ⁾); after the N layers, the transposes.

    ``blocks[ℓ][i, o, c]`` is entry (i, o) of block c; the layer products run on (k, C) views of the vector
    (entry i of block c at i·C + c), reached from the natural order by indexing.
    """
    lead, n = v.shape[:-1], v.shape[-1]
    stored = torch.arange(width).view(-1, k).T.reshape(-1)  # the natural index held at each (k, C) position
    natural = torch.argsort(stored)

    def to_blocks(z):
        return z[..., stored].reshape(*lead, k, -1)

    def from_blocks(z):
        return z.reshape(*lead, -1)[..., natural]

    z = F.pad(v, (0, width - n))
    for perm, w in zip(perms, blocks):
        z = to_blocks(z[..., perm])
        out = z[..., 0:1, :] * w[0]
        for i in range(1, k):
            out = torch.addcmul(out, z[..., i : i + 1, :], w[i])
        z = from_blocks(out)
    for perm, w in zip(reversed(perms), reversed(blocks)):
        z = to_blocks(z)
        out = w[:, 0] * z[..., 0:1, :]
        for o in range(1, k):
            out = torch.addcmul(out, w[:, o], z[..., o : o + 1, :])
        z = from_blocks(out)[..., torch.argsort(perm)]
    return z[..., :n]


def layer_by_layer(pre, v):
    """P(θ)·v through autograd layer by layer, gathers by indexing: the plain form of both one-node Functions."""
    if isinstance(pre, KroneckerPreconditioner):
        return kronecker_plain(v, list(pre.perms), list(pre.blocks), pre.width, pre.block_size)
    z = F.pad(v, (0, pre.width - pre.n))
    perms = list(pre.perms)
    for perm, w in zip(perms, pre.weights):
        z = z + w * z[..., perm]
    z = pre.diagonal * z
    for perm, w in zip(reversed(perms), reversed(pre.weights)):
        z = z + (w * z)[..., torch.argsort(perm)]
    return z[..., : pre.n]


def test_the_paper_block_matrix_form_agrees_to_round_off():
    """The (C, k, k) blocks times row vectors with ``@``, as in the authors' code (reference §2.1)."""
    pre = KroneckerPreconditioner(30, depth=6, block_size=4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for w in pre.blocks:
            w.add_(0.1 * torch.randn(w.shape, dtype=w.dtype, generator=torch.Generator().manual_seed(3)))
    v = torch.randn(5, 30, dtype=torch.float64)
    z = F.pad(v, (0, pre.width - 30))
    for layer, perm in enumerate(pre.perms):
        z = (z[..., perm].reshape(5, -1, 1, 4) @ pre.block(layer)).reshape(5, -1)
    for layer in reversed(range(len(pre.blocks))):
        z = (z.reshape(5, -1, 1, 4) @ pre.block(layer).mT).reshape(5, -1)[..., torch.argsort(pre.perms[layer])]
    with torch.no_grad():
        assert torch.allclose(pre(v), z[..., :30], rtol=0, atol=1e-13)


@pytest.mark.parametrize("kind", ["kronecker", "residual"])
@pytest.mark.parametrize("lead", [(), (2, 3)])
def test_hand_written_backward_equals_autograd_for_batches_and_inputs(kind, lead):
    """Each one-node backward against autograd through the layers, for inputs that need gradients too."""
    generator = torch.Generator().manual_seed(1)
    if kind == "kronecker":
        pre = KroneckerPreconditioner(13, depth=4, block_size=3, generator=generator)
    else:
        pre = ResidualPreconditioner(13, depth=5, generator=generator)
    with torch.no_grad():  # move θ off its initialization (P = I there for the Kronecker stack)
        for theta in pre.parameters():
            theta.add_(0.1 * torch.randn(theta.shape, generator=generator, dtype=theta.dtype))
    v = torch.randn(*lead, 13, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(*lead, 13, dtype=torch.float64)
    fast = torch.autograd.grad(pre(v), [v, *pre.parameters()], cotangent)
    plain = torch.autograd.grad(layer_by_layer(pre, v), [v, *pre.parameters()], cotangent)
    assert all(torch.equal(a, b) for a, b in zip(fast, plain))
    with torch.no_grad():
        assert torch.equal(pre(v), layer_by_layer(pre, v))


def trained_on_a_quadratic(steps: int, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """x and G after ``steps`` LODO steps on a small noisy quadratic (the same seeds for every ``options``)."""
    task = NoisyQuadratic(n=20, min_eigenvalue=0.05, seed=1)
    optimizer = LODO(task.parameters(), lr=0.3, meta_lr=1e-2, beta=0.5, seed=0, **options)
    for _ in range(steps):
        batch = task.sample_batch()
        task.x.grad = None
        task.loss(batch).backward()
        optimizer.step()
    return task.x.detach(), optimizer.preconditioner_matrix()


def test_foreach_meta_adam_agrees_with_the_fused_default_to_round_off():
    (x, G), (x_fused, G_fused) = (trained_on_a_quadratic(20, fused=fused) for fused in (False, True))
    assert torch.allclose(x, x_fused, rtol=1e-9, atol=1e-12)
    assert torch.allclose(G, G_fused, rtol=1e-9, atol=1e-12)


def test_state_holds_theta_its_gradient_moments_and_one_step_of_activations_only():
    """Between steps: θ, its hypergradient and 2 meta-Adam moments (4W values), 2·depth activations of width h, m."""
    n, depth = 300, 16
    task = NoisyQuadratic(n=n, seed=0)
    optimizer = LODO(task.parameters(), lr=0.1, meta_lr=1e-3, seed=0, depth=depth)
    for _ in range(3):
        task.x.grad = None
        task.loss(task.sample_batch()).backward()
        optimizer.step()
    h, W = optimizer.preconditioner.width, optimizer.num_meta_parameters
    assert W <= 129 * n
    values = 4 * W + 2 * depth * h + n
    permutations = 2 * depth * h * 8  # the fixed int64 permutations and their inverses
    assert state_bytes(optimizer, task.parameters()) <= values * 8 + permutations + 4096


def test_bench_quick_writes_its_csv(tmp_path):
    output, threads = tmp_path / "bench.csv", torch.get_num_threads()
    try:
        rows = main(["--quick", "--threads", "1", "--output", str(output), "--optimizers", "lodo", "lodo_foreach"])
    finally:
        torch.set_num_threads(threads)
    with open(output) as file:
        written = list(csv.DictReader(file))
    assert list(written[0]) == COLUMNS
    assert {row["optimizer"] for row in written} == {"adam", "lodo", "lodo_foreach"}
    assert len(written) == len(rows) == 6
    assert all(float(row["step_ms"]) > 0 and float(row["state_bytes"]) >= 0 for row in written)


def test_bench_memory_budget_is_per_optimizer(tmp_path, monkeypatch):
    """Each optimizer fits half the free memory on its own; the estimates of earlier ones do not use it up."""
    import lodo.bench

    n_values = lodo.bench.VALUES_PER_PARAMETER["lodo"] * 100 * 8  # LODO's estimate at n = 100, float64
    monkeypatch.setattr(lodo.bench, "free_memory", lambda device: 2.5 * n_values)  # room for one LODO at a time
    threads = torch.get_num_threads()
    try:
        args = ["--quick", "--threads", "1", "--cases", "quadratic_100", "--output", str(tmp_path / "bench.csv")]
        rows = main([*args, "--optimizers", "lodo", "lodo_torch", "lodo_foreach"])
    finally:
        torch.set_num_threads(threads)
    assert {row["optimizer"] for row in rows} == {"adam", "lodo", "lodo_torch", "lodo_foreach"}
    assert not any(row.get("note", "").startswith("skipped") for row in rows)


def test_compile_is_for_the_kronecker_preconditioner_only():
    with pytest.raises(ValueError, match="Kronecker preconditioner only"):
        LODO([torch.zeros(3, requires_grad=True)], preconditioner="diagonal", compile=True)


@pytest.mark.slow
def test_compiled_preconditioner_agrees_to_round_off():
    """``compile=True`` (Inductor, a C++ compiler needed) against the default, 10 steps on a noisy quadratic."""
    (x, G), (x_compiled, G_compiled) = (trained_on_a_quadratic(10, compile=c) for c in (False, True))
    assert torch.allclose(x, x_compiled, rtol=1e-9, atol=1e-12)
    assert torch.allclose(G, G_compiled, rtol=1e-9, atol=1e-12)
