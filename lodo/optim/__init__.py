"""Optimizers: LODO and its ablations, the baselines, and the registry of every optimizer the suite can run.

``from lodo.optim import LODO`` loads LODO alone (it needs torch only). Importing :mod:`lodo.optim.registry`
registers every optimizer: it imports :mod:`lodo.optim.baselines` and :mod:`lodo.optim.modern`.
"""

from lodo.optim.lodo import LODO

__all__ = ["LODO"]
