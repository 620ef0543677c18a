import copy
import io

import pytest
import torch
from torch import nn

from lodo import LODO
from lodo.optim.preconditioners import hidden_width
from lodo.tasks import NoisyQuadratic

VARIANTS = [
    dict(),
    dict(preconditioner="diagonal"),
    dict(preconditioner="global"),
    dict(preconditioner="residual"),
    dict(meta_optimizer="sgd"),
    dict(beta=0.0),
    dict(depth=3, block_size=3),
]


def run(task, optimizer, steps):
    losses = []
    for _ in range(steps):
        batch = task.sample_batch()
        optimizer.zero_grad()
        loss = task.loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("n,block_size,depth", [(2, 4, 16), (100, 4, 16), (37, 3, 5), (10, 1, 4), (9, 7, 2)])
def test_preconditioner_starts_as_lr_times_identity(n, block_size, depth):
    x = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    optimizer = LODO([x], lr=0.37, depth=depth, block_size=block_size, seed=1)
    G = optimizer.preconditioner_matrix()
    assert (G - 0.37 * torch.eye(n, dtype=torch.float64)).abs().max() < 1e-12


def test_hidden_width_and_parameter_counts():
    # METHODS.md §1: h is the smallest multiple of k strictly greater than 2n.
    assert [hidden_width(n, 4) for n in (2, 100, 94_696)] == [8, 204, 189_396]
    assert hidden_width(94_696, 4) * 4 * 16 == 12_121_344
    counts = {}
    for name, kwargs in [
        ("lodo", {}),
        ("diagonal", dict(preconditioner="diagonal")),
        ("global", dict(preconditioner="global")),
        ("residual", dict(preconditioner="residual")),
        ("depth0", dict(depth=0)),
    ]:
        x = torch.zeros(100, dtype=torch.float64, requires_grad=True)
        counts[name] = LODO([x], seed=0, **kwargs).num_meta_parameters
    assert counts == {"lodo": 13_056, "diagonal": 100, "global": 1, "residual": 65 * 200, "depth0": 0}
    rosenbrock = LODO([torch.zeros(2, dtype=torch.float64, requires_grad=True)], seed=0)
    assert rosenbrock.num_meta_parameters == 512


@pytest.mark.parametrize("kwargs", VARIANTS[:4], ids=["kronecker", "diagonal", "global", "residual"])
def test_preconditioner_is_symmetric_after_training(kwargs):
    task = NoisyQuadratic(n=12, min_eigenvalue=0.05, seed=0)
    optimizer = LODO(task.parameters(), lr=0.5, meta_lr=1e-2, beta=0.5, seed=0, **kwargs)
    run(task, optimizer, 100)
    G = optimizer.preconditioner_matrix()
    assert not torch.allclose(G, 0.5 * torch.eye(12, dtype=G.dtype))  # it has learned something
    assert torch.allclose(G, G.T, atol=1e-12)
    if kwargs.get("preconditioner", "kronecker") == "kronecker":
        assert torch.linalg.eigvalsh(G).min() > -1e-12  # PSD by construction
    batch = torch.randn(5, 12, dtype=torch.float64)
    assert torch.allclose(optimizer.apply_preconditioner(batch), batch @ G, atol=1e-12)


@pytest.mark.parametrize("kwargs", VARIANTS[:4], ids=["kronecker", "diagonal", "global", "residual"])
def test_hypergradient_matches_finite_differences(kwargs):
    """∂θ f(x_t − G(θ) m_t) on one fixed batch, against central differences in float64."""
    task = NoisyQuadratic(n=6, min_eigenvalue=0.1, seed=2)
    kwargs = {"depth": 4, **kwargs}
    optimizer = LODO(task.parameters(), lr=0.3, meta_lr=1e-2, beta=0.5, seed=0, **kwargs)
    run(task, optimizer, 5)
    batch = task.sample_batch()
    momentum = optimizer.state[task.x]["momentum"].clone()
    previous_x = task.x.detach() + optimizer.apply_preconditioner(momentum)  # x_t
    thetas = list(optimizer.preconditioner.parameters())
    torch.manual_seed(1)
    directions = [torch.randn_like(t) for t in thetas]

    def next_loss(eps: float) -> float:
        """f(x_t − α₀ P(θ + eps·d) m_t) on a copy of the preconditioner."""
        moved = copy.deepcopy(optimizer.preconditioner)
        with torch.no_grad():
            for t, d in zip(moved.parameters(), directions):
                t.add_(eps * d)
            x_next = previous_x - optimizer.param_groups[0]["lr"] * moved(momentum)
            return task.loss_at([x_next], batch).item()

    eps = 1e-6
    numeric = (next_loss(eps) - next_loss(-eps)) / (2 * eps)

    captured = []  # the hypergradient, as the meta-optimizer receives it
    optimizer.meta_optimizer.register_step_pre_hook(
        lambda meta, args, kwargs: captured.append([t.grad.clone() for t in thetas])
    )
    optimizer.zero_grad()
    task.loss(batch).backward()
    optimizer.step()  # takes the hypergradient with the current gradient as cotangent
    analytic = sum((g * d).sum() for g, d in zip(captured[0], directions)).item()
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-10)
    assert abs(numeric) > 1e-6


