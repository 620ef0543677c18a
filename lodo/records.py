"""Run records on disk: the truth of every run (W&B only mirrors them).

A run directory holds ``config.yaml`` (the resolved config, written by the runner), ``metrics.csv`` (one row per
iteration: step, iteration, time, loss, then tracked metrics, empty where not evaluated), ``run.log``, while a run
is in progress ``checkpoint.pt``, and last ``summary.json`` (status, final-window losses at both milestones, speed,
versions, ``config_hash``). Every file is replaced atomically except ``metrics.csv`` and ``run.log``, which grow
row by row; ``summary.json`` is written after everything else, so a folder whose summary says completed or
diverged is a finished run, and anything else is redone or resumed (README, *Run records*).

One process at a time writes a run folder: :func:`lock_run_dir` holds an ``flock`` on ``<run>/.lock``, which the
kernel releases when the process ends, however it ends (``kill -9`` included).
"""

from __future__ import annotations

import csv
import datetime
import fcntl
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

BASE_COLUMNS = ["step", "iteration", "time", "loss"]
SUMMARY = "summary.json"
LOCK = ".lock"
FINISHED = ("completed", "diverged")
# Config keys that do not change a run's numbers, left out of its hash: display (progress), where the mirror goes
# (logger), thread count, what extra files are saved (save_*), how often to checkpoint (resume is bitwise), where
# sweeps go (runs_dir) and the table of every scale's budgets (the values a run reads are already resolved into
# steps, time_limit and task.*).
UNHASHED = ("progress", "logger", "threads", "save_artifacts", "save_optimizer_state", "checkpoint_interval",
            "runs_dir", "budgets")  # fmt: skip


class RunDirError(RuntimeError):
    """A run folder that cannot be used: locked by another process, or not writable."""


class RunRecord:
    """Appends iteration rows to ``metrics.csv``; ``keep_rows`` continues a resumed run after its first rows."""

    def __init__(self, run_dir: str | Path, metric_names: list[str], keep_rows: int | None = None):
        self.path = Path(run_dir) / "metrics.csv"
        self.columns = BASE_COLUMNS + list(metric_names)
        with writing(self.path):
            if keep_rows is None:
                self._file = open(self.path, "w", newline="")
                csv.writer(self._file).writerow(self.columns)
            else:  # a resumed run: the rows after its checkpoint are redone, so they are dropped (atomically)
                with open(self.path, newline="") as file:  # newline="": the csv module's \r\n kept as written
                    lines = file.readlines()[: keep_rows + 1]
                if len(lines) != keep_rows + 1:
                    raise RunDirError(f"{self.path} has {len(lines) - 1} rows, its checkpoint needs {keep_rows}")
                write_atomic(self.path, "".join(lines))
                self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="raise")

    def append(self, row: dict) -> None:
        with writing(self.path):
            self._writer.writerow({k: _format(v) for k, v in row.items()})

    def flush(self) -> None:
        with writing(self.path):
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            with writing(self.path):
                self._file.close()


class writing:
    """Turns an ``OSError`` while writing ``path`` into one that names the file (a full disk's does not)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, OSError) and not isinstance(error, RunDirError):
            raise RunDirError(f"cannot write {self.path}: {error.strerror or error}") from error
        return False


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: readers see old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        with open(tmp, "w", newline="") as file:
            file.write(text)
        os.replace(tmp, path)


def write_summary(run_dir: str | Path, summary: dict) -> None:
    write_atomic(Path(run_dir) / SUMMARY, json.dumps(summary, indent=2, default=_jsonable) + "\n")


def _format(value):
    return repr(value) if isinstance(value, float) else value


def _jsonable(value):
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    return str(value)


def is_complete(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished run (completed or diverged; an interrupted one is not)."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") in FINISHED
    except json.JSONDecodeError:
        return False


def read_summary(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / SUMMARY).read_text())


def read_rows(run_dir: str | Path) -> list[dict]:
    """The rows of ``metrics.csv`` as the loop produced them (empty cells left out; floats round-trip exactly)."""
    with open(Path(run_dir) / "metrics.csv", newline="") as file:
        return [
            {k: int(v) if k in ("step", "iteration") else float(v) for k, v in row.items() if v != ""}
            for row in csv.DictReader(file)
        ]


def read_losses(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The step, time and loss columns of ``metrics.csv``."""
    rows = read_rows(run_dir)
    return tuple(np.array([r[k] for r in rows], dtype=float) for k in ("step", "time", "loss"))


