"""The W&B views and sync, without a network: every view builds; each panel's keys occur in real offline W&B runs of
its experiment at smoke scale (read back from the W&B files); sync picks exactly the runs of complete records;
saving goes through the library's create-or-update path (its server call replaced by a stand-in)."""

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from test_experiments import MNIST_SMOKE_OPTIMIZERS, SWEEP_SMOKE_VALUES, sweep_jobs

from lodo.records import SUMMARY, is_complete

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # experiments/ is a top-level folder, not installed
with warnings.catch_warnings():  # wandb-workspaces 0.4.13 still declares pydantic-v1 validators
    warnings.simplefilter("ignore", DeprecationWarning)
    import wandb_workspaces.reports.v2 as wr

    from experiments import dashboard, sync
ENV = {"WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}


def read_offline(path: Path) -> dict:
    """An offline W&B run read back from its .wandb file: group, tags, config, history and summary keys."""
    command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)]
    records = [
        json.loads(line) for line in subprocess.run(command, capture_output=True, text=True).stdout.split("\n") if line
    ]
    run = next(r["run"] for r in records if r.get("type") == "run")
    history, summary = {}, set()
    for r in records:
        if r.get("type") == "history":
            history.update(r["history"]["item"])
        if r.get("type") == "summary":  # the update records, so keys whose value is null count too
            summary |= set(r["summary"]["update"])
    config = run["config"]["update"]
    return {
        "group": run.get("run_group"),
        "tags": run.get("tags", []),
        "config": config,
        "history": history,
        "summary": summary,
    }


def config_has(config: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(config, dict) or part not in config:
            return False
        config = config[part]
    return True


def record_mirrors(folder: Path) -> list[Path]:
    """The W&B run each complete record under ``folder`` names (the interface sync relies on)."""
    records = [p.parent for p in folder.glob(f"*/{SUMMARY}") if is_complete(p.parent)]
    return [r / json.loads((r / SUMMARY).read_text())["wandb"]["dir"] for r in records]


def run_module(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **ENV}
    )
    assert result.returncode == 0, result.stderr[-3000:]


def smoke_experiment(experiment: str, runs_dir: Path) -> None:
    """``python -m lodo.run --multirun +experiment=<name> scale=smoke`` into ``runs_dir``, W&B offline; the MNIST
    sweeps reduced to the values tests/test_experiments.py runs."""
    overrides = []
    if experiment == "mnist":  # one CNN optimizer: the keys do not depend on it, and drawing samples takes minutes
        overrides.append("optimizer=" + sorted(MNIST_SMOKE_OPTIMIZERS)[0])
    if "sweep_r" in sweep_jobs(experiment)[0]:
        overrides.append("sweep_r=" + ",".join(sorted(SWEEP_SMOKE_VALUES)))
    run_module("lodo.run", "--multirun", f"+experiment={experiment}", "scale=smoke", f"runs_dir={runs_dir}", *overrides)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Runs an experiment at smoke scale on demand (after the one it restarts from), once per module, then the
    plotting stage, which logs each experiment's figures to an offline W&B run."""
    runs_dir, done = tmp_path_factory.mktemp("runs"), set()

    def ensure(experiment: str) -> Path:
        for name in [dashboard.describe(experiment, "smoke").frozen_from, experiment]:
            if name and name not in done:
                smoke_experiment(name, runs_dir)
                done.add(name)
                run_module(
                    "experiments.report", "--scale", "smoke", "--runs", str(runs_dir), "--out", str(runs_dir / "out")
                )
        return runs_dir

    return ensure


@pytest.mark.parametrize("scale", ["smoke", "default", "paper"])
@pytest.mark.parametrize("experiment", dashboard.EXPERIMENTS)
def test_every_view_builds(experiment, scale):
    e = dashboard.describe(experiment, scale)
    view = dashboard.workspace(e, "entity", "lodo")
    view._to_model()  # the library's own validation of the saved form
    assert e.name == experiment and view.sections and all(s.panels for s in view.sections)
    assert [g.name for g in view.runset_settings.groupby] == e.group_by
    plots = [p for s in view.sections for p in s.panels if isinstance(p, wr.LinePlot)]
    loss = [p for p in plots if p.y == ["loss"]]
    assert {p.x for p in loss} == {"step", "time"} and all(p.log_x and p.log_y for p in loss)
    assert all((p.groupby and p.groupby.name) in (e.group_by[0], None) and p.groupby_aggfunc == "mean" for p in loss)
    assert "summary:final_loss_at_steps" in view.runset_settings.pinned_columns
    assert dashboard.outline(view).count("section") == len(view.sections)


