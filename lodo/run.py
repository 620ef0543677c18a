"""The Hydra runner: ``python -m lodo.run task=<name> optimizer=<name> [key=value ...] [--multirun]``.

This is the only module that knows Hydra. For one run it: validates every value and builds the task and optimizer
(a bad value is one line on stderr, before any folder is made); locks the run folder (one writer at a time);
reuses a finished record only if it was made for the same config (same ``config_hash``), moves a record made for
another config aside and names the keys that differ, and resumes an unfinished one from its checkpoint; trains,
checkpointing every ``checkpoint_interval`` training seconds and on SIGINT/SIGTERM; then writes the record, W&B
mirror first and ``summary.json`` last (README, *Run records*).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lodo.checkpoint import load_checkpoint, save_checkpoint
from lodo.config import ConfigError, build, seed_everything, validate
from lodo.loggers import Logger, WandbLogger
from lodo.paths import configs_dir
from lodo.records import (
    RunDirError,
    RunRecord,
    clear,
    config_hash,
    contents,
    describe_diff,
    environment,
    final_window_mean,
    is_complete,
    lock_run_dir,
    move_aside,
    read_losses,
    read_rows,
    read_summary,
    write_atomic,
    write_summary,
    writing,
)
from lodo.train import train

log = logging.getLogger("lodo.run")
CHECKPOINT = "checkpoint.pt"


# Arithmetic for experiment configs (the ablation sweeps derive β, depth and block size from r, METHODS.md §A.7.3).
for _name, _function in {
    "add": lambda a, b: a + b,
    "multiply": lambda a, b: a * b,
    "floor_divide": lambda a, b: a // b,
    "equal": lambda a, b: a == b,
    "sweep_beta": lambda beta, r: 1 - (1 - beta) ** (r / 7),  # β_r = 1 − (1 − β*)^{r/7}, r = 0..7
    "or_defaults": lambda name: name or "defaults",  # a run folder named by its overrides, "defaults" if none
}.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _function)


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped a run; its checkpoint and an ``interrupted`` summary are on disk.

    Arguments: the one-line message and the signal's name.
    """

    def __str__(self) -> str:
        return self.args[0]


# --- the run folder -----------------------------------------------------------------------------------------------


def prepare(run_dir: Path, config: dict, digest: str) -> str:
    """Decide what to do with the locked ``run_dir``: ``"skip"``, ``"resume"`` or ``"fresh"`` (folder emptied)."""
    saved = run_dir / "config.yaml"
    if not contents(run_dir):
        return "fresh"
    if saved.exists():
        old = OmegaConf.to_container(OmegaConf.load(saved))
        if config_hash(old) == digest:
            if is_complete(run_dir):
                return "skip"
            if (run_dir / CHECKPOINT).exists():
                return "resume"
            clear(run_dir)  # an attempt at the same request that left no checkpoint: redo it from the start
            return "fresh"
        why = "its record was made for another config (" + describe_diff(old, config) + ")"
    else:
        why = "it holds files but no config.yaml"
    stale = move_aside(run_dir)
    log.warning("%s: %s; moved its contents to %s", run_dir, why, stale.name)
    return "fresh"


def make_logger(cfg: DictConfig, config: dict, run_dir: Path, sweep_dir: Path | None) -> Logger:
    if cfg.logger.name == "none":
        return Logger()
    return WandbLogger(
        run_dir,
        {**config, "task_name": cfg.task.name, "optimizer_name": cfg.optimizer.name},
        name=f"{cfg.task.name}-{cfg.optimizer.name}-seed{cfg.seed}",
        group=cfg.experiment,
        job_type=cfg.optimizer.name,
        tags=[cfg.task.name, cfg.scale],
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        mode=cfg.logger.mode,
        log_every=cfg.logger.log_every,
        init_timeout=cfg.logger.get("init_timeout", 15),
        failure_marker=sweep_dir / ".wandb-init-failed" if sweep_dir else None,
    )


@contextmanager
def stop_on_signals():
    """While a run is in progress, SIGINT and SIGTERM ask the loop to stop (checkpoint, summary, exit).

    The loop looks after every iteration; a second signal stops at once (the last periodic checkpoint remains).
    Only where nobody else handles them: under submitit, SIGTERM is its own (it requeues on preemption).
    """
    received: list[str] = []

    def handler(number, frame):
        if received:  # a second signal (e.g. during a long final evaluation): stop now, without a record
            raise KeyboardInterrupt
        received.append(signal.Signals(number).name)

    handled = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for number, default in handled.items():
            if signal.getsignal(number) is default:
                previous[number] = signal.signal(number, handler)
    try:
        yield lambda: received[0] if received else None
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def run_log(run_dir: Path):
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger("lodo").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("lodo").removeHandler(handler)
        handler.close()


def save_artifacts(task, run_dir: Path) -> dict[str, str]:
    """The task's pictures, each drawn into a scratch folder and then renamed into the run folder (atomic)."""
    scratch = run_dir / ".artifacts"
    shutil.rmtree(scratch, ignore_errors=True)
    with writing(scratch):
        scratch.mkdir()
    artifacts = {}
    for name, path in task.save_artifacts(scratch).items():
        final = run_dir / Path(path).name
        with writing(final):
            os.replace(path, final)
        artifacts[name] = str(final)
    shutil.rmtree(scratch)
    return artifacts


