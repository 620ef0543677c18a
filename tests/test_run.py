"""The Hydra runner end to end: real composition, real launcher, real run records and W&B offline files."""

import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lodo.records import final_window_mean, is_complete
from lodo.run import ConfigError, execute

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = str(ROOT / "configs")


def cli(*args, cwd=ROOT, env=None):
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", **(env or {})}
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
    # No hydra.sweep.dir: the default folder is named by what the sweep is, so the same command finds its runs.
    args = ["--multirun", "task=rosenbrock", "optimizer=adam,lodo", "seed=0,1", "steps=10", "logger=none"]
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = sorted(p.parent for p in (tmp_path / "multirun" / "adhoc").glob("*/summary.json"))
    assert [r.name for r in runs] == [
        f"optimizer={o},seed={s},steps=10,task=rosenbrock" for o in ("adam", "lodo") for s in (0, 1)
    ]
    losses = [pd.read_csv(r / "metrics.csv")["loss"].tolist() for r in runs]
    assert losses[0] == losses[1]  # Rosenbrock is deterministic
    # An interrupted sweep: one run lost its summary. The rerun redoes it and leaves the others untouched: each
    # finished record is marked (a key in summary.json, a line after metrics.csv's rows) and must keep its marks.
    (runs[2] / "summary.json").unlink()
    finished = (runs[0], runs[1], runs[3])
    for run in finished:
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "marker": run.name}))
        with open(run / "metrics.csv", "a") as file:
            file.write(f"# marker {run.name}\n")
    before = {run: ((run / "summary.json").read_text(), (run / "metrics.csv").read_text()) for run in finished}
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert is_complete(runs[2]) and "marker" not in json.loads((runs[2] / "summary.json").read_text())
    assert len(pd.read_csv(runs[2] / "metrics.csv")) == 10  # redone from scratch: one row per step, no more
    assert before == {run: ((run / "summary.json").read_text(), (run / "metrics.csv").read_text()) for run in finished}
    assert result.stdout.count("its record is complete") == 3


def test_wandb_offline_history_equals_local_metrics(tmp_path):
    overrides = ["task.n=10", "task.metric_interval=5", "optimizer=lodo", "steps=20", "time_limit=0.0001"]
    summary = execute(config("task=noisy_quadratic", *overrides), tmp_path)
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
    # The interface the dashboards read (lodo/loggers.py, WandbLogger): flat, stable keys.
    keys = ["status", "reason", "diverged", "steps", "iterations", "train_time", "metric_time", "steps_per_second"]
    keys += ["final_loss_at_steps", "diverged_at_steps", "diverged_at_time", "config_hash"]
    keys += ["final_loss_at_time"] if math.isfinite(summary["final_loss_at_time"]) else []  # W&B drops NaN
    keys += ["milestone/steps", "milestone/time_limit", "env/torch", "env/git_revision"]
    assert set(keys) <= set(head["summary"]), set(keys) - set(head["summary"])
    assert head["summary"]["config_hash"] == summary["config_hash"] and head["summary"]["milestone/steps"] == 20
    assert head["config"]["task_name"] == "noisy_quadratic" and head["config"]["optimizer_name"] == "lodo"
    # summary.json names the one mirror of this record (its order, mirror finished first: see the test below).
    assert summary["wandb"] == {"id": run_dir.name.rsplit("-", 1)[1], "dir": str(run_dir.relative_to(tmp_path))}


def test_the_mirror_is_finished_before_the_summary_says_the_run_is(tmp_path, monkeypatch):
    import lodo.loggers
    import lodo.run

    events = []
    finish, write_summary = lodo.loggers.WandbLogger.finish, lodo.run.write_summary

    def finishing(self, summary):
        events.append("mirror finished")
        return finish(self, summary)

    def writing_summary(run_dir, summary):
        events.append(f"summary.json: {summary['status']}, wandb {summary['wandb'] is not None}")
        return write_summary(run_dir, summary)

    monkeypatch.setattr(lodo.loggers.WandbLogger, "finish", finishing)
    monkeypatch.setattr(lodo.run, "write_summary", writing_summary)
    execute(config("task=rosenbrock", "optimizer=adam", "steps=5"), tmp_path)
    assert events == ["mirror finished", "summary.json: completed, wandb True"]


def test_a_wandb_failure_keeps_the_local_record(tmp_path):
    cfg = config("task=rosenbrock", "optimizer=adam", "steps=5", "logger.mode=not-a-mode")
    with pytest.warns(UserWarning, match="W&B init failed"):
        execute(cfg, tmp_path)
    assert is_complete(tmp_path) and len(pd.read_csv(tmp_path / "metrics.csv")) == 5


def test_wandb_without_network_stalls_once_per_sweep(tmp_path):
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "a" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    args = ["--multirun", "task=rosenbrock", "optimizer=adam", "seed=0,1,2", "steps=5", "logger.mode=online"]
    started = time.perf_counter()
    result = cli(*args, "logger.init_timeout=3", f"hydra.sweep.dir={tmp_path}", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / ".wandb-init-failed").exists()
    assert result.stderr.count("W&B init failed") == 1 and result.stderr.count("W&B is off for this run") == 2
    assert len(list(tmp_path.glob("*/summary.json"))) == 3 and time.perf_counter() - started < 60
    assert all(json.loads(p.read_text())["wandb"] is None for p in tmp_path.glob("*/summary.json"))


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
    assert summary["diverged_at_steps"] is True and summary["diverged_at_time"] is None


