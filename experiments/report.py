"""The plotting stage: ``python -m experiments.report --scale default`` (``make figures``).

Reads the run records under ``runs/<scale>/<experiment>/`` (plus two other records: the tuner's histories under
``results/tuning/`` and the benchmark's table ``results/bench/bench_cpu.csv``), writes every figure (PNG + PDF) and
table (CSV + Markdown) into ``results/<scale>/<experiment>/``, a one-row-per-run ``results/<scale>/runs.csv``, the
claims' verdicts ``results/<scale>/claims.csv``, and ``results/<scale>/REPORT.md``. Nothing is rerun, no task is
rebuilt and no config is read here: where a record does not say something (its tuned file, the Newton floor), the
report says it is unknown. A record that cannot be read is skipped with a warning naming it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import warnings
from pathlib import Path

import pandas as pd

from experiments import claims, figures
from experiments.aggregate import load_bench, load_curves, load_runs, load_tuning, metric_ends
from experiments.catalog import EXPERIMENTS, PAPER_SCALE_ONLY, experiments_at
from experiments.sections import REPORTERS, UNKNOWN, Section, fmt, to_markdown

ROOT = Path(__file__).resolve().parent.parent


def tuning_section(table: pd.DataFrame, out: Path, runs: pd.DataFrame | None = None) -> list[str]:
    """The tuning histories: per optimizer and tuning seed, the tuned values and the check loss, and their spread;
    *used* marks the tuning seed whose values the run records say they ran with (their provenance)."""
    lines = ["## Tuning (the paper's ES, `lodo.tune`)\n"]
    if table.empty:
        return lines + ["No tuning histories in results/tuning/.\n"]
    out.mkdir(parents=True, exist_ok=True)
    used = set()
    if runs is not None and not runs.empty and "tune_seed" in runs:
        known = runs.dropna(subset=["tune_seed"])
        used = {(t, o, int(s)) for t, o, s in zip(known["task"], known["optimizer"], known["tune_seed"])}
    table = table.assign(
        used=[(t, o, int(s)) in used for t, o, s in zip(table["task"], table["optimizer"], table["tune_seed"])]
    )
    table.to_csv(out / "tuning.csv", index=False)
    lines.append(
        "Protocol (README, *Tuning*): the same for every optimizer of a task — Rosenbrock: the paper's ES schedule "
        "(10 generations × 32 samples, 200 steps); the noisy quadratic: the paper's schedule with every generation "
        "capped at 1,000 steps; the reduced CNN: 3 generations × 8 samples at 200 steps. *check loss* is one run of a "
        "tuning seed's values at the tuning horizon on a new task instance (the final 10%-window loss); the runs use "
        "the values of the tuning seed with the median check loss (*used*: as their records' provenance says). The "
        "spread across tuning seeds is how much the protocol itself moves a result.\n"
    )
    shown = pd.DataFrame(
        {
            "task": table["task"],
            "optimizer": table["optimizer"].map(figures.label),
            "tuning seed": table["tune_seed"],
            "used": table["used"].map({True: "✓", False: ""}),
            "check loss": table["check_loss"].map(fmt),
            "tuned values": [
                ", ".join(f"{k[6:]}={fmt(v)}" for k, v in r.items() if k.startswith("tuned.") and v == v)
                for r in table.to_dict("records")
            ],
            "schedule": table["schedule"],
        }
    )
    lines.append(to_markdown(shown))
    spread = table.groupby(["task", "optimizer"])["check_loss"].agg(["min", "max", "count"])
    lines.append("\nSpread of the check loss across tuning seeds (max/min; pairs tuned with more than one seed):\n")
    for (task, name), r in spread[spread["count"] > 1].iterrows():
        ratio = r["max"] / r["min"] if r["min"] > 0 else math.inf
        lines.append(f"* {task} / {figures.label(name)}: {fmt(r['min'])} … {fmt(r['max'])} (×{fmt(ratio, 3)})")
    for task, group in table.groupby("task"):
        png = figures.tuning_spread(group, out / f"tuning_spread_{task}", title=f"{task}: tuned loss per tuning seed")
        lines.append(f"\n![tuning spread {task}]({png.relative_to(out.parent)})\n")
    return lines


def shown_path(path: str) -> str:
    """A recorded file path from ``configs/`` on (records made before paths were stored relative to the repository
    hold the absolute path of the checkout that ran them)."""
    return path[path.find("configs/") :] if "configs/" in path else path


def provenance(runs: pd.DataFrame) -> list[str]:
    """Where each (experiment, optimizer)'s hyperparameters came from, as its run records say."""
    rows = []
    for (experiment, name), group in runs.groupby(["experiment", "optimizer"], sort=True):
        if not group["has_provenance"].all():
            source = UNKNOWN
        else:
            files = {
                (shown_path(p), str(h)[:12])
                for p, h in zip(group["tuned_path"], group["tuned_sha256"])
                if isinstance(p, str)  # NaN in the table where a run used no tuned file
            }
            source = (
                "; ".join(f"`{p}` (sha256 {h}…)" for p, h in sorted(files)) or "generation-0 defaults (no tuned file)"
            )
            seeds = sorted({int(s) for s in group["tune_seed"].dropna()})
            if seeds:
                source += f", tuning seed(s) {', '.join(map(str, seeds))}"
            overridden = sorted({k for keys in group["tuned_overridden"].dropna() for k in keys.split(",")})
            if overridden:
                source += f"; set by the experiment instead: {', '.join(overridden)}"
        rows.append({"experiment": experiment, "optimizer": figures.label(name), "hyperparameters from": source})
    return ["## Where the hyperparameters come from (run records' provenance)\n", to_markdown(pd.DataFrame(rows)), ""]


