"""Optimizers: LODO and its ablations, the baselines, and the registry of every optimizer the suite can run.

Importing this package registers every optimizer (see :mod:`lodo.optim.registry`).
"""

from lodo.optim import (
    baselines,  # noqa: F401
    modern,  # noqa: F401
    registry,  # noqa: F401  (registers LODO, its ablations and the torch.optim baselines)
)
from lodo.optim.lodo import LODO

__all__ = ["LODO"]