def test_depth_zero_is_ema_momentum_sgd_exactly():
    task_a, task_b = NoisyQuadratic(n=20, seed=5), NoisyQuadratic(n=20, seed=5)
    optimizer = LODO(task_a.parameters(), lr=0.7, beta=0.8, depth=0, seed=0)
    assert optimizer.meta_optimizer is None
    run(task_a, optimizer, 50)
    momentum = torch.zeros(20, dtype=torch.float64)
    for _ in range(50):
        batch = task_b.sample_batch()
        task_b.x.grad = None
        task_b.loss(batch).backward()
        momentum.mul_(0.8).add_(task_b.x.grad, alpha=1 - 0.8)  # m ← βm + (1 − β)g
        with torch.no_grad():
            task_b.x -= 0.7 * momentum
    assert torch.equal(task_a.x, task_b.x)


@pytest.mark.parametrize("kwargs", VARIANTS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_state_dict_round_trip_is_bitwise(kwargs):
    def fresh():
        task = NoisyQuadratic(n=10, seed=7)
        return task, LODO(task.parameters(), **{"lr": 0.4, "meta_lr": 3e-3, "beta": 0.5, "seed": 11, **kwargs})

    task, optimizer = fresh()
    run(task, optimizer, 15)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "x": task.x.detach().clone()}, buffer)
    rng, center = task.generator.get_state(), task.center.clone()
    run(task, optimizer, 15)

    resumed_task, resumed = fresh()
    run(*fresh(), 3)  # unrelated work in between must not matter
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    resumed.load_state_dict(checkpoint["optimizer"])
    with torch.no_grad():
        resumed_task.x.copy_(checkpoint["x"])
    resumed_task.generator.set_state(rng)
    resumed_task.center = center
    run(resumed_task, resumed, 15)
    assert torch.equal(resumed_task.x, task.x)
    for a, b in zip(resumed.preconditioner.parameters(), optimizer.preconditioner.parameters()):
        assert torch.equal(a, b)


def test_learns_the_inverse_hessian_on_a_noisy_quadratic():
    """METHODS.md §1 theory: on n = 20, κ = 100, ‖I − GH‖_F/√n falls well below its initial value."""
    task = NoisyQuadratic(n=20, min_eigenvalue=0.01, seed=0)
    optimizer = LODO(task.parameters(), lr=0.3, meta_lr=1e-3, beta=0.2, seed=0)
    initial = task.metrics(optimizer)["hessian_error"]
    run(task, optimizer, 3000)
    final = task.metrics(optimizer)["hessian_error"]
    assert final < 0.65 * initial  # measured: 0.93 -> 0.56


def test_works_on_a_module_with_several_parameter_tensors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    inputs = torch.randn(256, 4)
    targets = (inputs @ torch.tensor([1.0, -2.0, 0.5, 0.0])).unsqueeze(1)
    optimizer = LODO(model.parameters(), lr=0.05, meta_lr=1e-3, seed=0)
    assert optimizer.n == sum(p.numel() for p in model.parameters())
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.2 * losses[0]


