"""One experiment's part of REPORT.md: a :class:`Section` and, per experiment, the function that fills it
(:data:`REPORTERS`, experiment name → reporter). Each reporter draws its figures through :mod:`experiments.figures`
and writes its tables (CSV + Markdown) from the tidy tables of :mod:`experiments.aggregate`; none reads a file
other than the run records those tables point to."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from experiments import claims, figures
from experiments.aggregate import comparison_table, window_means

ORDER = [
    "momentum",
    "rmsprop",
    "adam",
    "lars",
    "yogi",
    "lbfgs_no_line_search",
    "olbfgs",
    "bfgs",
    "levenberg_marquardt",
    "l2lbgdbgd",
    "kfac",
    "lodo",
    "lodo_diagonal",
    "lodo_global",
    "lodo_residuals",
    "lodo_no_momentum",
    "lodo_sgd",
    "LODO (authors' values)",
]
# Values read off the paper's Rosenbrock learning-curve figure at step 200. They are readings of an image, not
# results of this suite, and are only printed beside ours.
PAPER_ROSENBROCK_READINGS = {"adam": 4e-5, "momentum": 1.2e-4, "yogi": 7e-4, "rmsprop": 8e-4, "lodo": 1e-3}
UNKNOWN = "unknown (record predates provenance)"


def order(names) -> list[str]:
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float | int | np.number) else str(value)


def pm(mean: float, std: float) -> str:
    return "–" if mean is None or math.isnan(mean) else f"{fmt(mean)} ± {fmt(std, 2)}"


def to_markdown(frame: pd.DataFrame) -> str:
    """A pipe table of ``frame`` (cells already formatted as text)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rows = ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, "|" + "---|" * len(frame.columns), *rows])


def budget_text(runs: pd.DataFrame) -> str:
    """A run group's budget, as stated on every figure and table: runs per optimizer, step and time milestones."""
    steps = sorted(set(runs["milestone_steps"].dropna().astype(int)))
    times = sorted(set(runs["milestone_time"].dropna()))
    seeds = runs.groupby("optimizer")["seed"].nunique()
    per = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
    time = f" / {', '.join(f'{t:g}' for t in times)} s" if times else ""
    return f"{per} runs per optimizer, {', '.join(map(str, steps))} steps{time}"


def newton_floor(runs: pd.DataFrame) -> float | None:
    """The Newton floor ½σ² tr H the runs recorded (provenance), or None where no record carries it."""
    values = runs["newton_floor"].dropna() if "newton_floor" in runs else pd.Series(dtype=float)
    return float(values.mean()) if len(values) else None


def newton_text(value: float | None) -> str:
    return f"{value:.6g}" if value is not None else UNKNOWN


def display_table(table: pd.DataFrame, with_time: bool, with_test: bool) -> pd.DataFrame:
    """The comparison table as text cells, the paper's columns (mean ± std, diverged k/N, steps/s)."""
    shown = pd.DataFrame(
        {
            "optimizer": table["optimizer"].map(figures.label),
            "runs": table["runs"],
            "loss at step milestone": [
                pm(m, s) for m, s in zip(table["loss_at_steps_mean"], table["loss_at_steps_std"])
            ],
            "diverged": table["diverged_at_steps"],
        }
    )
    if with_time:
        shown["loss at time milestone"] = [
            pm(m, s) for m, s in zip(table["loss_at_time_mean"], table["loss_at_time_std"])
        ]
        shown["diverged (time)"] = table["diverged_at_time"]
    shown["steps/s"] = [pm(m, s) for m, s in zip(table["steps_per_second_mean"], table["steps_per_second_std"])]
    if with_test:
        shown["test loss"] = [pm(m, s) for m, s in zip(table["test_loss_mean"], table["test_loss_std"])]
    return shown


