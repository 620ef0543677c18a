"""Where a run's rows go besides its local record: a small interface, with Weights & Biases as one implementation.

The local record is always written first; a logger that fails warns once and turns itself off, so a W&B
problem never costs a run or its record.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path


class Logger:
    """Mirror of a run record. The base class does nothing (``logger=none``)."""

    def log(self, row: dict) -> None:
        pass

    def log_images(self, images: dict[str, str]) -> None:
        pass

    def finish(self, summary: dict) -> None:
        pass


class WandbLogger(Logger):
    """Mirrors config, history, summary and pictures to a W&B run stored inside the run directory.

    ``mode="offline"`` (the default) needs no network: upload later with ``wandb sync <run_dir>/wandb/offline-*``
    (``make sync``). Runs are grouped by experiment, with ``job_type`` = optimizer and tags = task and scale, so a
    workspace shows each experiment's optimizers side by side.
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: dict,
        name: str,
        group: str,
        job_type: str,
        tags: list[str],
        project: str = "lodo",
        entity: str | None = None,
        mode: str = "offline",
        log_every: int = 1,
    ):
        self.log_every, self._rows, self.run = max(1, int(log_every)), 0, None
        try:
            import wandb

            os.environ.setdefault("WANDB_DIR", str(run_dir))
            if mode != "online":  # offline mode's only network call is error reporting (ENVIRONMENT.md)
                os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
            self.run = wandb.init(
                dir=str(run_dir),
                project=project,
                entity=entity,
                mode=mode,
                config=config,
                name=name[:128],  # limits that `wandb sync` enforces (ENVIRONMENT.md)
                group=group[:128],
                job_type=job_type[:64],
                tags=[t[:64] for t in tags if t],
                reinit="finish_previous",
                settings=wandb.Settings(console="off", silent=True),
            )
            self.run.define_metric("step")
            self.run.define_metric("*", step_metric="step")
        except Exception as error:  # noqa: BLE001 - any W&B failure must leave the local record intact
            self._fail("init", error)

    def _fail(self, what: str, error: Exception) -> None:
        warnings.warn(f"W&B {what} failed ({error!r}); the local run record is unaffected", stacklevel=3)
        self.run = None

    def log(self, row: dict) -> None:
        self._rows += 1
        if self.run is None or (self._rows - 1) % self.log_every and len(row) <= 4:
            return
        try:
            self.run.log(row, step=row["iteration"])
        except Exception as error:  # noqa: BLE001
            self._fail("log", error)

    def log_images(self, images: dict[str, str]) -> None:
        if self.run is None or not images:
            return
        try:
            import wandb

            self.run.log({name: wandb.Image(str(path)) for name, path in images.items()})
        except Exception as error:  # noqa: BLE001
            self._fail("image logging", error)

    def finish(self, summary: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update({k: v for k, v in summary.items() if not isinstance(v, dict)})
            self.run.finish()
        except Exception as error:  # noqa: BLE001
            self._fail("finish", error)
