"""Run records on disk: the truth of every run (W&B only mirrors them).

A run directory holds ``config.yaml`` (the resolved config, written by the runner), ``metrics.csv`` (one row per
iteration: step, iteration, time, loss, then tracked metrics, empty where not evaluated) and ``summary.json``
(status, final-window losses at both milestones, speed, versions). ``summary.json`` is written last, so a run
directory without it is an interrupted run and a rerun redoes it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

BASE_COLUMNS = ["step", "iteration", "time", "loss"]
SUMMARY = "summary.json"


class RunRecord:
    """Appends iteration rows to ``metrics.csv`` and writes ``summary.json`` into ``run_dir``."""

    def __init__(self, run_dir: str | Path, metric_names: list[str]):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / SUMMARY).unlink(missing_ok=True)
        self.columns = BASE_COLUMNS + list(metric_names)
        self._file = open(self.run_dir / "metrics.csv", "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="raise")
        self._writer.writeheader()

    def append(self, row: dict) -> None:
        self._writer.writerow({k: _format(v) for k, v in row.items()})

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def write_summary(self, summary: dict) -> None:
        self.close()
        path = self.run_dir / SUMMARY
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
        os.replace(tmp, path)  # atomic: a summary on disk always means a finished run


def _format(value):
    return repr(value) if isinstance(value, float) else value


def _jsonable(value):
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    return str(value)


def is_complete(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished run (completed or diverged)."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") in ("completed", "diverged")
    except json.JSONDecodeError:
        return False


def read_summary(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / SUMMARY).read_text())


def final_window_mean(x: np.ndarray, loss: np.ndarray, milestone: float) -> float:
    """Mean loss over the final 10% window before ``milestone``: rows with 0.9·milestone < x ≤ milestone.

    This is the paper's table statistic (reference §8.2, whose log calls it "final 90%"). NaN if the window is
    empty; non-finite if a loss in it is.
    """
    x, loss = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    window = (x > 0.9 * milestone) & (x <= milestone)
    return float(loss[window].mean()) if window.any() else math.nan


def environment() -> dict:
    """Versions and machine facts stored with every run."""
    import lodo

    return {
        "lodo": lodo.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git_revision": git_revision(),
    }


def git_revision() -> str | None:
    """The checkout's commit (with ``-dirty`` if it has local changes), or ``None`` outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return revision + ("-dirty" if dirty else "")
