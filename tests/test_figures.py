"""The plotting stage on hand-made run records: aggregation, the paper's statistics, what every figure draws, the
report.

Every input is a run folder written under ``tmp_path`` with the runner's own writers (``write_record`` in
conftest.py: config.yaml, metrics.csv, summary.json as lodo/records.py writes them); nothing is read from the
repository's ``runs/``, ``results/`` or ``configs/``. The figure functions return the path of the PNG they saved;
the Figure itself is taken where they hand it to :func:`experiments.figures.save` (the ``drawn`` fixture), and the
tests assert on its artists: axis labels and scales, one labelled line per optimizer with its mean, the legend,
reference lines, clipping marks.
"""

import json
import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection, PolyCollection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # experiments/ is a top-level folder, not installed
from experiments import figures, report  # noqa: E402
from experiments.aggregate import (  # noqa: E402
    binned_curve,
    comparison_table,
    load_curves,
    load_runs,
    load_tuning,
    metric_ends,
)
from lodo.records import config_hash, final_window_mean  # noqa: E402
from lodo.tasks.rosenbrock import Rosenbrock  # noqa: E402

STEPS = np.arange(1, 101)
QUADRATIC = {
    "name": "noisy_quadratic",
    "metric_interval": 10,
    "n": 10,
    "min_eigenvalue": 0.001,
    "max_eigenvalue": 1.0,
    "noise_scale": 1.0,
}
MNIST = {"name": "mnist_autoregression", "metric_interval": 50}
NEWTON = 2.5  # the quadratic records' Newton floor ½σ² tr H (their provenance)
HESSIAN_REFERENCE = {"start": 0.96, "best_scalar": 0.85, "best_diagonal": 0.84}


@pytest.fixture
def write_run(write_record):
    """Write one run folder as ``lodo.run`` does; returns its path.

    ``loss`` gives one row per iteration (step = iteration = 1, 2, …; time = step·``dt``); ``extra`` maps a tracked
    metric to its values, NaN where it was not evaluated (an empty cell). The summary holds what the runner writes
    (final-window losses at both milestones, ``diverged_at_*``, ``config_hash``, …) plus ``summary_extra``;
    ``legacy=True`` leaves out ``diverged_at_*``, as records made before the runner wrote them.
    """

    def write(
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
        dt=0.01,
        legacy=False,
    ) -> Path:
        config_extra = dict(config_extra or {})
        folder = f"optimizer={optimizer},seed={seed}"
        if "sweep_r" in config_extra:
            folder = f"seed={seed},sweep_r={config_extra['sweep_r']}"
        loss = np.asarray(loss, dtype=float)
        n = len(loss)
        steps = steps or n
        step = np.arange(1, n + 1)
        extra = {k: np.asarray(v, dtype=float) for k, v in (extra or {}).items()}
        rows = []
        for i in range(n):
            row = {"step": int(step[i]), "iteration": int(step[i]), "time": float(step[i] * dt), "loss": float(loss[i])}
            row.update({k: float(v[i]) for k, v in extra.items() if np.isfinite(v[i])})
            rows.append(row)
        config = {
            "experiment": experiment,
            "scale": "smoke",
            "seed": seed,
            "steps": steps,
            "time_limit": time_limit,
            "task": task or {"name": "rosenbrock", "metric_interval": 1},
            "optimizer": {"name": optimizer, "lr": 0.1, **config_extra.pop("optimizer", {})},
            **config_extra,
        }
        diverged = status == "diverged"
        summary = {
            "status": status,
            "reason": f"non-finite loss nan at step {n}" if diverged else None,
            "steps": n,
            "iterations": n,
            "train_time": n * dt,
            "steps_per_second": 1 / dt,
            "final_loss_at_steps": final_window_mean(step, loss, steps),
            "final_loss_at_time": final_window_mean(step * dt, loss, time_limit) if time_limit else None,
            "diverged_at_steps": diverged and n <= steps,
            "diverged_at_time": (diverged and n * dt <= time_limit) if time_limit else None,
            "experiment": experiment,
            "task": config["task"]["name"],
            "optimizer": optimizer,
            "seed": seed,
            "milestones": {"steps": steps, "time_limit": time_limit},
            "config_hash": config_hash(config),
            "environment": {"torch": "2.13.0", "cpu_count": 2, "processor": "x86_64"},
            "wandb": None,
            **(summary_extra or {}),
        }
        if legacy:
            for key in ("diverged_at_steps", "diverged_at_time"):
                if key not in (summary_extra or {}):
                    del summary[key]
        return write_record(root / experiment / folder, config, rows, summary, metric_names=list(extra))

    return write


def quadratic_summary(optimizer: str | None) -> dict:
    tuned = {"path": f"configs/tuned/noisy_quadratic/{optimizer}.yaml", "sha256": "abcdef0123456789"}
    return {
        "provenance": {
            "tuned": tuned if optimizer else None,
            "newton_floor": NEWTON,
            "preconditioner_checkpoint": None,
        },
        "hessian_reference": HESSIAN_REFERENCE,
    }


