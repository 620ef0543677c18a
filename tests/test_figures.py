"""The plotting stage on hand-made run records: aggregation, the paper's statistics, every figure, the report."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # experiments/ is a top-level folder, not installed
from experiments import figures, report  # noqa: E402
from experiments.aggregate import binned_curve, comparison_table, load_curves, load_runs  # noqa: E402


def write_run(
    root: Path,
    experiment: str,
    optimizer: str,
    seed: int,
    loss,
    extra=None,
    status="completed",
    steps=None,
    time_limit=None,
    task=None,
    config_extra=None,
    summary_extra=None,
):
    """One hand-made run folder: config.yaml, metrics.csv and summary.json as lodo.run writes them."""
    run_dir = root / experiment / f"optimizer={optimizer},seed={seed}"
    if config_extra and "sweep_r" in config_extra:
        run_dir = root / experiment / f"sweep_r={config_extra['sweep_r']}"
    run_dir.mkdir(parents=True)
    loss = np.asarray(loss, dtype=float)
    n = len(loss)
    steps = steps or n
    frame = pd.DataFrame(
        {
            "step": np.arange(1, n + 1),
            "iteration": np.arange(1, n + 1),
            "time": np.arange(1, n + 1) * 0.01,
            "loss": loss,
        }
    )
    for key, values in (extra or {}).items():
        frame[key] = values
    frame.to_csv(run_dir / "metrics.csv", index=False)
    optimizer_cfg = {"name": optimizer, "lr": 0.1, **((config_extra or {}).pop("optimizer", {}))}
    config = {
        "experiment": experiment,
        "scale": "smoke",
        "seed": seed,
        "steps": steps,
        "time_limit": time_limit,
        "task": task or {"name": "rosenbrock", "metric_interval": 1},
        "optimizer": optimizer_cfg,
        **(config_extra or {}),
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    window = frame[(frame.step > 0.9 * steps) & (frame.step <= steps)]["loss"]
    twin = frame[(frame.time > 0.9 * time_limit) & (frame.time <= time_limit)]["loss"] if time_limit else None
    summary = {
        "status": status,
        "steps": n,
        "train_time": n * 0.01,
        "steps_per_second": 100.0,
        "final_loss_at_steps": float(window.mean()) if len(window) else math.nan,
        "final_loss_at_time": float(twin.mean()) if twin is not None and len(twin) else None,
        "experiment": experiment,
        "task": config["task"]["name"],
        "optimizer": optimizer,
        "seed": seed,
        "milestones": {"steps": steps, "time_limit": time_limit},
        "environment": {"torch": "2.13.0", "cpu_count": 2, "processor": "x86_64"},
        **(summary_extra or {}),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def records(tmp_path):
    root = tmp_path / "runs" / "smoke"
    steps = np.arange(1, 101)
    for optimizer, scale in (("adam", 1.0), ("lodo", 2.0)):
        for seed in (0, 1):
            loss = scale * (1 + seed) / steps
            xs, ys = np.linspace(-0.5, 1, 100), np.linspace(2, 1, 100)
            write_run(root, "rosenbrock", optimizer, seed, loss, {"x": xs, "y": ys}, time_limit=0.5)
    write_run(root, "rosenbrock", "momentum", 0, [1.0] * 10 + [math.nan], status="diverged", steps=100)
    quadratic = {
        "name": "noisy_quadratic",
        "metric_interval": 10,
        "n": 10,
        "min_eigenvalue": 0.001,
        "max_eigenvalue": 1.0,
        "noise_scale": 1.0,
    }
    for optimizer in ("adam", "lodo"):
        for seed in (0, 1):
            error = np.where(steps % 10 == 0, 1 / np.sqrt(steps), np.nan) if optimizer == "lodo" else None
            write_run(
                root,
                "noisy_quadratic",
                optimizer,
                seed,
                10 + 5 / steps,
                {"hessian_error": error} if error is not None else None,
                task=quadratic,
            )
    for seed in (0, 1):
        write_run(
            root,
            "quadratic_frozen",
            "lodo",
            seed,
            9 + 1 / steps,
            {"hessian_error": np.where(steps % 10 == 0, 0.3, np.nan)},
            task=quadratic,
            config_extra={"pretrain_seed": seed},
        )
    mnist = {"name": "mnist_autoregression", "metric_interval": 50}
    for optimizer in ("adam", "lodo", "lodo_diagonal"):
        for seed in (0, 1):
            run = write_run(
                root,
                "mnist",
                optimizer,
                seed,
                5 - steps / 50,
                {"validation_loss": np.where(steps % 50 == 0, 4.0, np.nan)},
                task=mnist,
                summary_extra={"test_loss": 4.2 + seed},
            )
            if seed == 0:
                import matplotlib.pyplot as plt

                plt.imsave(run / "samples.png", np.random.default_rng(0).random((28, 28)), cmap="gray")
    for r in range(8):
        write_run(
            root,
            "mnist_depth",
            "lodo",
            0,
            3 + r / 10 + 0 * steps,
            task=mnist,
            config_extra={"sweep_r": r, "optimizer": {"depth": 4 * r}},
        )
    return tmp_path


def test_load_runs_and_the_tidy_curve_table(records):
    runs = load_runs(records / "runs" / "smoke")
    assert len(runs) == 5 + 4 + 2 + 6 + 8
    assert set(runs["experiment"]) == {"rosenbrock", "noisy_quadratic", "quadratic_frozen", "mnist", "mnist_depth"}
    assert runs[runs["experiment"] == "mnist_depth"].sort_values("sweep_r")["hp.depth"].tolist() == [
        4 * r for r in range(8)
    ]
    curves = load_curves(runs[runs["experiment"] == "rosenbrock"])
    assert {"run_dir", "experiment", "optimizer", "seed", "step", "time", "loss", "x", "y"} <= set(curves.columns)
    assert len(curves) == 4 * 100 + 11


def test_comparison_table_is_the_papers_statistic(records):
    runs = load_runs(records / "runs" / "smoke" / "rosenbrock")
    table = comparison_table(runs, ["momentum", "adam", "lodo"]).set_index("optimizer")
    windows = [np.mean([(1 + s) / t for t in range(91, 101)]) for s in (0, 1)]
    assert table.loc["adam", "loss_at_steps_mean"] == pytest.approx(np.mean(windows))
    assert table.loc["adam", "loss_at_steps_std"] == pytest.approx(np.std(windows))  # population std (ddof 0)
    assert table.loc["adam", "diverged_at_steps"] == "0/2"
    assert table.loc["momentum", "diverged_at_steps"] == "1/1" and math.isnan(
        table.loc["momentum", "loss_at_steps_mean"]
    )
    assert table.loc["lodo", "loss_at_time_mean"] == pytest.approx(2 * table.loc["adam", "loss_at_time_mean"])


def test_binned_curve_follows_reference_8_3():
    rows = []
    for run, offset in (("a", 0.0), ("b", 2.0)):
        for step in range(1, 1001):
            rows.append({"run_dir": run, "step": step, "loss": offset + step})
    curves = pd.DataFrame(rows)
    binned = binned_curve(curves, "step", 1000)
    assert len(binned) == 500  # min(500, points below x_max)
    assert binned["mean"].iloc[0] == pytest.approx(2.0)  # bin [0, 2) holds step 1: a 1, b 3
    assert binned["std"].iloc[0] == pytest.approx(1.0)  # population std across the two runs
    few = binned_curve(curves[curves["step"] <= 20], "step", None)
    assert len(few) == 20
    nan_run = pd.DataFrame({"run_dir": "c", "step": [1, 2, 3, 4], "loss": [1.0, math.nan, 1.0, 1.0]})
    assert binned_curve(nan_run, "step", 4)["x"].tolist() == pytest.approx([2 / 3, 10 / 3])  # NaN bin dropped


def test_colours_follow_reference_8_4():
    assert figures.colour("adam") == (1, 0, 0) and figures.colour("momentum") == (0, 0, 1)
    assert figures.colour("lodo") == (0, 0, 0) and figures.colour("lodo_diagonal") == (1, 0, 1)
    assert figures.colour("olbfgs") == (0.8, 0.8, 0) and figures.colour("lbfgs_no_line_search") == (0, 0.4, 0)


def test_every_figure_function_writes_png_and_pdf(records, tmp_path):
    root = records / "runs" / "smoke"
    runs = load_runs(root)
    out = tmp_path / "figures"

    def made(path):
        assert path is not None and path.exists() and path.with_suffix(".pdf").exists()

    ros = runs[runs["experiment"] == "rosenbrock"]
    curves = load_curves(ros)
    made(figures.learning_curves(curves, out / "by_step", "step", 100, log_y=True, clip=(0, 0.1)))
    made(figures.learning_curves(curves, out / "by_time", "time", 0.5))
    made(figures.rosenbrock_trajectories(curves, out / "trajectories"))
    quad = load_curves(runs[runs["experiment"] == "noisy_quadratic"])
    made(figures.learning_curves(quad[quad.optimizer == "lodo"], out / "hessian", "step", 100, column="hessian_error"))
    frozen = load_curves(runs[runs["experiment"] == "quadratic_frozen"])
    made(figures.frozen_vs_on_the_fly(quad[quad.optimizer == "lodo"], frozen, out / "frozen", newton=7.4))
    sweep_runs = runs[runs["experiment"] == "mnist_depth"]
    made(figures.sweep(sweep_runs, load_curves(sweep_runs), "depth", out / "depth", lodo_std=0.1))
    made(figures.sample_grid(runs[runs["experiment"] == "mnist"], out / "samples"))
    spread = pd.DataFrame(
        {"optimizer": ["adam", "adam", "lodo"], "tune_seed": [0, 1, 0], "check_loss": [1e-4, 1e-3, 1e-2]}
    )
    made(figures.tuning_spread(spread, out / "spread"))


def test_the_report_has_every_table_and_figure(records, tmp_path):
    out = tmp_path / "results"
    path = report.build("smoke", records / "runs", out, wandb=False, timings={"rosenbrock": 1.0})
    text = path.read_text()
    for experiment in ("rosenbrock", "noisy_quadratic", "quadratic_frozen", "mnist", "mnist_depth"):
        assert f"## Experiment `{experiment}`" in text
        assert (out / experiment / "table.csv").exists() and (out / experiment / "table.md").exists()
    for figure in (
        "rosenbrock/learning_curves_by_step",
        "rosenbrock/trajectories",
        "noisy_quadratic/hessian_error_by_step",
        "quadratic_frozen/frozen_loss",
        "mnist/samples",
        "mnist_depth/depth_variation",
        "mnist/validation_loss_by_step",
    ):
        assert (out / f"{figure}.png").exists() and (out / f"{figure}.pdf").exists(), figure
        assert f"({figure}.png)" in text
    assert "read off its figure" in text and "Missing" in text and "mnist_beta" in text
    newton = report.newton_line(str(next((records / "runs" / "smoke" / "noisy_quadratic").iterdir())))
    eigenvalues = np.logspace(-3, 0, 10)
    assert newton == pytest.approx(eigenvalues.sum() / 2)
    assert f"{newton:.6g}" in text
    assert (out / "runs.csv").exists()
