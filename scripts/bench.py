"""Benchmark: what one LODO step costs next to Adam's, on CPU or GPU (issue 6).

    python scripts/bench.py                           # every case on the CPU → results/bench/bench_cpu.csv
    python scripts/bench.py --quick                   # tiny sizes: a smoke test that takes seconds
    python scripts/bench.py --cases cnn mlp_1m --repeats 20 --threads 2
    python scripts/bench.py --device cuda             # the same on a GPU (synchronized clocks, CUDA peak memory)
    python scripts/bench.py --cases cnn --profile     # plus torch.profiler's top ops of a CNN step and a LODO step
    python scripts/bench.py --baseline-ref ece0789    # adds "lodo@ece0789": LODO as committed at that git revision

A development tool of the repository (``make bench``), not part of the installed library: it imports lodo as
installed and writes into this checkout's results/bench/.

Cases: the noisy quadratic at n = 100 (:class:`~lodo.tasks.NoisyQuadratic`, float64) and at n = 10⁵ (a diagonal
Hessian with the same spectrum: NoisyQuadratic stores a dense n×n H, 80 GB at n = 10⁵), the paper's MNIST CNN at
batch 256 (94,696 parameters, float32, channels_last; ``cnn_nchw``: Adam alone on the default memory layout, for
its forward + backward time), and synthetic tanh MLPs with ≈1M and ≈10M parameters at batch 64 (128 flops per
parameter per step: little compute per parameter). Optimizers: Adam, LODO, LODO on its other backend
(``lodo_torch`` where ``backend="auto"`` takes the C path, i.e. n ≤ 10⁴, ``lodo_native`` elsewhere; likewise
``lodo_residuals_torch``), LODO with the foreach (unfused) meta-Adam, LODO with float32 state on float64 cases, the
ablations, and K-FAC and the L-BFGS types when they are registered. Each optimizer trains its own copy of the model
on the same minibatches; an optimizer is skipped when its rough state estimate exceeds half the memory free when it
is built.

All optimizers of a case run in one process, interleaved: every repeat times each optimizer once, in an order that
rotates, so drift of a shared machine hits all alike. Per optimizer it reports the median over repeats of the full
training step (``step(closure)``: forward, backward and update, as :func:`lodo.train.train` runs it) and of the
optimizer step alone (``step()`` on existing gradients), the median of their ratios to Adam's in the same repeat
(paired, so slow phases of the machine cancel), the CNN's (or model's) forward + backward alone, the bytes of
everything the optimizer keeps between steps (its state, LODO's θ, meta-Adam moments, momentum and the graph of
its last step, counted exactly from the tensors), and on a GPU the transient peak memory of a step. It also
measures the device's copy bandwidth and, for LODO, the memory-traffic bound of its optimizer step: θ and its two
meta-Adam moments read and written once.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import math
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lodo.optim import LODO
from lodo.optim.lodo import NATIVE_MAX_N
from lodo.optim.registry import OPTIMIZERS, build_optimizer
from lodo.tasks import NoisyQuadratic
from lodo.tasks.base import Task

ROOT = Path(__file__).resolve().parent.parent  # the repository checkout this script lies in

COLUMNS = [
    "case", "n", "dtype", "device", "optimizer", "evaluations", "step_ms", "optimizer_ms",
    "forward_backward_ms", "step_ratio_to_adam", "optimizer_ratio_to_adam", "state_bytes", "state_per_parameter",
    "step_peak_bytes", "bound_ms", "optimizer_over_bound", "repeats", "threads", "torch", "cpu", "note",
]  # fmt: skip

# Hyperparameters that keep every optimizer finite for a few dozen steps (timing does not depend on them).
HPARAMS = {
    "adam": dict(lr=1e-4),
    "lodo": dict(lr=1e-3, meta_lr=1e-5),
    "lodo_foreach": dict(lr=1e-3, meta_lr=1e-5, fused=False),
    "lodo_f32state": dict(lr=1e-3, meta_lr=1e-5, state_dtype=torch.float32),
    "lodo_diagonal": dict(lr=1e-3, meta_lr=1e-5),
    "lodo_global": dict(lr=1e-3, meta_lr=1e-5),
    "lodo_residuals": dict(lr=1e-3, meta_lr=1e-5),
    "lodo_torch": dict(lr=1e-3, meta_lr=1e-5, backend="torch"),
    "lodo_native": dict(lr=1e-3, meta_lr=1e-5, backend="native"),
    "lodo_residuals_torch": dict(lr=1e-3, meta_lr=1e-5, preconditioner="residual", backend="torch"),
}
VARIANTS = ("lodo_foreach", "lodo_f32state", "lodo_torch", "lodo_native", "lodo_residuals_torch")  # LODO(**HPARAMS)
OPTIONAL = ("kfac", "olbfgs", "lbfgs_no_line_search")  # benchmarked when registered
# Values kept per parameter, to skip what cannot fit (LODO: θ, 2 moments, hypergradient, activations ≈ 600n).
VALUES_PER_PARAMETER = {name: 600 for name in ("lodo", *VARIANTS, "lodo_residuals")} | {
    "lodo_f32state": 300,
    "olbfgs": 200,
}


class DiagonalQuadratic(Task):
    """½ Σ λᵢ (xᵢ − cᵢ)² with λ log-spaced on [1e-3, 1] and a random-walking c: the noisy quadratic for large n."""

    name = "diagonal_quadratic"

    def __init__(self, n: int, dtype: torch.dtype = torch.float64, device: str = "cpu", seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)
        self.eigenvalues = torch.logspace(-3, 0, n, dtype=dtype).to(device)
        self.x = torch.zeros(n, dtype=dtype, device=device, requires_grad=True)
        self.center = torch.zeros(n, dtype=dtype, device=device)

    def parameters(self):
        return [self.x]

    def sample_batch(self):
        self.center = self.center + torch.randn(self.x.shape, generator=self.generator).to(self.center)
        return self.center

    def loss(self, batch):
        return 0.5 * (self.eigenvalues * (self.x - batch) ** 2).sum()


class SyntheticMLP(Task):
    """A tanh MLP width → width → width → 10 classifying random inputs: ≈2·width² parameters, 2 hidden layers."""

    name = "synthetic_mlp"

    def __init__(self, width: int, batch_size: int = 64, device: str = "cpu", seed: int = 0):
        self.batch_size, self.width, self.device = batch_size, width, device
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        layers = [nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10)]
        self.model = nn.Sequential(*layers).to(device)

    def parameters(self):
        return list(self.model.parameters())

    def sample_batch(self):
        inputs = torch.randn(self.batch_size, self.width, generator=self.generator)
        targets = torch.randint(10, (self.batch_size,), generator=self.generator)
        return inputs.to(self.device), targets.to(self.device)

    def loss(self, batch):
        inputs, targets = batch
        return F.cross_entropy(self.model(inputs), targets)


@dataclass
class Case:
    name: str
    task: Task  # draws the batches; each optimizer trains its own copy (see ``copy_task``)
    dtype: torch.dtype


def make_cases(names: list[str], device: str, quick: bool) -> list[Case]:
    """The requested cases; the MNIST CNN is skipped with a message when its task cannot be built."""
    sizes = {"quadratic_100": 100, "quadratic_1e5": 1_000 if quick else 100_000}
    widths = {"mlp_1m": 16 if quick else 705, "mlp_10m": 32 if quick else 2234}
    cases = []
    for name in names:
        if name == "quadratic_100":
            cases.append(Case(name, NoisyQuadratic(n=sizes[name], device=device), torch.float64))
        elif name == "quadratic_1e5":
            cases.append(Case(name, DiagonalQuadratic(sizes[name], device=device), torch.float64))
        elif name in widths:
            cases.append(Case(name, SyntheticMLP(widths[name], device=device), torch.float32))
        elif name in ("cnn", "cnn_nchw"):
            try:
                from lodo.tasks.mnist import MnistAutoregression

                task = MnistAutoregression(
                    batch_size=8 if quick else 256, test_images=0, channels_last=name == "cnn", device=device
                )
            except Exception as error:  # noqa: BLE001 (any failure: missing data, task still being written)
                print(f"[bench] skipping the CNN case: {type(error).__name__}: {error}")
                continue
            cases.append(Case(name, task, torch.float32))
        else:
            raise ValueError(f"unknown case {name!r}")
    return cases


def copy_task(task: Task) -> Task:
    """A task sharing the data of ``task`` but with its own parameters (copied, so every copy starts equal)."""
    twin = copy.copy(task)
    if getattr(task, "model", None) is not None:
        twin.model = copy.deepcopy(task.model)
    else:
        twin.x = task.x.detach().clone().requires_grad_()
    return twin


def optimizer_names(case: Case, requested: list[str] | None) -> list[str]:
    if case.name == "cnn_nchw":  # the CNN in the default memory layout: its forward + backward, for comparison
        return ["adam"]
    # LODO's other backend beside the one backend="auto" takes (README, *Performance*)
    small = case.task.num_parameters <= NATIVE_MAX_N
    names = ["adam", "lodo", "lodo_torch" if small else "lodo_native", "lodo_foreach", "lodo_diagonal", "lodo_global"]
    names += ["lodo_residuals", "lodo_residuals_torch"] if small else ["lodo_residuals"]
    if case.dtype == torch.float64:
        names.insert(4, "lodo_f32state")
    names += [name for name in OPTIONAL if name in OPTIMIZERS]
    if "kfac" in names and getattr(case.task, "model", None) is None:
        names.remove("kfac")  # K-FAC hooks the layers of an nn.Module
    return [name for name in names if requested is None or name in requested or name == "adam"]


def build(name: str, task: Task) -> torch.optim.Optimizer:
    hparams = HPARAMS.get(name, {})
    if name.startswith("lodo@"):  # the --baseline-ref implementation
        return BASELINE_LODO[0](task.parameters(), seed=0, **HPARAMS["lodo"])
    if name in VARIANTS:
        return LODO(task.parameters(), seed=0, **hparams)
    if name.startswith("lodo"):
        hparams = {**hparams, "seed": 0}
    return build_optimizer(name, task.parameters(), task, **hparams)


BASELINE_LODO: list = []


def load_baseline(ref: str) -> None:
    """Import LODO as committed at git revision ``ref`` of this checkout (before/after numbers in one process)."""
    folder = Path(tempfile.mkdtemp(prefix="lodo_baseline_"))
    for name in ("preconditioners", "lodo"):
        text = subprocess.run(
            ["git", "show", f"{ref}:lodo/optim/{name}.py"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        text = text.replace("from lodo.optim.preconditioners import", "from lodo_baseline_preconditioners import")
        (folder / f"lodo_baseline_{name}.py").write_text(text)
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("lodo_baseline_lodo", folder / "lodo_baseline_lodo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    BASELINE_LODO.append(module.LODO)


# --- measuring ---------------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function, device: str) -> float:
    """Seconds that ``function()`` takes, the device synchronized before and after."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def copy_bandwidth(device: str, megabytes: int = 256) -> float:
    """Bytes per second moved (read + written) by a large tensor copy on ``device``."""
    source = torch.ones(megabytes * 2**18, device=device)
    target = torch.empty_like(source)
    seconds = statistics.median(timed(lambda: target.copy_(source), device) for _ in range(7))
    return 2 * source.numel() * source.element_size() / seconds