@pytest.fixture
def records(tmp_path, write_run):
    """Run records of five experiments under ``tmp_path/runs/smoke``; returns ``tmp_path``."""
    root = tmp_path / "runs" / "smoke"
    xs, ys = np.linspace(-0.5, 1, 100), np.linspace(2, 1, 100)
    for optimizer, scale in (("adam", 1.0), ("lodo", 2.0)):
        for seed in (0, 1):
            trajectory = {"x": xs + seed, "y": ys}  # seed 1 elsewhere: the figure draws the lowest seed
            write_run(root, "rosenbrock", optimizer, seed, scale * (1 + seed) / STEPS, trajectory, time_limit=0.5)
    write_run(root, "rosenbrock", "momentum", 0, [1.0] * 10 + [math.nan], status="diverged", steps=100)
    every_10 = STEPS % 10 == 0
    for optimizer in ("adam", "lodo"):
        for seed in (0, 1):
            error = {"hessian_error": np.where(every_10, 1 / np.sqrt(STEPS), np.nan)} if optimizer == "lodo" else None
            loss = 10 + 5 / STEPS
            write_run(
                root,
                "noisy_quadratic",
                optimizer,
                seed,
                loss,
                error,
                task=QUADRATIC,
                summary_extra=quadratic_summary(optimizer),
            )
    write_run(  # generation-0 defaults: no tuned file in its provenance (NaN in the tidy table)
        root,
        "noisy_quadratic",
        "lodo_diagonal",
        0,
        12 + 5 / STEPS,
        task=QUADRATIC,
        summary_extra=quadratic_summary(None),
    )
    for seed in (0, 1):
        write_run(
            root,
            "quadratic_frozen",
            "lodo",
            seed,
            9 + 1 / STEPS,
            {"hessian_error": np.where(every_10, 0.3, np.nan)},
            task=QUADRATIC,
            config_extra={"pretrain_seed": seed},
            summary_extra=quadratic_summary("lodo"),
        )
    write_run(  # the control: θ learned on one H, frozen, on a fresh eigenbasis (diverges)
        root,
        "quadratic_frozen",
        "lodo",
        1000,
        [9.0] * 10 + [math.nan],
        status="diverged",
        steps=100,
        task=QUADRATIC,
        config_extra={"pretrain_seed": 0},
        summary_extra=quadratic_summary("lodo"),
    )
    for optimizer in ("adam", "lodo", "lodo_diagonal"):
        for seed in (0, 1):
            run = write_run(
                root,
                "mnist",
                optimizer,
                seed,
                5 - STEPS / 50,
                {"validation_loss": np.where(STEPS % 50 == 0, 4.0, np.nan)},
                task=MNIST,
                summary_extra={"test_loss": 4.2 + seed},
            )
            if seed == 0:
                plt.imsave(run / "samples.png", np.random.default_rng(0).random((28, 28)), cmap="gray")
    for r in range(8):
        write_run(
            root,
            "mnist_depth",
            "lodo",
            0,
            3 + r / 10 + 0 * STEPS,
            task=MNIST,
            config_extra={"sweep_r": r, "optimizer": {"depth": 4 * r}},
        )
    return tmp_path


