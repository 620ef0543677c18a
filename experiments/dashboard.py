"""Saved W&B views as code: ``python -m experiments.dashboard [--scale default] [--dry-run]`` (``make dashboard``).

One saved workspace per experiment config (``configs/experiment/*.yaml``) and scale, built with W&B's own
``wandb-workspaces`` library and mirroring the paper's figures: training loss by step and by training time (log
axes, runs grouped by optimizer, mean ± std), the task's tracked metrics (Rosenbrock trajectories, LODO's Hessian
error, MNIST validation loss), the frozen-preconditioner test, the sweep plots, the generated samples, the plotting
stage's figures, and a runs table whose columns are the paper's table statistics (README, *Seeing runs in W&B*).
Everything a view shows is read from the experiment's composed config: its task, the values its sweep varies, its
milestones, so a new experiment file gets a view without code here. ``--dry-run`` prints the views and touches no
network; otherwise each view is created, or updated in place if it exists, in ``--entity``/``--project``.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import lodo.run  # noqa: F401 - registers the resolvers the experiment configs use
from lodo.config import build_task

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
# What each task logs besides step, time and loss (metric_names / final_metrics / save_artifacts in lodo/tasks),
# each with the task setting that switches it off when 0 or null (e.g. the default-scale sweeps evaluate no images).
TRACKED = {
    "rosenbrock": {"x": None, "y": None},
    "noisy_quadratic": {"hessian_error": "metric_interval"},
    "mnist_autoregression": {"validation_loss": "validation_images"},
    "mnist_small": {"validation_loss": "validation_images"},
}
FINAL = {"mnist_autoregression": {"test_loss": "test_images"}, "mnist_small": {"test_loss": "test_images"}}
# pictures, drawn only if save_artifacts
MEDIA = {
    "mnist_autoregression": {"samples": "samples", "input_channels": None},
    "mnist_small": {"samples": "samples", "input_channels": None},
}
FIGURES_SECTION = "Figures (make figures)"
# The image keys experiments/report.py logs to each experiment's "figures" run (its Section.figure keys).
FIGURES = {
    "rosenbrock": ["by_step", "by_time", "trajectories"],
    "noisy_quadratic": ["by_step", "by_time", "hessian_error"],
    "quadratic_authors": ["by_step", "by_time", "hessian_error"],
    "mnist_small": ["by_step", "by_time"],
    "quadratic_frozen": ["frozen_loss", "frozen_hessian_error"],
    "mnist": ["by_step", "by_time", "validation", "samples"],
    "mnist_beta": ["sweep"],
    "mnist_depth": ["sweep"],
    "mnist_block_size": ["sweep"],
}
# The summary keys of the paper's tables (final-10%-window loss at both milestones, divergence) and their context.
MILESTONES = ["status", "reason", "final_loss_at_steps", "final_loss_at_time", "diverged_at_steps", "diverged_at_time"]
MILESTONES += ["steps_per_second", "milestone/steps", "milestone/time_limit", "config_hash", "env/git_revision"]


@dataclass
class Experiment:
    """What a view of one experiment needs to know, read from its composed config."""

    name: str
    scale: str
    task: str
    tracked: list[str]  # the task's history metrics that this experiment's runs log
    final: list[str]  # the task's final metrics (summary) that they log
    group_by: list[str]  # top-level config keys that tell the runs apart (optimizer_name, sweep_r, ...), seeds pooled
    swept: list[str]  # optimizer hyperparameters the r-sweep varies (the paper's β / depth / block-size plots)
    time_limit: float | None
    media: list[str]  # the pictures they log (generated samples)
    frozen_from: str | None  # the experiment whose LODO learned the frozen preconditioner (README, *Reproducing*)
    newton_floor: float | None
    runs: int


def _compose(experiment: str, scale: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        overrides = [f"+experiment={experiment}", f"scale={scale}", *overrides]
        return compose("config", overrides=overrides, return_hydra_config=True)


def _enabled(metrics: dict, task, also: str | None = None) -> list[str]:
    if also and not task.get(also):
        return []
    return [m for m, setting in metrics.get(task.name, {}).items() if setting is None or task.get(setting)]


def describe(experiment: str, scale: str = "default") -> Experiment:
    """Read one experiment's view from its config: the sweep (``hydra.sweeper.params``) and its first job."""
    params = {k: str(v).split(",") for k, v in _compose(experiment, scale).hydra.sweeper.params.items()}
    cfg = _compose(experiment, scale, *(f"{k}={v[0]}" for k, v in params.items()))
    swept = []
    if "sweep_r" in params:  # the hyperparameters whose value differs between the sweep's ends
        last = _compose(experiment, scale, f"sweep_r={params['sweep_r'][-1]}").optimizer
        swept = [k for k, v in cfg.optimizer.items() if last[k] != v]
    checkpoint = cfg.get("preconditioner_checkpoint")
    # what the sweep varies besides the seed; the frozen test also sets itself apart from the runs it is compared with
    group_by = ["optimizer_name" if k == "optimizer" else k for k in params if k != "seed" and not k.endswith("_seed")]
    group_by = (["experiment"] if checkpoint or not group_by else []) + group_by
    runs = 1
    for values in params.values():
        runs *= len(values)
    return Experiment(
        name=experiment,
        scale=scale,
        task=cfg.task.name,
        tracked=_enabled(TRACKED, cfg.task, also="metric_interval"),
        final=_enabled(FINAL, cfg.task),
        group_by=group_by,
        swept=swept,
        time_limit=cfg.time_limit,
        media=_enabled(MEDIA, cfg.task) if cfg.save_artifacts else [],
        # runs/<scale>/<experiment>/<what varies>/optimizer.pt: the sweep layout of every experiment config
        frozen_from=Path(checkpoint).parts[-3] if checkpoint else None,
        newton_floor=build_task(cfg).newton_floor if cfg.task.name == "noisy_quadratic" else None,
        runs=runs,
    )