class Section:
    """One experiment's part of the report: its figures, tables and findings."""

    def __init__(self, name: str, out: Path):
        self.name, self.out, self.lines, self.images = name, out, [], {}
        self.out.mkdir(parents=True, exist_ok=True)

    def figure(self, key: str, path: Path | None, caption: str) -> None:
        if path is None:  # nothing to draw: say so rather than show an empty plot
            self.lines.append(f"*{caption}*: no data in the records.\n")
            return
        self.images[key] = path
        rel = path.relative_to(self.out.parent)
        self.lines.append(f"![{caption}]({rel})\n\n*{caption}* ([PDF]({rel.with_suffix('.pdf')}))\n")

    def table(self, key: str, table: pd.DataFrame, shown: pd.DataFrame, caption: str) -> None:
        table.to_csv(self.out / f"{key}.csv", index=False)
        markdown = to_markdown(shown)
        (self.out / f"{key}.md").write_text(f"{caption}\n\n{markdown}\n")
        self.lines.append(f"**{caption}** ([CSV]({self.name}/{key}.csv))\n\n{markdown}\n")

    def text(self, line: str) -> None:
        self.lines.append(line + "\n")


def comparison(section: Section, runs: pd.DataFrame, curves: pd.DataFrame, task_title: str, **plot) -> pd.DataFrame:
    """The learning-curve figures (by step and by time) and the table of one comparison experiment."""
    names = order(runs["optimizer"])
    budget = budget_text(runs)
    steps = int(runs["milestone_steps"].max())
    time_limit = runs["milestone_time"].max()
    with_time = bool(time_limit) and not math.isnan(time_limit)
    title = f"{task_title}: {budget} (scale {runs['scale'].iloc[0]})"
    section.figure(
        "by_step",
        figures.learning_curves(
            curves, section.out / "learning_curves_by_step", "step", steps, names, title=title, **plot
        ),
        f"{task_title}: training loss by step, mean ± std over runs ({budget}).",
    )
    section.figure(
        "by_time",
        figures.learning_curves(
            curves,
            section.out / "learning_curves_by_time",
            "time",
            float(time_limit) if with_time else None,
            names,
            title=title,
            **plot,
        ),
        f"{task_title}: training loss by training time (evaluation excluded), mean ± std ({budget}).",
    )
    table = comparison_table(runs, names)
    with_test = table["test_loss_mean"].notna().any()
    section.table(
        "table",
        table,
        display_table(table, with_time, with_test),
        f"{task_title}: mean ± std (population) over runs of the training loss averaged over the final 10% window "
        f"before each milestone; a run counts as diverged at a milestone only if it had diverged by then; diverged "
        f"runs excluded and counted ({budget}).",
    )
    return table


def hessian_figure(section: Section, runs: pd.DataFrame, curves: pd.DataFrame, names: list[str], title: str) -> None:
    """‖I − GH‖_F/√n by step (log axis, from step 0 where recorded) with the records' reference lines."""
    if "hessian_error" not in curves or curves["hessian_error"].isna().all():
        return
    lodo = runs[runs["optimizer"] == "lodo"]
    references = {
        "G = α₀I (LODO's start)": lodo["hessian_start"].mean(),
        "best scalar G = cI": runs["hessian_best_scalar"].mean(),
        "best diagonal G": runs["hessian_best_diagonal"].mean(),
    }
    references = {k: float(v) for k, v in references.items() if v == v}
    section.figure(
        "hessian_error",
        figures.hessian_error(
            curves, section.out / "hessian_error_by_step", names, references, int(runs["milestone_steps"].max()), title
        ),
        "‖I − G H‖_F/√n by step (log axis; mean ± std over runs): 1 at G = 0, 0 at G = H⁻¹; the dotted lines are the "
        "exact best scalar and best diagonal G on the same H and the value at LODO's start G = α₀I, as the runs "
        "recorded them" + ("" if references else " (these records carry no reference values: they predate them)") + ".",
    )