def experiment(records: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs table and the tidy curves of one experiment of the ``records`` fixture."""
    runs = load_runs(records / "runs" / "smoke" / name)
    return runs, load_curves(runs)


# --- aggregation ---------------------------------------------------------------------------------------------------


def test_load_runs_and_the_tidy_curve_table(records):
    runs = load_runs(records / "runs" / "smoke")
    assert len(runs) == 5 + 5 + 3 + 6 + 8
    assert set(runs["experiment"]) == {"rosenbrock", "noisy_quadratic", "quadratic_frozen", "mnist", "mnist_depth"}
    assert runs[runs["experiment"] == "mnist_depth"].sort_values("sweep_r")["hp.depth"].tolist() == [
        4 * r for r in range(8)
    ]
    curves = load_curves(runs[runs["experiment"] == "rosenbrock"])
    assert {"run_dir", "experiment", "optimizer", "seed", "step", "time", "loss", "x", "y"} <= set(curves.columns)
    assert len(curves) == 4 * 100 + 11
    quadratic = runs[runs["experiment"] == "noisy_quadratic"]
    assert quadratic["has_provenance"].all() and quadratic["newton_floor"].notna().all()
    assert not runs[runs["experiment"] == "rosenbrock"]["has_provenance"].any()  # old records: source unknown
    errors = load_curves(quadratic[quadratic["optimizer"] == "lodo"])["hessian_error"]
    assert errors.notna().sum() == 2 * 10  # an empty cell where the metric was not evaluated


def test_an_unreadable_record_is_skipped_with_a_warning_naming_it(records, write_run):
    root = records / "runs" / "smoke"
    broken = write_run(root, "rosenbrock", "yogi", 0, [1.0] * 10)
    (broken / "summary.json").write_text('{"status": "compl')  # cut off mid-write
    truncated = write_run(root, "rosenbrock", "rmsprop", 0, [1.0] * 10)
    with open(truncated / "metrics.csv", "a") as f:
        f.write("11,11,0.11")  # a last row without its loss and newline
    garbage = write_run(root, "rosenbrock", "lars", 0, [1.0] * 10)
    (garbage / "metrics.csv").write_bytes(b"\x00\xff\xfe garbage")
    with pytest.warns(UserWarning) as caught:
        runs = load_runs(root)
        curves = load_curves(runs)
    messages = " ".join(str(w.message) for w in caught)
    assert str(broken) in messages and str(truncated / "metrics.csv") in messages and str(garbage) in messages
    assert "yogi" not in set(runs["optimizer"])
    kept = curves[curves["optimizer"] == "rmsprop"]
    assert len(kept) == 10 and kept["loss"].notna().all()  # the cut row is dropped, not read as a divergence
    assert "lars" not in set(curves["optimizer"])


def test_a_divergence_counts_only_against_the_milestones_it_happened_by(tmp_path, write_run):
    root = tmp_path / "runs"
    late = [1.0] * 14 + [math.nan]  # diverged at step 15, after the step milestone 10
    # Records without diverged_at_*: when the run diverged is read off its metrics.csv.
    write_run(root, "x", "late", 0, late, status="diverged", steps=10, time_limit=1.0, legacy=True)
    write_run(root, "x", "early", 0, [1.0] * 4 + [math.nan], status="diverged", steps=10, legacy=True)
    write_run(root, "x", "told", 0, late, status="diverged", steps=10, summary_extra={"diverged_at_steps": True})
    write_run(root, "x", "runner", 0, late, status="diverged", steps=10, time_limit=1.0)  # as the runner writes it
    runs = load_runs(root).set_index("optimizer")
    assert not runs.loc["late", "diverged_at_steps"] and not runs.loc["runner", "diverged_at_steps"]
    assert runs.loc["late", "diverged_at_time"] and runs.loc["runner", "diverged_at_time"]  # by 1 s = step 100
    assert runs.loc["early", "diverged_at_steps"] and runs.loc["told", "diverged_at_steps"]
    table = comparison_table(runs.reset_index()).set_index("optimizer")
    assert table.loc["late", "diverged_at_steps"] == "0/1" and table.loc["late", "loss_at_steps_mean"] == 1.0
    assert table.loc["early", "diverged_at_steps"] == "1/1"


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


def test_binned_curve_is_the_papers_binned_mean_and_std():
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


def test_hessian_error_ends_use_only_records_up_to_the_step_milestone():
    rows = [{"run_dir": "a", "step": s, "hessian_error": 1.0 - s / 1000} for s in (0, 100, 200, 300)]
    runs = pd.DataFrame({"run_dir": ["a", "b"], "milestone_steps": [200, 200]})
    ends = metric_ends(runs, pd.DataFrame(rows)).set_index("run_dir")
    assert ends.loc["a", "first_hessian_error"] == 1.0 and ends.loc["a", "final_hessian_error"] == 0.8
    assert math.isnan(ends.loc["b", "final_hessian_error"])  # never recorded


def write_tuning(root: Path, task: str, optimizer: str, checks: dict[int, float]) -> None:
    history = {
        "task": task,
        "optimizer": optimizer,
        "schedule": {"sigma": [3, 2], "steps": [200, 200], "samples": 32},
        "results": {str(s): {"tuned": {"lr": 0.1 * (s + 1)}, "check_loss": c} for s, c in checks.items()},
    }
    (root / task).mkdir(parents=True, exist_ok=True)
    (root / task / f"{optimizer}.json").write_text(json.dumps(history))


def test_tuning_histories_load_and_an_unreadable_one_is_skipped(tmp_path):
    write_tuning(tmp_path, "rosenbrock", "adam", {0: 1e-4, 1: 2e-4})
    (tmp_path / "rosenbrock" / "lodo.json").write_text('{"task": "rosenbrock", "resu')
    with pytest.warns(UserWarning, match="lodo.json"):
        table = load_tuning(tmp_path)
    assert table["tune_seed"].tolist() == [0, 1] and table["horizon"].tolist() == [200, 200]
    assert table["tuned.lr"].tolist() == [0.1, 0.2]


# --- what the figures draw -----------------------------------------------------------------------------------------


@pytest.fixture
def drawn(monkeypatch):
    """The Figure of every figure saved while the test runs, by the path it is saved under (without suffix).

    The figure functions return the PNG's path; they hand the Figure to ``figures.save``, which writes and closes it.
    A closed Figure keeps its artists, so the tests inspect it after the function returns.
    """
    saved = {}
    save = figures.save

    def capture(fig, path):
        saved[Path(path).with_suffix("")] = fig
        return save(fig, path)

    monkeypatch.setattr(figures, "save", capture)
    return saved


def labelled(ax) -> dict:
    """The axes' labelled lines by label, in drawing order (unlabelled marks and the grid excluded)."""
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def unlabelled(ax) -> list:
    return [line for line in ax.get_lines() if line.get_label().startswith("_")]


def legend(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_learning_curves_by_step_draw_each_optimizers_mean_and_band_on_a_log_axis(records, drawn, tmp_path):
    runs, curves = experiment(records, "rosenbrock")
    path = figures.learning_curves(
        curves, tmp_path / "by_step", "step", 100, ["momentum", "adam", "lodo"], True, title="T"
    )
    assert path == tmp_path / "by_step.png" and path.exists() and path.with_suffix(".pdf").exists()
    fig = drawn[tmp_path / "by_step"]
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_yscale(), ax.get_title()) == ("step", "training loss", "log", "T")
    lines = labelled(ax)
    assert list(lines) == ["Momentum (1 run)", "Adam (2 runs)", "LODO (2 runs)"] == legend(ax)
    assert [line.get_color() for line in lines.values()] == [figures.colour(n) for n in ("momentum", "adam", "lodo")]
    adam, lodo = lines["Adam (2 runs)"], lines["LODO (2 runs)"]
    # 99 bins of width 100/99 before the milestone, one step each: the mean over seeds 0, 1 of (1 + seed)/step.
    assert adam.get_ydata() == pytest.approx(1.5 / np.arange(1, 100))
    assert list(lodo.get_xdata()) == list(adam.get_xdata()) and max(adam.get_xdata()) <= 100
    assert lodo.get_ydata() == pytest.approx(2 * adam.get_ydata())  # the records' LODO losses are twice Adam's
    momentum = lines["Momentum (1 run)"]
    assert len(momentum.get_xdata()) == 10 and np.isfinite(momentum.get_ydata()).all()  # ends where it diverged
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 3  # mean ± std over runs around each curve
    assert not unlabelled(ax)  # nothing clipped, no Newton line


def test_learning_curves_by_time_in_seconds_and_past_an_hour_in_hours(records, write_run, drawn, tmp_path):
    runs, curves = experiment(records, "rosenbrock")
    figures.learning_curves(curves, tmp_path / "seconds", "time", 0.5, ["adam", "lodo"])
    ax = drawn[tmp_path / "seconds"].axes[0]
    assert ax.get_xlabel() == "time (s)" and ax.get_yscale() == "linear"
    assert max(labelled(ax)["Adam (2 runs)"].get_xdata()) <= 0.5
    long = write_run(tmp_path / "long", "x", "adam", 0, 1 / STEPS, dt=100.0, time_limit=7200)  # 100 steps, 10,000 s
    figures.learning_curves(load_curves(load_runs(long.parent)), tmp_path / "hours", "time", 7200)
    ax = drawn[tmp_path / "hours"].axes[0]
    (line,) = labelled(ax).values()
    assert ax.get_xlabel() == "time (h)" and 1.9 < max(line.get_xdata()) <= 2.0  # 7,200 s = 2 h


def test_a_clipped_curve_says_so_and_marks_its_cut_points_beside_the_newton_line(records, write_run, drawn, tmp_path):
    root = records / "runs" / "smoke"
    write_run(
        root, "noisy_quadratic", "bfgs", 0, 1e4 + 0 * STEPS, task=QUADRATIC, summary_extra=quadratic_summary("bfgs")
    )
    runs, curves = experiment(records, "noisy_quadratic")
    figures.learning_curves(curves, tmp_path / "clip", "step", 100, ["adam", "bfgs"], clip=(0, 40), newton=NEWTON)
    ax = drawn[tmp_path / "clip"].axes[0]
    lines = labelled(ax)
    assert list(lines) == ["Adam (2 runs)", "BFGS (1 run), clipped to [0, 40]", "Newton ½·tr H = 2.5"] == legend(ax)
    bfgs = lines["BFGS (1 run), clipped to [0, 40]"]
    assert (bfgs.get_ydata() == 40).all()
    (marks,) = unlabelled(ax)  # open triangles on the cut points
    assert marks.get_marker() == "^" and marks.get_fillstyle() == "none" and marks.get_linestyle() == "None"
    assert list(marks.get_xdata()) == list(bfgs.get_xdata()) and (marks.get_ydata() == 40).all()
    newton = lines["Newton ½·tr H = 2.5"]
    assert list(newton.get_ydata()) == [NEWTON, NEWTON] and newton.get_linestyle() == "--"
    assert lines["Adam (2 runs)"].get_ydata() == pytest.approx(10 + 5 / np.arange(1, 100))  # unclipped
    assert ax.get_ylim()[0] == 0  # a linear loss axis starts at 0


def test_lodo_diagonal_is_drawn_without_a_band(records, drawn, tmp_path):
    runs, curves = experiment(records, "noisy_quadratic")
    figures.learning_curves(curves, tmp_path / "diagonal", "step", 100, ["adam", "lodo_diagonal"])
    ax = drawn[tmp_path / "diagonal"].axes[0]
    assert list(labelled(ax)) == ["Adam (2 runs)", "LODO-Diagonal (1 run)"]
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]  # Adam's only, as in the authors' plots
    assert tuple(band.get_facecolor()[0][:3]) == pytest.approx((1.0, 0.5, 0.5))  # Adam's red, lightened


