"""L2LBGDBGD: the gradient preprocessing, the LSTM, its meta-training command and the shipped weights
(METHODS.md §A.3.12)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lodo.optim.l2l import (
    DEFAULT_WEIGHTS,
    CoordinatewiseLSTM,
    L2LOptimizer,
    load_network,
    main,
    preprocess_gradient,
    resolve_weights,
)
from lodo.tasks import NoisyQuadratic
from lodo.train import train as train_loop

SHIPPED_RECORD = DEFAULT_WEIGHTS.with_suffix(".json")


def run(task, optimizer, steps: int) -> list[float]:
    """The training loss of each step, from the project's training loop."""
    losses = []
    train_loop(task, optimizer, steps, on_row=lambda row: losses.append(row["loss"]), progress=False)
    return losses


def test_preprocessing_follows_andrychowicz_appendix_a():
    grad = torch.tensor([2.0, -0.5, 1e-3, 1e-5, -2e-5, 0.0], dtype=torch.float64)
    expected = [
        [math.log(2.0 + 1e-8) / 10, 1.0],
        [math.log(0.5 + 1e-8) / 10, -1.0],
        [math.log(1e-3 + 1e-8) / 10, 1.0],
        [-1.0, math.exp(10) * 1e-5],  # |g| < e^−10 ≈ 4.54e-5: (−1, e^10·g)
        [-1.0, -math.exp(10) * 2e-5],
        [-1.0, 0.0],
    ]
    torch.testing.assert_close(preprocess_gradient(grad), torch.tensor(expected, dtype=torch.float64))
    threshold = torch.tensor([math.exp(-10)], dtype=torch.float64)  # the boundary takes the log branch
    torch.testing.assert_close(preprocess_gradient(threshold)[0, 1], torch.tensor(1.0, dtype=torch.float64))


def test_lstm_is_the_two_layer_coordinatewise_architecture():
    net = CoordinatewiseLSTM()
    # LSTMCell(2→20): 4·20·(2 + 20) + 2·4·20; LSTMCell(20→20): 4·20·40 + 2·4·20; Linear(20→1): 21
    assert sum(p.numel() for p in net.parameters()) == 1920 + 3360 + 21
    hidden, cell = net.initial_state(7)
    update, (hidden, cell) = net(torch.randn(7, dtype=torch.float64), (hidden, cell))
    assert update.shape == (7,) and hidden.shape == cell.shape == (2, 7, 20)
    # coordinate-wise: a coordinate's output does not depend on the other coordinates
    grad = torch.randn(5)
    alone, _ = net(grad[:1], net.initial_state(1))
    together, _ = net(grad, net.initial_state(5))
    torch.testing.assert_close(alone, together[:1])


def test_shipped_weights_record_the_paper_settings():
    net, settings = load_network()
    record = json.loads(SHIPPED_RECORD.read_text())
    assert record["settings"] == settings
    paper = dict(train_fits=20, eval_fits=20, fit_steps=100, unroll=20, meta_lr=0.03, out_mul=0.1, hidden_size=20)
    assert {key: settings[key] for key in paper} == paper
    assert settings["n"] == 100 and record["command"].startswith("python -m lodo.optim.l2l")
    assert record["best_score"] == min(record["eval_scores"])
    assert isinstance(net, CoordinatewiseLSTM)


def test_trained_lstm_lowers_a_deterministic_quadratic_from_a_random_start():
    task = NoisyQuadratic(n=100, noise_scale=0.0, seed=7)
    with torch.no_grad():
        task.x.copy_(torch.randn(100, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    initial = float(task.loss(task.sample_batch()).detach())
    losses = run(task, L2LOptimizer(task.parameters()), 50)
    assert losses[-1] < 0.3 * initial


def test_trained_lstm_tracks_the_noisy_quadratic():
    task = NoisyQuadratic(n=100, seed=8)
    losses = run(task, L2LOptimizer(task.parameters()), 200)
    # Doing nothing from x₀ = 0 gives E[loss_t] = t·½tr H ≈ 7.4·t (≈ 1400 here); Newton's floor is 7.41.
    assert sum(losses[-50:]) / 50 < 30


def test_state_round_trip_keeps_the_lstm_state_in_the_net_dtype():
    task = NoisyQuadratic(n=10, seed=1)
    optimizer = L2LOptimizer(task.parameters())
    run(task, optimizer, 3)
    state_dict = optimizer.state_dict()
    assert set(state_dict["net"]) == set(optimizer.net.state_dict())
    other = L2LOptimizer(NoisyQuadratic(n=10, seed=1).parameters())
    other.load_state_dict(state_dict)
    (state,) = other.state.values()
    assert state["hidden"].dtype == state["cell"].dtype == torch.float32
    torch.testing.assert_close(state["hidden"], optimizer.state[task.x]["hidden"], rtol=0, atol=0)


def test_weights_resolve_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_WEIGHTS.parts[-4:] == ("lodo", "optim", "l2lbgdbgd", "weights.pt")  # package data
    assert resolve_weights(None) == DEFAULT_WEIGHTS and DEFAULT_WEIGHTS.is_file()
    assert resolve_weights(str(DEFAULT_WEIGHTS)) == DEFAULT_WEIGHTS
    (tmp_path / "mine.pt").write_bytes(DEFAULT_WEIGHTS.read_bytes())
    assert resolve_weights("mine.pt").resolve() == tmp_path / "mine.pt"  # relative: from the working directory
    with pytest.raises(FileNotFoundError, match="python -m lodo.optim.l2l"):
        resolve_weights("weights/absent.pt")


def test_meta_training_command_writes_loadable_seeded_weights_and_a_record(tmp_path):
    args = ["--epochs", "2", "--train-fits", "2", "--eval-fits", "2", "--fit-steps", "6", "--unroll", "3"]
    args += ["--n", "5", "--hidden-size", "4", "--seed", "3"]
    main([*args, "--output", str(tmp_path / "a.pt")])
    main([*args, "--output", str(tmp_path / "b.pt")])
    first, second = (torch.load(tmp_path / f"{name}.pt", weights_only=True) for name in "ab")
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), f"meta-training is not seeded: {key} differs"
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["settings"]["epochs"] == 2 and record["settings"]["seed"] == 3
    assert record["command"].startswith("python -m lodo.optim.l2l --epochs 2")
    assert len(record["eval_scores"]) == 2 and record["best_epoch"] in (1, 2) and record["wall_time_s"] > 0
    task = NoisyQuadratic(n=5, seed=0)
    losses = run(task, L2LOptimizer(task.parameters(), weights=tmp_path / "a.pt"), 3)
    assert all(math.isfinite(loss) for loss in losses)


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="out_mul"):
        L2LOptimizer(NoisyQuadratic(n=3).parameters(), out_mul=0.0)
    with pytest.raises(ValueError, match="unroll"):
        main(["--epochs", "1", "--fit-steps", "4", "--unroll", "5", "--output", "/nonexistent/w.pt"])
