"""A run's config, checked and built into a task and an optimizer; plain Python, no Hydra.

:func:`validate` checks the type and range of every top-level value and every task and optimizer hyperparameter
(the type of its default in ``configs/<group>/<name>.yaml``, finite numbers only); :func:`build` then runs the
constructors, whose own range checks become :class:`ConfigError` too. All of it happens before a run folder is
made, so a bad value costs one line and leaves nothing on disk (README, *Run records*).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lodo.optim.registry import build_optimizer, check_compatible
from lodo.paths import configs_dir
from lodo.tasks import task_class

CONFIGS = configs_dir()
TASK_RESERVED = ("name", "metric_interval")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ConfigError(ValueError):
    """A config value that cannot run; the message is one line naming the parameter, the value and what is allowed."""


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def check_device(device) -> None:
    _require(isinstance(device, str), "device", device, "cpu, cuda or cuda:<index>")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device={device!r} is not allowed: cpu, cuda or cuda:<index>") from None
    _require(parsed.type in ("cpu", "cuda"), "device", device, "cpu, cuda or cuda:<index>")
    if parsed.type == "cuda":
        _require(torch.cuda.is_available(), "device", device, "CUDA is not available on this machine")
        count = torch.cuda.device_count()
        _require((parsed.index or 0) < count, "device", device, f"this machine has {count} CUDA device(s)")


def check_group(group: str, values: dict) -> None:
    """Each hyperparameter of ``group`` must be finite and of the type of its default in ``configs/<group>/``."""
    path = CONFIGS / group / f"{values.get('name')}.yaml"
    defaults = OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else {}
    for key, value in values.items():
        default, name = defaults.get(key), f"{group}.{key}"
        if isinstance(value, float):
            _require(math.isfinite(value), name, value, "a finite number")
        if value is None:  # null where a default is a value: the constructor says whether it means something
            continue
        if isinstance(default, bool):
            _require(isinstance(value, bool), name, value, "true or false")
        elif _is_int(default):
            _require(_is_int(value), name, value, "an integer")
        elif isinstance(default, float):
            _require(_is_number(value), name, value, "a finite number")
        elif isinstance(default, str) and not default.startswith("${"):  # an interpolation has no type of its own
            _require(isinstance(value, str), name, value, "a string")


def validate(config: dict) -> None:
    """Raise a :class:`ConfigError` naming the first value that cannot run (types and ranges)."""
    _require(_is_int(config["seed"]) and config["seed"] >= 0, "seed", config["seed"], "a non-negative integer")
    _require(_is_int(config["steps"]) and config["steps"] >= 1, "steps", config["steps"], "a positive integer")
    limit = config["time_limit"]
    _require(limit is None or _is_number(limit) and limit >= 0, "time_limit", limit, "null or seconds >= 0")
    check_device(config["device"])
    dtype = config["dtype"]
    _require(dtype is None or dtype in DTYPES, "dtype", dtype, f"null or one of {', '.join(DTYPES)}")
    threads = config["threads"]
    _require(threads is None or _is_int(threads) and threads >= 1, "threads", threads, "null or a positive integer")
    every = config.get("checkpoint_interval")
    _require(every is None or _is_number(every) and every >= 0, "checkpoint_interval", every, "null or seconds >= 0")
    _require(isinstance(config["progress"], bool), "progress", config["progress"], "true or false")
    interval = config["task"].get("metric_interval")
    allowed = "null or a positive integer"
    _require(interval is None or _is_int(interval) and interval >= 1, "task.metric_interval", interval, allowed)
    try:
        task_class(config["task"]["name"])
        check_compatible(config["optimizer"]["name"], config["task"]["name"])
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check_group("task", config["task"])
    check_group("optimizer", config["optimizer"])
    logger = config["logger"].get("name")
    _require(logger in ("none", "wandb"), "logger", logger, "none or wandb")
    checkpoint = config.get("preconditioner_checkpoint")
    allowed = "null or an existing optimizer.pt"
    _require(checkpoint is None or Path(checkpoint).is_file(), "preconditioner_checkpoint", checkpoint, allowed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_task(cfg: DictConfig | dict):
    """The task of ``cfg.task``, built on ``cfg.device`` in ``cfg.dtype`` (``null``: the task's default)."""
    config = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    dtype = DTYPES[config["dtype"]] if config["dtype"] else None
    kwargs = {k: v for k, v in config["task"].items() if k not in TASK_RESERVED}
    return task_class(config["task"]["name"])(seed=config["seed"], dtype=dtype, device=config["device"], **kwargs)


def build(config: dict):
    """The task and optimizer of ``config``; their constructors' range checks become :class:`ConfigError`."""
    try:
        task = build_task(config)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"task {config['task']['name']!r}: {error}") from None
    hparams = {k: v for k, v in config["optimizer"].items() if k != "name"}
    try:
        optimizer = build_optimizer(config["optimizer"]["name"], task.parameters(), task, **hparams)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"optimizer {config['optimizer']['name']!r}: {error}") from None
    return task, optimizer