def test_float32_parameters_with_float64_state_and_closure():
    task = NoisyQuadratic(n=8, seed=0, dtype=torch.float32)
    optimizer = LODO(task.parameters(), lr=0.3, seed=0, state_dtype=torch.float64)
    assert next(optimizer.preconditioner.parameters()).dtype == torch.float64
    batch = task.sample_batch()

    def closure():
        optimizer.zero_grad()
        loss = task.loss(batch)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert torch.isfinite(loss) and task.x.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=0.0), "lr"),
        (dict(meta_lr=-1.0), "meta_lr"),
        (dict(beta=1.0), "beta"),
        (dict(depth=-1), "depth"),
        (dict(block_size=0), "block_size"),
        (dict(preconditioner="full"), "preconditioner"),
        (dict(meta_optimizer="lbfgs"), "meta_optimizer"),
    ],
)
def test_invalid_arguments_fail_eagerly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LODO([torch.zeros(3, requires_grad=True)], **kwargs)


def test_rejects_several_parameter_groups():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="single parameter group"):
        LODO([{"params": [a]}, {"params": [b]}])


# --- loading a learned preconditioner (the frozen-preconditioner test's θ) -------------------------------------------


@pytest.mark.parametrize("kwargs", VARIANTS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_load_preconditioner_gives_the_learned_g_and_meta_lr_zero_keeps_it_frozen(kwargs):
    task = NoisyQuadratic(n=10, seed=7)
    learner = LODO(task.parameters(), **{"lr": 0.4, "meta_lr": 3e-3, "beta": 0.5, "seed": 11, **kwargs})
    run(task, learner, 20)
    state = learner.preconditioner_state()
    assert state.keys() == learner.state_dict()["preconditioner"].keys()

    fresh_task = NoisyQuadratic(n=10, seed=8)
    frozen = LODO(fresh_task.parameters(), **{"lr": 0.4, "beta": 0.5, "seed": 12, **kwargs, "meta_lr": 0.0})
    frozen.load_preconditioner(state)
    assert torch.equal(frozen.preconditioner_matrix(), learner.preconditioner_matrix())
    run(fresh_task, frozen, 10)
    for key, value in frozen.preconditioner.state_dict().items():
        assert torch.equal(value, state[key]), key  # meta_lr = 0: the meta-optimizer's update of θ is exactly 0


def test_preconditioner_state_is_a_copy_and_loading_matches_the_module_load():
    task = NoisyQuadratic(n=10, seed=7)
    optimizer = LODO(task.parameters(), lr=0.4, meta_lr=3e-3, seed=11)
    run(task, optimizer, 5)
    state = optimizer.preconditioner_state()
    before = optimizer.preconditioner_matrix()
    for value in state.values():
        value.zero_()
    assert torch.equal(optimizer.preconditioner_matrix(), before)

    state = optimizer.preconditioner_state()
    a_task, b_task = NoisyQuadratic(n=10, seed=3), NoisyQuadratic(n=10, seed=3)
    a = LODO(a_task.parameters(), lr=0.4, meta_lr=3e-3, seed=5)
    b = LODO(b_task.parameters(), lr=0.4, meta_lr=3e-3, seed=5)
    a.load_preconditioner(state)
    b.preconditioner.load_state_dict(state)  # what lodo.run did before the method existed: the same, bitwise
    assert run(a_task, a, 10) == run(b_task, b, 10) and torch.equal(a_task.x, b_task.x)


@pytest.mark.parametrize(
    "saved,match",
    [
        (dict(n=12), r"shape \(.*\), expected"),  # another n
        (dict(block_size=5), r"shape \(.*\), expected"),
        (dict(depth=3), "missing"),
        (dict(preconditioner="diagonal"), "missing"),
    ],
)
def test_load_preconditioner_refuses_another_size_or_kind_and_changes_nothing(saved, match):
    task = NoisyQuadratic(n=10, seed=0)
    optimizer = LODO(task.parameters(), lr=0.4, seed=1)
    other_task = NoisyQuadratic(n=saved.pop("n", 10), seed=0)
    other = LODO(other_task.parameters(), lr=0.4, seed=2, **saved)
    before = optimizer.preconditioner_state()
    with pytest.raises(ValueError, match=match):
        optimizer.load_preconditioner(other.preconditioner_state())
    for key, value in optimizer.preconditioner.state_dict().items():
        assert torch.equal(value, before[key])


def test_load_preconditioner_refuses_a_whole_state_dict():
    optimizer = LODO([torch.zeros(4, dtype=torch.float64, requires_grad=True)], seed=0)
    with pytest.raises(ValueError, match="pass its 'preconditioner' entry"):
        optimizer.load_preconditioner(optimizer.state_dict())
