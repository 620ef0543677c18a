import os

import pytest
import torch

# W&B must never reach a network in tests (METHODS.md §B.2): offline mode without error reporting.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def write_record_files(run_dir, config: dict, rows: list[dict], summary: dict, metric_names=()):
    """A run folder written with the runner's own writers (lodo/records.py; README, *Run records*): ``config.yaml``
    (the resolved config as YAML), ``metrics.csv`` (one row per iteration; a tracked metric is left out of a row where
    it was not evaluated, so its cell is empty) and ``summary.json`` last. Returns ``run_dir``."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from lodo.records import RunRecord, write_atomic, write_summary

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    record = RunRecord(run_dir, list(metric_names))
    try:
        for row in rows:
            record.append(row)
    finally:
        record.close()
    write_summary(run_dir, summary)
    return run_dir


@pytest.fixture
def write_record():
    """:func:`write_record_files`: hand-made run records in the format the plotting stage reads."""
    return write_record_files
