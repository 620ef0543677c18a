"""Run every experiment of the paper at one scale, then the plotting stage: ``make reproduce [SCALE=default]``.

For each experiment (``configs/experiment/<name>.yaml``) this runs the Hydra sweep
``python -m lodo.run --multirun +experiment=<name> scale=<scale> hydra/launcher=<launcher> threads=1`` into
``runs/<scale>/<name>/``, printing a progress line each time a run finishes (finished runs of an earlier attempt are
skipped, so an interrupted reproduction resumes). If a sweep fails, it is retried one optimizer at a time so that
one broken optimizer costs only its own runs. Then ``python -m experiments.report`` writes ``results/<scale>/``.
Wall times go to ``results/<scale>/timings.json`` and into the report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the repository's `experiments` package importable

from experiments.catalog import EXPERIMENTS, experiments_at  # noqa: E402 - one list of experiments for the driver and the report
from lodo.records import is_complete  # noqa: E402


def sweep_size(experiment: str, scale: str) -> tuple[int, list[str]]:
    """How many runs the experiment's sweep makes at ``scale``, and its optimizer list (empty if not swept)."""
    from hydra import compose, initialize_config_dir

    import lodo.run  # noqa: F401 - registers the config resolvers

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={experiment}", f"scale={scale}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    total, optimizers = 1, []
    for key, value in params.items():
        values = str(value).split(",")
        total *= len(values)
        if key == "optimizer":
            optimizers = values
    return total, optimizers


def count_finished(folder: Path) -> int:
    return sum(1 for run in folder.glob("*/") if is_complete(run)) if folder.exists() else 0


def run_sweep(command: list[str], folder: Path, total: int, label: str, log) -> int:
    """Run one Hydra sweep, printing a line per finished run; return its exit code."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seen = count_finished(folder)
    while process.poll() is None:
        time.sleep(2)
        done = count_finished(folder)
        if done != seen:
            print(f"  {label}: {done}/{total} runs finished", flush=True)
            seen = done
    return process.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/reproduce.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="default", choices=["smoke", "default", "paper"])
    parser.add_argument(
        "--experiments", nargs="+", help="a subset, by name (space- or comma-separated); default: all at this scale"
    )
    parser.add_argument("--launcher", default="local", help="hydra/launcher: local (2 processes), basic, slurm")
    parser.add_argument("--logger", default="wandb", help="logger=wandb (offline mirror) or none")
    parser.add_argument("--no-report", dest="report", action="store_false", help="skip the plotting stage")
    args = parser.parse_args(argv)
    args.experiments = args.experiments or experiments_at(args.scale)
    args.experiments = [name for item in args.experiments for name in item.split(",") if name]  # EXPERIMENTS=a,b
    unknown = sorted(set(args.experiments) - set(EXPERIMENTS))
    if unknown:
        parser.error(f"unknown experiments {unknown}; choose from {EXPERIMENTS}")

    out = ROOT / "results" / args.scale
    out.mkdir(parents=True, exist_ok=True)
    log_path = ROOT / "runs" / args.scale / "reproduce.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    # an earlier run's times are kept (a resumed reproduction), except for experiments this scale no longer runs
    timings = {k: v for k, v in timings.items() if k in {*experiments_at(args.scale), *args.experiments, "report"}}
    failures = []
    started = time.perf_counter()
    with open(log_path, "a") as log:
        for i, experiment in enumerate(args.experiments, 1):
            total, optimizers = sweep_size(experiment, args.scale)
            folder = ROOT / "runs" / args.scale / experiment
            print(
                f"[{i}/{len(args.experiments)}] {experiment}: {total} runs at scale {args.scale} "
                f"({count_finished(folder)} already finished) -> {folder.relative_to(ROOT)}",
                flush=True,
            )
            base = [
                sys.executable,
                "-m",
                "lodo.run",
                "--multirun",
                f"+experiment={experiment}",
                f"scale={args.scale}",
                f"logger={args.logger}",
                "progress=false",
            ]
            if args.launcher != "basic":
                base += [f"hydra/launcher={args.launcher}", "threads=1"]
            t0 = time.perf_counter()
            code = run_sweep(base, folder, total, experiment, log)
            if code != 0 and optimizers:
                print(
                    f"  {experiment}: the sweep failed (see {log_path}); retrying one optimizer at a time", flush=True
                )
                for name in optimizers:
                    if run_sweep([*base, f"optimizer={name}"], folder, total, f"{experiment}/{name}", log) != 0:
                        failures.append(f"{experiment}/{name}")
                        print(f"  {experiment}/{name}: failed, see {log_path}", flush=True)
            elif code != 0:
                failures.append(experiment)
            elapsed = time.perf_counter() - t0
            timings[experiment] = elapsed
            timings_path.write_text(json.dumps(timings, indent=1) + "\n")
            print(
                f"  {experiment}: {count_finished(folder)}/{total} finished in {elapsed:.0f} s "
                f"(total {time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    if args.report:
        print("plotting stage: python -m experiments.report", flush=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "experiments.report", "--scale", args.scale], cwd=ROOT, check=True)
        timings["report"] = time.perf_counter() - t0
        timings_path.write_text(json.dumps(timings, indent=1) + "\n")
    print(f"done in {time.perf_counter() - started:.0f} s; failures: {', '.join(failures) or 'none'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