def final_window_mean(x: np.ndarray, loss: np.ndarray, milestone: float) -> float:
    """Mean loss over the final 10% window before ``milestone``: rows with 0.9·milestone < x ≤ milestone.

    This is the paper's table statistic (METHODS.md §A.8.2, whose log calls it "final 90%"). NaN if the window is
    empty; non-finite if a loss in it is.
    """
    x, loss = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    window = (x > 0.9 * milestone) & (x <= milestone)
    return float(loss[window].mean()) if window.any() else math.nan


# --- what a record is for: the config hash ------------------------------------------------------------------------


def hashed_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in UNHASHED}


def config_hash(config: dict) -> str:
    """A short hash of the resolved config without :data:`UNHASHED`: equal hashes, equal requests."""
    text = json.dumps(hashed_config(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_diff(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for each dotted key whose value differs (hashed keys only), names first."""
    a, b = _flatten(hashed_config(old)), _flatten(hashed_config(new))
    differing = [k for k in a.keys() | b.keys() if a.get(k, "(absent)") != b.get(k, "(absent)")]
    differing.sort(key=lambda k: (not k.endswith("name"), k))  # a changed task or optimizer first
    return [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}" for k in differing]


def describe_diff(old: dict, new: dict, limit: int = 6) -> str:
    """The differing keys of :func:`config_diff`, the first ``limit`` of them spelled out."""
    diff = config_diff(old, new)
    return "; ".join(diff[:limit]) + (f"; and {len(diff) - limit} more" if len(diff) > limit else "")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --- one writer per folder; old contents moved aside --------------------------------------------------------------


def lock_run_dir(run_dir: Path):
    """Create ``run_dir`` and hold an exclusive lock on it for this process; fail at once if another holds it.

    Returns the open lock file (keep it open: closing it, or the process ending, releases the lock).
    """
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirError(f"run folder {run_dir} is in use by process {holder}; not starting a second writer") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def contents(run_dir: Path) -> list[Path]:
    """What a run folder holds besides its lock and earlier records moved aside."""
    return [p for p in run_dir.iterdir() if p.name != LOCK and not p.name.startswith("stale-")]


def move_aside(run_dir: Path) -> Path:
    """Move the folder's contents into ``<run>/stale-<time>/``; its summary becomes ``summary.stale.json``.

    The rename keeps an old record out of every scan for ``summary.json`` (the aggregation, ``make sync``).
    """
    stale = run_dir / f"stale-{datetime.datetime.now():%Y%m%d-%H%M%S-%f}"
    with writing(stale):
        stale.mkdir()
        for path in contents(run_dir):
            os.replace(path, stale / ("summary.stale.json" if path.name == SUMMARY else path.name))
    return stale


def clear(run_dir: Path) -> None:
    """Remove the folder's contents (an unfinished attempt at the same request: it is redone from scratch)."""
    for path in contents(run_dir):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


# --- provenance ----------------------------------------------------------------------------------------------------


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
    """The commit of the git checkout the working directory is in (with ``-dirty`` if its code or configs have local
    changes), or ``None`` outside one: the repository a run is started from, whether lodo is installed from it
    (editable) or not. ``results/`` is left out: `make reproduce` rewrites its outputs there while it runs."""
    try:
        root = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=Path.cwd(), capture_output=True, text=True, check=True
        ).stdout.strip()
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return revision + ("-dirty" if dirty else "")
