"""K-FAC against independent computations: brute-force per-example factors, a dense solve, curvlinops.

Conventions checked (see :class:`lodo.optim.kfac.KFAC`): for a layer with input patches a_{n,t} (plus a
homogeneous 1) and per-example output gradients g̃_{n,t} = ∂ℓ_n/∂s_{n,t},

    A = (1/N) Σ_n (1/T) Σ_t a aᵀ,   G = (1/N) Σ_n Σ_t g̃ g̃ᵀ     (KFC: average over positions in A, sum in G)

per group of a grouped conv, and the step is (Ā ⊗ Ḡ)⁻¹ vec[∇W, ∇b] with π-corrected factored damping.
"""

import copy
import io
import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from lodo.optim.kfac import KFAC
from lodo.optim.registry import build_optimizer, check_compatible, optimizer_spec

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "optimizer" / "kfac.yaml"


class TinyNet(nn.Module):
    """The paper CNN's layer types at toy size: 1×1 convs, a depthwise 3×3 conv with multiplier 3, a dense 3×3
    conv, atan, a ceil-mode average pool and a Linear head (5×5 inputs, 5 classes)."""

    def __init__(self, dense_conv: bool = True):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.expand = nn.Conv2d(4, 4, 3, padding=1) if dense_conv else nn.Conv2d(4, 4, 1)
        self.depthwise = nn.Conv2d(4, 12, 3, padding=1, groups=4)
        self.project = nn.Conv2d(12, 4, 1)
        self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False)
        self.dense = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(torch.atan(self.depthwise(torch.atan(self.expand(x)))))
        return self.dense(self.pool(x).flatten(1))


LAYERS = ("stem", "expand", "depthwise", "project", "dense")


