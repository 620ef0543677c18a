"""From run records to tables: the only code that reads ``runs/`` (summary.json, config.yaml, metrics.csv).

:func:`load_runs` gives one row per run, :func:`load_curves` one tidy table of every iteration row of those runs
(with the run's experiment, optimizer and seed beside it), :func:`comparison_table` the paper's table (METHODS.md
§A.8.2) and :func:`binned_curve` the paper's binned mean ± std learning curve (METHODS.md §A.8.3).
"""

from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lodo.records import FINISHED, final_window_mean

RUN_COLUMNS = [
    "experiment",
    "scale",
    "task",
    "optimizer",
    "seed",
    "sweep_r",
    "pretrain_seed",
    "status",
    "steps",
    "train_time",
    "steps_per_second",
    "final_loss_at_steps",
    "final_loss_at_time",
    "diverged_at_steps",
    "diverged_at_time",
    "test_loss",
    "milestone_steps",
    "milestone_time",
    "has_provenance",
    "tuned_path",
    "tuned_sha256",
    "tune_seed",
    "tuned_overridden",
    "newton_floor",
    "checkpoint_path",
    "checkpoint_sha256",
    "hessian_start",
    "hessian_best_scalar",
    "hessian_best_diagonal",
    "run_dir",
]


def find_runs(root: str | Path) -> list[Path]:
    """Every finished run folder (one holding summary.json) under ``root``, sorted."""
    return sorted(p.parent for p in Path(root).rglob("summary.json"))


def skip(path: Path, error: Exception | str) -> None:
    """A record that cannot be read is left out of every table and figure, and said so; it never stops the report."""
    warnings.warn(f"skipping unreadable run record {path}: {error}", stacklevel=3)


def read_metrics(path: Path) -> pd.DataFrame | None:
    """A run's metrics.csv, or None (with a warning naming it) if it cannot be read.

    A file that does not end in a newline was cut off mid-row (the recorder writes whole lines): its last line is
    dropped rather than read as a row whose missing loss would look like a divergence.
    """
    try:
        text = path.read_text()
        if text and not text.endswith("\n"):
            warnings.warn(f"{path}: the last line is truncated; it is left out", stacklevel=2)
            text = text[: text.rfind("\n") + 1]
        frame = pd.read_csv(io.StringIO(text))
        missing = {"step", "loss"} - set(frame.columns)
        if missing:
            raise ValueError(f"no {', '.join(sorted(missing))} column")
        return frame
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        skip(path, error)
        return None


def diverged_by(summary: dict, key: str, run_dir: Path, axis: str, milestone) -> bool | None:
    """Whether a run had diverged by its ``axis`` milestone, using only what happened up to it.

    ``summary[key]`` (``diverged_at_steps`` / ``diverged_at_time``, written by the runner) when the record has it;
    otherwise derived from metrics.csv: a non-finite loss at or before the milestone, or a diverged run that stopped
    before reaching it. A run that diverged *after* its step milestone is not counted against that milestone.
    None where the run has no such milestone.
    """
    if milestone is None or (isinstance(milestone, float) and math.isnan(milestone)):
        return None
    if isinstance(summary.get(key), bool):
        return summary[key]
    if summary.get("status") != "diverged":
        return False
    metrics = read_metrics(run_dir / "metrics.csv")
    if metrics is None or axis not in metrics:
        return True  # nothing to tell when it diverged: count it, as the paper's table does
    upto = metrics[metrics[axis] <= float(milestone)]
    losses = upto["loss"].to_numpy(dtype=float)
    return bool((~np.isfinite(losses)).any() or len(upto) == len(metrics))


