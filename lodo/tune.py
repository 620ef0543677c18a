"""The paper's hyperparameter tuner: ``python -m lodo.tune task=<task> optimizer=<optimizer> [override ...]``.

An evolution strategy in a normalized space (METHODS.md §5, §A.4.1 and §A.6): log x for standard values and
log(1 − x) for decay-type ones (names containing "momentum" or "beta"). Generation g draws N_g samples
u_i ~ N(μ, σ_g² I), trains each for S_g steps on a new task instance (a new seed), scores it by the mean training
loss over the last 10% of steps (non-finite: +∞), and moves μ to the mean of the best half. Generation 0's mean is
the optimizer's default (``configs/optimizer/<name>.yaml``); the result is the back-mapped final μ.

Every sample is an ordinary run of :func:`lodo.run.execute` in its own folder under
``runs/tune/<task>/<optimizer>/tune_seed<k>/gen<g>/sample<i>``, so an interrupted tuning resumes: finished samples
are read back, not rerun, if they were made for the same config (``config_hash``: a sample made for another
budget, e.g. another ``--max-steps``, is moved aside and rerun). What the tuning will cost is printed before it
starts, and a progress bar counts its runs. The draws depend only on (tuning seed, generation), so a resumed
tuning is identical.
The tuned values go to ``configs/tuned/<task>/<optimizer>.yaml`` (which every run of that pair then reads), with how
they were obtained in its header; each tuning seed's history goes to ``results/tuning/<task>/<optimizer>/``.

Options (before the overrides): ``--seeds 0 1 2`` (tuning seeds; the file gets the values of the median one,
:func:`median_seed`, and lists every seed's values, so the spread is in the file), ``--jobs 2`` (parallel local
processes, one thread each), ``--schedule``, ``--max-steps`` (cap
S_g: a reduced schedule), ``--samples``, ``--generations``, ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lodo.paths import checkout_dir, configs_dir

# (σ by generation, steps S by generation), METHODS.md §A.6 (the schedules of experiment/experiment2.py); N = 32.
SCHEDULES: dict[str, tuple[list[float], list[int]]] = {
    "rosenbrock": ([3, 3, 3, 2.5, 2, 1.5, 1, 0.75, 0.5, 0.3], [200] * 10),
    "noisy_quadratic": ([3, 3, 3, 3, 2, 1.7, 1.4, 1.2, 0.9, 0.6], [100, 300, 1000] + [10000] * 7),
    "mnist_autoregression": (
        [3, 3, 3, 3, 2, 1.7, 1.4, 1.2, 0.9, 0.6],
        [1000, 1000, 1000, 1000, 1500, 1500, 2000, 3000, 5000, 8000],
    ),
    # Not the paper's: the reduced CNN's cheaper protocol (README, *Tuning*), 3 generations (with 8 samples each).
    "mnist_small": ([3, 1.5, 0.75], [200, 200, 200]),
}
SAMPLES = 32


def is_decay(name: str) -> bool:
    """Decay-type hyperparameters (METHODS.md §A.4.1): the name contains "momentum" or "beta"."""
    return "momentum" in name or "beta" in name


def normalize(names: Sequence[str], values: Sequence[float]) -> np.ndarray:
    """u = log(1 − x) for decay-type values (floored at 1e-30 inside the log), u = log x otherwise."""
    return np.array([math.log(max(1e-30, 1 - v)) if is_decay(n) else math.log(v) for n, v in zip(names, values)])


def denormalize(names: Sequence[str], u: Sequence[float]) -> dict[str, float]:
    """The inverse of :func:`normalize`; decay-type values are clipped at 0 (x = max(0, 1 − eᵘ))."""
    return {n: max(0.0, 1 - math.exp(x)) if is_decay(n) else math.exp(x) for n, x in zip(names, u)}


def score(loss: float | None) -> float:
    """A sample's score: its final-window mean training loss; NaN, ±∞ or missing count as +∞ (a failure)."""
    return float(loss) if loss is not None and math.isfinite(loss) else math.inf


