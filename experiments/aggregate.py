"""From run records to tables: the only code that reads ``runs/`` (summary.json, config.yaml, metrics.csv).

:func:`load_runs` gives one row per run, :func:`load_curves` one tidy table of every iteration row of those runs
(with the run's experiment, optimizer and seed beside it), :func:`comparison_table` the paper's table (reference
§8.2) and :func:`binned_curve` the paper's binned mean ± std learning curve (reference §8.3).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lodo.records import final_window_mean

RUN_COLUMNS = [
    "experiment",
    "scale",
    "task",
    "optimizer",
    "seed",
    "sweep_r",
    "status",
    "steps",
    "train_time",
    "steps_per_second",
    "final_loss_at_steps",
    "final_loss_at_time",
    "test_loss",
    "milestone_steps",
    "milestone_time",
    "run_dir",
]


def find_runs(root: str | Path) -> list[Path]:
    """Every finished run folder (one holding summary.json) under ``root``, sorted."""
    return sorted(p.parent for p in Path(root).rglob("summary.json"))


def load_runs(root: str | Path) -> pd.DataFrame:
    """One row per finished run under ``root``: what ran (from config.yaml) and how it went (summary.json).

    The optimizer's hyperparameters appear as ``hp.<name>`` columns.
    """
    rows = []
    for run_dir in find_runs(root):
        summary = json.loads((run_dir / "summary.json").read_text())
        config_path = run_dir / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
        optimizer = config.get("optimizer", {}) or {}
        milestones = summary.get("milestones", {}) or {}
        row = {
            "experiment": config.get("experiment", summary.get("experiment")),
            "scale": config.get("scale"),
            "task": summary.get("task", config.get("task", {}).get("name")),
            "optimizer": summary.get("optimizer", optimizer.get("name")),
            "seed": summary.get("seed", config.get("seed")),
            "sweep_r": config.get("sweep_r"),
            "status": summary.get("status"),
            "steps": summary.get("steps"),
            "train_time": summary.get("train_time"),
            "steps_per_second": summary.get("steps_per_second"),
            "final_loss_at_steps": summary.get("final_loss_at_steps"),
            "final_loss_at_time": summary.get("final_loss_at_time"),
            "test_loss": summary.get("test_loss"),
            "milestone_steps": milestones.get("steps", config.get("steps")),
            "milestone_time": milestones.get("time_limit", config.get("time_limit")),
            "run_dir": str(run_dir),
        }
        row.update({f"hp.{k}": v for k, v in optimizer.items() if k != "name"})
        rows.append(row)
    runs = pd.DataFrame(rows, columns=None if rows else RUN_COLUMNS)
    for column in ("final_loss_at_steps", "final_loss_at_time", "test_loss", "steps_per_second", "train_time"):
        runs[column] = pd.to_numeric(runs[column], errors="coerce")
    return runs


def load_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """The tidy table: every metrics.csv row of ``runs`` with experiment, optimizer, seed and sweep_r beside it."""
    frames = []
    for run in runs.itertuples():
        path = Path(run.run_dir) / "metrics.csv"
        if not path.exists():
            continue
        frame = pd.read_csv(path)
        frame.insert(0, "run_dir", run.run_dir)
        for column in ("experiment", "optimizer", "seed", "sweep_r"):
            frame.insert(1, column, getattr(run, column))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run_dir", "experiment", "optimizer", "seed", "sweep_r", "step", "time", "loss"])
    return pd.concat(frames, ignore_index=True)


def diverged(runs: pd.DataFrame, column: str) -> pd.Series:
    """A run counts as diverged (reference §8.2) if it stopped on a non-finite loss or its window mean is not finite."""
    values = pd.to_numeric(runs[column], errors="coerce").to_numpy(dtype=float)
    return (runs["status"] == "diverged").to_numpy() | ~np.isfinite(values)


def mean_std(values) -> tuple[float, float]:
    """Mean and population std (np.std, ddof = 0, as the paper's log), NaN for no values."""
    values = np.asarray(values, dtype=float)
    return (float(values.mean()), float(values.std())) if len(values) else (math.nan, math.nan)


def comparison_table(runs: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """The paper's table per optimizer (reference §8.2): final-10%-window training loss mean ± std at the step and
    the time milestone over the runs that did not diverge, diverged k/N, steps/s, and the test loss where recorded."""
    rows = []
    names = order or list(dict.fromkeys(runs["optimizer"]))
    for name in names:
        group = runs[runs["optimizer"] == name]
        if group.empty:
            continue
        row = {"optimizer": name, "runs": len(group)}
        for column, label in (("final_loss_at_steps", "steps"), ("final_loss_at_time", "time")):
            bad = diverged(group, column)
            row[f"loss_at_{label}_mean"], row[f"loss_at_{label}_std"] = mean_std(group[column][~bad])
            row[f"diverged_at_{label}"] = f"{int(bad.sum())}/{len(group)}"
        row["steps_per_second_mean"], row["steps_per_second_std"] = mean_std(group["steps_per_second"].dropna())
        test = group["test_loss"].dropna()
        row["test_loss_mean"], row["test_loss_std"] = mean_std(test[np.isfinite(test)])
        rows.append(row)
    return pd.DataFrame(rows)


def window_means(curves: pd.DataFrame, x: str, milestone: float) -> pd.Series:
    """Per run, the mean loss over the final 10% window before ``milestone`` on axis ``x`` (step or time)."""
    return curves.groupby("run_dir", sort=False).apply(
        lambda run: final_window_mean(run[x].to_numpy(), run["loss"].to_numpy(), milestone), include_groups=False
    )


def binned_curve(curves: pd.DataFrame, x: str, milestone: float | None, column: str = "loss") -> pd.DataFrame:
    """The paper's binned learning curve of one optimizer's runs (reference §8.3).

    x_max = min(largest x + 1e-5, milestone); n_bins = min(500, the fewest points with x < x_max in any run);
    equal-width bins on [0, x_max]; a run's bin value is the mean of its values in the bin, dropped if one of them
    is not finite; across runs, the mean and the population std of the runs valid in that bin. Bins no run fills are
    dropped. Returns columns ``x`` (bin centre), ``mean``, ``std``, ``count``.
    """
    data = curves[[x, column, "run_dir"]].dropna(subset=[x])
    if column != "loss":  # tracked metrics are recorded every metric_interval steps; a NaN loss marks divergence
        data = data.dropna(subset=[column])
    if data.empty:
        return pd.DataFrame(columns=["x", "mean", "std", "count"])
    x_max = float(data[x].max()) + 1e-5
    if milestone:
        x_max = min(x_max, float(milestone))
    below = data[data[x] < x_max]
    points = below.groupby("run_dir")[x].count()
    n_bins = int(min(500, points.min() if len(points) else 0))
    if n_bins < 1:
        return pd.DataFrame(columns=["x", "mean", "std", "count"])
    edges = np.linspace(0.0, x_max, n_bins + 1)
    below = below.assign(bin=np.clip(np.digitize(below[x], edges) - 1, 0, n_bins - 1))
    per_run = below.groupby(["run_dir", "bin"])[column].agg(
        value="mean", finite=lambda v: bool(np.isfinite(v.to_numpy(dtype=float)).all())
    )
    per_run = per_run[per_run["finite"]]
    stats = per_run.groupby("bin")["value"].agg(mean="mean", std=lambda v: float(np.std(v)), count="count")
    centres = (edges[:-1] + edges[1:]) / 2
    return pd.DataFrame(
        {"x": centres[stats.index], "mean": stats["mean"], "std": stats["std"], "count": stats["count"]}
    ).reset_index(drop=True)
