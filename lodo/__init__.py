"""LODO and its experiment suite: the optimizer, the paper's tasks, and a plain training loop."""

from lodo.optim import LODO

__version__ = "0.1.0"
__all__ = ["LODO", "__version__"]
