"""Where the suite finds its files, in an editable install and in an installed wheel alike.

* :func:`configs_dir`: the Hydra configs, the repository's top-level ``configs/``, which pyproject.toml ships as
  the package ``lodo.configs`` (read-only in an installed wheel).
* :func:`checkout_dir`: the repository checkout that writes go to (the tuner's ``configs/tuned`` and
  ``results/tuning``): the working directory, which must be one.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def configs_dir() -> Path:
    """The folder of the suite's Hydra configs (``config.yaml``, ``task/``, ``optimizer/``, ``tuned/``, …)."""
    return Path(str(resources.files("lodo.configs")))


def checkout_dir() -> Path:
    """The working directory, if it is a checkout of this repository (it holds ``configs/config.yaml``); otherwise a
    ``RuntimeError`` that says so: tuned values and tuning histories belong in the repository, not in the
    installed package."""
    cwd = Path.cwd()
    if not (cwd / "configs" / "config.yaml").is_file():
        raise RuntimeError(
            f"{cwd} is not a checkout of the LODO repository (no configs/config.yaml): run this from the repository "
            "root, where configs/tuned/ and results/tuning/ are written"
        )
    return cwd
