"""The cluster path: a sweep through Hydra's submitit_local launcher (the SLURM launcher's machinery, run locally),
one job preempted (SIGUSR2: submitit checkpoints and requeues it) and one killed (kill -9), then the same command
again. Every run ends with the metrics of a run that was never stopped."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lodo.records import is_complete
from lodo.run import execute

ROOT = Path(__file__).resolve().parent.parent
RUN = ["task=noisy_quadratic", "task.n=20", "optimizer=adam", "steps=4000", "logger=none", "progress=false"]
RUN += ["threads=1", "checkpoint_interval=0.02"]


def rows(path: Path) -> int:
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def wait_for_rows(run_dir: Path, count: int, process: subprocess.Popen) -> int:
    """The pid of the process writing ``run_dir`` once its metrics.csv holds ``count`` rows."""
    deadline = time.time() + 180
    while rows(run_dir / "metrics.csv") < count:
        assert process.poll() is None and time.time() < deadline, "the sweep ended before the run was stopped"
        time.sleep(0.01)
    return int((run_dir / ".lock").read_text())


def without_time(run_dir: Path) -> list[list[str]]:
    with open(run_dir / "metrics.csv", newline="") as file:
        return [[v for k, v in row.items() if k != "time"] for row in csv.DictReader(file)]


@pytest.mark.slow  # ~1 min: a dozen Python processes
def test_a_submitit_sweep_survives_preemption_and_kill(tmp_path):
    command = [sys.executable, "-m", "lodo.run", "--multirun", "hydra/launcher=submitit_local", *RUN, "seed=0,1"]
    command += ["hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    name = "optimizer=adam,seed={},steps=4000,task.n=20,task=noisy_quadratic"  # checkpoint_interval: not a name
    preempted, killed = tmp_path / name.format(0), tmp_path / name.format(1)
    os.kill(wait_for_rows(preempted, 300, first), signal.SIGUSR2)  # SLURM's warning before preemption/time-out
    os.kill(wait_for_rows(killed, 300, first), signal.SIGKILL)
    output, _ = first.communicate(timeout=300)
    assert first.returncode != 0, output  # the killed job failed the sweep ...
    assert is_complete(preempted), output  # ... the preempted one was requeued and finished
    assert "resuming" in (preempted / "run.log").read_text()
    assert not is_complete(killed) and (killed / "checkpoint.pt").exists()

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert is_complete(killed) and "resuming" in (killed / "run.log").read_text()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        for seed, run_dir in ((0, preempted), (1, killed)):
            execute(compose(config_name="config", overrides=[*RUN, f"seed={seed}"]), tmp_path / f"reference{seed}")
            assert without_time(run_dir) == without_time(tmp_path / f"reference{seed}")