# --- provenance -----------------------------------------------------------------------------------------------------

ROOT = configs_dir().resolve().parent  # the checkout (editable install) or the package: tuned files show as configs/...
TUNED = configs_dir() / "tuned"


def _file_record(path: Path) -> dict:
    """A file's path (relative to the repository where it lies inside it) and the SHA-256 of its content."""
    shown = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    return {"path": str(shown), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def provenance(cfg: DictConfig, task) -> dict:
    """Where a run's inputs came from, stored in its summary so that the report never reads live repository state.

    ``tuned``: the tuned-values file whose values the run read — this suite's ES values
    ``configs/tuned/<task>/<optimizer>.yaml`` or the authors' ``configs/tuned/authors/<task>/<optimizer>.yaml``,
    whichever leaves fewer of the run's values unexplained (``null`` if neither has any of them:
    ``~tuned@optimizer``) — with its content hash, the tuning seed its header names (``null`` for the authors'
    values) and the keys the run set otherwise (``overridden``: a sweep's β, a frozen run's meta_lr);
    ``newton_floor``: the task's best expected loss where it has one (the noisy quadratic);
    ``preconditioner_checkpoint``: the file a frozen run's θ came from, with its hash.
    """
    record = None
    for tuned in (
        TUNED / cfg.task.name / f"{cfg.optimizer.name}.yaml",
        TUNED / "authors" / cfg.task.name / f"{cfg.optimizer.name}.yaml",
    ):
        if not tuned.exists():
            continue
        values = OmegaConf.to_container(OmegaConf.load(tuned))
        overridden = sorted(key for key, value in values.items() if cfg.optimizer.get(key) != value)
        if len(overridden) < len(values) and (record is None or len(overridden) < len(record["overridden"])):
            seed = re.search(r"tuning seed (\d+)", tuned.read_text())
            record = {**_file_record(tuned), "tune_seed": int(seed.group(1)) if seed else None}
            record["overridden"] = overridden
    checkpoint = cfg.get("preconditioner_checkpoint")
    return {
        "tuned": record,
        "newton_floor": getattr(task, "newton_floor", None),
        "preconditioner_checkpoint": _file_record(Path(checkpoint)) if checkpoint else None,
    }


def hessian_reference(cfg: DictConfig, task) -> dict | None:
    """The Hessian error ‖I − GH‖_F/√n of the reference preconditioners on this run's H (the noisy quadratic):
    LODO's start G = α₀I (α₀ = ``optimizer.lr``), the best scalar G = cI and the best diagonal G, all exact."""
    if not hasattr(task, "best_diagonal_error"):
        return None
    lr = cfg.optimizer.get("lr")
    return {
        "start": task.scaled_identity_error(lr) if lr is not None else None,
        "best_scalar": task.best_scalar_error,
        "best_diagonal": task.best_diagonal_error,
    }


# --- one run --------------------------------------------------------------------------------------------------------


def execute(cfg: DictConfig, run_dir: str | Path, sweep_dir: str | Path | None = None) -> dict:
    """Run one configured training run into ``run_dir`` (or reuse or resume its record) and return its summary.

    Raises :class:`ConfigError` for a value that cannot run (before anything is written), ``RunDirError`` if the
    folder is locked or cannot be written, and :class:`RunInterrupted` after SIGINT/SIGTERM.
    """
    run_dir = Path(run_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    validate(config)
    digest = config_hash(config)
    if is_complete(run_dir) and read_summary(run_dir).get("config_hash") == digest:
        log.info("skipping %s: its record is complete", run_dir)
        return read_summary(run_dir)
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task, optimizer = build(config)
    if cfg.get("preconditioner_checkpoint"):  # the frozen-preconditioner test (METHODS.md §A.7.5): θ of an earlier run
        if not hasattr(optimizer, "load_preconditioner"):
            raise ConfigError(f"preconditioner_checkpoint needs a LODO optimizer, not {cfg.optimizer.name}")
        checkpoint = torch.load(cfg.preconditioner_checkpoint, map_location=cfg.device, weights_only=True)
        state = checkpoint.get("preconditioner") if isinstance(checkpoint, dict) else None
        if state is None:
            raise ConfigError(f"preconditioner_checkpoint={cfg.preconditioner_checkpoint} holds no LODO preconditioner")
        try:  # θ only; the frozen test keeps it fixed with optimizer.meta_lr=0
            optimizer.load_preconditioner(state)
        except ValueError as error:
            raise ConfigError(f"preconditioner_checkpoint={cfg.preconditioner_checkpoint}: {error}") from None
    task.progress = cfg.progress

    lock = lock_run_dir(run_dir)
    try:
        action = prepare(run_dir, config, digest)
        if action == "skip":
            log.info("skipping %s: its record is complete", run_dir)
            return read_summary(run_dir)
        with run_log(run_dir), stop_on_signals() as stop:
            return _train_and_record(cfg, config, digest, task, optimizer, run_dir, action, stop, sweep_dir)
    finally:
        lock.close()


def load_resume(run_dir: Path) -> dict | None:
    """The run's checkpoint, if it and metrics.csv agree; otherwise the folder is emptied and the run redone."""
    try:
        state = load_checkpoint(run_dir / CHECKPOINT)
        if len(read_rows(run_dir)) < state["loop"]["iteration"]:
            raise ValueError(f"metrics.csv has fewer rows than the checkpoint's {state['loop']['iteration']}")
    except Exception as error:  # noqa: BLE001 - an unusable checkpoint costs the run's progress, not the run
        log.warning("%s: its checkpoint cannot be used (%s); starting again", run_dir, error)
        clear(run_dir)
        return None
    (run_dir / "summary.json").unlink(missing_ok=True)  # the interrupted attempt's summary and mirror go
    shutil.rmtree(run_dir / "wandb", ignore_errors=True)
    log.info("resuming %s from its checkpoint at step %d", run_dir, state["loop"]["evaluations"])
    return state


def _train_and_record(cfg, config, digest, task, optimizer, run_dir, action, stop, sweep_dir) -> dict:
    resume = load_resume(run_dir) if action == "resume" else None
    write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(config))
    record = RunRecord(run_dir, task.metric_names(optimizer), keep_rows=resume and resume["loop"]["iteration"])
    logger = make_logger(cfg, config, run_dir, sweep_dir and Path(sweep_dir))
    if resume is not None:  # the mirror is rebuilt from the record's rows, so it holds the whole history
        for row in read_rows(run_dir):
            logger.log(row)

    def on_row(row: dict) -> None:
        record.append(row)
        logger.log(row)

    def on_checkpoint(state: dict) -> None:
        record.flush()  # the rows the checkpoint counts are on disk before it is
        save_checkpoint(run_dir / CHECKPOINT, state)

    try:
        summary = train(
            task,
            optimizer,
            steps=cfg.steps,
            time_limit=cfg.time_limit,
            metric_interval=cfg.task.metric_interval,
            on_row=on_row,
            progress=cfg.progress,
            checkpoint_interval=cfg.get("checkpoint_interval"),
            on_checkpoint=on_checkpoint,
            resume=resume,
            stop=stop,
        )
    finally:
        record.close()
    step, time, loss = read_losses(run_dir)
    status = summary["status"]
    summary.update(
        final_loss_at_steps=final_window_mean(step, loss, cfg.steps),
        final_loss_at_time=final_window_mean(time, loss, cfg.time_limit) if cfg.time_limit else None,
        diverged_at_steps=status == "diverged" and summary["steps"] <= cfg.steps,
        diverged_at_time=status == "diverged" and summary["train_time"] <= cfg.time_limit if cfg.time_limit else None,
        experiment=cfg.experiment,
        task=cfg.task.name,
        optimizer=cfg.optimizer.name,
        seed=cfg.seed,
        milestones={"steps": cfg.steps, "time_limit": cfg.time_limit},
        num_parameters=task.num_parameters,
        config_hash=digest,
        provenance=provenance(cfg, task),
        hessian_reference=hessian_reference(cfg, task),
        environment=environment(),
    )
    if cfg.get("save_optimizer_state") and status != "interrupted":
        save_checkpoint(run_dir / "optimizer.pt", optimizer.state_dict())
    save = status == "completed" and cfg.get("save_artifacts", True)
    logger.log_images(save_artifacts(task, run_dir) if save else {})
    logger.finish(summary)  # the mirror is finished before the record says the run is
    summary["wandb"] = logger.record()
    write_summary(run_dir, summary)
    if status == "interrupted":
        raise RunInterrupted(
            f"{run_dir}: interrupted by {summary['reason']} at step {summary['steps']} of {cfg.steps}; "
            "checkpoint saved, rerun the same command to resume",
            summary["reason"],
        )
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    log.info(
        "%s on %s: %s, final-window loss %.6g, %.1f steps/s -> %s",
        cfg.optimizer.name,
        cfg.task.name,
        status,
        summary["final_loss_at_steps"],
        summary["steps_per_second"],
        run_dir,
    )
    return summary


def _remove_if_empty(run_dir: Path) -> None:
    """Hydra makes the run folder before the run starts; a run refused at once leaves no empty folder behind."""
    for folder in (run_dir, *run_dir.parents):
        if folder == Path.cwd() or not folder.is_dir() or any(folder.iterdir()):
            return
        folder.rmdir()
        if Path.cwd() not in folder.parents:
            return


@hydra.main(version_base="1.3", config_path=str(configs_dir()), config_name="config")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep_dir = Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None
    try:
        summary = execute(cfg, run_dir, sweep_dir)
    except (ConfigError, RunDirError, RunInterrupted) as error:
        _remove_if_empty(run_dir)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{'interrupted' if isinstance(error, RunInterrupted) else 'error'}: {error}", file=sys.stderr)
        sys.exit(128 + signal.Signals[error.args[1]] if isinstance(error, RunInterrupted) else 2)  # 130: SIGINT
    return summary.get("final_loss_at_steps")


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
