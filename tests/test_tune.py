"""The paper's ES tuner (METHODS.md §5, §A.4.1 and §A.6): normalization, selection, convergence, resumption."""

import argparse
import json
import math

import numpy as np
import pytest

from lodo.tune import SCHEDULES, denormalize, evolve, is_decay, median_seed, normalize, score, select, tune


def test_decay_type_names_follow_reference_4_1():
    assert [is_decay(n) for n in ("beta", "beta_1", "beta2", "momentum", "lr", "rho", "meta_lr", "lam")] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]


def test_normalization_round_trips_and_clips_decay_values_at_zero():
    names = ["lr", "beta", "momentum"]
    values = [0.03, 0.9, 0.0]
    assert list(denormalize(names, normalize(names, values)).values()) == pytest.approx(values)
    assert normalize(["beta"], [0.9])[0] == pytest.approx(math.log(0.1))
    assert denormalize(["beta"], [0.5])["beta"] == 0.0  # 1 − e^0.5 < 0 is clipped (METHODS.md §A.4.1)


def test_score_counts_non_finite_losses_as_failures():
    assert (
        score(0.5) == 0.5 and score(math.nan) == math.inf and score(None) == math.inf and score(-math.inf) == math.inf
    )


def test_selection_keeps_the_best_half_of_the_finite_samples():
    samples = np.arange(8, dtype=float).reshape(8, 1)
    scores = [5, 1, math.inf, 3, 0, math.inf, 2, 9]
    assert select(samples, scores) == pytest.approx([(4 + 1 + 6 + 3) / 4])  # best 4 of 8: indices 4, 1, 6, 3
    mostly_failed = [math.inf] * 6 + [1.0, 2.0]
    assert select(samples, mostly_failed) == pytest.approx([6.5])  # min(#finite, N/2) = 2
    assert select(samples, [math.inf] * 8) is None


def test_the_es_finds_the_minimum_of_a_synthetic_objective():
    target = {"lr": 0.02, "beta": 0.99}
    names = list(target)
    goal = normalize(names, list(target.values()))

    def objective(generation, batch, steps):
        return [float(np.sum((normalize(names, list(h.values())) - goal) ** 2)) for _, h in batch]

    sigmas, steps = SCHEDULES["rosenbrock"]
    tuned, history = evolve(names, [1.0, 0.5], objective, sigmas, steps, samples=32, seed=0)
    assert len(history) == 10 and all(len(g.scores) == 32 for g in history)
    assert tuned["lr"] == pytest.approx(0.02, rel=0.3) and tuned["beta"] == pytest.approx(0.99, abs=0.005)
    again, _ = evolve(names, [1.0, 0.5], objective, sigmas, steps, samples=32, seed=0)
    assert again == tuned  # draws depend only on (seed, generation): a resumed tuning is identical


def test_tuning_runs_through_the_runner_and_resumes(tmp_path):
    args = argparse.Namespace(
        seeds=[0],
        jobs=1,
        schedule=None,
        max_steps=5,
        samples=4,
        generations=2,
        runs=str(tmp_path),
        write=False,
        progress=False,
    )
    report = tune(["task=rosenbrock", "optimizer=momentum"], args)
    samples = sorted(tmp_path.glob("rosenbrock/momentum/tune_seed0/gen*/sample*/summary.json"))
    assert len(samples) == 8
    assert report["schedule"]["steps"] == [5, 5] and report["generation0"] == {"lr": 0.01, "momentum": 0.0}
    for path in samples:  # a marker that a rerun sample would lose: the records are read back, not rewritten
        path.write_text(json.dumps({**json.loads(path.read_text()), "marker": path.parent.name}))
    before = [(p.read_text(), (p.parent / "metrics.csv").read_text()) for p in samples]
    again = tune(["task=rosenbrock", "optimizer=momentum"], args)
    assert [(p.read_text(), (p.parent / "metrics.csv").read_text()) for p in samples] == before
    assert again["results"]["0"]["tuned"] == report["results"]["0"]["tuned"]
    # Another budget is another request: the samples are rerun, the old ones moved aside, not reused.
    args.max_steps, args.generations = 6, 1
    tune(["task=rosenbrock", "optimizer=momentum"], args)
    gen0 = sorted(tmp_path.glob("rosenbrock/momentum/tune_seed0/gen0/sample*/summary.json"))
    assert [json.loads(p.read_text())["steps"] for p in gen0] == [6] * 4
    assert len(list(tmp_path.glob("rosenbrock/momentum/tune_seed0/gen0/sample*/stale-*/summary.stale.json"))) == 4


def test_the_written_values_are_the_median_tuning_seeds_never_silently_the_first():
    def report(*checks):
        return {"results": {str(seed): {"check_loss": c} for seed, c in enumerate(checks)}}

    assert median_seed(report(0.5, 0.1, 0.3)) == 2  # median of three
    assert median_seed(report(0.1, 0.5, math.nan)) == 1  # a failed check counts as +inf
    assert median_seed(report(0.4, 0.2, 0.3, 0.1)) == 1  # the lower median of four: 0.2
    assert median_seed(report(7.0)) == 0