def provenance_columns(summary: dict) -> dict:
    """The run's provenance as flat columns (what the runner recorded; nothing is looked up now).

    ``has_provenance`` is False for records written before the runner recorded provenance: their source is unknown,
    not "untuned".
    """
    provenance = summary.get("provenance")
    tuned = (provenance or {}).get("tuned") or {}
    checkpoint = (provenance or {}).get("preconditioner_checkpoint") or {}
    reference = summary.get("hessian_reference") or {}
    return {
        "has_provenance": isinstance(provenance, dict),
        "tuned_path": tuned.get("path"),
        "tuned_sha256": tuned.get("sha256"),
        "tune_seed": tuned.get("tune_seed"),
        "tuned_overridden": ",".join(tuned.get("overridden") or []) or None,
        "newton_floor": (provenance or {}).get("newton_floor"),
        "checkpoint_path": checkpoint.get("path"),
        "checkpoint_sha256": checkpoint.get("sha256"),
        "hessian_start": reference.get("start"),
        "hessian_best_scalar": reference.get("best_scalar"),
        "hessian_best_diagonal": reference.get("best_diagonal"),
    }


def load_runs(root: str | Path) -> pd.DataFrame:
    """One row per finished run under ``root``: what ran (from config.yaml) and how it went (summary.json).

    The optimizer's hyperparameters appear as ``hp.<name>`` columns. A run whose summary.json or config.yaml cannot
    be parsed is skipped with a warning naming it.
    """
    rows = []
    for run_dir in find_runs(root):
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
            config_path = run_dir / "config.yaml"
            config = (yaml.safe_load(config_path.read_text()) if config_path.exists() else {}) or {}
            if not isinstance(summary, dict) or not isinstance(config, dict):
                raise ValueError("not a mapping")
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
            skip(run_dir, error)
            continue
        if summary.get("status") not in FINISHED:  # e.g. interrupted: rerunning its command resumes it
            warnings.warn(f"leaving out {run_dir}: its run is {summary.get('status')!r}, not finished", stacklevel=2)
            continue
        optimizer = config.get("optimizer", {}) or {}
        milestones = summary.get("milestones", {}) or {}
        steps = milestones.get("steps", config.get("steps"))
        time_limit = milestones.get("time_limit", config.get("time_limit"))
        row = {
            "experiment": config.get("experiment", summary.get("experiment")),
            "scale": config.get("scale"),
            "task": summary.get("task", (config.get("task") or {}).get("name")),
            "optimizer": summary.get("optimizer", optimizer.get("name")),
            "seed": summary.get("seed", config.get("seed")),
            "sweep_r": config.get("sweep_r"),
            "pretrain_seed": config.get("pretrain_seed"),
            "status": summary.get("status"),
            "steps": summary.get("steps"),
            "train_time": summary.get("train_time"),
            "steps_per_second": summary.get("steps_per_second"),
            "final_loss_at_steps": summary.get("final_loss_at_steps"),
            "final_loss_at_time": summary.get("final_loss_at_time"),
            "diverged_at_steps": diverged_by(summary, "diverged_at_steps", run_dir, "step", steps),
            "diverged_at_time": diverged_by(summary, "diverged_at_time", run_dir, "time", time_limit),
            "test_loss": summary.get("test_loss"),
            "milestone_steps": steps,
            "milestone_time": time_limit,
            **provenance_columns(summary),
            "run_dir": str(run_dir),
        }
        row.update({f"hp.{k}": v for k, v in optimizer.items() if k != "name"})
        rows.append(row)
    runs = pd.DataFrame(rows, columns=None if rows else RUN_COLUMNS)
    for column in (
        "final_loss_at_steps",
        "final_loss_at_time",
        "test_loss",
        "steps_per_second",
        "train_time",
        "newton_floor",
        "hessian_start",
        "hessian_best_scalar",
        "hessian_best_diagonal",
    ):
        runs[column] = pd.to_numeric(runs[column], errors="coerce")
    return runs