def test_nothing_to_draw_draws_nothing_and_leaves_no_open_figure(records, drawn, tmp_path):
    runs, curves = experiment(records, "rosenbrock")
    open_before = plt.get_fignums()
    assert figures.learning_curves(curves, tmp_path / "none", "step", 100, column="validation_loss") is None
    assert figures.hessian_error(curves, tmp_path / "none") is None  # Rosenbrock records have no Hessian error
    assert not drawn and not list(tmp_path.glob("none.*")) and plt.get_fignums() == open_before


def test_a_metric_recorded_only_at_the_milestone_is_drawn_as_a_point(write_run, drawn, tmp_path):
    validation = np.where(np.arange(1, 21) == 20, 3.0, np.nan)
    run = write_run(tmp_path, "mnist", "adam", 0, [1.0] * 20, {"validation_loss": validation}, task=MNIST)
    curves = load_curves(load_runs(run.parent))
    figures.learning_curves(curves, tmp_path / "val", "step", 20, column="validation_loss", ylabel="validation loss")
    ax = drawn[tmp_path / "val"].axes[0]
    (line,) = labelled(ax).values()
    assert ax.get_ylabel() == "validation loss"
    assert list(line.get_xdata()) == [20] and list(line.get_ydata()) == [3.0]
    assert line.get_marker() not in ("", "None", None)  # a single point is visible