def claims_section(verdicts: pd.DataFrame, out: Path) -> list[str]:
    """Every claim's verdict with the numbers, seeds and tuning seeds behind it (experiments/claims.py)."""
    verdicts.to_csv(out / "claims.csv", index=False)
    lines = [
        "## The paper's claims, judged on these records\n",
        "Each claim of the paper's abstract is a criterion in `experiments/claims.py`, evaluated on the run records "
        "above ([CSV](claims.csv)). Two results differ only if their means differ by more than the sum of their "
        "standard deviations over seeds. `disagrees` and `inconclusive at this budget` are results like `agrees`.\n",
    ]
    for row in verdicts.to_dict("records"):
        lines.append(
            f"* **Claim {row['claim']}** ({row['where']}): **{row['verdict']}** — {row['reason']}. Numbers: "
            f"{row['numbers'] or '–'}. Seeds {row['seeds']}; tuning seeds {row['tuning seeds']}. *Rule:* {row['rule']}."
        )
    return lines + [""]


def log_to_wandb(experiment: str, scale: str, runs_root: Path, images: dict[str, Path]) -> None:
    """An offline W&B run of job_type "figures" in the experiment's group, through the suite's WandbLogger (which
    turns itself off on any W&B failure: the local results are the truth)."""
    from lodo.loggers import WandbLogger

    directory = runs_root / "figures_wandb"
    directory.mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(
        directory,
        {"experiment": experiment, "scale": scale},
        name=f"{experiment}-figures-{scale}",
        group=experiment,
        job_type="figures",
        tags=[scale],
    )
    logger.log_images({key: str(path) for key, path in images.items()})
    logger.finish({})


def environment(runs: pd.DataFrame) -> tuple[dict, dict]:
    """The machine facts and the budgets (the scale's ``budgets`` block) of the first readable run record."""
    import yaml

    for run_dir in runs["run_dir"]:
        try:
            summary = json.loads((Path(run_dir) / "summary.json").read_text())
            config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
            return summary.get("environment", {}), config.get("budgets", {})
        except (OSError, ValueError, yaml.YAMLError):
            continue
    return {}, {}


