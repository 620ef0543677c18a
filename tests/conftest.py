import os

import pytest
import torch

# W&B must never reach a network in tests (ENVIRONMENT.md): offline mode without error reporting.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