def test_hessian_error_by_step_on_a_log_axis_with_the_records_references(records, drawn, tmp_path):
    runs, curves = experiment(records, "noisy_quadratic")
    references = {
        "G = α₀I (LODO's start)": runs["hessian_start"].mean(),
        "best scalar G = cI": runs["hessian_best_scalar"].mean(),
        "best diagonal G": runs["hessian_best_diagonal"].mean(),
    }
    figures.hessian_error(curves, tmp_path / "h", ["adam", "lodo"], references, 50, title="T")
    ax = drawn[tmp_path / "h"].axes[0]
    assert ax.get_xscale() == "symlog" and ax.get_xlim()[0] == 0 and ax.get_title() == "T"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("step (log scale; 0 shown)", "‖I − GH‖_F / √n")
    lines = labelled(ax)
    expected = ["LODO (2 runs)"]  # Adam records no Hessian error
    expected += ["G = α₀I (LODO's start): 0.96", "best scalar G = cI: 0.85", "best diagonal G: 0.84", "G = H⁻¹: 0"]
    assert list(lines) == expected == legend(ax)
    lodo = lines["LODO (2 runs)"]
    assert list(lodo.get_xdata()) == [10, 20, 30, 40, 50]  # recorded steps up to the milestone
    assert lodo.get_ydata() == pytest.approx(1 / np.sqrt([10, 20, 30, 40, 50]))
    for (name, value), line in zip(HESSIAN_REFERENCE.items(), list(lines.values())[1:4]):
        assert list(line.get_ydata()) == pytest.approx([value, value]) and line.get_linestyle() == ":", name
    assert list(lines["G = H⁻¹: 0"].get_ydata()) == [0, 0]


def test_the_hessian_error_figure_draws_step_0_where_recorded(drawn, tmp_path):
    rows = [  # a tidy table with a row at step 0 (the runner's records start at step 1)
        {"run_dir": f"r{s}", "optimizer": "lodo", "seed": s, "step": t, "hessian_error": 0.96 - 0.01 * np.log1p(t)}
        for s in (0, 1)
        for t in (0, 10, 100, 1000)
    ]
    figures.hessian_error(pd.DataFrame(rows), tmp_path / "h", ["lodo"], {}, 1000)
    ax = drawn[tmp_path / "h"].axes[0]
    lines = labelled(ax)
    assert list(lines) == ["LODO (2 runs)", "G = H⁻¹: 0"]
    assert list(lines["LODO (2 runs)"].get_xdata()) == [0, 10, 100, 1000] and ax.get_xlim()[0] == 0


def test_rosenbrock_trajectories_start_at_the_start_over_the_map_with_the_minimum(records, drawn, tmp_path):
    runs, curves = experiment(records, "rosenbrock")
    figures.rosenbrock_trajectories(curves, tmp_path / "traj", ["adam", "lodo"])
    fig = drawn[tmp_path / "traj"]
    ax, colorbar = fig.axes
    assert colorbar.get_ylabel() == "log(f + 1e-3)" and (ax.get_xlabel(), ax.get_ylabel()) == ("x", "y")
    (heat,) = ax.images
    assert tuple(heat.get_extent()) == figures.MAP == (*ax.get_xlim(), *ax.get_ylim())  # every path fits the map
    lines = labelled(ax)
    assert list(lines) == ["Adam", "LODO"] == legend(ax)
    start = np.array(Rosenbrock.start, dtype=float)
    for line in lines.values():  # the lowest seed's path (seed 1's is shifted by 1 in x), from the start point
        assert list(line.get_xdata()) == pytest.approx([start[0], *np.linspace(-0.5, 1, 100)])
        assert list(line.get_ydata()) == pytest.approx([start[1], *np.linspace(2, 1, 100)])
    (star,) = unlabelled(ax)
    assert star.get_marker() == "*" and (list(star.get_xdata()), list(star.get_ydata())) == ([1], [1])


