"""Mid-run checkpoints: a run killed (kill -9) or stopped (SIGINT/SIGTERM) at a random step and resumed gives the
same metrics.csv (time column aside) and summary as the run that was never stopped."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lodo.records import is_complete, read_summary
from lodo.run import execute

ROOT = Path(__file__).resolve().parent.parent
TIMING = ("time", "train_time", "metric_time", "steps_per_second", "final_loss_at_time", "environment", "wandb")
CASES = {
    "lodo-quadratic": ["task=noisy_quadratic", "task.n=20", "task.metric_interval=10", "optimizer=lodo", "steps=600"],
    "adam-quadratic": ["task=noisy_quadratic", "task.n=20", "optimizer=adam", "steps=3000"],
    "adam-cnn": [
        "task=mnist_autoregression",
        "task.batch_size=4",
        "task.metric_interval=null",
        "task.validation_images=0",
        "task.test_images=1",  # the final test loss: one evaluation of the final parameters
        "task.metric_batch=784",
        "task.samples=0",
        "optimizer=adam",
        "steps=40",
    ],
}


def overrides(case: str) -> list[str]:
    return [*CASES[case], "logger=none", "progress=false", "threads=1", "checkpoint_interval=0.01"]


def config(*args):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=list(args))


def rows(path: Path) -> int:
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def stop_at(run_dir: Path, args: list[str], row: int, signum: int) -> subprocess.CompletedProcess:
    """Start the run as a CLI process and send ``signum`` once its metrics.csv holds ``row`` rows (or it ends)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-m", "lodo.run", *args, f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while process.poll() is None and rows(run_dir / "metrics.csv") < row and time.time() < deadline:
        time.sleep(0.01)
    if process.poll() is None:
        process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def without_time(run_dir: Path) -> list[list[str]]:
    with open(run_dir / "metrics.csv", newline="") as file:
        return [[v for k, v in row.items() if k != "time"] for row in csv.DictReader(file)]


@pytest.mark.parametrize(
    "case,signals",
    [
        ("lodo-quadratic", [signal.SIGKILL, signal.SIGKILL]),
        ("adam-quadratic", [signal.SIGKILL, signal.SIGINT]),
        pytest.param("adam-cnn", [signal.SIGKILL], marks=pytest.mark.slow),  # ~40 s: three CNN runs
    ],
)
def test_a_stopped_run_resumes_to_the_uninterrupted_result(tmp_path, case, signals):
    cfg = config(*overrides(case))
    reference = execute(cfg, tmp_path / "reference")
    total = reference["iterations"]
    draw = random.Random(f"{case}{os.getpid()}")
    last_row = 0
    for signum in signals:
        row = draw.randint(last_row + 1, total - 1)
        result = stop_at(tmp_path / "resumed", overrides(case), row, signum)
        if is_complete(tmp_path / "resumed"):  # it finished before the signal came: nothing left to resume
            break
        if signum == signal.SIGKILL:
            assert result.returncode == -signal.SIGKILL
        else:  # a recorded interruption: one line, an exit code, a summary with the step reached
            assert result.returncode == 128 + signum and result.stderr.strip().count("\n") == 0, result.stderr
            summary = read_summary(tmp_path / "resumed")
            assert summary["status"] == "interrupted" and summary["reason"] == signal.Signals(signum).name
            assert f"at step {summary['steps']} of" in result.stderr
        last_row = row
    resumed = execute(cfg, tmp_path / "resumed")
    assert without_time(tmp_path / "resumed") == without_time(tmp_path / "reference")
    assert {k: v for k, v in resumed.items() if k not in TIMING} == {
        k: v for k, v in reference.items() if k not in TIMING
    }
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["status"] == reference["status"]
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()  # a finished run keeps no checkpoint


def test_a_resumed_run_has_one_complete_wandb_mirror(tmp_path, monkeypatch):
    from contextlib import contextmanager

    import lodo.run

    cfg = config(*CASES["lodo-quadratic"], "progress=false", "checkpoint_interval=0")
    calls = []

    @contextmanager
    def stop_after_100_iterations():
        yield lambda: "SIGINT" if len(calls.append(1) or calls) >= 100 else None

    monkeypatch.setattr(lodo.run, "stop_on_signals", stop_after_100_iterations)
    with pytest.raises(lodo.run.RunInterrupted, match="interrupted by SIGINT at step 100 of 600"):
        execute(cfg, tmp_path)
    assert read_summary(tmp_path)["status"] == "interrupted" and read_summary(tmp_path)["steps"] == 100
    monkeypatch.undo()
    summary = execute(cfg, tmp_path)
    (mirror,) = (tmp_path / "wandb").glob("offline-run-*")  # the interrupted attempt's mirror is gone
    assert summary["wandb"]["dir"] == str(mirror.relative_to(tmp_path))
    inspect = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(mirror)]
    lines = subprocess.run(inspect, capture_output=True, text=True).stdout.splitlines()
    history = [json.loads(line)["history"]["item"] for line in lines if '"history"' in line]
    history = [h for h in history if "loss" in h]
    assert [h["step"] for h in history] == list(range(1, 601))  # replayed rows, then the resumed run's
    assert [h["loss"] for h in history] == [float(r[2]) for r in without_time(tmp_path)]


def quadratic_optimizers() -> list[str]:
    import lodo.optim  # noqa: F401 - registers every optimizer
    from lodo.optim.registry import OPTIMIZERS, incompatibility

    return sorted(name for name in OPTIMIZERS if incompatibility(name, "noisy_quadratic") is None)


@pytest.mark.parametrize("name", quadratic_optimizers())
def test_every_optimizer_on_the_quadratic_resumes_bitwise(name):
    """The loop's checkpoint, loaded into new objects in a process in another state, continues the same rows."""
    from omegaconf import OmegaConf

    from lodo.config import build, seed_everything
    from lodo.train import train

    hparams = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "optimizer" / f"{name}.yaml"))
    config = {"seed": 3, "dtype": None, "device": "cpu", "optimizer": hparams}
    config["task"] = {"name": "noisy_quadratic", "n": 10, "metric_interval": 5}

    def run(rows, seed=3, **options):
        seed_everything(seed)
        return train(*build(config), steps=40, metric_interval=5, on_row=rows.append, progress=False, **options)

    straight, first, second, saved = [], [], [], []
    run(straight)
    stopped = run(first, on_checkpoint=saved.append, stop=lambda: "test" if len(first) == 17 else None)
    assert stopped["status"] == "interrupted" and len(first) == 17 and len(saved) == 1
    run(second, seed=12345, resume=saved[-1])  # the global generators come from the checkpoint, not the seed

    def without_time(rows):
        return [{k: v for k, v in row.items() if k != "time"} for row in rows]

    assert without_time(first + second) == without_time(straight)