def report_rosenbrock(section: Section, runs, curves, done) -> dict:
    table = comparison(section, runs, curves, "Rosenbrock", log_y=True, clip=(0, 0.1))
    steps = int(runs["milestone_steps"].max())
    section.figure(
        "trajectories",
        figures.rosenbrock_trajectories(
            curves[curves["step"] <= steps],
            section.out / "trajectories",
            order(runs["optimizer"]),
            title=f"Rosenbrock trajectories (seed {int(runs['seed'].min())}), {budget_text(runs)}",
        ),
        "Trajectories over log(f + 1e-3) (RdBu); the star is the minimum (1, 1); the map is widened to hold every "
        "trajectory (up to a limit; a clipped one is marked).",
    )
    ours = table.set_index("optimizer")["loss_at_steps_mean"]
    readings = pd.DataFrame(
        {
            "optimizer": [figures.label(n) for n in PAPER_ROSENBROCK_READINGS],
            "paper (read off its figure, step 200)": [f"≈{v:g}" for v in PAPER_ROSENBROCK_READINGS.values()],
            f"this reproduction (step {steps})": [fmt(ours.get(n, math.nan)) for n in PAPER_ROSENBROCK_READINGS],
        }
    )
    section.table(
        "paper_readings",
        readings,
        readings,
        "Rosenbrock beside the paper: its values are readings of its learning-curve figure, not measurements here.",
    )
    return {"table": table}


def report_quadratic(section: Section, runs, curves, done, title: str = "Noisy quadratic") -> dict:
    newton = newton_floor(runs)
    table = comparison(section, runs, curves, title, clip=(0, 40), newton=newton)
    section.text(f"Newton floor ½σ² tr H: {newton_text(newton)}.")
    hessian_figure(section, runs, curves, order(runs["optimizer"]), f"Hessian-approximation error, {budget_text(runs)}")
    return {"table": table}


def report_ablations(section: Section, runs, curves, done) -> dict:
    """LODO and its five ablations on the noisy quadratic: loss and Hessian error (Claim 2 where a CPU can test it)."""
    section.text(f"*{claims.QUADRATIC_CLAIM_2_LABEL}.*")
    result = report_quadratic(section, runs, curves, done, "LODO and its ablations on the noisy quadratic")
    sources = runs.groupby("optimizer")["tuned_path"].first()
    for name in order(runs["optimizer"]):
        has = runs.loc[runs["optimizer"] == name, "has_provenance"].all()
        source = sources.get(name) if has else UNKNOWN
        section.text(f"* {figures.label(name)}: hyperparameters from {source or 'generation-0 defaults'}")
    return result


AUTHORS_LODO = "LODO (authors' values)"


def report_authors(section: Section, runs, curves, done) -> dict:
    """LODO with the authors' tuned values beside the `noisy_quadratic` LODO, which uses this suite's ES values."""
    if "noisy_quadratic" not in done:
        section.text("Needs the `noisy_quadratic` runs (the ES-tuned LODO it is shown beside); none at this scale.")
        return {"table": None}
    quadratic_runs, quadratic_curves = done["noisy_quadratic"]
    ours = quadratic_runs[quadratic_runs["optimizer"] == "lodo"]
    both = pd.concat([ours, runs.assign(optimizer=AUTHORS_LODO)], ignore_index=True)
    both_curves = pd.concat(
        [
            quadratic_curves[quadratic_curves["run_dir"].isin(ours["run_dir"])],
            curves.assign(optimizer=AUTHORS_LODO),
        ],
        ignore_index=True,
    )
    section.text(
        "LODO (top row) uses this suite's ES-tuned values like every optimizer in `noisy_quadratic`; the second row "
        "uses the values that survive in the authors' code, not tuned here (configs/tuned/authors/)."
    )
    return report_quadratic(section, both, both_curves, done, "Noisy quadratic: LODO, ES-tuned vs the authors' values")


