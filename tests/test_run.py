"""The Hydra runner end to end: real composition, real launcher, real run records and W&B offline files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from lodo.records import final_window_mean, is_complete
from lodo.run import execute

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = str(ROOT / "configs")


def cli(*args, cwd=ROOT):
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "lodo.run", *args, "progress=false"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def config(*overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="config", overrides=["progress=false", *overrides])


def test_cli_run_writes_a_complete_record(tmp_path):
    result = cli("task=rosenbrock", "optimizer=adam", "steps=30", "logger=none", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert is_complete(tmp_path)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics.columns) == ["step", "iteration", "time", "loss", "x", "y"]
    assert metrics["step"].tolist() == list(range(1, 31))
    assert metrics["loss"].iloc[0] == pytest.approx(3.085)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 30
    assert summary["final_loss_at_steps"] == pytest.approx(metrics["loss"].iloc[27:].mean())
    assert summary["environment"]["torch"].startswith("2.13.0")
    assert "optimizer:\n  name: adam" in (tmp_path / "config.yaml").read_text()


def test_multirun_sweeps_and_resumes(tmp_path):
    args = ["--multirun", "task=rosenbrock", "optimizer=adam,lodo", "seed=0,1", "steps=10", "logger=none"]
    result = cli(*args, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    runs = sorted(p.parent for p in tmp_path.glob("*/summary.json"))
    assert [r.name for r in runs] == [
        f"optimizer={o},seed={s},steps=10,task=rosenbrock" for o in ("adam", "lodo") for s in (0, 1)
    ]
    losses = [pd.read_csv(r / "metrics.csv")["loss"].tolist() for r in runs]
    assert losses[0] == losses[1]  # Rosenbrock is deterministic
    # An interrupted sweep: one run lost its summary. The rerun redoes it and leaves the others untouched.
    (runs[2] / "summary.json").unlink()
    stamps = {r: (r / "summary.json").stat().st_mtime_ns for r in (runs[0], runs[1], runs[3])}
    result = cli(*args, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert is_complete(runs[2])
    assert stamps == {r: (r / "summary.json").stat().st_mtime_ns for r in stamps}
    assert result.stdout.count("its record is complete") == 3


def test_wandb_offline_history_equals_local_metrics(tmp_path):
    cfg = config("task=noisy_quadratic", "task.n=10", "task.metric_interval=5", "optimizer=lodo", "steps=20")
    summary = execute(cfg, tmp_path)
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    inspect = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)]
    records = [
        json.loads(line) for line in subprocess.run(inspect, capture_output=True, text=True).stdout.split("\n") if line
    ]
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    local = pd.read_csv(tmp_path / "metrics.csv")
    assert [h["loss"] for h in history] == local["loss"].tolist()
    assert [h["step"] for h in history] == local["step"].tolist()
    errors = [h["hessian_error"] for h in history if "hessian_error" in h]
    assert errors == local["hessian_error"].dropna().tolist() and len(errors) == 4
    head = json.loads(subprocess.run([*inspect[:-1], "--summary", str(run_dir)], capture_output=True, text=True).stdout)
    assert head["config"]["optimizer"]["name"] == "lodo" and head["state"] == "finished"
    assert head["summary"]["final_loss_at_steps"] == pytest.approx(summary["final_loss_at_steps"])
    assert head["summary"]["status"] == "completed"


def test_a_wandb_failure_keeps_the_local_record(tmp_path):
    cfg = config("task=rosenbrock", "optimizer=adam", "steps=5", "logger.mode=not-a-mode")
    with pytest.warns(UserWarning, match="W&B init failed"):
        execute(cfg, tmp_path)
    assert is_complete(tmp_path) and len(pd.read_csv(tmp_path / "metrics.csv")) == 5


def test_a_diverging_run_is_recorded_as_diverged(tmp_path):
    result = cli(
        "task=noisy_quadratic",
        "optimizer=momentum",
        "optimizer.lr=1000",
        "steps=5000",
        "logger=none",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] < 5000
    assert "non-finite loss" in summary["reason"]


def test_unknown_names_list_the_valid_choices(tmp_path):
    result = cli("optimizer=adamw_typo", "logger=none", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "Could not find 'optimizer/adamw_typo'" in result.stderr
    assert "Available options in 'optimizer'" in result.stderr and "lodo_diagonal" in result.stderr


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=-1", "Invalid lr"),
        ("optimizer.beta=1.5", "Invalid beta"),
        ("optimizer.depth=-2", "Invalid depth"),
        ("dtype=float16", "valid dtypes: float32, float64"),
        ("steps=0", "steps must be a positive integer"),
        ("task.n=0", "n must be a positive integer"),
        ("task.name=bowl", "valid tasks: .*noisy_quadratic, rosenbrock"),
        ("optimizer.name=adamw", "valid optimizers: .*adam.*lodo"),
    ],
)
def test_bad_input_fails_before_training_with_a_clear_error(tmp_path, override, message):
    task = ["task=noisy_quadratic"] if override.startswith("task.n") else []
    cfg = config(*task, override, "logger=none", "steps=5" if "steps" not in override else override)
    with pytest.raises(ValueError, match=message):
        execute(cfg, tmp_path)
    assert not (tmp_path / "metrics.csv").exists()


def test_final_window_mean():
    steps = list(range(1, 101))
    assert final_window_mean(steps, steps, 100) == pytest.approx(sum(range(91, 101)) / 10)
    assert final_window_mean(steps, steps, 50) == pytest.approx(sum(range(46, 51)) / 5)