def test_a_trajectory_that_leaves_the_map_widens_it_up_to_a_limit_and_is_marked_clipped(write_run, drawn, tmp_path):
    t = np.arange(1, 11)
    write_run(tmp_path, "rosenbrock", "adam", 0, 1 / t, {"x": 2.5 * t / 10, "y": 1.0 + 0 * t})
    write_run(tmp_path, "rosenbrock", "lodo", 0, 1 / t, {"x": 100.0 * t, "y": 1.0 + 0 * t})
    figures.rosenbrock_trajectories(load_curves(load_runs(tmp_path / "rosenbrock")), tmp_path / "traj")
    ax = drawn[tmp_path / "traj"].axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x1 == figures.MAP_LIMIT[1]  # widened past Adam's 2.5, and no further than the limit
    lines = labelled(ax)
    assert list(lines) == ["Adam", "LODO (clipped: leaves the map)"]
    for line in lines.values():
        assert x0 <= min(line.get_xdata()) and max(line.get_xdata()) <= x1
        assert y0 <= min(line.get_ydata()) and max(line.get_ydata()) <= y1
    assert max(lines["Adam"].get_xdata()) == 2.5  # drawn whole


def frozen_variants(records) -> pd.DataFrame:
    """The frozen test's three variants as the report groups them (experiments/sections.py, report_frozen)."""
    quadratic_runs, quadratic = experiment(records, "noisy_quadratic")
    runs, frozen = experiment(records, "quadratic_frozen")
    fresh = set(runs.loc[runs["seed"] != runs["pretrain_seed"], "run_dir"])
    return pd.concat(
        [
            quadratic[quadratic["optimizer"] == "lodo"].assign(optimizer="LODO on the fly"),
            frozen[~frozen["run_dir"].isin(fresh)].assign(optimizer="frozen θ, same Hessian"),
            frozen[frozen["run_dir"].isin(fresh)].assign(optimizer="frozen θ, fresh eigenbasis"),
        ],
        ignore_index=True,
    )


def test_frozen_vs_on_the_fly_loss_and_hessian_error(records, drawn, tmp_path):
    tidy = frozen_variants(records)
    variants = ["LODO on the fly", "frozen θ, same Hessian", "frozen θ, fresh eigenbasis"]
    figures.frozen_vs_on_the_fly(tidy, tmp_path / "loss", variants, "loss", 100, NEWTON)
    ax = drawn[tmp_path / "loss"].axes[0]
    lines = labelled(ax)
    assert list(lines) == [
        "LODO on the fly (2 runs)",
        "frozen θ, same Hessian (2 runs)",
        "frozen θ, fresh eigenbasis (1 run)",
        "Newton ½·tr H = 2.5",
    ]
    assert [line.get_color() for line in list(lines.values())[:3]] == [figures.colour(v) for v in variants]
    assert figures.colour(variants[1]) != figures.colour(variants[2])
    assert len(lines["frozen θ, fresh eigenbasis (1 run)"].get_xdata()) == 10  # the control diverged at step 11
    assert ax.get_ylabel() == "training loss"
    figures.frozen_vs_on_the_fly(tidy, tmp_path / "error", variants, "hessian_error", 100, NEWTON)
    ax = drawn[tmp_path / "error"].axes[0]
    lines = labelled(ax)
    assert ax.get_ylabel() == "‖I − GH‖_F / √n" and not any("Newton" in t for t in lines)  # no Newton line here
    assert list(lines) == ["LODO on the fly (2 runs)", "frozen θ, same Hessian (2 runs)"]  # the control records none
    assert lines["frozen θ, same Hessian (2 runs)"].get_ydata() == pytest.approx(0.3)


