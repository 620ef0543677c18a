"""Mid-run checkpoints: everything a run needs to continue as if it had never stopped.

A checkpoint holds the training loop's counters and clock, the optimizer's ``state_dict()``, the task's
``state_dict()`` (parameters and its random generator) and the global random generators (Python, NumPy, torch and
CUDA: some optimizers draw from them, e.g. K-FAC's sampled targets). Resuming from it reproduces the uninterrupted
run's ``metrics.csv`` (time column aside) and summary bit for bit for every optimizer whose ``state_dict()``
round-trips exactly (README, *Run records*). The file is written to a temporary name and renamed, so a kill
during the write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from lodo.records import writing


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        torch.save(state, tmp)
        os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load onto the CPU (generator states must be CPU tensors); ``load_state_dict`` moves the rest."""
    # weights_only=False: the file is this run's own (Python and NumPy generator states are not plain tensors).
    return torch.load(path, map_location="cpu", weights_only=False)