def report_mnist_small(section: Section, runs, curves, done) -> dict:
    """The reduced CNN on the MNIST task: the paper's MNIST optimizers, long enough to separate (not its network)."""
    section.text(f"*{claims.REDUCED_CNN_LABEL}: its numbers never stand in for the paper's MNIST results.*")
    table = comparison(section, runs, curves, "MNIST autoregression, reduced CNN (not the paper's)")
    return {"table": table}


def report_frozen(section: Section, runs, curves, done) -> dict:
    """The frozen-preconditioner test beside the on-the-fly LODO runs it restarts from (and its control)."""
    if "noisy_quadratic" not in done:
        section.text("Needs the `noisy_quadratic` runs (the on-the-fly LODO it is compared with); none at this scale.")
        return {"table": None}
    quadratic_runs, quadratic_curves = done["noisy_quadratic"]
    pretrain = runs["pretrain_seed"].fillna(runs["seed"]).astype(int)
    fresh = pretrain.to_numpy() != runs["seed"].astype(int).to_numpy()  # the control: another seed, another eigenbasis
    on_the_fly = quadratic_runs[(quadratic_runs["optimizer"] == "lodo") & quadratic_runs["seed"].isin(set(pretrain))]
    steps = int(runs["milestone_steps"].max())
    otf_curves = quadratic_curves[
        quadratic_curves["run_dir"].isin(on_the_fly["run_dir"]) & (quadratic_curves["step"] <= steps)
    ]
    variants = {
        "LODO on the fly": (on_the_fly, otf_curves),
        "frozen θ, same Hessian": (runs[~fresh], curves[curves["run_dir"].isin(runs[~fresh]["run_dir"])]),
        "frozen θ, fresh eigenbasis": (runs[fresh], curves[curves["run_dir"].isin(runs[fresh]["run_dir"])]),
    }
    variants = {k: v for k, v in variants.items() if not v[0].empty}
    newton = newton_floor(runs)
    budget = f"{len(runs)} frozen runs, {steps} steps"
    tidy = pd.concat([c.assign(optimizer=k) for k, (_, c) in variants.items()], ignore_index=True)
    for column, key, caption in (
        ("loss", "frozen_loss", "training loss"),
        ("hessian_error", "frozen_hessian_error", "‖I − GH‖_F/√n"),
    ):
        if column in tidy and tidy[column].notna().any():
            section.figure(
                key,
                figures.frozen_vs_on_the_fly(
                    tidy,
                    section.out / key,
                    list(variants),
                    column,
                    steps,
                    newton,
                    title=f"Frozen vs on-the-fly LODO, {budget}",
                ),
                f"{caption}: LODO learning on the fly vs restarted with its learned θ frozen ({budget}).",
            )
    rows = []
    for name, (group_runs, group_curves) in variants.items():
        means = window_means(group_curves, "step", steps) if len(group_curves) else []
        windows = [w for w in means if math.isfinite(w)]  # a diverged run is counted in `diverged`, not averaged
        checkpoints = (
            group_runs["checkpoint_sha256"].dropna().str[:12].unique() if "checkpoint_sha256" in group_runs else []
        )
        rows.append(
            {
                "variant": name,
                "runs": len(group_runs),
                "diverged": int((group_runs["status"] == "diverged").sum()),
                "seeds": ",".join(map(str, sorted(group_runs["seed"].astype(int)))),
                "loss_mean": float(np.mean(windows)) if windows else math.nan,
                "loss_std": float(np.std(windows)) if windows else math.nan,
                "checkpoints": ", ".join(checkpoints)
                if len(checkpoints)
                else ("–" if name.startswith("LODO on") else UNKNOWN),
            }
        )
    table = pd.DataFrame(rows)
    shown = table.assign(loss=[pm(m, s) for m, s in zip(table["loss_mean"], table["loss_std"])])
    shown = shown[["variant", "runs", "diverged", "seeds", "loss", "checkpoints"]].rename(
        columns={"loss": "final-window loss", "checkpoints": "θ loaded (sha256 prefix)"}
    )
    section.table(
        "table",
        table,
        shown,
        f"Frozen-preconditioner test: loss over steps ({0.9 * steps:g}, {steps}] (Newton floor {newton_text(newton)}; "
        f"{budget}).",
    )
    return {"table": table}