def _tensors(obj, found: dict, seen: set, depth: int = 0) -> None:
    """Collect every tensor reachable from ``obj`` (containers, objects, modules, autograd graphs) by storage."""
    if id(obj) in seen or depth > 10:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if obj.is_sparse or obj.device.type == "meta":
            return
        storage = obj.untyped_storage()
        found[(storage.data_ptr(), obj.device)] = storage.nbytes()
        if obj.is_leaf and obj.grad is not None:
            _tensors(obj.grad, found, seen, depth + 1)
        if obj.grad_fn is not None:
            _graph_tensors(obj.grad_fn, found, seen)
    elif isinstance(obj, dict):
        for value in obj.values():
            _tensors(value, found, seen, depth + 1)
    elif isinstance(obj, list | tuple | set):
        for value in obj:
            _tensors(value, found, seen, depth + 1)
    elif isinstance(obj, nn.Module):
        for tensor in [*obj.parameters(), *obj.buffers()]:
            _tensors(tensor, found, seen, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        _tensors(vars(obj), found, seen, depth + 1)


def _graph_tensors(node, found: dict, seen: set) -> None:
    """Tensors an autograd graph keeps for its backward (saved inputs, activations of custom Functions)."""
    stack = [node]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for attribute in dir(node):
            if attribute.startswith("_saved_") or attribute in ("saved_tensors", "activations"):
                try:
                    _tensors(getattr(node, attribute), found, seen)
                except RuntimeError:  # freed by an earlier backward
                    pass
        stack.extend(child for child, _ in node.next_functions)


def state_bytes(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> int:
    """Bytes of every tensor the optimizer keeps between steps, the model's parameters and gradients excluded."""
    found, seen = {}, set()
    _tensors([optimizer.state, {k: v for k, v in vars(optimizer).items() if k != "param_groups"}], found, seen)
    for p in params:
        for tensor in (p, p.grad):
            if tensor is not None:
                found.pop((tensor.untyped_storage().data_ptr(), tensor.device), None)
    return sum(found.values())


def meta_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of LODO's θ and its meta-Adam moments (0 for anything else): its memory-traffic floor per step."""
    if not hasattr(optimizer, "preconditioner") or optimizer.meta_optimizer is None:
        return 0
    total = 0
    for p in optimizer.preconditioner.parameters():
        state = optimizer.meta_optimizer.state.get(p, {})
        total += sum(t.numel() * t.element_size() for t in [p, *state.values()] if t.dim() > 0)
    return total


def free_memory(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    meminfo = Path("/proc/meminfo").read_text().split()
    return int(meminfo[meminfo.index("MemAvailable:") + 1]) * 1024


def make_closure(task: Task, optimizer: torch.optim.Optimizer, batch, losses: list | None = None):
    """The closure :func:`lodo.train.train` gives an optimizer: zero the gradients, evaluate, backpropagate."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = task.loss(batch)
        loss.backward()
        if losses is not None:
            losses.append(float(loss.detach()))  # syncs the device, as the training loop does
        return loss

    return closure


def needs_closure(name: str) -> bool:
    """Whether ``name`` evaluates the loss inside ``step()`` (L-BFGS types): then it has no step "alone"."""
    return name in OPTIMIZERS and "closure" in OPTIMIZERS[name].needs


def run_case(case: Case, names: list[str], args, bandwidth: float) -> list[dict]:
    """Time every optimizer of ``case``, interleaved; one result row per optimizer."""
    device, n = args.device, case.task.num_parameters
    itemsize = torch.tensor([], dtype=case.dtype).element_size()
    rows, runs = [], {}
    for name in names:
        # One budget per optimizer: half the memory free when it is built (what those built before hold is no
        # longer free), not a shared budget that rough estimates for earlier optimizers have used up.
        needed, budget = VALUES_PER_PARAMETER.get(name.split("@")[0], 4) * n * itemsize, 0.5 * free_memory(device)
        if needed > budget:
            note = f"skipped: needs ~{needed / 1e6:,.0f} MB, over half the free memory ({budget * 2 / 1e6:,.0f} MB)"
            rows.append(dict(optimizer=name, note=note))
            continue
        task = copy_task(case.task)
        runs[name] = dict(task=task, optimizer=build(name, task), step=[], opt=[], peak=[], losses=[])
    reference = copy_task(case.task)  # forward + backward alone, on its own copy

    forward_backward = []
    for repeat in range(args.warmup + args.repeats):
        batch = case.task.sample_batch()
        order = list(runs)[repeat % len(runs) :] + list(runs)[: repeat % len(runs)]
        for name in order:
            run = runs[name]
            optimizer, task = run["optimizer"], run["task"]
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                resident = torch.cuda.memory_allocated()
            seconds = timed(partial(optimizer.step, make_closure(task, optimizer, batch, run["losses"])), device)
            if device.startswith("cuda"):
                run["peak"].append(torch.cuda.max_memory_allocated() - resident)
            try:
                optimizer_seconds = math.nan if needs_closure(name) else timed(optimizer.step, device)
            except RuntimeError:  # e.g. K-FAC without the statistics of a closure
                optimizer_seconds = math.nan
            if repeat >= args.warmup:
                run["step"].append(seconds)
                run["opt"].append(optimizer_seconds)
        for p in reference.parameters():
            p.grad = None
        seconds = timed(lambda: reference.loss(batch).backward(), device)  # noqa: B023 (called at once)
        if repeat >= args.warmup:
            forward_backward.append(seconds)

    fb_ms = 1e3 * statistics.median(forward_backward)
    for name, run in runs.items():
        optimizer = run["optimizer"]
        step_ms, opt_ms = 1e3 * statistics.median(run["step"]), 1e3 * statistics.median(run["opt"])
        traffic = 2 * meta_bytes(optimizer)  # read and written once
        bound_ms = 1e3 * traffic / bandwidth if traffic else math.nan
        spec = OPTIMIZERS.get(name)
        finite = all(math.isfinite(loss) for loss in run["losses"])
        rows.append(
            dict(
                optimizer=name,
                evaluations=spec.evaluations_per_step if spec else 1,
                step_ms=step_ms,
                optimizer_ms=opt_ms,
                state_bytes=state_bytes(optimizer, run["task"].parameters()),
                step_peak_bytes=max(run["peak"]) if run["peak"] else "",
                bound_ms=bound_ms,
                optimizer_over_bound=opt_ms / bound_ms,
                note="" if finite else "non-finite loss (timing still valid)",
            )
        )
    for row in rows:  # paired: the median over repeats of the ratio to Adam's time in the same repeat
        if row["optimizer"] in runs:
            run, adam = runs[row["optimizer"]], runs["adam"]
            row["step_ratio_to_adam"] = statistics.median(a / b for a, b in zip(run["step"], adam["step"]))
            row["optimizer_ratio_to_adam"] = statistics.median(a / b for a, b in zip(run["opt"], adam["opt"]))
    for row in rows:
        row.update(
            case=case.name,
            n=n,
            dtype=str(case.dtype).removeprefix("torch."),
            device=device,
            forward_backward_ms=fb_ms,
            repeats=args.repeats,
            threads=torch.get_num_threads(),
            torch=torch.__version__,
            cpu=cpu_model(),
        )
        if "step_ms" in row:
            row["state_per_parameter"] = row["state_bytes"] / (n * itemsize)
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def profile(case: Case, args) -> None:
    """Print torch.profiler's top ops of one Adam training step and of one LODO optimizer step on ``case``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    sort = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    for name, with_closure in (("adam", True), ("lodo", False)):
        task = copy_task(case.task)
        optimizer = build(name, task)
        closure = make_closure(task, optimizer, case.task.sample_batch())
        for _ in range(2):
            optimizer.step(closure)
        with torch_profile(activities=activities) as prof:
            for _ in range(3):
                optimizer.step(closure) if with_closure else optimizer.step()
            synchronize(args.device)
        what = "training step (forward + backward + Adam)" if with_closure else "LODO optimizer step alone"
        print(f"\n[profile] {case.name}: {what}, 3 steps, top ops by self time")
        print(prof.key_averages().table(sort_by=sort, row_limit=args.profile_rows, max_name_column_width=40))


def format_table(rows: list[dict]) -> str:
    header = [
        "case",
        "optimizer",
        "step_ms",
        "×adam",
        "opt_ms",
        "×adam",
        "fwd+bwd_ms",
        "state_MB",
        "bound_ms",
        "×bound",
    ]
    lines = ["  ".join(f"{h:>12}" for h in header)]
    for row in rows:
        if "step_ms" not in row:
            lines.append(f"{row['case']:>12}  {row['optimizer']:>12}  {row['note']}")
            continue
        values = [
            row["case"], row["optimizer"], f"{row['step_ms']:.2f}", f"{row['step_ratio_to_adam']:.3f}",
            f"{row['optimizer_ms']:.2f}", f"{row['optimizer_ratio_to_adam']:.2f}", f"{row['forward_backward_ms']:.2f}",
            f"{row['state_bytes'] / 1e6:.2f}", f"{row['bound_ms']:.2f}", f"{row['optimizer_over_bound']:.2f}",
        ]  # fmt: skip
        lines.append("  ".join(f"{v:>12}" for v in values))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python scripts/bench.py", description=__doc__.split("\n")[0])
    cases = ["quadratic_100", "quadratic_1e5", "cnn", "cnn_nchw", "mlp_1m", "mlp_10m"]
    parser.add_argument("--cases", nargs="+", choices=cases, help="which cases (default: all; --quick: two)")
    parser.add_argument("--optimizers", nargs="+", help="restrict to these optimizers (Adam always runs)")
    parser.add_argument("--repeats", type=int, help="timed repeats per optimizer (default 10; --quick: 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repeats first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, help="CSV path (default: <checkout>/results/bench/bench_<device>.csv)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats, two cases: a smoke test")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops (first case)")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--baseline-ref", help="also time LODO as committed at this git revision")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    args.repeats = args.repeats or (2 if args.quick else 10)
    if args.quick:
        args.warmup = min(args.warmup, 1)
    names = args.cases or (["quadratic_100", "mlp_1m"] if args.quick else cases)
    suffix = "_quick" if args.quick else ""
    output = args.output or ROOT / "results" / "bench" / f"bench_{args.device.split(':')[0]}{suffix}.csv"
    if args.baseline_ref:
        load_baseline(args.baseline_ref)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_model()
    bandwidth = copy_bandwidth(args.device, 32 if args.quick else 256)
    print(
        f"[bench] device {args.device} ({device_name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write)"
    )
    if not args.device.startswith("cuda"):
        print("[bench] CPU run: GPU numbers need `--device cuda` on a machine with one")
    rows = []
    for case in make_cases(names, args.device, args.quick):
        chosen = optimizer_names(case, args.optimizers)
        if args.baseline_ref and "lodo" in chosen:
            chosen.insert(2, f"lodo@{args.baseline_ref}")
        print(f"[bench] {case.name}: n = {case.task.num_parameters:,}, {', '.join(chosen)}", flush=True)
        rows += run_case(case, chosen, args, bandwidth)
        if args.profile and (case.name == "cnn" or case.name == names[-1]):
            profile(case, args)  # the CNN's, or the last case's when the CNN is not run
            args.profile = False
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in COLUMNS})
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print("\n" + format_table(rows))
    print(f"\n[bench] process peak RSS {maxrss:.0f} MB; copy bandwidth {bandwidth / 1e9:.1f} GB/s; wrote {output}")
    return rows


if __name__ == "__main__":
    main()
