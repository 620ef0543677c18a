"""The Hydra runner: ``python -m lodo.run task=<name> optimizer=<name> [key=value ...] [--multirun]``.

This is the only module that knows Hydra. It checks the optimizer/task pair before building anything, skips a
run whose directory already holds a finished record (so an interrupted sweep resumes where it stopped), builds
the task and optimizer through their registries, trains, and writes the record; W&B mirrors it.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lodo.loggers import Logger, WandbLogger
from lodo.optim.registry import build_optimizer, check_compatible
from lodo.records import RunRecord, environment, final_window_mean, is_complete, read_summary
from lodo.tasks import task_class
from lodo.train import check_budget, train

log = logging.getLogger("lodo.run")
TASK_RESERVED = ("name", "metric_interval")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


# Arithmetic for experiment configs (the MNIST ablation sweeps of SPEC §2 derive β, depth and block size from r).
for _name, _function in {
    "add": lambda a, b: a + b,
    "multiply": lambda a, b: a * b,
    "floor_divide": lambda a, b: a // b,
    "equal": lambda a, b: a == b,
    "sweep_beta": lambda beta, r: 1 - (1 - beta) ** (r / 7),  # β_r = 1 − (1 − β*)^{r/7}, r = 0..7
}.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _function)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_task(cfg: DictConfig):
    """The task of ``cfg.task``, built on ``cfg.device`` in ``cfg.dtype`` (``null``: the task's default)."""
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {cfg.dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items() if k not in TASK_RESERVED}
    dtype = DTYPES[cfg.dtype] if cfg.dtype else None
    return task_class(cfg.task.name)(seed=cfg.seed, dtype=dtype, device=cfg.device, **kwargs)


def make_logger(cfg: DictConfig, run_dir: Path) -> Logger:
    if cfg.logger.name == "none":
        return Logger()
    if cfg.logger.name != "wandb":
        raise ValueError(f"unknown logger {cfg.logger.name!r}; valid loggers: none, wandb")
    return WandbLogger(
        run_dir,
        OmegaConf.to_container(cfg, resolve=True),
        name=f"{cfg.task.name}-{cfg.optimizer.name}-seed{cfg.seed}",
        group=cfg.experiment,
        job_type=cfg.optimizer.name,
        tags=[cfg.task.name, cfg.scale],
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        mode=cfg.logger.mode,
        log_every=cfg.logger.log_every,
    )


def execute(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run one configured training run into ``run_dir`` and return its summary."""
    run_dir = Path(run_dir)
    check_compatible(cfg.optimizer.name, cfg.task.name)
    check_budget(cfg.steps, cfg.time_limit, cfg.task.metric_interval)
    if is_complete(run_dir):
        log.info("skipping %s: its record is complete", run_dir)
        return read_summary(run_dir)
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = build_task(cfg)
    hparams = {k: v for k, v in OmegaConf.to_container(cfg.optimizer, resolve=True).items() if k != "name"}
    optimizer = build_optimizer(cfg.optimizer.name, task.parameters(), task, **hparams)
    if cfg.get("preconditioner_checkpoint"):  # the frozen-preconditioner test (reference §7.5): θ of an earlier run
        checkpoint = torch.load(cfg.preconditioner_checkpoint, map_location=cfg.device, weights_only=True)
        optimizer.preconditioner.load_state_dict(checkpoint["preconditioner"])

    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    record = RunRecord(run_dir, task.metric_names(optimizer))
    logger = make_logger(cfg, run_dir)

    def on_row(row: dict) -> None:
        record.append(row)
        logger.log(row)

    rows: list[tuple[int, float, float]] = []
    try:
        summary = train(
            task,
            optimizer,
            steps=cfg.steps,
            time_limit=cfg.time_limit,
            metric_interval=cfg.task.metric_interval,
            on_row=lambda row: (rows.append((row["step"], row["time"], row["loss"])), on_row(row)),
            progress=cfg.progress,
        )
    finally:
        record.close()
    step, time, loss = (np.array(c, dtype=float) for c in zip(*rows)) if rows else ([],) * 3
    summary.update(
        final_loss_at_steps=final_window_mean(step, loss, cfg.steps),
        final_loss_at_time=final_window_mean(time, loss, cfg.time_limit) if cfg.time_limit else None,
        experiment=cfg.experiment,
        task=cfg.task.name,
        optimizer=cfg.optimizer.name,
        seed=cfg.seed,
        milestones={"steps": cfg.steps, "time_limit": cfg.time_limit},
        num_parameters=task.num_parameters,
        environment=environment(),
    )
    if cfg.get("save_optimizer_state"):
        torch.save(optimizer.state_dict(), run_dir / "optimizer.pt")
    record.write_summary(summary)
    completed = summary["status"] == "completed"
    artifacts = task.save_artifacts(run_dir) if completed and cfg.get("save_artifacts", True) else {}
    logger.log_images(artifacts)
    logger.finish(summary)
    log.info(
        "%s on %s: %s, final-window loss %.6g, %.1f steps/s -> %s",
        cfg.optimizer.name,
        cfg.task.name,
        summary["status"],
        summary["final_loss_at_steps"],
        summary["steps_per_second"],
        run_dir,
    )
    return summary


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> float | None:
    summary = execute(cfg, HydraConfig.get().runtime.output_dir)
    return summary.get("final_loss_at_steps")


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