def test_unknown_names_list_the_valid_choices(tmp_path):
    result = cli("optimizer=adamw_typo", "logger=none", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "Could not find 'optimizer/adamw_typo'" in result.stderr
    assert "Available options in 'optimizer'" in result.stderr and "lodo_diagonal" in result.stderr


@pytest.mark.parametrize(
    "override,message",
    [
        ("seed=abc", "seed='abc' is not allowed: a non-negative integer"),
        ("seed=1.5", "seed=1.5 is not allowed"),
        ("steps=abc", "steps='abc' is not allowed: a positive integer"),
        ("steps=10.5", "steps=10.5 is not allowed"),
        ("steps=0", "steps=0 is not allowed"),
        ("time_limit=-1", "time_limit=-1 is not allowed"),
        ("device=gpu", "device='gpu' is not allowed"),
        ("dtype=float16", "dtype='float16' is not allowed: null or one of float32, float64"),
        ("threads=0", "threads=0 is not allowed"),
        ("checkpoint_interval=-1", "checkpoint_interval=-1 is not allowed"),
        ("optimizer.lr=inf", "optimizer.lr=inf is not allowed: a finite number"),
        ("optimizer.lr=nan", "optimizer.lr=nan is not allowed"),
        ("optimizer.lr=abc", "optimizer.lr='abc' is not allowed"),
        ("optimizer.lr=-1", "optimizer 'lodo': Invalid lr"),
        ("optimizer.beta=1.5", "Invalid beta"),
        ("optimizer.depth=-2", "Invalid depth"),
        ("optimizer.depth=2.5", "optimizer.depth=2.5 is not allowed: an integer"),
        ("task.n=0", "task 'noisy_quadratic': n must be a positive integer"),
        ("task.metric_interval=0", "task.metric_interval=0 is not allowed"),
        ("task.name=bowl", "valid tasks: .*noisy_quadratic, rosenbrock"),
        ("optimizer.name=adamw", "valid optimizers: .*adam.*lodo"),
        ("optimizer=kfac", "optimizer 'kfac' cannot run on task 'noisy_quadratic'"),
    ],
)
def test_bad_input_fails_before_anything_is_written(tmp_path, override, message):
    cfg = config("task=noisy_quadratic", "logger=none", "steps=5", override)
    with pytest.raises(ConfigError, match=message):
        execute(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_device_cuda_without_cuda_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="device='cuda' is not allowed: CUDA is not available on this machine"):
        execute(config("device=cuda", "logger=none"), tmp_path / "run")


@pytest.mark.parametrize("override", ["steps=10.5", "optimizer.lr=inf"])
def test_a_bad_value_is_one_line_and_no_folder(tmp_path, override):
    result = cli("task=rosenbrock", override, "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "is not allowed" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_final_window_mean():
    steps = list(range(1, 101))
    assert final_window_mean(steps, steps, 100) == pytest.approx(sum(range(91, 101)) / 10)
    assert final_window_mean(steps, steps, 50) == pytest.approx(sum(range(46, 51)) / 5)


def test_every_task_and_experiment_default_passes_validation():
    from lodo.config import validate

    for overrides in (["task=mnist_autoregression"], ["task=noisy_quadratic"], ["+experiment=mnist", "optimizer=kfac"]):
        validate(OmegaConf.to_container(config(*overrides, "scale=paper"), resolve=True))


def test_long_evaluations_announce_their_cost(caplog):
    from lodo.tasks import MnistAutoregression

    task = MnistAutoregression(batch_size=2, validation_images=1, test_images=2, metric_batch=392, samples=0)
    with caplog.at_level(logging.INFO, logger="lodo.tasks.mnist"):
        task.final_metrics()
    assert "test loss: 2 images x 784 positions = 4 CNN passes of up to 392" in caplog.text
    paper = config("task=mnist_autoregression", "scale=paper").task
    ordinary = config("task=mnist_autoregression").task
    assert (paper.validation_images, paper.test_images) == (64, 10_000)  # the paper's budget at scale=paper only
    assert (ordinary.validation_images, ordinary.test_images, ordinary.samples) == (1, 1, 4)


def test_the_summary_records_where_its_inputs_came_from(tmp_path):
    overrides = ("task=noisy_quadratic", "task.n=10", "optimizer=lodo", "steps=4", "logger=none", "progress=false")
    authors = "tuned@optimizer=authors/noisy_quadratic/lodo"
    summary = execute(config(*overrides, authors, "optimizer.beta=0.5"), tmp_path / "swept")
    tuned = summary["provenance"]["tuned"]
    assert tuned["path"] == "configs/tuned/authors/noisy_quadratic/lodo.yaml" and len(tuned["sha256"]) == 64
    assert tuned["overridden"] == ["beta"] and tuned["tune_seed"] is None  # the authors' values: no tuning seed
    es = execute(config(*overrides), tmp_path / "es")["provenance"]["tuned"]
    assert es["path"] == "configs/tuned/noisy_quadratic/lodo.yaml" and es["overridden"] == []
    assert summary["provenance"]["newton_floor"] > 0 and summary["provenance"]["preconditioner_checkpoint"] is None
    reference = summary["hessian_reference"]
    assert reference["start"] > reference["best_scalar"] >= reference["best_diagonal"] > 0
    defaults = execute(config(*overrides, "~tuned@optimizer"), tmp_path / "defaults")
    assert defaults["provenance"]["tuned"] is None  # generation-0 defaults: no tuned file was read
    rosenbrock = execute(config("task=rosenbrock", "optimizer=adam", "steps=4", "logger=none"), tmp_path / "r")
    header = (Path(__file__).resolve().parents[1] / "configs/tuned/rosenbrock/adam.yaml").read_text().splitlines()[0]
    assert f"tuning seed {rosenbrock['provenance']['tuned']['tune_seed']} " in header + " "
    assert rosenbrock["hessian_reference"] is None