def report_mnist(section: Section, runs, curves, done) -> dict:
    at_paper = (runs["scale"] == "paper").all()
    table = comparison(section, runs, curves, "MNIST autoregression", clip=(0.65, 0.95) if at_paper else None)
    if "validation_loss" in curves:
        section.figure(
            "validation",
            figures.learning_curves(
                curves,
                section.out / "validation_loss_by_step",
                "step",
                int(runs["milestone_steps"].max()),
                order(runs["optimizer"]),
                column="validation_loss",
                ylabel="validation loss",
                title=f"MNIST validation loss, {budget_text(runs)}",
            ),
            f"MNIST validation loss by step ({budget_text(runs)}).",
        )
    for key, filename, caption in (
        (
            "samples",
            "samples.png",
            "Digits generated pixel by pixel by each optimizer's trained CNN (lowest-seed run).",
        ),
        (
            "inputs",
            "input_channels.png",
            "The CNN's 5-channel input (image, query-pixel mask, row, column, known mask).",
        ),
    ):
        path = figures.sample_grid(
            runs, section.out / key, order(runs["optimizer"]), title=budget_text(runs), filename=filename
        )
        if path is not None or key == "samples":
            section.figure(key, path, caption)
    return {"table": table}


def report_sweep(parameter: str):
    """The reporter of one LODO sweep (β, depth, block size): the loss against the swept value."""

    def report(section: Section, runs, curves, done) -> dict:
        budget = f"{runs['seed'].nunique()} seed(s) per r = 0..7, {int(runs['milestone_steps'].max())} steps"
        lodo_std = None
        if "mnist" in done and section.name.startswith("mnist"):
            main = done["mnist"][0]
            values = main[(main["optimizer"] == "lodo") & (main["status"] == "completed")]["final_loss_at_steps"]
            lodo_std = float(np.std(values)) if len(values) else None
        section.figure(
            "sweep",
            figures.sweep(
                runs,
                curves,
                parameter,
                section.out / f"{parameter}_variation",
                lodo_std,
                title=f"LODO {parameter} sweep, {budget}",
            ),
            f"Final-10%-window training loss against {parameter} ({budget}); error bars ± the std across seeds where "
            "there are several, else across the main LODO runs; grey band ± std(window)/(count − 1) as in the "
            "authors' plot.",
        )
        rows = runs.sort_values(["sweep_r", "seed"])[
            ["sweep_r", "seed", f"hp.{parameter}", "final_loss_at_steps", "status"]
        ]
        rows = rows.astype({"sweep_r": int, "seed": int})
        shown = rows.assign(
            **{
                f"hp.{parameter}": rows[f"hp.{parameter}"].map(fmt),
                "final_loss_at_steps": rows["final_loss_at_steps"].map(fmt),
            }
        )
        section.table(
            "table",
            rows,
            shown.rename(columns={f"hp.{parameter}": parameter, "final_loss_at_steps": "final-window loss"}),
            f"LODO {parameter} sweep ({budget}).",
        )
        return {"table": rows}

    return report


# Experiment name -> its reporter (section, runs, curves, experiments done so far) -> {"table": ...}.
REPORTERS = {
    "rosenbrock": report_rosenbrock,
    "noisy_quadratic": report_quadratic,
    "quadratic_authors": report_authors,
    "quadratic_ablations": report_ablations,
    "quadratic_frozen": report_frozen,
    "mnist_small": report_mnist_small,
    "mnist": report_mnist,
    "mnist_beta": report_sweep("beta"),
    "mnist_depth": report_sweep("depth"),
    "mnist_block_size": report_sweep("block_size"),
    "quadratic_beta": report_sweep("beta"),
    "quadratic_depth": report_sweep("depth"),
    "quadratic_block_size": report_sweep("block_size"),
}
