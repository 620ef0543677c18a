"""Upload finished runs to W&B: ``python -m experiments.sync [roots ...] [--dry-run]`` (``make sync``).

Every run mirrors itself to an offline W&B run inside its own folder (README, *Seeing runs in W&B*). A run that was
killed and rerun leaves the partial mirrors of its earlier attempts beside the final one, so uploading every
``offline-run-*`` folder would put half-runs on the dashboard. Instead, for each complete record (``summary.json``
with status completed or diverged, written after the W&B run finished) this uploads exactly the W&B run the summary
names (``summary["wandb"]["dir"]``), and prints every other W&B folder it found with the reason it was skipped.
The plotting stage's figures runs (``figures_wandb/``, one per ``make figures``) are no run records: the newest
of each folder is uploaded, so the dashboards' figure panels show the current figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from lodo.records import SUMMARY, is_complete

FIGURES_DIR = "figures_wandb"  # where experiments/report.py keeps each experiment's figures run


def offline_runs(folder: Path) -> list[Path]:
    """The ``offline-run-*`` folders W&B wrote under ``folder/wandb`` (``WANDB_DIR`` = the run folder)."""
    return sorted((folder / "wandb").glob("offline-run-*"))


def is_synced(offline_run: Path) -> bool:
    """Whether ``wandb sync`` already uploaded it: it leaves a ``run-<id>.wandb.synced`` marker beside the file."""
    return any(offline_run.glob("*.wandb.synced"))


def plan(roots: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The W&B folders to upload and the ones skipped, each with why."""
    upload, skipped = [], []
    folders = {p.parent.parent for root in roots for p in root.rglob("wandb/offline-run-*")}
    folders |= {p.parent for root in roots for p in root.rglob(SUMMARY)}
    for folder in sorted(folders):
        found = offline_runs(folder)
        if folder.name == FIGURES_DIR:
            upload += found[-1:]  # the names start with the creation time: the last one is the newest
            skipped += [(p, "an older figures run") for p in found[:-1]]
            continue
        if folder.name.startswith("stale-"):  # lodo.records.move_aside: an earlier record of a rerun config
            skipped += [(p, "an earlier record moved aside (stale-*)") for p in found]
            continue
        if not is_complete(folder):
            skipped += [(p, "incomplete record (no finished summary.json)") for p in found]
            continue
        mirror = json.loads((folder / SUMMARY).read_text()).get("wandb")
        if not mirror:
            skipped.append((folder, "complete record without a W&B run (logger=none, or W&B failed)"))
            skipped += [(p, "not named by the record") for p in found]
            continue
        chosen = folder / mirror["dir"]
        if chosen.is_dir():
            upload.append(chosen)
        else:
            skipped.append((chosen, "missing folder: the record's W&B run is not on disk"))
        skipped += [(p, "partial mirror of an earlier attempt") for p in found if p != chosen]
    synced = [p for p in upload if is_synced(p)]
    skipped += [(p, "already uploaded") for p in synced]
    return [p for p in upload if p not in synced], skipped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="*", type=Path, help="folders to search (default: runs and multirun)")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be uploaded and skipped, upload nothing"
    )
    parser.add_argument("--entity", help="upload into this entity instead of the one each run names")
    parser.add_argument("--project", help="upload into this project instead of the one each run names")
    args = parser.parse_args(argv)
    roots = [r for r in args.roots or [Path("runs"), Path("multirun")] if r.exists()]
    upload, skipped = plan(roots)
    for path, why in skipped:
        print(f"skip    {path}: {why}")
    for path in upload:
        print(f"upload  {path}")
    print(f"{len(upload)} to upload, {len(skipped)} skipped")
    if args.dry_run or not upload:
        return
    command = [sys.executable, "-m", "wandb", "sync"]
    command += ["--entity", args.entity] if args.entity else []
    command += ["--project", args.project] if args.project else []
    raise SystemExit(subprocess.run([*command, *map(str, upload)]).returncode)


if __name__ == "__main__":
    main()
