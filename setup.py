"""The package list, which pyproject.toml cannot compute (everything else is there): lodo's packages, and the
repository's top-level configs/ as lodo.configs, every folder of it a package so that the wheel carries its YAML
files (found at run time through lodo.paths.configs_dir())."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["lodo", "lodo.*"]),  # lodo.optim.l2lbgdbgd: the L2LBGDBGD weights
        "lodo.configs",
        *(f"lodo.configs.{name}" for name in find_namespace_packages("configs")),
    ],
    package_dir={"lodo.configs": "configs"},
)