def select(samples: np.ndarray, scores: Sequence[float]) -> np.ndarray | None:
    """The next mean: the mean of the best min(#finite, ⌊N/2⌋) normalized samples (``None`` if none is finite)."""
    scores = np.asarray(scores, dtype=float)
    keep = min(int(np.isfinite(scores).sum()), len(scores) // 2)
    if keep == 0:
        return None
    best = np.argsort(scores, kind="stable")[:keep]
    return samples[best].mean(axis=0)


@dataclass
class Generation:
    sigma: float
    steps: int
    mean: list[float]  # μ the samples were drawn around (normalized)
    scores: list[float]
    next_mean: list[float]


def evolve(
    names: Sequence[str],
    start: Sequence[float],
    objective: Callable[[int, list[tuple[int, dict[str, float]]], int], list[float]],
    sigmas: Sequence[float],
    steps: Sequence[int],
    samples: int = SAMPLES,
    seed: int = 0,
) -> tuple[dict[str, float], list[Generation]]:
    """Run the ES: ``objective(generation, [(sample index, hyperparameters)], steps)`` returns one loss per sample.

    Returns the back-mapped final mean and the history. The draws come from a generator seeded by (seed,
    generation), so a rerun asks the objective for exactly the same samples.
    """
    mean = normalize(names, start)
    history = []
    for g, (sigma, s) in enumerate(zip(sigmas, steps)):
        rng = np.random.default_rng([seed, g])
        u = mean + sigma * rng.standard_normal((samples, len(names)))
        scores = [score(v) for v in objective(g, [(i, denormalize(names, ui)) for i, ui in enumerate(u)], s)]
        new_mean = select(u, scores)
        history.append(Generation(sigma, s, mean.tolist(), scores, (mean if new_mean is None else new_mean).tolist()))
        mean = mean if new_mean is None else new_mean
    return denormalize(names, mean), history


# --- running samples through the ordinary runner ----------------------------------------------------------------


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run_sample(config: dict, run_dir: str) -> float | None:
    import logging

    from omegaconf import OmegaConf

    from lodo.run import execute

    logging.getLogger("lodo.run").setLevel(logging.WARNING)
    return execute(OmegaConf.create(config), run_dir).get("final_loss_at_steps")


def compose(overrides: Sequence[str]):
    """The run config of ``overrides`` at the optimizer's generation-0 defaults (no tuned values)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(configs_dir()), version_base="1.3"):
        return hydra_compose(
            config_name="config", overrides=["~tuned@optimizer", "logger=none", "progress=false", *overrides]
        )


def tune(overrides: Sequence[str], args: argparse.Namespace) -> dict:
    """Tune the pair in ``overrides`` for each seed in ``args.seeds``; return the report that is written out."""
    from omegaconf import OmegaConf

    from lodo.optim.registry import optimizer_spec
    from lodo.records import git_revision

    cfg = compose(overrides)
    task, optimizer = cfg.task.name, cfg.optimizer.name
    names = list(optimizer_spec(optimizer).tuned)
    if not names:
        raise ValueError(f"optimizer {optimizer!r} has no tuned hyperparameters")
    start = [float(cfg.optimizer[n]) for n in names]
    sigmas, steps = SCHEDULES[args.schedule or task]
    sigmas, steps = sigmas[: args.generations], steps[: args.generations]
    if args.max_steps:
        steps = [min(s, args.max_steps) for s in steps]
    base = OmegaConf.to_container(cfg, resolve=True)
    base.update(progress=False, threads=1, time_limit=None, experiment=f"tune_{task}", save_artifacts=False)
    base["task"]["metric_interval"] = None  # tracked metrics are not needed to score a sample, nor are evaluations:
    base["task"].update({k: 0 for k in ("validation_images", "test_images", "samples") if k in base["task"]})
    root = Path(args.runs) / task / optimizer
    results = {}
    runs_per_seed = len(steps) * args.samples + 1
    print(
        f"[tune {task}/{optimizer}] {len(args.seeds)} tuning seed(s) x ({len(steps)} generations x {args.samples} "
        f"samples + 1 check) = {len(args.seeds) * runs_per_seed} runs of {min(steps)}-{max(steps)} steps, "
        f"{len(args.seeds) * (args.samples * sum(steps) + steps[-1]):,} steps in all, on {args.jobs} process(es); "
        f"finished runs under {root} are reused if their config is the same",
        flush=True,
    )
    bar = tqdm(total=len(args.seeds) * runs_per_seed, unit="run", disable=not args.progress, dynamic_ncols=True)
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=_init_worker) as pool:
        for tune_seed in args.seeds:

            def objective(generation, batch, s, tune_seed=tune_seed):
                futures = []
                for i, hparams in batch:
                    config = {**base, "steps": s, "seed": tune_seed * 1_000_000 + generation * 1_000 + i}
                    config["optimizer"] = {**base["optimizer"], **hparams}
                    run_dir = root / f"tune_seed{tune_seed}" / f"gen{generation}" / f"sample{i}"
                    futures.append(pool.submit(_run_sample, config, str(run_dir)))
                for _ in as_completed(futures):
                    bar.update()
                losses = [f.result() for f in futures]
                finite = sorted(v for v in losses if v is not None and math.isfinite(v))
                best = f"{finite[0]:.4g}" if finite else "none"
                bar.write(
                    f"[tune {task}/{optimizer} seed {tune_seed}] generation {generation + 1}/{len(sigmas)}: "
                    f"{len(finite)}/{len(losses)} finite, best {best}"
                )
                return losses

            tuned, history = evolve(names, start, objective, sigmas, steps, args.samples, tune_seed)
            # How good the result is: one run of the tuned values at the last generation's budget (a new seed).
            check = {**base, "steps": steps[-1], "seed": tune_seed * 1_000_000 + 999_999}
            check["optimizer"] = {**base["optimizer"], **tuned}
            check_loss = pool.submit(_run_sample, check, str(root / f"tune_seed{tune_seed}" / "check")).result()
            bar.update()
            results[tune_seed] = {"tuned": tuned, "check_loss": score(check_loss), "history": history}
    bar.close()
    report = {
        "task": task,
        "optimizer": optimizer,
        "names": names,
        "generation0": dict(zip(names, start)),
        "schedule": {"name": args.schedule or task, "sigma": sigmas, "steps": steps, "samples": args.samples},
        "seeds": args.seeds,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "command": "python -m lodo.tune " + shlex.join(sys.argv[1:]),
        "results": {str(k): {**v, "history": [g.__dict__ for g in v["history"]]} for k, v in results.items()},
    }
    if args.write:
        write(report, median_seed(report))
    return report


def median_seed(report: dict) -> int:
    """The tuning seed whose values the runs use: the one whose check loss is the median (the lower median for an
    even count; a failed check counts as +∞, ties go to the earlier seed).

    Why the median and not the best: a check loss is one run on one new task instance, so the best of several
    seeds is partly luck; the median seed is a typical outcome of the protocol, neither its luckiest nor its worst.
    """
    ranked = sorted(report["results"].items(), key=lambda item: (score(item[1]["check_loss"]), int(item[0])))
    return int(ranked[(len(ranked) - 1) // 2][0])


def write(report: dict, chosen_seed: int) -> Path:
    """Write ``configs/tuned/<task>/<optimizer>.yaml`` (tuning seed ``chosen_seed``) and the histories as JSON."""
    task, optimizer = report["task"], report["optimizer"]
    history_dir = checkout_dir() / "results" / "tuning" / task
    history_dir.mkdir(parents=True, exist_ok=True)
    (history_dir / f"{optimizer}.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    schedule = report["schedule"]
    lines = [
        f"# {optimizer} on {task}: tuned by the paper's ES (lodo/tune.py, METHODS.md §5), tuning seed {chosen_seed}",
        "# (the median check loss of the tuning seeds below; the runs use its values).",
        f"# schedule {schedule['name']}: {len(schedule['sigma'])} generations × {schedule['samples']} samples,",
        f"#   sigma {schedule['sigma']}",
        f"#   steps {schedule['steps']}",
        f"# generation 0 (configs/optimizer/{optimizer}.yaml): {report['generation0']}",
        f"# tuning seeds {report['seeds']}: check loss (one run of the tuned values at the last budget) and values:",
    ]
    for seed, result in report["results"].items():
        values = ", ".join(f"{k}={v:.4g}" for k, v in result["tuned"].items())
        lines.append(f"#   seed {seed}: check loss {result['check_loss']:.4g}; {values}")
    lines += [
        f"# date {report['date']}, git {report['git_revision']}",
        f"# command: {report['command']}",
        f"# history: results/tuning/{task}/{optimizer}.json",
    ]
    tuned = report["results"][str(chosen_seed)]["tuned"]
    lines += [f"{k}: {float(v)!r}" for k, v in tuned.items()]
    path = checkout_dir() / "configs" / "tuned" / task / f"{optimizer}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lodo.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="run overrides: task=<task> optimizer=<optimizer> [key=value]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="tuning seeds (the median one is written)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel local processes")
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), help="σ/steps schedule (default: the task's)")
    parser.add_argument("--max-steps", type=int, help="cap every generation's steps (a reduced schedule)")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="samples per generation")
    parser.add_argument("--generations", type=int, default=10, help="number of generations")
    parser.add_argument("--runs", default="runs/tune", help="where the sample runs go")
    parser.add_argument("--no-write", dest="write", action="store_false", help="do not write configs/tuned")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    if args.write:  # the files go to the working directory's checkout: fail now if it is none, not after tuning
        try:
            checkout_dir()
        except RuntimeError as error:
            parser.error(str(error))
    report = tune(args.overrides, args)
    for seed, result in report["results"].items():
        print(f"tuning seed {seed}: {result['tuned']} (check loss {result['check_loss']:.4g})")


if __name__ == "__main__":
    main()
