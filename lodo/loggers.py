"""Where a run's rows go besides its local record: a small interface, with Weights & Biases as one implementation.

The local record is always written first; a logger that fails warns once and turns itself off, so a W&B
problem never costs a run or its record. The W&B run is finished before the record's ``summary.json`` is written,
so a finished record always has a finished mirror (README, *Run records*).
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

    def record(self) -> dict | None:
        """What ``summary.json`` stores about the mirror (``None``: no mirror was made)."""
        return None


class WandbLogger(Logger):
    """Mirrors config, history, summary and pictures to a W&B run stored inside the run directory.

    ``mode="offline"`` (the default) needs no network: upload later with ``wandb sync <run_dir>/wandb/offline-*``
    (``make sync``). Runs are grouped by experiment, with ``job_type`` = optimizer and tags = task and scale, so a
    workspace shows each experiment's optimizers side by side.

    The run's config is the resolved run config plus the top-level strings ``task_name`` and ``optimizer_name``
    (``experiment``, ``scale`` and ``seed`` are top-level already). Its summary has flat, stable keys: ``status``,
    ``reason``, ``diverged``, ``steps``, ``iterations``, ``train_time``, ``metric_time``, ``steps_per_second``,
    ``final_loss_at_steps``, ``final_loss_at_time``, ``diverged_at_steps``, ``diverged_at_time``,
    ``milestone/steps``, ``milestone/time_limit``, ``config_hash``, ``env/<key>`` for each entry of
    :func:`lodo.records.environment`, and every other flat value of the run's summary (``experiment``, ``task``,
    ``optimizer``, ``seed``, ``num_parameters`` and the task's final metrics, e.g. ``test_loss``). W&B keeps no null
    or NaN values: without a time milestone the ``*_time`` keys and ``milestone/time_limit`` are absent.

    ``init_timeout`` bounds how long ``wandb.init`` may wait for a server (online mode). If ``failure_marker`` is
    given (a sweep's folder), an init failure writes it and later runs that see it do not try again: one stall per
    sweep, not one per run. Delete the marker to try again.
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
        init_timeout: float = 15,
        failure_marker: str | Path | None = None,
    ):
        self.log_every, self._rows, self.run, self._record = max(1, int(log_every)), 0, None, None
        self.run_dir, self.failure_marker = Path(run_dir), failure_marker and Path(failure_marker)
        if self.failure_marker is not None and self.failure_marker.exists():
            warnings.warn(
                f"W&B is off for this run: its init failed earlier in this sweep ({self.failure_marker}: "
                f"{self.failure_marker.read_text().strip()}); delete that file to try again",
                stacklevel=2,
            )
            return
        try:
            import wandb

            os.environ.setdefault("WANDB_DIR", str(run_dir))
            if mode != "online":  # offline mode makes one network call, for error reporting
                os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
            self.run = wandb.init(
                dir=str(run_dir),
                project=project,
                entity=entity,
                mode=mode,
                config=config,
                name=name[:128],  # limits that `wandb sync` enforces and offline mode does not check
                group=group[:128],
                job_type=job_type[:64],
                tags=[t[:64] for t in tags if t],
                reinit="finish_previous",
                settings=wandb.Settings(console="off", silent=True, init_timeout=init_timeout),
            )
            self.run.define_metric("step")
            self.run.define_metric("*", step_metric="step")
        except Exception as error:  # noqa: BLE001 - any W&B failure must leave the local record intact
            self._fail("init", error)
            if self.failure_marker is not None:
                try:
                    self.failure_marker.write_text(f"{type(error).__name__}: {error}"[:500] + "\n")
                except OSError:
                    pass

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
        flat = {k: v for k, v in summary.items() if not isinstance(v, dict)}
        flat["diverged"] = summary.get("status") == "diverged"
        milestones = summary.get("milestones") or {}
        flat.update({f"milestone/{k}": milestones.get(k) for k in ("steps", "time_limit")})
        flat.update({f"env/{k}": v for k, v in (summary.get("environment") or {}).items()})
        try:
            record = {"id": self.run.id, "dir": os.path.relpath(self.run.settings.sync_dir, self.run_dir)}
            self.run.summary.update(flat)
            self.run.finish(exit_code=0 if summary.get("status") in ("completed", "diverged") else 1)
            self._record = record
        except Exception as error:  # noqa: BLE001
            self._fail("finish", error)

    def record(self) -> dict | None:
        return self._record