def test_a_sweep_with_one_seed_per_value_draws_the_authors_error_bars_and_band(records, drawn, tmp_path):
    runs, curves = experiment(records, "mnist_depth")
    figures.sweep(runs, curves, "depth", tmp_path / "depth", lodo_std=0.1, title="T")
    ax = drawn[tmp_path / "depth"].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("depth", "final-window training loss", "T")
    (bar,) = ax.containers
    line = bar.lines[0]
    assert list(line.get_xdata()) == [4 * r for r in range(8)]
    assert line.get_ydata() == pytest.approx([3 + r / 10 for r in range(8)])
    (bars,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [s[1][1] - s[0][1] for s in bars.get_segments()] == pytest.approx([0.2] * 8)  # ± the main LODO runs' std
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 1  # the grey band
    figures.sweep(runs, curves, "depth", tmp_path / "no_std")
    ax = drawn[tmp_path / "no_std"].axes[0]
    assert not [c for c in ax.collections if isinstance(c, LineCollection)]  # no main runs: no error bars


def test_a_sweep_with_several_seeds_gives_each_point_its_own_error_bar(write_run, drawn, tmp_path):
    for r in range(4):
        for seed in (0, 1, 2):
            loss = 1.0 + r + seed + 0 * np.arange(10)
            write_run(
                tmp_path,
                "quadratic_depth",
                "lodo",
                seed,
                loss,
                task=QUADRATIC,
                config_extra={"sweep_r": r, "optimizer": {"depth": 4 * r}},
            )
    runs = load_runs(tmp_path / "quadratic_depth")
    figures.sweep(runs, load_curves(runs), "depth", tmp_path / "sweep")
    ax = drawn[tmp_path / "sweep"].axes[0]
    (bar,) = ax.containers
    line = bar.lines[0]
    assert bar.get_label() == "mean ± std over seeds" and list(line.get_xdata()) == [0, 4, 8, 12]
    assert list(line.get_ydata()) == pytest.approx([2.0, 3.0, 4.0, 5.0])
    (bars,) = [c for c in ax.collections if isinstance(c, LineCollection)]  # one error bar per point
    assert [s[1][1] - s[0][1] for s in bars.get_segments()] == pytest.approx([2 * np.std([0, 1, 2])] * 4)
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]  # no band: the seeds give the spread


def test_sample_grid_shows_each_optimizers_lowest_seed_picture(records, drawn, tmp_path):
    runs = load_runs(records / "runs" / "smoke" / "mnist")
    figures.sample_grid(runs, tmp_path / "samples", ["kfac", "adam", "lodo", "lodo_diagonal"], title="T")
    fig = drawn[tmp_path / "samples"]
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["Adam", "LODO", "LODO-Diagonal"]  # K-FAC has no run
    assert all(ax.images[0].get_array().shape[:2] == (28, 28) for ax in panels)
    assert fig.get_suptitle() == "T"
    assert figures.sample_grid(runs, tmp_path / "inputs", filename="input_channels.png") is None  # none drew one


def test_tuning_spread_puts_seeds_in_the_legend_and_slants_the_names(drawn, tmp_path):
    write_tuning(tmp_path / "tuning", "rosenbrock", "adam", {0: 1e-4, 1: 1e-3})
    write_tuning(tmp_path / "tuning", "rosenbrock", "lodo", {0: 1e-2})
    write_tuning(tmp_path / "tuning", "rosenbrock", "lbfgs_no_line_search", {1: 1e-3})
    figures.tuning_spread(load_tuning(tmp_path / "tuning"), tmp_path / "spread")
    ax = drawn[tmp_path / "spread"].axes[0]
    ticks = ax.get_xticklabels()
    assert [t.get_text() for t in ticks] == ["Adam", "L-BFGS-no-line-search", "LODO"]
    assert all(t.get_rotation() == 30 for t in ticks)
    assert ax.get_yscale() == "log" and not ax.texts  # seeds in the legend, not as text on the points
    assert legend(ax) == ["tuning seed 0", "tuning seed 1"]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sorted(y for c in points for y in c.get_offsets()[:, 1]) == pytest.approx([1e-4, 1e-3, 1e-3, 1e-2])


def test_ten_or_more_curves_differ_in_line_style_and_marker(write_run, drawn, tmp_path):
    from lodo.optim.registry import OPTIMIZERS

    names = list(OPTIMIZERS)[:12]
    for i, name in enumerate(names):
        write_run(tmp_path, "many", name, 0, 1 + i + 1 / np.arange(1, 51))
    curves = load_curves(load_runs(tmp_path / "many"))
    figures.learning_curves(curves, tmp_path / "many_curves", "step", 50, names)
    lines = list(labelled(drawn[tmp_path / "many_curves"].axes[0]).values())
    assert len(lines) == 12
    assert len({(str(line.get_linestyle()), line.get_marker()) for line in lines}) == 12
    assert [line.get_label().split(" (")[0] for line in lines] == [figures.label(n) for n in names]


def test_colours_are_the_papers():
    assert figures.colour("adam") == (1, 0, 0) and figures.colour("momentum") == (0, 0, 1)
    assert figures.colour("lodo") == (0, 0, 0) and figures.colour("lodo_diagonal") == (1, 0, 1)
    assert figures.colour("olbfgs") == (0.8, 0.8, 0) and figures.colour("lbfgs_no_line_search") == (0, 0.4, 0)
    assert figures.colour("lodo_no_momentum") != figures.colour("momentum")  # matched before "momentum"


