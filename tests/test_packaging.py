"""The package as pip builds it: the library needs torch alone, and a wheel carries what the suite reads at run time.

The end-to-end check (a fresh venv, ``pip install '<checkout>[suite]'``, ``python -m lodo.run`` from another
directory) needs the package index, so it is not a test; these are its offline parts.
"""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE_MODULES = {"hydra", "omegaconf", "wandb", "pytorch_optimizer", "pandas", "matplotlib", "submitit", "zarr"}


def test_import_lodo_loads_torch_and_lodo_only():
    code = "import sys; from lodo import LODO; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not SUITE_MODULES & set(ast.literal_eval(loaded))


def test_the_registry_loads_every_optimizer_without_pytorch_optimizer():
    code = (
        "import sys; from lodo.optim.registry import OPTIMIZERS; "
        "print(len(OPTIMIZERS), 'pytorch_optimizer' in sys.modules, 'soap' in OPTIMIZERS)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == len(list((ROOT / "configs" / "optimizer").glob("*.yaml")))  # one config per optimizer
    assert out[1:] == ["False", "True"]  # imported only when PSGD-Kron, SOAP or Shampoo is built


def test_the_wheel_carries_the_configs_and_the_l2l_weights(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    for name in ("lodo", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*command, str(source)], capture_output=True, text=True, check=True)
    (wheel,) = tmp_path.glob("lodo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"lodo/configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert configs and configs <= names
    assert {"lodo/configs/__init__.py", "lodo/paths.py", "lodo/optim/native.c"} <= names
    assert {f"lodo/optim/l2lbgdbgd/weights.{suffix}" for suffix in ("pt", "json")} <= names
    assert not any(name.startswith(("lodo/bench", "scripts/", "tests/", "experiments/")) for name in names)