def test_views_follow_the_experiment_configs():
    assert dashboard.describe("rosenbrock").group_by == ["optimizer_name"]
    assert dashboard.describe("mnist_depth").group_by == ["sweep_r"]
    assert dashboard.describe("mnist_beta").swept == ["beta"]
    assert sorted(dashboard.describe("mnist_block_size").swept) == ["block_size", "depth"]
    frozen = dashboard.describe("quadratic_frozen")
    assert (frozen.frozen_from, frozen.group_by[0], frozen.newton_floor > 0) == ("noisy_quadratic", "experiment", True)
    assert dashboard.describe("mnist", "smoke").media == ["samples", "input_channels"]
    assert dashboard.describe("mnist_beta", "default").final == []  # the default-scale sweeps score no test images
    assert dashboard.describe("noisy_quadratic").tracked == ["hessian_error"]


@pytest.mark.parametrize(
    "experiment", [e if e == "rosenbrock" else pytest.param(e, marks=pytest.mark.slow) for e in dashboard.EXPERIMENTS]
)
def test_every_panel_reads_keys_that_real_offline_runs_have(experiment, smoke):
    runs_dir = smoke(experiment)
    e = dashboard.describe(experiment, "smoke")
    view = dashboard.workspace(e, "entity", "lodo")
    own = [read_offline(p) for p in record_mirrors(runs_dir / "smoke" / experiment)]
    assert own and all(r["group"] == experiment and "smoke" in r["tags"] for r in own)  # what the view's filter picks
    runs = list(own)
    if e.frozen_from:  # the on-the-fly LODO runs the frozen test is compared with
        source = [read_offline(p) for p in record_mirrors(runs_dir / "smoke" / e.frozen_from)]
        runs += [r for r in source if r["config"].get("optimizer_name") == "lodo" and "smoke" in r["tags"]]
        assert len(runs) > len(own) and all(r["config"]["experiment"] in (experiment, e.frozen_from) for r in runs)
    figures_history = {}
    if experiment in dashboard.FIGURES:  # the newest figures run the plotting stage logged for this experiment
        (figures_run,) = sync.offline_runs(runs_dir / "smoke" / experiment / sync.FIGURES_DIR)[-1:]
        figures_history = read_offline(figures_run)["history"]
    history = {k for r in runs for k in r["history"]}
    summary = set().union(*(r["summary"] for r in runs))
    for section in view.sections:
        for panel in section.panels:
            keys = dashboard.panel_keys(panel)
            if section.name == dashboard.FIGURES_SECTION:
                assert all(f"{k}._type" in figures_history for k in keys["history"]), (panel, figures_history.keys())
                continue
            for key in keys["history"]:
                assert key in history or f"{key}._type" in history, (section.name, panel.title, key)
            assert set(keys["summary"]) <= summary, (panel.title, keys["summary"])
            assert all(config_has(r["config"], k) for r in own for k in keys["config"]), (panel.title, keys)
    for group in view.runset_settings.groupby:
        assert all(config_has(r["config"], group.name) for r in own), group
    for column in view.runset_settings.pinned_columns:
        section, _, name = column.partition(":")
        if section == "summary":
            assert name in summary, column
        elif section == "config":  # "optimizer.value.beta" is config key optimizer.beta
            assert all(config_has(r["config"], name.replace(".value", "", 1)) for r in own), column


