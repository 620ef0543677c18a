"""LODO's fast paths against plain definitions (the benchmark's tests, LODO's state among them, are in
test_bench). The C path (``backend="native"``) is checked against the same definitions in test_lodo_native.

Two plain forms of the Kronecker stack are used. The library's :func:`kronecker_reference` is the definition (the
(C, k, k) blocks times row vectors with ``@``, as in the authors' code): the fast paths agree with it to round-off,
for several depths and block sizes, n not a multiple of k. :func:`kronecker_plain` below is the fast path's own
arithmetic spelled out (its layouts reached by indexing with the π_ℓ, autograd through every multiply-add), so
the optimized step (one autograd node with a hand-written backward, the permutations folded into ``index_select``
gathers, whole-layer products, one meta-Adam over all layers, gradients handed over without copies) must give the
same bits as :class:`ReferenceLODO`, LODO written plainly with it and ``torch.optim.Adam(fused=True)`` on each
layer's blocks. The residual ablation's plain definition (:func:`residual_reference`) already sums in the fast
path's order, so its one-node backward must equal autograd through it bit for bit.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lodo import LODO
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
    """P(θ)·v in the fast path's arithmetic, through autograd layer by layer: z ← z[π_ℓ], then z ← B_ℓ z; after
    the N layers, the transposes (:class:`KroneckerPreconditioner`'s box).

    ``blocks[ℓ][i, o, c]`` is θ_ℓ[c][i, o]; the block products run on (k, C) views of the vector (the column layout:
    entry i of block c at i·C + c), reached from the natural order by indexing.
    """
    lead, n = v.shape[:-1], v.shape[-1]
    natural = torch.arange(width).view(-1, k).T.reshape(-1)  # the natural index held at each column position
    column = torch.argsort(natural)  # the column position of each natural index

    def to_columns(z):
        return z[..., natural].reshape(*lead, k, -1)

    def from_columns(z):
        return z.reshape(*lead, -1)[..., column]

    z = F.pad(v, (0, width - n))
    for perm, w in zip(perms, blocks):
        z = to_columns(z[..., perm])
        out = z[..., 0:1, :] * w[0]
        for i in range(1, k):
            out = torch.addcmul(out, z[..., i : i + 1, :], w[i])
        z = from_columns(out)
    for perm, w in zip(reversed(perms), reversed(blocks)):
        z = to_columns(z)
        out = w[:, 0] * z[..., 0:1, :]
        for o in range(1, k):
            out = torch.addcmul(out, w[:, o], z[..., o : o + 1, :])
        z = from_columns(out)[..., torch.argsort(perm)]
    return z[..., :n]


def layer_by_layer(pre, v):
    """P(θ)·v through autograd layer by layer, in the fast path's order: the plain form of both one-node Functions."""
    if isinstance(pre, KroneckerPreconditioner):
        return kronecker_plain(v, list(pre.perms), list(pre.blocks), pre.width, pre.block_size)
    return pre.reference(v)


def perturbed(kind: str, n: int, depth: int, block_size: int | None = None, backend: str = "torch"):
    """A preconditioner moved off its initialization (P = I there for the Kronecker stack)."""
    generator = torch.Generator().manual_seed(1)
    if kind == "kronecker":
        pre = KroneckerPreconditioner(n, depth, block_size, generator, backend=backend)
    else:
        pre = ResidualPreconditioner(n, depth, generator, backend=backend)
    with torch.no_grad():
        for theta in pre.parameters():
            theta.add_(0.1 * torch.randn(theta.shape, generator=generator, dtype=theta.dtype))
    return pre


SHAPES = [  # (kind, n, depth, block size): n mostly not a multiple of k
    ("kronecker", 30, 6, 4),
    ("kronecker", 13, 4, 3),
    ("kronecker", 7, 3, 1),
    ("kronecker", 9, 2, 7),
    ("kronecker", 20, 1, 4),
    ("kronecker", 5, 0, 4),
    ("residual", 13, 5, None),
    ("residual", 4, 1, None),
]


@pytest.mark.parametrize("lead", [(), (2, 3)])
@pytest.mark.parametrize("kind,n,depth,block_size", SHAPES)
def test_fast_path_matches_the_plain_definition(kind, n, depth, block_size, lead):
    """``forward`` and its backward (for θ and for inputs that need gradients) against autograd through the
    library's plain ``reference``, float64, to round-off."""
    pre = perturbed(kind, n, depth, block_size)
    v = torch.randn(*lead, n, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(*lead, n, dtype=torch.float64)
    fast, plain = pre(v), pre.reference(v)
    torch.testing.assert_close(fast, plain, rtol=1e-13, atol=1e-13)
    inputs = [v, *pre.parameters()]
    for a, b in zip(torch.autograd.grad(fast, inputs, cotangent), torch.autograd.grad(plain, inputs, cotangent)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("n,depth,block_size", [(30, 6, 4), (13, 4, 3), (9, 2, 7), (5, 0, 4)])
def test_kronecker_definition_starts_at_the_identity_and_its_tables_are_what_the_docstring_says(n, depth, block_size):
    pre = KroneckerPreconditioner(n, depth, block_size, torch.Generator().manual_seed(2))
    eye = torch.eye(n, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(pre.reference(eye), eye, rtol=0, atol=1e-14)  # G̃ orthogonal: P(θ₀) = EᵀE = I
    h = pre.width
    assert h % block_size == 0 and 2 * n < h <= 2 * n + block_size
    assert pre.perms.shape == pre.gather_pi.shape == pre.gather_pi_t.shape == (depth, h)
    for pi, gather, inverse in zip(pre.perms, pre.gather_pi, pre.gather_pi_t):
        assert torch.equal(pi.sort().values, torch.arange(h))
        assert torch.equal(inverse, torch.argsort(gather).int())


def test_state_dicts_with_the_former_four_index_tables_load():
    """Before the tables were named gather_pi and gather_pi_t, state dicts held them with their inverses."""
    saved = KroneckerPreconditioner(11, depth=3, block_size=3, generator=torch.Generator().manual_seed(5))
    state = {k: v for k, v in saved.state_dict().items() if not k.startswith("gather")}
    state |= dict(forward_gathers=saved.gather_pi, reverse_gathers=saved.gather_pi_t)
    state |= dict(forward_inverses=saved.gather_pi_t, reverse_inverses=saved.gather_pi)
    loaded = KroneckerPreconditioner(11, depth=3, block_size=3, generator=torch.Generator().manual_seed(6))
    loaded.load_state_dict(state)
    assert torch.equal(loaded.perms, saved.perms)
    v = torch.randn(11, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(loaded(v), saved(v))


@pytest.mark.parametrize("kind", ["kronecker", "residual"])
@pytest.mark.parametrize("lead", [(), (2, 3)])
def test_hand_written_backward_equals_autograd_for_batches_and_inputs(kind, lead):
    """Each one-node backward against autograd through the layers in the same order, bit for bit."""
    pre = perturbed(kind, 13, 4, 3) if kind == "kronecker" else perturbed(kind, 13, 5)
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


def test_compile_is_for_the_kronecker_preconditioner_only():
    with pytest.raises(ValueError, match="Kronecker preconditioner only"):
        LODO([torch.zeros(3, requires_grad=True)], preconditioner="diagonal", compile=True)


@pytest.mark.slow
def test_compiled_preconditioner_agrees_to_round_off():
    """``compile=True`` (Inductor, a C++ compiler needed) against the default, 10 steps on a noisy quadratic."""
    (x, G), (x_compiled, G_compiled) = (trained_on_a_quadratic(10, compile=c) for c in (False, True))
    assert torch.allclose(x, x_compiled, rtol=1e-9, atol=1e-12)
    assert torch.allclose(G, G_compiled, rtol=1e-9, atol=1e-12)
