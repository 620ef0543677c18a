"""The suite's Hydra configs. This folder is the package ``lodo.configs``: pyproject.toml maps it there, so an
installed wheel carries it, and :func:`lodo.paths.configs_dir` finds it in either kind of install."""