def test_sync_uploads_exactly_the_runs_of_complete_records_of_a_real_sweep(smoke, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(smoke("rosenbrock") / "smoke" / "rosenbrock", runs / "smoke" / "rosenbrock", symlinks=True)
    folder = runs / "smoke" / "rosenbrock"
    mirrors = record_mirrors(folder)
    assert len(mirrors) == 5 and all(p.is_dir() for p in mirrors)
    killed = mirrors[0].parent.parent  # a killed attempt: no summary, its mirror must stay local
    (killed / SUMMARY).unlink()
    stray = mirrors[1].with_name("offline-run-20000101_000000-partial1")  # an earlier attempt's partial mirror
    shutil.copytree(mirrors[1], stray)
    upload, skipped = sync.plan([runs])
    figures_runs = sync.offline_runs(folder / sync.FIGURES_DIR)
    assert sorted(upload) == sorted(mirrors[1:] + figures_runs[-1:])
    assert (mirrors[0], "incomplete record (no finished summary.json)") in skipped
    assert (stray, "partial mirror of an earlier attempt") in skipped


def fake_tree(root: Path) -> dict:
    """Run folders of every kind sync meets, made by hand: name -> (summary or None, offline-run folders)."""
    kinds = {
        "complete": ({"status": "completed", "wandb": {"id": "b", "dir": "wandb/offline-run-2-b"}}, ["1-a", "2-b"]),
        "diverged": ({"status": "diverged", "wandb": {"id": "c", "dir": "wandb/offline-run-3-c"}}, ["3-c"]),
        "killed": (None, ["4-d"]),
        "running": ({"status": "running"}, ["5-e"]),
        "no_wandb": ({"status": "completed", "wandb": None}, ["6-f"]),
        "missing": ({"status": "completed", "wandb": {"id": "g", "dir": "wandb/offline-run-7-g"}}, []),
        "synced": ({"status": "completed", "wandb": {"id": "h", "dir": "wandb/offline-run-8-h"}}, ["8-h"]),
        "figures_wandb": (None, ["20240101-x", "20250101-y"]),
        "complete/stale-20240101": (
            {"status": "completed", "wandb": {"id": "i", "dir": "wandb/offline-run-9-i"}},
            ["9-i"],
        ),
    }
    for name, (summary, offline) in kinds.items():
        (root / name).mkdir(parents=True)
        if summary is not None:
            (root / name / SUMMARY).write_text(json.dumps(summary))
        for o in offline:
            (root / name / "wandb" / f"offline-run-{o}").mkdir(parents=True)
    (root / "synced" / "wandb" / "offline-run-8-h" / "run-h.wandb.synced").touch()
    return kinds


def test_sync_skips_all_but_finished_records_and_says_why(tmp_path, monkeypatch, capsys):
    fake_tree(tmp_path)
    upload, skipped = sync.plan([tmp_path])

    def w(folder, name):
        return tmp_path / folder / "wandb" / f"offline-run-{name}"

    assert upload == [w("complete", "2-b"), w("diverged", "3-c"), w("figures_wandb", "20250101-y")]
    assert dict(skipped) == {
        w("complete", "1-a"): "partial mirror of an earlier attempt",
        w("killed", "4-d"): "incomplete record (no finished summary.json)",
        w("running", "5-e"): "incomplete record (no finished summary.json)",
        tmp_path / "no_wandb": "complete record without a W&B run (logger=none, or W&B failed)",
        w("no_wandb", "6-f"): "not named by the record",
        w("missing", "7-g"): "missing folder: the record's W&B run is not on disk",
        w("synced", "8-h"): "already uploaded",
        w("figures_wandb", "20240101-x"): "an older figures run",
        w("complete/stale-20240101", "9-i"): "an earlier record moved aside (stale-*)",
    }
    calls = []
    monkeypatch.setattr(
        sync.subprocess, "run", lambda command: calls.append(command) or subprocess.CompletedProcess(command, 0)
    )
    sync.main([str(tmp_path), "--dry-run"])
    assert calls == [] and "3 to upload, 9 skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit:
        sync.main([str(tmp_path), "--project", "lodo-paper"])
    assert exit.value.code == 0
    assert calls == [[sys.executable, "-m", "wandb", "sync", "--project", "lodo-paper", *map(str, upload)]]


def test_save_creates_each_view_once_and_then_updates_it(monkeypatch):
    """The server side (the library's GraphQL calls) replaced by a dict: not a test of W&B, of our use of it."""
    from wandb_workspaces.workspaces import interface, internal

    views, calls = {}, []

    def get_view_dict(entity, project, name):
        if name not in views:
            raise ValueError(f"Workspace `{name}` not found in project `{project}`")
        return views[name]

    def upsert_view2(view):
        calls.append(view)
        views[view.name.removeprefix("nw-").removesuffix("-v")] = {
            "spec": view.spec.model_dump_json(by_alias=True, exclude_none=True),
            "displayName": view.display_name,
            "id": view.id or f"id-{len(views)}",
        }
        return {"upsertView": {"view": {"name": view.name, "id": views[view.name[3:-2]]["id"]}}}

    monkeypatch.setattr(internal, "get_view_dict", get_view_dict)
    monkeypatch.setattr(internal, "upsert_view2", upsert_view2)
    monkeypatch.setattr(
        interface.Workspace, "url", property(lambda self: f"https://wandb.ai/?nw={self._internal_name}")
    )
    e = dashboard.describe("rosenbrock", "smoke")
    dashboard.save(dashboard.workspace(e, "me", "lodo"))
    dashboard.save(dashboard.workspace(e, "me", "lodo"))
    assert [(c.name, c.id) for c in calls] == [("nw-lodorosenbrocksmoke-v", ""), ("nw-lodorosenbrocksmoke-v", "id-0")]
    assert calls[1].display_name == "LODO rosenbrock (smoke)" and len(views) == 1