def build(
    scale: str,
    runs_root: Path,
    out: Path,
    wandb: bool = True,
    timings: dict | None = None,
    bench: Path | None = None,
    tuning: Path | None = None,
) -> Path:
    """Write every figure, table and REPORT.md of ``scale``; return the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    all_runs = load_runs(runs_root / scale)
    if not all_runs.empty:
        all_runs.drop(columns=["run_dir"]).assign(run=all_runs["run_dir"]).to_csv(out / "runs.csv", index=False)
    sections, missing, done, judged = [], [], {}, []
    for experiment in [*EXPERIMENTS, *(e for e in REPORTERS if e not in EXPERIMENTS)]:
        runs = all_runs[all_runs["experiment"] == experiment] if not all_runs.empty else all_runs
        if runs.empty:
            if experiment in experiments_at(scale):
                missing.append(experiment)
            continue
        curves = load_curves(runs)
        runs = metric_ends(runs, curves)
        done[experiment] = (runs, curves)
        judged.append(runs)
        section = Section(experiment, out / experiment)
        reporter = REPORTERS.get(experiment)
        if reporter is None:
            warnings.warn(f"no reporter for experiment {experiment!r}; its records are in runs.csv only", stacklevel=2)
            continue
        reporter(section, runs, curves, done)
        sections.append(section)
        if wandb:
            log_to_wandb(experiment, scale, runs_root / scale / experiment, section.images)
    tuning_table = load_tuning(tuning if tuning is not None else ROOT / "results" / "tuning")
    bench_table = load_bench(bench if bench is not None else ROOT / "results" / "bench" / "bench_cpu.csv")
    judged_runs = pd.concat(judged, ignore_index=True) if judged else all_runs
    verdicts = claims.evaluate(judged_runs, bench=bench_table, tuning=tuning_table)
    path = out / "REPORT.md"
    text = render(scale, all_runs, sections, missing, verdicts, out, tuning_table, timings)
    path.write_text(text)
    return path


def render(scale, runs, sections, missing, verdicts, out, tuning_table, timings) -> str:
    env, budgets = environment(runs) if not runs.empty else ({}, {})
    lines = [
        f"# LODO reproduction report — scale `{scale}`\n",
        "Generated by `python -m experiments.report` from the run records under "
        f"`runs/{scale}/` (every number below is traceable to a run folder's config.yaml, metrics.csv and "
        "summary.json; `runs.csv` lists them), the tuner's histories (`results/tuning/`) and the benchmark's table "
        "(`results/bench/`). Paper: *Learning to Optimize Quasi-Newton Methods* (Liao et al., TMLR 2023). Values "
        "attributed to the paper are readings of its figures, labelled as such; nothing of the paper is typed in as "
        "a result.\n",
        "## How this was produced\n",
        f"* Commands: `make reproduce SCALE={scale}` = `python scripts/reproduce.py --scale {scale}`, which runs, for "
        f"each experiment, `python -m lodo.run --multirun +experiment=<name> scale={scale} hydra/launcher=local "
        f"threads=1 logger=wandb` (W&B offline) and then `python -m experiments.report --scale {scale}`.",
        f"* Machine: {env.get('processor', platform.processor())}, {env.get('cpu_count')} CPUs, torch "
        f"{env.get('torch')}, Python {env.get('python')}, CUDA: {env.get('cuda')}; git {env.get('git_revision')}.",
        "* Timing: training time only (metric evaluation is off the clock); wall-clock numbers (steps/s, time "
        "milestones) also depend on whatever else ran on the machine. Step-milestone columns do not: a run's "
        "divergence counts against a milestone only if it happened by then.",
    ]
    if timings:
        lines.append(
            "* Wall time of `make reproduce` per experiment: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
            + "."
        )
    if budgets:
        lines += ["", "Budgets, as the run records carry them (`budgets` in each config.yaml):", "", "```yaml"]
        lines += [f"{name}: {value}" for name, value in budgets.items()] + ["```", ""]
    if missing:
        lines.append("\n**Missing (no run records at this scale):** " + ", ".join(missing) + "\n")
    if scale not in ("paper", "smoke"):
        lines.append(
            "\n**Run at `scale=paper` only:** " + ", ".join(PAPER_SCALE_ONLY) + " (the LODO sweeps on MNIST; at this "
            "scale the same sweeps run on the noisy quadratic, with several seeds per point).\n"
        )
    lines += claims_section(verdicts, out)
    if not runs.empty:
        lines += provenance(runs)
    for section in sections:
        lines.append(f"## Experiment `{section.name}`\n")
        lines += section.lines
    lines += tuning_section(tuning_table, out / "tuning", runs)
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="default")
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="the runs root (runs/<scale>/<experiment>)")
    parser.add_argument("--out", default=None, help="output folder (default results/<scale>)")
    parser.add_argument("--no-wandb", dest="wandb", action="store_false", help="skip the W&B figures runs")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else ROOT / "results" / args.scale
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else None
    path = build(args.scale, Path(args.runs), out, args.wandb, timings)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
