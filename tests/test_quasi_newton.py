"""Correctness of the quasi-Newton and first-order baselines against their formulas (METHODS.md §A.3.4–A.3.11)."""

from __future__ import annotations

import math

import pytest
import torch

from lodo.optim.baselines import LARS, Yogi
from lodo.optim.quasi_newton import (
    BFGS,
    OLBFGS,
    LBFGSNoLineSearch,
    LevenbergMarquardt,
    bfgs_inverse_update_,
    two_loop_recursion,
)
from lodo.tasks import NoisyQuadratic


def deterministic_quadratic(n: int = 6, seed: int = 0) -> NoisyQuadratic:
    """A noise-free quadratic (centre 0) started at a random point, float64, κ = 10."""
    task = NoisyQuadratic(n=n, min_eigenvalue=0.1, noise_scale=0.0, seed=seed)
    with torch.no_grad():
        task.x.copy_(torch.randn(n, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64))
    return task


def conjugate_directions(hessian: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """n H-conjugate directions: Gram–Schmidt of random vectors in the H inner product."""
    n = hessian.shape[0]
    vectors = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    directions: list[torch.Tensor] = []
    for v in vectors:
        for d in directions:
            v = v - (v @ hessian @ d) / (d @ hessian @ d) * d
        directions.append(v)
    return directions


class CountingClosure:
    """The training loop's closure on one batch of ``task``, counting its calls."""

    def __init__(self, task, optimizer):
        self.task, self.optimizer, self.calls = task, optimizer, 0
        self.batch = task.sample_batch()

    def __call__(self):
        self.calls += 1
        self.optimizer.zero_grad()
        loss = self.task.loss(self.batch)
        loss.backward()
        return loss


# --- L-BFGS -------------------------------------------------------------------------------------------------


def test_two_loop_recursion_with_exact_conjugate_pairs_gives_the_newton_direction():
    task = deterministic_quadratic(n=7)
    s = conjugate_directions(task.H)
    y = [task.H @ s_i for s_i in s]
    grad = torch.randn(7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    newton = -torch.linalg.solve(task.H, grad)
    for scale in (1e-10, 1.0, 37.0):  # with n conjugate exact pairs the initial scale drops out
        torch.testing.assert_close(two_loop_recursion(grad, s, y, scale), newton, rtol=1e-9, atol=1e-12)


def test_two_loop_recursion_without_pairs_is_scaled_steepest_descent():
    grad = torch.tensor([1.0, -2.0], dtype=torch.float64)
    torch.testing.assert_close(two_loop_recursion(grad, [], [], 0.5), -0.5 * grad)


@pytest.mark.parametrize("cls", [LBFGSNoLineSearch, OLBFGS])
def test_online_lbfgs_makes_two_evaluations_per_step_on_the_same_batch(cls):
    task = NoisyQuadratic(n=8, seed=1)  # noisy: only a same-batch re-evaluation gives y = H s exactly
    optimizer = cls(task.parameters(), eta_0=0.1, memory=4)
    for _ in range(6):
        closure = CountingClosure(task, optimizer)
        x_before = task.x.detach().clone()
        loss = optimizer.step(closure)
        assert closure.calls == 2
        # step() returns the first evaluation: the loss at the point before the step
        assert float(loss.detach()) == pytest.approx(float(task.loss_at([x_before], closure.batch).detach()), rel=1e-14)
    state = optimizer.state[task.x]
    assert len(state["s"]) == 4  # the memory keeps the newest M pairs
    for s_i, y_i in zip(state["s"], state["y"], strict=True):
        torch.testing.assert_close(y_i, task.H @ s_i, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", [LBFGSNoLineSearch, OLBFGS])
def test_online_lbfgs_step_follows_the_reference_formula(cls):
    eta_0, tau, epsilon = 0.3, 5.0, 1e-3
    task = NoisyQuadratic(n=6, seed=2)
    optimizer = cls(task.parameters(), eta_0=eta_0, tau=tau, epsilon=epsilon)
    # t = 0: no pairs, p = ε·(−g), s = η₀·p
    closure = CountingClosure(task, optimizer)
    x0 = task.x.detach().clone()
    grad = task.H @ (x0 - closure.batch)
    optimizer.step(closure)
    torch.testing.assert_close(task.x.detach() - x0, -eta_0 * epsilon * grad)
    for t in (1, 2, 3):
        state = optimizer.state[task.x]
        s, y = list(state["s"]), list(state["y"])
        closure = CountingClosure(task, optimizer)
        x_t = task.x.detach().clone()
        grad = task.H @ (x_t - closure.batch)
        if cls is OLBFGS:  # O-LBFGS: the mean of s·y/y·y over the memory
            scale = sum(float(a @ b / (b @ b)) for a, b in zip(s, y, strict=True)) / len(s)
        else:  # METHODS.md §7.4: the newest pair (the authors used the oldest by mistake)
            scale = float(s[-1] @ y[-1] / (y[-1] @ y[-1]))
        expected = eta_0 * tau / (tau + t) * two_loop_recursion(grad, s, y, scale)
        optimizer.step(closure)
        torch.testing.assert_close(task.x.detach() - x_t, expected, rtol=1e-10, atol=1e-14)


def test_lbfgs_no_line_search_scales_by_the_newest_pair_not_the_oldest():
    task = NoisyQuadratic(n=6, seed=3)
    optimizer = LBFGSNoLineSearch(task.parameters(), eta_0=0.5, epsilon=1e-2)
    for _ in range(3):
        optimizer.step(CountingClosure(task, optimizer))
    s, y = optimizer.state[task.x]["s"], optimizer.state[task.x]["y"]
    newest, oldest = float(s[-1] @ y[-1] / (y[-1] @ y[-1])), float(s[0] @ y[0] / (y[0] @ y[0]))
    assert newest == pytest.approx(float(optimizer._scale(s, y)), rel=1e-14)
    assert not math.isclose(newest, oldest, rel_tol=1e-3)  # the test can tell the two apart


def test_online_lbfgs_refuses_to_step_without_a_closure():
    task = NoisyQuadratic(n=3)
    with pytest.raises(ValueError, match="closure"):
        LBFGSNoLineSearch(task.parameters()).step()


@pytest.mark.parametrize("kwargs", [{"eta_0": 0.0}, {"tau": -1.0}, {"epsilon": 0.0}, {"memory": 0}, {"memory": 2.5}])
def test_online_lbfgs_validates_hyperparameters(kwargs):
    with pytest.raises(ValueError, match="Invalid"):
        LBFGSNoLineSearch(NoisyQuadratic(n=3).parameters(), **kwargs)


# --- BFGS ---------------------------------------------------------------------------------------------------


def test_bfgs_update_with_exact_conjugate_pairs_gives_the_inverse_hessian_after_n_pairs():
    task = deterministic_quadratic(n=7)
    inverse = torch.eye(7, dtype=torch.float64)
    for s in conjugate_directions(task.H, seed=5):
        bfgs_inverse_update_(inverse, s, task.H @ s)
    torch.testing.assert_close(inverse, torch.linalg.inv(task.H), rtol=1e-9, atol=1e-10)


def test_bfgs_update_with_exact_random_pairs_converges_to_the_inverse_hessian():
    task = deterministic_quadratic(n=6)
    generator = torch.Generator().manual_seed(0)
    inverse = torch.eye(6, dtype=torch.float64)
    eigenvalues, basis = torch.linalg.eigh(task.H)
    root = (basis * eigenvalues.sqrt()) @ basis.T
    errors = []  # ‖H^½ Ĥ H^½ − I‖_F: with y = H s the update projects this error, so it never grows
    for _ in range(300):
        s = torch.randn(6, generator=generator, dtype=torch.float64)
        bfgs_inverse_update_(inverse, s, task.H @ s)
        errors.append(float(torch.linalg.matrix_norm(root @ inverse @ root - torch.eye(6, dtype=torch.float64))))
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 1e-8
    torch.testing.assert_close(inverse, torch.linalg.inv(task.H), rtol=1e-7, atol=1e-8)


def test_bfgs_optimizer_satisfies_the_secant_equation_and_converges_on_a_quadratic():
    task = deterministic_quadratic(n=6)
    optimizer = BFGS(task.parameters(), lr=1.0)
    initial = float(task.loss(task.sample_batch()).detach())
    previous_step = None
    for _ in range(12):
        x_before = task.x.detach().clone()
        optimizer.step(CountingClosure(task, optimizer))
        state = optimizer.state[task.x]
        torch.testing.assert_close(task.x.detach() - x_before, state["prev_step"])
        if previous_step is not None:  # Ĥ was updated with the pair that ended at x_before: Ĥ y = s
            y = task.H @ previous_step  # exact: the quadratic's centre does not move
            torch.testing.assert_close(state["inverse_hessian"] @ y, previous_step, rtol=1e-8, atol=1e-12)
        previous_step = state["prev_step"].clone()
    assert float(task.loss(task.sample_batch()).detach()) < 1e-6 * initial


def test_bfgs_first_step_is_scaled_gradient_descent_and_uses_the_parameter_dtype():
    task = deterministic_quadratic(n=4)
    optimizer = BFGS(task.parameters(), lr=0.01, h0_scale=2.0)
    x0 = task.x.detach().clone()
    optimizer.step(CountingClosure(task, optimizer))
    torch.testing.assert_close(task.x.detach(), x0 - 0.01 * 2.0 * (task.H @ x0))
    assert optimizer.state[task.x]["inverse_hessian"].dtype == torch.float64


# --- Levenberg–Marquardt ------------------------------------------------------------------------------------


def test_levenberg_marquardt_with_small_lambda_solves_a_quadratic_in_one_step():
    task = deterministic_quadratic(n=8)
    optimizer = LevenbergMarquardt(task.parameters(), lam=1e-12)
    closure = CountingClosure(task, optimizer)
    initial = float(task.loss(closure.batch).detach())
    optimizer.step(closure, hessian=task.hessian(closure.batch))
    assert closure.calls == 1
    assert float(task.loss(task.sample_batch()).detach()) < 1e-16 * initial


def test_levenberg_marquardt_step_matches_the_formula():
    task = deterministic_quadratic(n=5)
    lam = 0.7
    optimizer = LevenbergMarquardt(task.parameters(), lam=lam)
    x0 = task.x.detach().clone()
    optimizer.step(CountingClosure(task, optimizer), hessian=task.H)
    h, g = task.H, task.H @ x0
    system = h @ h + lam * torch.diag(torch.diagonal(h @ h))
    torch.testing.assert_close(task.x.detach(), x0 - torch.linalg.solve(system, h @ g))


def test_levenberg_marquardt_needs_the_hessian_passed_to_step():
    task = deterministic_quadratic(n=3)
    optimizer = LevenbergMarquardt(task.parameters())
    x0 = task.x.detach().clone()
    with pytest.raises(ValueError, match="needs hessian="):
        optimizer.step(CountingClosure(task, optimizer))
    with pytest.raises(ValueError, match=r"shape \(2, 2\), expected \(3, 3\)"):
        optimizer.step(CountingClosure(task, optimizer), hessian=torch.eye(2, dtype=torch.float64))
    assert torch.equal(task.x.detach(), x0)  # refused before moving x
    assert LevenbergMarquardt.step_inputs == {"hessian"}


def test_training_loop_passes_the_exact_hessian_of_each_batch():
    """The loop computes the Hessian of the iteration's batch and hands it to step(); none goes through the task."""
    from lodo.tasks import Rosenbrock
    from lodo.train import train

    task = Rosenbrock()
    optimizer = LevenbergMarquardt(task.parameters(), lam=1e-3)
    received = []
    step = optimizer.step

    def recording_step(closure=None, hessian=None):
        received.append((task.xy.detach().clone(), hessian))
        return step(closure, hessian=hessian)

    optimizer.step = recording_step
    summary = train(task, optimizer, steps=3, progress=False)
    assert summary["status"] == "completed" and len(received) == 3
    for xy, hessian in received:
        x, y = xy.tolist()
        exact = torch.tensor([[0.02 + 12 * x**2 - 4 * y, -4 * x], [-4 * x, 2.0]], dtype=torch.float64)
        torch.testing.assert_close(hessian, exact)


def test_training_loop_refuses_a_task_without_the_hessian_an_optimizer_needs():
    from lodo.tasks.base import Task
    from lodo.train import train

    class NoHessian(Task):
        name = "no_hessian"
        provides = frozenset({"closure"})

        def __init__(self):
            self.x = torch.zeros(2, dtype=torch.float64, requires_grad=True)

        def parameters(self):
            return [self.x]

        def sample_batch(self):
            return None

        def loss(self, batch):
            return (self.x**2).sum()

    task = NoHessian()
    with pytest.raises(ValueError, match="LevenbergMarquardt needs hessian, which no_hessian does not provide"):
        train(task, LevenbergMarquardt(task.parameters()), steps=2, progress=False)


# --- Yogi and LARS ------------------------------------------------------------------------------------------


def test_yogi_matches_a_hand_computation():
    x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    optimizer = Yogi([x], lr=0.1, beta1=0.5, beta2=0.75)
    gradients = [[0.5, -1.0], [0.1, 2.0]]
    # by hand: m ← ½m + ½g;  v ← v − ¼·sign(v − g²)·g²;  x ← x − 0.1·m/(√v + 1e-3), m₀ = v₀ = 0
    # step 1: m = (0.25, −0.5), v = (0.0625, 0.25)
    # step 2: m = (0.175, 0.75), v = (0.0625 − 0.25·0.01, 0.25 + 0.25·4) = (0.06, 1.25)
    expected = [
        [1.0 - 0.1 * 0.25 / (0.25 + 1e-3), -2.0 + 0.1 * 0.5 / (0.5 + 1e-3)],
        [0.0, 0.0],
    ]
    expected[1] = [
        expected[0][0] - 0.1 * 0.175 / (math.sqrt(0.06) + 1e-3),
        expected[0][1] - 0.1 * 0.75 / (math.sqrt(1.25) + 1e-3),
    ]
    for grad, x_expected in zip(gradients, expected, strict=True):
        x.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
        torch.testing.assert_close(x.detach(), torch.tensor(x_expected, dtype=torch.float64))
    torch.testing.assert_close(optimizer.state[x]["exp_avg_sq"], torch.tensor([0.06, 1.25], dtype=torch.float64))


def test_lars_matches_a_hand_computation_with_one_trust_ratio_per_tensor():
    weight = torch.tensor([[3.0, 4.0]], dtype=torch.float64, requires_grad=True)  # ‖w‖ = 5
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # ‖b‖ = 0: trust ratio 1
    optimizer = LARS([weight, bias], lr=0.1, momentum=0.5, weight_decay=0.01)
    weight.grad = torch.tensor([[0.0, 2.0]], dtype=torch.float64)  # ‖g‖ = 2
    bias.grad = torch.tensor([1.0], dtype=torch.float64)
    optimizer.step()
    ratio = 5.0 / (2.0 + 0.01 * 5.0)
    v_w = [0.1 * ratio * (0.0 + 0.01 * 3.0), 0.1 * ratio * (2.0 + 0.01 * 4.0)]
    torch.testing.assert_close(weight.detach(), torch.tensor([[3.0 - v_w[0], 4.0 - v_w[1]]], dtype=torch.float64))
    torch.testing.assert_close(bias.detach(), torch.tensor([-0.1], dtype=torch.float64))
    # second step, same gradients: v ← ½v + η λ (g + wd x)
    w1 = weight.detach().clone()
    optimizer.step()
    ratio = float(w1.norm() / (2.0 + 0.01 * w1.norm()))
    v_w2 = [
        0.5 * v_w[0] + 0.1 * ratio * 0.01 * w1[0, 0],
        0.5 * v_w[1] + 0.1 * ratio * (2.0 + 0.01 * w1[0, 1]),
    ]
    torch.testing.assert_close(weight.detach(), w1 - torch.tensor([v_w2], dtype=torch.float64))


def test_lars_optional_schedule_decays_the_learning_rate_quadratically():
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    optimizer = LARS([x], lr=0.1, momentum=0.0, weight_decay=0.0, decay_steps=4)
    moves = []
    for _ in range(5):
        x.grad = torch.ones(3, dtype=torch.float64)
        before = x.detach().clone()
        optimizer.step()
        moves.append(float((before - x.detach())[0] / (before.norm() / math.sqrt(3))))
    assert moves == pytest.approx([0.1 * (1 - t / 4) ** 2 for t in range(5)], rel=1e-12)
