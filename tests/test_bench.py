"""The benchmark (``scripts/bench.py``, ``make bench``): what it measures and what its CSV holds.

Timings cannot be checked, but the memory an optimizer keeps between steps can: it is counted from the tensors,
so it must equal what LODO's definition says it stores, byte for byte, and the CSV must hold one row per case and
optimizer with Adam as the reference of the ratios.
"""

import csv
import sys
from pathlib import Path

import pytest
import torch

from lodo import LODO
from lodo.tasks import NoisyQuadratic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # a script of the repository, not installed
import bench  # noqa: E402


def lodo_state_bytes(n: int, itemsize: int, depth: int = 16, block_size: int = 4) -> int:
    """What LODO (Kronecker preconditioner, meta-Adam) keeps between steps, for n parameters of ``itemsize`` bytes.

    Hidden width h = the smallest multiple of k above 2n; each of the ``depth`` layers holds h/k blocks of k × k, so
    θ has W = depth·h·k values. Kept in the parameters' dtype: θ, its hypergradient and the meta-Adam's two moments
    (4W), the momentum and the last step's direction (2n), and the last step's activations (2·depth·h: each layer's
    input, forward and transposed). Kept as int32: the two gather tables of the permutations (2·depth·h). Kept as
    float32 scalars: LODO's step count and the meta-Adam's, one per layer (1 + depth).
    """
    h = (2 * n // block_size + 1) * block_size
    W = depth * h * block_size
    return itemsize * (4 * W + 2 * n + 2 * depth * h) + 4 * 2 * depth * h + 4 * (1 + depth)


@pytest.mark.parametrize("n, depth", [(10, 2), (7, 3), (300, 16)])
def test_state_bytes_of_lodo_are_what_it_stores(n, depth):
    task = NoisyQuadratic(n=n, seed=0)
    optimizer = LODO(task.parameters(), lr=0.1, meta_lr=1e-3, seed=0, depth=depth)
    for _ in range(3):
        task.x.grad = None
        task.loss(task.sample_batch()).backward()
        optimizer.step()
    assert bench.state_bytes(optimizer, task.parameters()) == lodo_state_bytes(n, 8, depth)


def test_bench_quick_writes_one_row_per_case_and_optimizer(tmp_path):
    output, threads = tmp_path / "bench.csv", torch.get_num_threads()
    try:
        args = ["--quick", "--threads", "1", "--output", str(output)]
        rows = bench.main([*args, "--optimizers", "lodo", "lodo_foreach"])
    finally:
        torch.set_num_threads(threads)
    with open(output) as file:
        written = list(csv.DictReader(file))
    assert list(written[0]) == bench.COLUMNS
    assert len(written) == len(rows)
    cases = {"quadratic_100": (100, "float64", 8), "mlp_1m": (714, "float32", 4)}  # --quick: a 16-wide MLP
    assert {(row["case"], row["optimizer"]) for row in written} == {
        (case, name) for case in cases for name in ("adam", "lodo", "lodo_foreach")
    }
    for row in written:
        n, dtype, itemsize = cases[row["case"]]
        assert (int(row["n"]), row["dtype"], row["repeats"], row["threads"], row["note"]) == (n, dtype, "2", "1", "")
        assert float(row["state_per_parameter"]) == int(row["state_bytes"]) / (n * itemsize)
        if row["optimizer"] == "adam":  # the reference: its ratios are 1, its state two moments and a step count
            assert float(row["step_ratio_to_adam"]) == float(row["optimizer_ratio_to_adam"]) == 1.0
            tensors = 1 if row["case"] == "quadratic_100" else 6  # the MLP's 3 weights and 3 biases
            assert int(row["state_bytes"]) == 2 * n * itemsize + 4 * tensors
        else:  # the fused and the foreach meta-Adam keep the same state
            assert int(row["state_bytes"]) == lodo_state_bytes(n, itemsize)


def test_bench_memory_budget_is_per_optimizer(tmp_path, monkeypatch):
    """Each optimizer fits half the free memory on its own; the estimates of earlier ones do not use it up."""
    n_values = bench.VALUES_PER_PARAMETER["lodo"] * 100 * 8  # LODO's estimate at n = 100, float64
    monkeypatch.setattr(bench, "free_memory", lambda device: 2.5 * n_values)  # room for one LODO at a time
    threads = torch.get_num_threads()
    try:
        args = ["--quick", "--threads", "1", "--cases", "quadratic_100", "--output", str(tmp_path / "bench.csv")]
        rows = bench.main([*args, "--optimizers", "lodo", "lodo_torch", "lodo_foreach"])
    finally:
        torch.set_num_threads(threads)
    assert {row["optimizer"] for row in rows} == {"adam", "lodo", "lodo_torch", "lodo_foreach"}
    assert not any(row.get("note", "").startswith("skipped") for row in rows)