def _curve(title: str, x: str, metric: str, group: wr.Config | None, log_x: bool = False) -> wr.LinePlot:
    """``metric`` against ``x`` on a log scale, the runs grouped by ``group`` (None: as the runs table groups them,
    the library's default), mean ± std over each group's runs."""
    return wr.LinePlot(title=title, x=x, y=[metric], log_x=log_x, log_y=True, groupby=group, groupby_aggfunc="mean",
                       groupby_rangefunc="stddev")  # fmt: skip


def _bar(title: str, metric: str, group: wr.Config | None) -> wr.BarPlot:
    """A summary value per group (mean ± std): the columns of the paper's tables."""
    return wr.BarPlot(title=title, metrics=[metric], groupby=group, groupby_aggfunc="mean", groupby_rangefunc="stddev")


def sections(e: Experiment) -> list[ws.Section]:
    """The view's sections, in the order of the paper's figures."""
    group = wr.Config(e.group_by[0]) if len(e.group_by) == 1 else None  # a panel groups by one key at most
    # LinePlot has no reference line in wandb-workspaces 0.4.13, so the quadratic's floor is given in the title.
    floor = f" (Newton floor ½σ²·tr H = {e.newton_floor:.4g})" if e.newton_floor is not None else ""
    curves = [
        _curve(f"training loss by step{floor}", "step", "loss", group, log_x=True),
        _curve(f"training loss by training time (s){floor}", "time", "loss", group, log_x=True),
    ]
    if {"x", "y"} <= set(e.tracked):  # Rosenbrock's position: the paper's trajectory plot, one line per run
        curves.append(wr.LinePlot(title="trajectories (x, y)", x="x", y=["y"]))
    for metric in (m for m in e.tracked if m not in ("x", "y")):
        title = "LODO's Hessian error ‖I − GH‖_F/√n" if metric == "hessian_error" else metric.replace("_", " ")
        curves.append(_curve(title, "step", metric, group))
    name = "Frozen vs on-the-fly LODO" if e.frozen_from else "Learning curves"
    layout = ws.SectionLayoutSettings(columns=2, rows=2)
    result = [ws.Section(name=name, panels=curves, is_open=True, layout_settings=layout)]

    finals = [_bar("final-window loss at the step milestone", "final_loss_at_steps", group)]
    if e.time_limit:
        finals.append(_bar("final-window loss at the time milestone", "final_loss_at_time", group))
    finals += [_bar(m.replace("_", " "), m, group) for m in e.final]
    for k in e.swept:  # the paper's sweep plots: final loss against the swept hyperparameter
        x, y = wr.Config(f"optimizer.{k}"), wr.SummaryMetric("final_loss_at_steps")
        finals.append(wr.ScatterPlot(title=f"final-window loss against {k}", x=x, y=y, log_y=True))
    result.append(ws.Section(name="Sweep" if e.swept else "Milestones", panels=finals, is_open=True))
    if e.media:
        result.append(ws.Section(name="Generated samples", panels=[wr.MediaBrowser(media_keys=e.media)]))
    if e.name in FIGURES:
        figures = wr.MediaBrowser(title="the plotting stage's figures", media_keys=FIGURES[e.name])
        result.append(ws.Section(name=FIGURES_SECTION, panels=[figures]))
    return result