def load_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """The tidy table: every metrics.csv row of ``runs`` with experiment, optimizer, seed and sweep_r beside it.

    A metrics.csv that cannot be read is skipped with a warning (its run keeps its row in the runs table)."""
    frames = []
    for run in runs.itertuples():
        path = Path(run.run_dir) / "metrics.csv"
        if not path.exists():
            continue
        frame = read_metrics(path)
        if frame is None:
            continue
        frame.insert(0, "run_dir", run.run_dir)
        for column in ("experiment", "optimizer", "seed", "sweep_r"):
            frame.insert(1, column, getattr(run, column))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run_dir", "experiment", "optimizer", "seed", "sweep_r", "step", "time", "loss"])
    return pd.concat(frames, ignore_index=True)


def diverged(runs: pd.DataFrame, column: str) -> np.ndarray:
    """A run counts as diverged at a milestone (METHODS.md §A.8.2) if it had diverged by that milestone
    (``diverged_at_steps`` / ``diverged_at_time``, see :func:`diverged_by`) or its window mean there is not finite."""
    values = pd.to_numeric(runs[column], errors="coerce").to_numpy(dtype=float)
    by = "diverged_at_steps" if column.endswith("steps") else "diverged_at_time"
    flags = runs[by] if by in runs else runs["status"] == "diverged"
    return np.array([bool(v) if isinstance(v, bool | np.bool_) else False for v in flags], dtype=bool) | ~np.isfinite(
        values
    )


def mean_std(values) -> tuple[float, float]:
    """Mean and population std (np.std, ddof = 0, as the paper's log), NaN for no values."""
    values = np.asarray(values, dtype=float)
    return (float(values.mean()), float(values.std())) if len(values) else (math.nan, math.nan)


def comparison_table(runs: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """The paper's table per optimizer (METHODS.md §A.8.2): final-10%-window training loss mean ± std at the step and
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
    """The paper's binned learning curve of one optimizer's runs (METHODS.md §A.8.3).

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


def metric_ends(runs: pd.DataFrame, curves: pd.DataFrame, column: str = "hessian_error") -> pd.DataFrame:
    """``runs`` with ``first_<column>`` (its first record, step 0 where the record has it) and ``final_<column>``
    (its last record at or before the run's step milestone) beside each run; NaN where never recorded."""
    runs = runs.copy()
    runs[f"first_{column}"] = runs[f"final_{column}"] = math.nan
    if column not in curves or curves.empty:
        return runs
    milestones = runs.set_index("run_dir")["milestone_steps"]
    data = curves.dropna(subset=[column])
    data = data[data["step"] <= data["run_dir"].map(milestones).astype(float)].sort_values("step")
    ends = data.groupby("run_dir")[column].agg(["first", "last"])
    runs[f"first_{column}"] = runs["run_dir"].map(ends["first"])
    runs[f"final_{column}"] = runs["run_dir"].map(ends["last"])
    return runs


def load_tuning(root: str | Path) -> pd.DataFrame:
    """The tuning histories (``results/tuning/<task>/<optimizer>.json``, the tuner's records): one row per task,
    optimizer and tuning seed with its check loss and tuned values. An unreadable history is skipped with a warning."""
    rows = []
    for path in sorted(Path(root).glob("*/*.json")):
        try:
            report = json.loads(path.read_text())
            schedule = report["schedule"]
            for seed, result in report["results"].items():
                rows.append(
                    {
                        "task": report["task"],
                        "optimizer": report["optimizer"],
                        "tune_seed": int(seed),
                        "check_loss": result["check_loss"],
                        "horizon": max(schedule["steps"]),
                        "schedule": f"{len(schedule['sigma'])} gen × {schedule['samples']}, steps "
                        f"{sorted(set(schedule['steps']))}",
                        **{f"tuned.{k}": v for k, v in result["tuned"].items()},
                        "date": report.get("date"),
                        "history": str(path),
                    }
                )
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
            skip(path, error)
    return pd.DataFrame(rows, columns=None if rows else ["task", "optimizer", "tune_seed", "check_loss"])


def load_bench(path: str | Path) -> pd.DataFrame | None:
    """The benchmark's table (``results/bench/bench_<device>.csv``, written by ``make bench``), or None."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        skip(path, error)
        return None
