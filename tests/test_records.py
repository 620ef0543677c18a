"""Records that cannot lie: reuse only for the same config, one writer per folder, write failures that name the file."""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from lodo.records import RunDirError, RunRecord, config_hash, is_complete, lock_run_dir, read_summary
from lodo.run import execute

ROOT = Path(__file__).resolve().parent.parent


def config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=["progress=false", "logger=none", *overrides])


def test_a_changed_config_is_not_reused_and_the_keys_are_named(tmp_path, caplog):
    execute(config("task=rosenbrock", "optimizer=adam", "steps=5"), tmp_path)
    with caplog.at_level(logging.WARNING, logger="lodo.run"):
        summary = execute(config("task=rosenbrock", "optimizer=adam", "steps=7"), tmp_path)
    assert summary["steps"] == 7 and read_summary(tmp_path)["steps"] == 7
    assert "made for another config (steps: 5 -> 7)" in caplog.text
    (stale,) = tmp_path.glob("stale-*")
    assert json.loads((stale / "summary.stale.json").read_text())["steps"] == 5  # kept, out of every summary scan
    assert not list(tmp_path.rglob("stale-*/summary.json"))


def test_another_pair_in_a_finished_folder_moves_it_aside(tmp_path, caplog):
    execute(config("task=rosenbrock", "optimizer=adam", "steps=5"), tmp_path)
    with caplog.at_level(logging.WARNING, logger="lodo.run"):
        execute(config("task=noisy_quadratic", "task.n=5", "optimizer=lodo", "steps=5"), tmp_path)
    assert "optimizer.name: adam -> lodo" in caplog.text and "task.name: rosenbrock -> noisy_quadratic" in caplog.text
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["optimizer"]["name"] == "lodo"
    assert read_summary(tmp_path)["optimizer"] == "lodo"


def test_settings_that_do_not_change_results_keep_the_record(tmp_path):
    first = execute(config("task=rosenbrock", "optimizer=adam", "steps=5"), tmp_path)
    again = execute(config("task=rosenbrock", "optimizer=adam", "steps=5", "progress=true", "threads=1"), tmp_path)
    assert again == first
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config_hash(saved) == first["config_hash"]  # the hash survives the round trip through config.yaml


def test_a_second_writer_fails_at_once_naming_the_folder_and_the_holder(tmp_path):
    lock = lock_run_dir(tmp_path)
    try:
        with pytest.raises(RunDirError, match=f"run folder {tmp_path} is in use by process {os.getpid()}"):
            execute(config("task=rosenbrock", "optimizer=adam", "steps=5"), tmp_path)
        assert not (tmp_path / "metrics.csv").exists()
    finally:
        lock.close()
    execute(config("task=rosenbrock", "optimizer=adam", "steps=5"), tmp_path)  # released: the folder is usable
    assert is_complete(tmp_path)


def test_two_concurrent_cli_writers_give_one_clean_failure(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    args = [sys.executable, "-m", "lodo.run", "task=noisy_quadratic", "task.n=10", "optimizer=adam", "steps=1000000"]
    args += ["logger=none", "progress=false", f"hydra.run.dir={tmp_path}"]
    first = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "metrics.csv").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    finally:
        first.terminate()  # SIGTERM: the first writer records an interrupted run and exits
        _, first_err = first.communicate(timeout=60)
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f"error: run folder {tmp_path} is in use by process {first.pid}; not starting a second writer"
    )
    assert first.returncode == 128 + 15 and first_err.strip().startswith("interrupted:"), first_err
    assert read_summary(tmp_path)["status"] == "interrupted"


def test_a_write_failure_names_the_file(tmp_path):
    (tmp_path / "metrics.csv").symlink_to("/dev/full")  # every write: ENOSPC, a full disk
    record = RunRecord(tmp_path, [])
    record.append({"step": 1, "iteration": 1, "time": 0.1, "loss": 1.0})
    with pytest.raises(RunDirError, match=f"cannot write {tmp_path / 'metrics.csv'}: No space left on device"):
        record.flush()
    with pytest.raises(RunDirError, match="cannot write .*: Not a directory"):
        execute(config("task=rosenbrock", "optimizer=adam", "steps=5"), tmp_path / "metrics.csv" / "run")