def column(config_key: str) -> str:
    """A config key's runs-table column: W&B stores each top-level key as {"value": ...}, "optimizer.value.beta"."""
    top, _, rest = config_key.partition(".")
    return f"config:{top}.value" + (f".{rest}" if rest else "")


def runset(e: Experiment) -> ws.RunsetSettings:
    """This experiment's runs at this scale (tags carry the scale), grouped as its plots are, table = milestones."""
    runs = ws.Metric("Group") == e.name
    if e.frozen_from:  # the on-the-fly curve the frozen test is compared with is the source experiment's LODO run
        runs = ws.Or(runs, ws.And(ws.Metric("Group") == e.frozen_from, ws.Config("optimizer_name") == "lodo"))
    config = ["optimizer_name", "seed", *e.group_by] + [f"optimizer.{k}" for k in e.swept]
    config = [column(k) for k in dict.fromkeys(config)]
    summary = [f"summary:{k}" for k in MILESTONES + e.final]
    return ws.RunsetSettings(
        filters=ws.And(runs, ws.Tags().isin([e.scale])),
        groupby=[ws.Config(k) for k in e.group_by],
        pinned_columns=config + summary,
    )


def workspace(e: Experiment, entity: str, project: str) -> ws.Workspace:
    return ws.Workspace(
        entity=entity,
        project=project,
        name=f"LODO {e.name} ({e.scale})",
        sections=sections(e),
        # x = our step metric (loss/gradient evaluations, the paper's steps); show every run of the sweep
        settings=ws.WorkspaceSettings(x_axis="step", max_runs=max(10, e.runs)),
        runset_settings=runset(e),
    )


def panel_keys(panel) -> dict[str, list[str]]:
    """The keys a panel reads, by where W&B looks them up: history, summary or config."""
    keys = {"history": [], "summary": [], "config": []}
    values = [getattr(panel, a, None) for a in ("x", "y", "z", "metrics", "media_keys", "groupby")]
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, wr.Config):
                keys["config"].append(item.name)
            elif isinstance(item, wr.SummaryMetric):
                keys["summary"].append(item.name)
            elif isinstance(item, str) and item != "Step":
                keys["summary" if isinstance(panel, wr.BarPlot) else "history"].append(item)
    return keys


def outline(view: ws.Workspace) -> str:
    lines = [f"{view.name}  [{view.entity}/{view.project}]", f"  runs: {view.runset_settings.filters}"]
    lines.append(f"  grouped by: {', '.join(g.name for g in view.runset_settings.groupby)}")
    lines.append(f"  table: {', '.join(view.runset_settings.pinned_columns)}")
    for section in view.sections:
        lines.append(f"  section {section.name!r}")
        for panel in section.panels:
            keys = {k: v for k, v in panel_keys(panel).items() if v}
            lines.append(f"    {type(panel).__name__} {getattr(panel, 'title', None) or ''!r} {keys}")
    return "\n".join(lines)


def save(view: ws.Workspace) -> ws.Workspace:
    """Update the view saved under this experiment's stable name, or create it under that name."""
    key = re.sub(r"[^a-z0-9]", "", view.name.lower())  # the view's ?nw= id: letters and digits only
    try:  # the library updates a loaded view in place (same id) when it is saved
        saved = ws.Workspace.from_url(f"https://wandb.ai/{view.entity}/{view.project}?nw={key}")
    except ValueError:  # not there yet
        view._internal_name = f"nw-{key}-v"  # the library's own form of a view's internal name
        return view.save()
    saved.name, saved.sections, saved.settings, saved.runset_settings = (
        view.name,
        view.sections,
        view.settings,
        view.runset_settings,
    )
    return saved.save()


def main(argv: list[str] | None = None) -> None:
    logger = OmegaConf.load(CONFIGS / "logger" / "wandb.yaml")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="default", help="the scale whose runs the views show (tag)")
    parser.add_argument("--entity", default=logger.entity, help="default: configs/logger/wandb.yaml, else your own")
    parser.add_argument("--project", default=logger.project, help="default: configs/logger/wandb.yaml")
    parser.add_argument("--experiments", nargs="*", default=EXPERIMENTS, choices=EXPERIMENTS)
    parser.add_argument("--dry-run", action="store_true", help="print the views; no network")
    args = parser.parse_args(argv)
    entity = args.entity
    if entity is None and not args.dry_run:
        import wandb

        entity = wandb.Api().default_entity  # the logged-in user's entity, where `wandb sync` puts runs too
    for experiment in args.experiments:
        view = workspace(describe(experiment, args.scale), entity or "<your entity>", args.project)
        print(outline(view))
        if not args.dry_run:
            print(f"  saved: {save(view).url}")


if __name__ == "__main__":
    main()