def make_problem(seed=0, batch=6):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyNet().double()
    x = torch.randn(batch, 3, 5, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(5, (batch,), generator=generator)
    return model, x, y


def brute_force_patches(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """(N, groups, T, d + 1): each position's input patch by explicit indexing, and the bias coordinate 1."""
    if isinstance(layer, nn.Linear):
        return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)[:, None, None, :]
    n, channels, height, width = x.shape
    (kh, kw), (ph, pw), groups = layer.kernel_size, layer.padding, layer.groups
    per_group = channels // groups
    out_h, out_w = height + 2 * ph - kh + 1, width + 2 * pw - kw + 1
    patches = torch.zeros(n, groups, out_h * out_w, per_group * kh * kw + 1, dtype=x.dtype)
    for g in range(groups):
        for i in range(out_h):
            for j in range(out_w):
                entries = []
                for c in range(g * per_group, (g + 1) * per_group):
                    for di in range(kh):
                        for dj in range(kw):
                            r, s = i - ph + di, j - pw + dj
                            inside = 0 <= r < height and 0 <= s < width
                            entries.append(x[:, c, r, s] if inside else torch.zeros(n, dtype=x.dtype))
                entries.append(torch.ones(n, dtype=x.dtype))
                patches[:, g, i * out_w + j] = torch.stack(entries, 1)
    return patches


def brute_force_factors(model, x, y, targets=None):
    """Per layer: A, G (groups, ·, ·) from per-example quantities computed one example at a time, and the
    (exact, from patches) per-example gradient pairs of the layout check."""
    inputs, outputs = {}, {}

    def keep(module, args, output, name):
        inputs[name], outputs[name] = args[0].detach(), output

    handles = [getattr(model, name).register_forward_hook(partial(keep, name=name)) for name in LAYERS]
    losses = F.cross_entropy(model(x), y if targets is None else targets, reduction="none")
    for handle in handles:
        handle.remove()
    n = x.shape[0]
    factors = {}
    for name in LAYERS:
        layer = getattr(model, name)
        groups = getattr(layer, "groups", 1)
        patches = brute_force_patches(inputs[name], layer)  # (N, γ, T, d+1)
        positions = patches.shape[2]
        a = torch.einsum("ngti,ngtj->gij", patches, patches) / (n * positions)
        grad_outer, per_example_param_grads = 0, []
        for k in range(n):
            g_out = torch.autograd.grad(losses[k], outputs[name], retain_graph=True)[0][k]  # ∂ℓ_k/∂s_k
            g = g_out.reshape(groups, g_out.shape[0] // groups, -1)  # (γ, out/γ, T)
            grad_outer = grad_outer + torch.einsum("git,gjt->gij", g, g)
            # The layout check: ∇[W_g, b_g] of example k equals Σ_t g̃_t a_tᵀ.
            w_grad, b_grad = torch.autograd.grad(losses[k], [layer.weight, layer.bias], retain_graph=True)
            matrix = torch.cat([w_grad.reshape(groups, g.shape[1], -1), b_grad.reshape(groups, -1, 1)], -1)
            per_example_param_grads.append((matrix, torch.einsum("git,gtj->gij", g, patches[k])))
        factors[name] = (a, grad_outer / n, per_example_param_grads)
    return factors


def kfac_for(model, **overrides):
    kwargs = dict(
        lr=1.0,
        damping=1e-2,
        momentum=0.0,
        factor_update_interval=1,
        inverse_update_interval=1,
        fisher="empirical",
        kl_clip=None,
        seed=0,
    )
    return KFAC(model, **{**kwargs, **overrides})


def closure_for(model, optimizer, x, y):
    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()

    return closure


def test_brute_force_patches_match_the_parameter_layout():
    # The reference itself: per-example ∇[W, b] = Σ_t g̃ aᵀ with the brute-force patches, layer by layer.
    model, x, y = make_problem()
    for name, (_, _, pairs) in brute_force_factors(model, x, y).items():
        for exact, from_patches in pairs:
            assert torch.allclose(exact, from_patches, rtol=1e-12, atol=1e-14), name


@pytest.mark.parametrize("fisher", ["empirical", "mc"])
def test_factors_match_brute_force(fisher):
    model, x, y = make_problem()
    expected = brute_force_factors(model, x, y)
    optimizer = kfac_for(model, fisher=fisher)
    if fisher == "mc":
        # Sampled targets replaced by the observed ones: the Monte-Carlo path (a separate sum-reduced
        # backward) must then give exactly the empirical factors.
        optimizer.sample_targets = lambda logits: y
    optimizer.step(closure_for(model, optimizer, x, y))
    shapes = {}
    for name in LAYERS:
        state = optimizer.state[getattr(model, name).weight]
        a, g, _ = expected[name]
        assert torch.allclose(state["A"], a, rtol=1e-12, atol=1e-14), name
        assert torch.allclose(state["G"], g, rtol=1e-12, atol=1e-14), name
        shapes[name] = (tuple(state["A"].shape), tuple(state["G"].shape))
    # Depthwise with multiplier 3: per input channel a (9+1)×(9+1) A and a 3×3 G, batched.
    assert shapes == {
        "stem": ((1, 4, 4), (1, 4, 4)),
        "expand": ((1, 37, 37), (1, 4, 4)),
        "depthwise": ((4, 10, 10), (4, 3, 3)),
        "project": ((1, 13, 13), (1, 4, 4)),
        "dense": ((1, 37, 37), (1, 5, 5)),
    }


def test_step_equals_dense_kronecker_solve():
    damping = 3e-2
    model, x, y = make_problem(seed=1)
    optimizer = kfac_for(model, damping=damping)
    before = {name: [p.detach().clone() for p in getattr(model, name).parameters()] for name in LAYERS}
    optimizer.step(closure_for(model, optimizer, x, y))
    for name in LAYERS:
        layer = getattr(model, name)
        state = optimizer.state[layer.weight]
        groups = getattr(layer, "groups", 1)
        grad = torch.cat(
            [
                layer.weight.grad.reshape(groups, -1, state["A"].shape[-1] - 1),
                layer.bias.grad.reshape(groups, -1, 1),
            ],
            -1,
        )
        (w0, b0) = before[name]
        step = torch.cat(
            [
                (w0 - layer.weight.detach()).reshape(grad.shape[:2] + (-1,)),
                (b0 - layer.bias.detach()).reshape(groups, -1, 1),
            ],
            -1,
        )
        for g in range(groups):
            a, gg = state["A"][g], state["G"][g]
            pi = math.sqrt((a.trace() / a.shape[0]) / (gg.trace() / gg.shape[0]))
            a_damped = a + pi * math.sqrt(damping) * torch.eye(a.shape[0], dtype=a.dtype)
            g_damped = gg + math.sqrt(damping) / pi * torch.eye(gg.shape[0], dtype=gg.dtype)
            fisher = torch.kron(a_damped, g_damped)  # acts on column-stacked vec([∇W_g, ∇b_g])
            expected = torch.linalg.solve(fisher, grad[g].T.reshape(-1))
            assert torch.allclose(step[g].T.reshape(-1), expected, rtol=1e-9, atol=1e-12), (name, g)


def test_running_averages_and_update_intervals():
    decay = 0.8
    model, x, y = make_problem(seed=2)
    x2 = torch.randn_like(x)
    optimizer = kfac_for(model, factor_decay=decay, factor_update_interval=2, inverse_update_interval=4)
    optimizer.step(closure_for(model, optimizer, x, y))
    first = {name: optimizer.state[getattr(model, name).weight]["A"].clone() for name in LAYERS}
    inverse = optimizer.state[model.dense.weight]["A_inverse"].clone()
    optimizer.step(closure_for(model, optimizer, x2, y))  # step 1: no capture, factors unchanged
    assert all(layer.input_count == 0 for layer in optimizer.layers)
    for name in LAYERS:
        assert torch.equal(optimizer.state[getattr(model, name).weight]["A"], first[name])
    expected = brute_force_factors(model, x2, y)  # at the parameters step 2 sees
    optimizer.step(closure_for(model, optimizer, x2, y))  # step 2: factors updated, inverses not (interval 4)
    for name in LAYERS:
        a = optimizer.state[getattr(model, name).weight]["A"]
        assert torch.allclose(a, decay * first[name] + (1 - decay) * expected[name][0], rtol=1e-12, atol=1e-14)
    assert torch.equal(optimizer.state[model.dense.weight]["A_inverse"], inverse)


def test_kl_clip_scales_the_preconditioned_step():
    model, x, y = make_problem(seed=3)
    free = copy.deepcopy(model)
    unclipped = kfac_for(free, lr=0.5)
    unclipped.step(closure_for(free, unclipped, x, y))
    kl_clip = 1e-6
    clipped = kfac_for(model, lr=0.5, kl_clip=kl_clip)
    start = copy.deepcopy(model)
    clipped.step(closure_for(model, clipped, x, y))
    steps0 = [(p0 - p).detach() for p0, p in zip(start.parameters(), free.parameters(), strict=True)]
    steps1 = [(p0 - p).detach() for p0, p in zip(start.parameters(), model.parameters(), strict=True)]
    grads = [p.grad for p in free.parameters()]
    nu = math.sqrt(kl_clip / (0.5 * sum(float((s * g).sum()) for s, g in zip(steps0, grads, strict=True))))
    assert nu < 1
    for s0, s1 in zip(steps0, steps1, strict=True):
        assert torch.allclose(s1, nu * s0, rtol=1e-10, atol=1e-15)


def test_unsupported_parameters_fall_back_to_momentum_sgd():
    model, x, y = make_problem(seed=4)
    model.temperature = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
    model.smooth = nn.Conv1d(1, 1, 3, padding=1).double()  # not a supported layer type
    forward = model.forward

    def loss_fn():
        logits = forward(x) * model.temperature
        logits = logits + model.smooth(logits[:, None, :])[:, 0]
        return F.cross_entropy(logits, y)

    optimizer = KFAC(model, lr=0.1, momentum=0.5, fisher="empirical", kl_clip=None)
    assert [layer.name for layer in optimizer.layers] == list(LAYERS)
    assert {id(p) for p in optimizer.fallback_params} == {
        id(p) for p in [model.temperature, *model.smooth.parameters()]
    }
    buffers = {}
    for _ in range(2):
        optimizer.zero_grad()
        loss_fn().backward()
        before = {p: p.detach().clone() for p in optimizer.fallback_params}
        grads = {p: p.grad.clone() for p in optimizer.fallback_params}
        optimizer.step()
        for p in optimizer.fallback_params:
            buffers[p] = grads[p] if p not in buffers else 0.5 * buffers[p] + grads[p]
            assert torch.allclose(p.detach(), before[p] - 0.1 * buffers[p], rtol=1e-12, atol=1e-15)


def test_state_dict_round_trip():
    model, x, y = make_problem(seed=5)
    batches = [(torch.randn_like(x), y) for _ in range(6)]
    hparams = dict(lr=0.1, momentum=0.9, factor_update_interval=2, inverse_update_interval=3, fisher="mc", kl_clip=1e-2)
    optimizer = KFAC(model, seed=7, **hparams)
    for xb, yb in batches[:3]:
        optimizer.step(closure_for(model, optimizer, xb, yb))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    saved = optimizer.state_dict()["state"]
    layer_state = saved[0]  # stem.weight
    assert {"A", "G", "A_inverse", "G_inverse", "momentum_buffer", "step"} <= set(layer_state)
    assert int(layer_state["step"]) == 3
    for xb, yb in batches[3:]:
        optimizer.step(closure_for(model, optimizer, xb, yb))

    buffer.seek(0)
    checkpoint = torch.load(buffer)
    restored = TinyNet().double()
    restored.load_state_dict(checkpoint["model"])
    resumed = KFAC(restored, seed=123, **hparams)
    resumed.load_state_dict(checkpoint["optimizer"])
    for xb, yb in batches[3:]:
        resumed.step(closure_for(restored, resumed, xb, yb))
    for p, q in zip(model.parameters(), restored.parameters(), strict=True):
        assert torch.equal(p, q)


def test_forwards_outside_the_step_are_not_captured():
    model, x, y = make_problem(seed=6)
    reference_model = copy.deepcopy(model)
    optimizer = kfac_for(model)
    model(torch.randn_like(x) * 100)  # e.g. a metrics forward with gradients enabled, between two steps
    optimizer.step(closure_for(model, optimizer, x, y))
    reference = kfac_for(reference_model)
    reference.step(closure_for(reference_model, reference, x, y))
    for name in LAYERS:
        ours, theirs = (
            optimizer.state[getattr(model, name).weight],
            reference.state[getattr(reference_model, name).weight],
        )
        assert torch.equal(ours["A"], theirs["A"]) and torch.equal(ours["G"], theirs["G"])


def test_validation():
    model = TinyNet()
    for kwargs in [
        dict(lr=0),
        dict(damping=0),
        dict(momentum=1.0),
        dict(factor_decay=1.0),
        dict(factor_update_interval=0),
        dict(inverse_update_interval=1.5),
        dict(fisher="type-2"),
        dict(kl_clip=0),
    ]:
        with pytest.raises(ValueError):
            KFAC(model, **kwargs)
    with pytest.raises(ValueError, match="nn.Module"):
        KFAC([torch.zeros(2, requires_grad=True)])


def test_mc_fisher_needs_logits():
    model = nn.Sequential(nn.Linear(3, 4), nn.Flatten(0))
    optimizer = KFAC(model, fisher="mc")
    with pytest.raises(ValueError, match="logits"):
        optimizer.step(lambda: model(torch.randn(2, 3)).sum().backward())


def test_a_diverged_forward_gives_a_non_finite_loss_not_an_error():
    # The training loop records a non-finite loss as a diverged run; sampling targets from NaN logits must not
    # raise first.
    model, x, y = make_problem(seed=10)
    with torch.no_grad():
        model.dense.bias[0] = float("nan")
    optimizer = KFAC(model, fisher="mc")
    assert not math.isfinite(float(optimizer.step(closure_for(model, optimizer, x, y))))


def test_registry_refuses_tasks_without_a_model_and_builds_from_the_config():
    spec = optimizer_spec("kfac")
    assert spec.needs == frozenset({"model"}) and not spec.in_paper and "not in the paper" in spec.description
    for task in ("rosenbrock", "noisy_quadratic"):
        with pytest.raises(ValueError, match="model"):
            check_compatible("kfac", task)

    class ModelTask:
        model = TinyNet().double()

    hparams = {k: v for k, v in yaml.safe_load(CONFIG.read_text()).items() if k != "name"}
    assert set(spec.tuned) <= set(hparams)
    model, x, y = make_problem(seed=8)
    ModelTask.model = model
    optimizer = build_optimizer("kfac", list(model.parameters()), ModelTask(), **hparams)
    losses = [float(optimizer.step(closure_for(model, optimizer, x, y))) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_paper_cnn_layers():
    from lodo.tasks.cnn import AutoregressionCNN

    model = AutoregressionCNN(torch.Generator().manual_seed(0))
    optimizer = KFAC(model, factor_update_interval=1, inverse_update_interval=1, seed=0)
    assert len(optimizer.layers) == 1 + 20 * 3 + 1 and optimizer.fallback_params == []
    x, y = torch.randn(2, 5, 8, 8), torch.randint(256, (2,))  # 8×8 pools to 1×1 as 28×28 does, faster
    loss = optimizer.step(closure_for(model, optimizer, x, y))
    assert math.isfinite(float(loss))
    shapes = {
        name: (tuple(optimizer.state[layer.weight]["A"].shape), tuple(optimizer.state[layer.weight]["G"].shape))
        for name, layer in ((layer.name, layer) for layer in optimizer.layers)
        if name in ("stem", "blocks.0.expand", "blocks.0.depthwise", "blocks.0.project", "dense")
    }
    assert shapes == {
        "stem": ((1, 6, 6), (1, 20, 20)),
        "blocks.0.expand": ((1, 21, 21), (1, 40, 40)),
        "blocks.0.depthwise": ((40, 10, 10), (40, 3, 3)),  # per input channel: 3×3 patch + 1, multiplier 3
        "blocks.0.project": ((1, 121, 121), (1, 20, 20)),
        "dense": ((1, 21, 21), (1, 256, 256)),
    }


def test_matches_curvlinops():
    import curvlinops  # `make install` installs it (--no-deps, Makefile); missing, this test fails, never skips

    model, x, y = make_problem(seed=9, batch=8)
    # curvlinops treats a grouped conv with one A averaged over the groups and one G over all output channels,
    # a different approximation from K-FAC's per-group factors, so the depthwise layer is compared by brute
    # force only (test_factors_match_brute_force); every other layer is compared here.
    names = [name for name in LAYERS if name != "depthwise"]
    params = [p for name in names for p in getattr(model, name).parameters()]
    reference = curvlinops.KFACLinearOperator(
        model,
        nn.CrossEntropyLoss(),
        params,
        [(x, y)],
        fisher_type="empirical",
        kfac_approx="expand",
        separate_weight_and_bias=False,
        check_deterministic=False,
    )
    reference.compute_kronecker_factors()
    optimizer = kfac_for(model)
    optimizer.step(closure_for(model, optimizer, x, y))
    for name in names:
        state = optimizer.state[getattr(model, name).weight]
        assert torch.allclose(state["A"][0], reference._input_covariances[name], rtol=1e-10, atol=1e-13), name
        assert torch.allclose(state["G"][0], reference._gradient_covariances[name], rtol=1e-10, atol=1e-13), name
    # The whole operator, applied to a random vector: curvlinops' (A ⊗ G) v against vec(G V A) from our
    # factors.
    vector = [torch.randn_like(p) for p in params]
    product = reference @ vector
    for i, name in enumerate(names):
        state = optimizer.state[getattr(model, name).weight]
        w, b = vector[2 * i], vector[2 * i + 1]
        v = torch.cat([w.reshape(w.shape[0], -1), b[:, None]], 1)
        expected = state["G"][0] @ v @ state["A"][0]
        got = torch.cat([product[2 * i].reshape(w.shape[0], -1), product[2 * i + 1][:, None]], 1)
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-13), name
