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
from experiments.aggregate import (  # noqa: E402
    binned_curve,
    comparison_table,
    load_curves,
    load_runs,
    load_tuning,
    metric_ends,
)


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
                summary_extra={
                    "provenance": {
                        "tuned": {
                            "path": f"configs/tuned/noisy_quadratic/{optimizer}.yaml",
                            "sha256": "abcdef0123456789",
                        },
                        "newton_floor": 2.5,
                        "preconditioner_checkpoint": None,
                    },
                    "hessian_reference": {"start": 0.96, "best_scalar": 0.85, "best_diagonal": 0.84},
                },
            )
    write_run(  # generation-0 defaults: no tuned file in its provenance (NaN in the tidy table)
        root,
        "noisy_quadratic",
        "lodo_diagonal",
        0,
        12 + 5 / steps,
        task=quadratic,
        summary_extra={"provenance": {"tuned": None, "newton_floor": 2.5, "preconditioner_checkpoint": None}},
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
    write_run(  # the control: θ learned on one H, frozen, on a fresh eigenbasis (diverges)
        root,
        "quadratic_frozen",
        "lodo",
        1000,
        [9.0] * 10 + [math.nan],
        status="diverged",
        steps=100,
        task=quadratic,
        config_extra={"pretrain_seed": 0},
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


def test_an_unreadable_record_is_skipped_with_a_warning_naming_it(records):
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


def test_a_divergence_counts_only_against_the_milestones_it_happened_by(tmp_path):
    root = tmp_path / "runs"
    late = [1.0] * 14 + [math.nan]  # diverged at step 15, after the step milestone 10
    write_run(root, "x", "late", 0, late, status="diverged", steps=10, time_limit=1.0)
    write_run(root, "x", "early", 0, [1.0] * 4 + [math.nan], status="diverged", steps=10)
    write_run(root, "x", "told", 0, late, status="diverged", steps=10, summary_extra={"diverged_at_steps": True})
    runs = load_runs(root).set_index("optimizer")
    assert runs.loc["late", "diverged_at_steps"] is False or not runs.loc["late", "diverged_at_steps"]
    assert runs.loc["late", "diverged_at_time"]  # by the time milestone (1 s = step 100) it had diverged
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


@pytest.fixture
def drawn(monkeypatch):
    """The figures as drawn: each saved figure's axes, captured before it is written and closed."""
    figures_drawn = []
    save = figures.save

    def capture(fig, path):
        figures_drawn.append(fig.axes[0])
        return save(fig, path)

    monkeypatch.setattr(figures, "save", capture)
    return figures_drawn


def series(ax) -> list:
    """The labelled data lines of an axes (not reference lines or markers without a label)."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_ten_or_more_curves_differ_in_line_style_and_marker(drawn, tmp_path):
    names = [n for n in figures.LABELS][:12]
    rows = [
        {"run_dir": f"{n}{s}", "optimizer": n, "seed": s, "step": t, "loss": 1 + i + s / 10 + 1 / t}
        for i, n in enumerate(names)
        for s in (0, 1)
        for t in range(1, 51)
    ]
    assert figures.learning_curves(pd.DataFrame(rows), tmp_path / "many", "step", 50, names) is not None
    lines = series(drawn[-1])
    assert len(lines) == 12
    assert len({(str(line.get_linestyle()), line.get_marker()) for line in lines}) == 12
    assert [line.get_label().split(" (")[0] for line in lines] == [figures.label(n) for n in names]


def test_a_clipped_curve_says_so_and_an_empty_figure_is_not_drawn(drawn, tmp_path):
    rows = [{"run_dir": "a", "optimizer": "bfgs", "seed": 0, "step": t, "loss": 1e4} for t in range(1, 21)]
    rows += [{"run_dir": "b", "optimizer": "adam", "seed": 0, "step": t, "loss": 10.0} for t in range(1, 21)]
    figures.learning_curves(pd.DataFrame(rows), tmp_path / "clip", "step", 20, clip=(0, 40), newton=7.4)
    labels = [line.get_label() for line in series(drawn[-1])]
    assert any("BFGS" in t and "clipped" in t for t in labels) and not any("Adam" in t and "clip" in t for t in labels)
    assert any("Newton" in t for t in labels)
    empty = pd.DataFrame(rows).assign(validation_loss=math.nan)
    assert figures.learning_curves(empty, tmp_path / "none", "step", 20, column="validation_loss") is None
    assert not (tmp_path / "none.png").exists()


def test_a_metric_recorded_only_at_the_milestone_is_still_drawn(drawn, tmp_path):
    rows = [{"run_dir": "a", "optimizer": "adam", "seed": 0, "step": t, "loss": 1.0} for t in range(1, 21)]
    frame = pd.DataFrame(rows).assign(validation_loss=lambda f: np.where(f["step"] == 20, 3.0, np.nan))
    figures.learning_curves(frame, tmp_path / "val", "step", 20, column="validation_loss")
    (line,) = series(drawn[-1])
    assert list(line.get_ydata()) == [3.0] and line.get_marker() not in ("", "None", None)


def test_the_hessian_error_figure_starts_at_step_0_on_a_log_axis_with_references(drawn, tmp_path):
    rows = [
        {"run_dir": f"r{s}", "optimizer": o, "seed": s, "step": t, "hessian_error": 0.96 - 0.01 * np.log1p(t)}
        for o in ("lodo", "lodo_diagonal")
        for s in (0, 1)
        for t in (0, 10, 100, 1000)
    ]
    refs = {"G = α₀I (LODO's start)": 0.962, "best scalar G = cI": 0.845, "best diagonal G": 0.842}
    figures.hessian_error(pd.DataFrame(rows), tmp_path / "h", ["lodo", "lodo_diagonal"], refs, 1000)
    ax = drawn[-1]
    assert ax.get_xscale() == "symlog" and ax.get_xlim()[0] == 0
    assert min(series(ax)[0].get_xdata()) == 0  # step 0 is drawn
    labels = [line.get_label() for line in series(ax)]
    assert len([t for t in labels if "runs)" in t]) == 2
    for text in ("best scalar", "best diagonal", "α₀I", "G = H⁻¹"):
        assert any(text in t for t in labels), text
    assert figures.hessian_error(pd.DataFrame({"optimizer": ["lodo"]}), tmp_path / "none") is None


def test_rosenbrock_trajectories_stay_on_the_map(drawn, tmp_path):
    rows = [{"run_dir": "a", "optimizer": "adam", "seed": 0, "step": t, "x": 2.5 * t / 10, "y": 1.0} for t in range(11)]
    rows += [{"run_dir": "b", "optimizer": "lodo", "seed": 0, "step": t, "x": 100.0 * t, "y": 1.0} for t in range(11)]
    figures.rosenbrock_trajectories(pd.DataFrame(rows), tmp_path / "traj")
    ax = drawn[-1]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x1 >= 2.5  # widened to hold Adam's whole trajectory
    labels = {line.get_label(): line for line in series(ax)}
    assert "Adam" in labels and any("LODO" in t and "clipped" in t for t in labels)
    for line in labels.values():
        assert x0 <= min(line.get_xdata()) and max(line.get_xdata()) <= x1
        assert y0 <= min(line.get_ydata()) and max(line.get_ydata()) <= y1


def test_a_sweep_with_several_seeds_gives_each_point_its_own_error_bar(drawn, tmp_path):
    runs, rows = [], []
    for r in range(4):
        for seed in (0, 1, 2):
            run_dir = f"r{r}s{seed}"
            runs.append({"run_dir": run_dir, "hp.depth": 4 * r, "milestone_steps": 10, "seed": seed, "sweep_r": r})
            rows += [{"run_dir": run_dir, "step": t, "loss": 1.0 + r + seed} for t in range(1, 11)]
    figures.sweep(pd.DataFrame(runs), pd.DataFrame(rows), "depth", tmp_path / "sweep")
    ax = drawn[-1]
    (bar,) = ax.containers
    line = bar.lines[0]
    assert bar.get_label() == "mean ± std over seeds" and list(line.get_xdata()) == [0, 4, 8, 12]
    assert list(line.get_ydata()) == pytest.approx([2.0, 3.0, 4.0, 5.0])
    (bars,) = [c for c in ax.collections if len(c.get_segments()) == 4]  # one error bar per point
    assert [s[1][1] - s[0][1] for s in bars.get_segments()] == pytest.approx([2 * np.std([0, 1, 2])] * 4)


def test_tuning_spread_labels_are_readable(drawn, tmp_path):
    spread = pd.DataFrame(
        {
            "optimizer": ["adam", "adam", "lodo", "lbfgs_no_line_search"],
            "tune_seed": [0, 1, 0, 1],
            "check_loss": [1e-4, 1e-3, 1e-2, 1e-3],
        }
    )
    figures.tuning_spread(spread, tmp_path / "spread")
    ax = drawn[-1]
    ticks = ax.get_xticklabels()
    assert [t.get_text() for t in ticks] == ["Adam", "LODO", "L-BFGS-no-line-search"]
    assert all(t.get_rotation() == 30 for t in ticks)
    assert ax.get_yscale() == "log" and not ax.texts  # seeds in the legend, not as text on the points
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"tuning seed 0", "tuning seed 1"}


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
    made(figures.hessian_error(quad, out / "hessian", ["lodo"], {"best diagonal G": 0.5}, 100))
    frozen = load_curves(runs[runs["experiment"] == "quadratic_frozen"])
    both = pd.concat(
        [
            quad[quad.optimizer == "lodo"].assign(optimizer="LODO on the fly"),
            frozen.assign(optimizer="frozen θ, same Hessian"),
        ]
    )
    made(figures.frozen_vs_on_the_fly(both, out / "frozen", ["LODO on the fly", "frozen θ, same Hessian"], newton=7.4))
    sweep_runs = runs[runs["experiment"] == "mnist_depth"]
    made(figures.sweep(sweep_runs, load_curves(sweep_runs), "depth", out / "depth", lodo_std=0.1))
    made(figures.sample_grid(runs[runs["experiment"] == "mnist"], out / "samples"))


def test_the_report_has_every_table_figure_and_claim(records, tmp_path):
    out = tmp_path / "results"
    bench = tmp_path / "bench.csv"
    pd.DataFrame({"case": ["cnn"], "optimizer": ["lodo"], "step_ratio_to_adam": [1.05]}).to_csv(bench, index=False)
    path = report.build(
        "smoke", records / "runs", out, wandb=False, timings={"rosenbrock": 1.0}, bench=bench, tuning=tmp_path / "none"
    )
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
    frozen = pd.read_csv(out / "quadratic_frozen" / "table.csv").set_index("variant")
    assert (
        frozen.loc["frozen θ, fresh eigenbasis", "diverged"] == 1
        and frozen.loc["frozen θ, same Hessian", "diverged"] == 0
    )
    verdicts = pd.read_csv(out / "claims.csv")
    assert list(verdicts["claim"].astype(str)) == ["1a", "1b", "2", "2", "3", "4"]
    assert "**Claim 3** (results/bench (CNN, batch 256)): **agrees**" in text
    by_claim = verdicts.groupby("claim")["verdict"].apply(list).to_dict()
    assert by_claim["1a"] == ["inconclusive at this budget"]  # LODO and Adam have the same losses here
    assert by_claim["1b"] == ["agrees"]  # final error 0.1 on disk, best diagonal 0.84 in the records
    assert by_claim["4"] == ["inconclusive at this budget"]  # no tuning seed recorded: "every" is untested
    assert "Newton floor ½σ² tr H: 2.5" in text  # from the records' provenance, not a rebuilt task
    assert report.UNKNOWN in text  # the Rosenbrock records predate provenance
    assert "`configs/tuned/noisy_quadratic/adam.yaml` (sha256 abcdef012345…)" in text
    assert (out / "runs.csv").exists()


def test_the_report_survives_unreadable_records(records, tmp_path):
    root = records / "runs" / "smoke"
    (next((root / "mnist").iterdir()) / "summary.json").write_text("{not json")
    (next((root / "noisy_quadratic").iterdir()) / "metrics.csv").write_bytes(b"\xff\xfe\x00")
    with pytest.warns(UserWarning, match="skipping unreadable run record"):
        path = report.build("smoke", records / "runs", tmp_path / "results", wandb=False, tuning=tmp_path / "none")
    assert "## Experiment `mnist`" in path.read_text()


def test_hessian_error_ends_use_only_records_up_to_the_step_milestone(tmp_path):
    rows = [{"run_dir": "a", "step": s, "hessian_error": 1.0 - s / 1000} for s in (0, 100, 200, 300)]
    runs = pd.DataFrame({"run_dir": ["a", "b"], "milestone_steps": [200, 200]})
    ends = metric_ends(runs, pd.DataFrame(rows)).set_index("run_dir")
    assert ends.loc["a", "first_hessian_error"] == 1.0 and ends.loc["a", "final_hessian_error"] == 0.8
    assert math.isnan(ends.loc["b", "final_hessian_error"])  # never recorded


def test_tuning_histories_load_and_an_unreadable_one_is_skipped(tmp_path):
    (tmp_path / "rosenbrock").mkdir()
    history = {
        "task": "rosenbrock",
        "optimizer": "adam",
        "schedule": {"sigma": [3, 2], "steps": [200, 200], "samples": 32},
        "results": {"0": {"tuned": {"lr": 0.1}, "check_loss": 1e-4}, "1": {"tuned": {"lr": 0.2}, "check_loss": 2e-4}},
    }
    (tmp_path / "rosenbrock" / "adam.json").write_text(json.dumps(history))
    (tmp_path / "rosenbrock" / "lodo.json").write_text('{"task": "rosenbrock", "resu')
    with pytest.warns(UserWarning, match="lodo.json"):
        table = load_tuning(tmp_path)
    assert table["tune_seed"].tolist() == [0, 1] and table["horizon"].tolist() == [200, 200]
    assert table["tuned.lr"].tolist() == [0.1, 0.2]
