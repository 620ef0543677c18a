import math

import pytest
import torch

from lodo.tasks import TASKS, NoisyQuadratic, Rosenbrock, Task, task_class


def test_quadratic_matches_spec():
    task = NoisyQuadratic(seed=0)
    assert task.num_parameters == 100 and task.H.dtype == torch.float64
    eigenvalues = torch.linalg.eigvalsh(task.H)
    assert torch.allclose(eigenvalues, task.eigenvalues, rtol=1e-9, atol=1e-12)
    assert eigenvalues.max() / eigenvalues.min() == pytest.approx(1000, rel=1e-6)
    assert torch.equal(task.H, task.H.T)
    assert task.newton_floor == pytest.approx(7.411847, abs=1e-6)  # METHODS.md §3: ½ tr H


def test_quadratic_noise_and_same_batch():
    task = NoisyQuadratic(n=10, seed=3)
    first = task.sample_batch()
    assert torch.equal(task.loss(first), task.loss(first))  # same batch: the centre does not move
    second = task.sample_batch()
    assert not torch.equal(first, second)
    assert torch.equal(NoisyQuadratic(n=10, seed=3).H, task.H)
    assert not torch.equal(NoisyQuadratic(n=10, seed=4).H, task.H)
    # The walk has unit-variance increments per coordinate.
    steps = torch.stack([task.sample_batch() for _ in range(2001)]).diff(dim=0)
    assert steps.var().item() == pytest.approx(1.0, rel=0.05)


def test_newton_floor_is_reached_by_the_newton_step():
    task = NoisyQuadratic(n=50, seed=1)
    losses = []
    for _ in range(3000):
        previous = task.center.clone()
        with torch.no_grad():
            task.x.copy_(previous)  # Newton: jump to the last seen minimum
        losses.append(task.loss(task.sample_batch()).item())
    assert sum(losses) / len(losses) == pytest.approx(task.newton_floor, rel=0.05)


def test_generic_hessian_equals_exact_hessian():
    task = NoisyQuadratic(n=8, seed=0)
    batch = task.sample_batch()
    assert torch.allclose(Task.hessian(task, batch), task.H, atol=1e-12)


def test_rosenbrock():
    task = Rosenbrock()
    assert task.loss(None).item() == pytest.approx(3.085, abs=1e-12)
    assert Rosenbrock.function(1.0, 1.0) == 0.0
    hessian = task.hessian(None)
    x, y = Rosenbrock.start
    expected = torch.tensor([[0.02 - 4 * y + 12 * x**2, -4 * x], [-4 * x, 2.0]], dtype=torch.float64)
    assert torch.allclose(hessian, expected)
    assert task.metrics() == {"x": x, "y": y}


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="valid tasks: .*noisy_quadratic.*rosenbrock"):
        task_class("bowl")
    assert {"noisy_quadratic", "rosenbrock"} <= set(TASKS)


@pytest.mark.parametrize("bad", [dict(n=0), dict(min_eigenvalue=0.0), dict(noise_scale=-1.0)])
def test_quadratic_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        NoisyQuadratic(**bad)


def test_quadratic_float32_and_loss_value():
    task = NoisyQuadratic(n=4, seed=0, dtype=torch.float32)
    batch = task.sample_batch()
    d = -batch.double()
    expected = 0.5 * d @ task.H.double() @ d
    assert task.loss(batch).dtype == torch.float32
    assert math.isclose(task.loss(batch).item(), expected.item(), rel_tol=1e-5)


def test_best_scalar_and_best_diagonal_hessian_errors_are_the_least_squares_optima():
    task = NoisyQuadratic(n=12, seed=5)
    H, n = task.H, task.n
    identity = torch.eye(n, dtype=torch.float64)
    # Best scalar: a fine grid around c* = tr H / ‖H‖_F² gets no lower, and c* itself reaches the closed form.
    c_star = float(torch.trace(H) / (H * H).sum())
    grid = [task.scaled_identity_error(c_star * f) for f in torch.linspace(0.5, 1.5, 201).tolist()]
    assert min(grid) == pytest.approx(task.best_scalar_error, rel=1e-12)
    assert task.scaled_identity_error(c_star) == pytest.approx(task.best_scalar_error, rel=1e-12)
    # Best diagonal: each row's d_i from a generic least-squares solver gives the same optimum.
    d = torch.stack(
        [torch.linalg.lstsq(H[i].reshape(-1, 1), identity[i].reshape(-1, 1)).solution.squeeze() for i in range(n)]
    )
    lstsq = float(torch.linalg.matrix_norm(identity - d[:, None] * H) / math.sqrt(n))
    assert task.best_diagonal_error == pytest.approx(lstsq, rel=1e-10)
    perturbed = d * (1 + 0.01 * torch.randn(n, dtype=torch.float64))
    assert float(torch.linalg.matrix_norm(identity - perturbed[:, None] * H) / math.sqrt(n)) > task.best_diagonal_error
    # A diagonal can do what a scalar can, and H⁻¹ reaches 0; G = 0 gives 1.
    assert task.best_diagonal_error <= task.best_scalar_error < task.scaled_identity_error(0.0) == pytest.approx(1.0)


def test_a_diagonal_hessian_is_solved_exactly_by_the_best_diagonal():
    task = NoisyQuadratic(n=6, seed=0)
    task.H = torch.diag(task.eigenvalues)  # Q = I: the axis-aligned bowl
    assert task.best_diagonal_error == pytest.approx(0.0, abs=1e-7)
    lam = task.eigenvalues
    expected = math.sqrt((6 - float(lam.sum()) ** 2 / float((lam**2).sum())) / 6)
    assert task.best_scalar_error == pytest.approx(expected, rel=1e-12)