def test_save_writes_png_and_pdf_and_closes_the_figure(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = figures.save(fig, tmp_path / "sub" / "f")
    assert path == tmp_path / "sub" / "f.png"
    assert path.read_bytes()[:4] == b"\x89PNG" and path.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"
    assert fig.number not in plt.get_fignums()


# --- the report ----------------------------------------------------------------------------------------------------


def test_the_report_has_every_table_figure_and_claim(records, drawn, tmp_path):
    out = tmp_path / "results"
    bench = tmp_path / "bench.csv"
    pd.DataFrame({"case": ["cnn"], "optimizer": ["lodo"], "step_ratio_to_adam": [1.05]}).to_csv(bench, index=False)
    path = report.build(
        "smoke", records / "runs", out, wandb=False, timings={"rosenbrock": 1.0}, bench=bench, tuning=tmp_path / "none"
    )
    text = path.read_text()
    for name in ("rosenbrock", "noisy_quadratic", "quadratic_frozen", "mnist", "mnist_depth"):
        assert f"## Experiment `{name}`" in text
        assert (out / name / "table.csv").exists() and (out / name / "table.md").exists()
    for figure in (
        "rosenbrock/learning_curves_by_step",
        "rosenbrock/trajectories",
        "noisy_quadratic/hessian_error_by_step",
        "quadratic_frozen/frozen_loss",
        "mnist/samples",
        "mnist_depth/depth_variation",
        "mnist/validation_loss_by_step",
    ):
        assert out / figure in drawn and (out / f"{figure}.pdf").exists(), figure
        assert f"({figure}.png)" in text
    # What the report's figures draw: its own order, scales, clipping and reference lines.
    by_step = drawn[out / "rosenbrock" / "learning_curves_by_step"].axes[0]
    clipped = ", clipped to [0, 0.1]"  # the report clips Rosenbrock's losses to [0, 0.1] and says so
    expected = ["Momentum (1 run)" + clipped, "Adam (2 runs)" + clipped, "LODO (2 runs)" + clipped]
    assert by_step.get_yscale() == "log" and list(labelled(by_step)) == expected
    assert len(unlabelled(by_step)) == 3  # each curve's cut points marked
    assert by_step.get_title() == "Rosenbrock: 1–2 runs per optimizer, 100 steps / 0.5 s (scale smoke)"
    quadratic = labelled(drawn[out / "noisy_quadratic" / "learning_curves_by_step"].axes[0])
    assert "Newton ½·tr H = 2.5" in quadratic  # the records' Newton floor, not a rebuilt task's
    hessian = labelled(drawn[out / "noisy_quadratic" / "hessian_error_by_step"].axes[0])
    assert "best diagonal G: 0.84" in hessian and "G = α₀I (LODO's start): 0.96" in hessian
    assert "mnist/inputs" not in text and out / "mnist" / "inputs" not in drawn  # no run drew its input channels
    assert "read off its figure" in text and "Missing" in text and "mnist_beta" in text
    frozen = pd.read_csv(out / "quadratic_frozen" / "table.csv").set_index("variant")
    assert (
        frozen.loc["frozen θ, fresh eigenbasis", "diverged"] == 1
        and frozen.loc["frozen θ, same Hessian", "diverged"] == 0
    )
    verdicts = pd.read_csv(out / "claims.csv")
    assert list(verdicts["claim"].astype(str)) == ["1a", "1a", "1b", "2", "2", "2", "3", "4"]
    assert "**Claim 3** (results/bench (CNN, batch 256)): **agrees**" in text
    by_claim = verdicts.groupby("claim")["verdict"].apply(list).to_dict()
    assert by_claim["1a"] == ["inconclusive at this budget"] * 2  # same losses here; no reduced-CNN runs
    assert by_claim["1b"] == ["agrees"]  # final error 0.1 on disk, best diagonal 0.84 in the records
    assert by_claim["4"] == ["inconclusive at this budget"]  # no tuning seed recorded: "every" is untested
    assert "Newton floor ½σ² tr H: 2.5" in text  # from the records' provenance, not a rebuilt task
    assert report.UNKNOWN in text  # the Rosenbrock records predate provenance
    assert "`configs/tuned/noisy_quadratic/adam.yaml` (sha256 abcdef012345…)" in text
    assert (out / "runs.csv").exists()


def test_the_report_survives_unreadable_records(records, drawn, tmp_path):
    root = records / "runs" / "smoke"
    corrupted = root / "mnist" / "optimizer=adam,seed=0"
    (corrupted / "summary.json").write_text("{not json")
    garbled = root / "noisy_quadratic" / "optimizer=adam,seed=0" / "metrics.csv"
    garbled.write_bytes(b"\xff\xfe\x00")
    with pytest.warns(UserWarning, match="skipping unreadable run record") as caught:
        path = report.build("smoke", records / "runs", tmp_path / "results", wandb=False, tuning=tmp_path / "none")
    messages = " ".join(str(w.message) for w in caught)
    assert str(corrupted) in messages and str(garbled) in messages  # each named
    assert "## Experiment `mnist`" in path.read_text()
    table = pd.read_csv(tmp_path / "results" / "mnist" / "table.csv").set_index("optimizer")
    assert table.loc["adam", "runs"] == 1 and table.loc["lodo", "runs"] == 2  # the unreadable run is left out
    adam = labelled(drawn[tmp_path / "results" / "noisy_quadratic" / "learning_curves_by_step"].axes[0])
    assert "Adam (1 run)" in adam  # its garbled metrics.csv drew nothing; its seed 1 still did
