"""One function per paper figure. Each reads the tidy tables of :mod:`experiments.aggregate` (never a run itself)
and writes ``<path>.png`` and ``<path>.pdf``; each returns the PNG path. Styles follow reference §8.3–8.4."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.aggregate import binned_curve  # noqa: E402

# The paper's labels for the registry names.
LABELS = {
    "momentum": "Momentum",
    "rmsprop": "RMSprop",
    "adam": "Adam",
    "yogi": "Yogi",
    "lars": "LARS",
    "lodo": "LODO",
    "lodo_diagonal": "LODO-Diagonal",
    "lodo_global": "LODO-Global",
    "lodo_residuals": "LODO-Residuals",
    "lodo_no_momentum": "LODO-No-Momentum",
    "lodo_sgd": "LODO-SGD",
    "lbfgs_no_line_search": "L-BFGS-no-line-search",
    "olbfgs": "O-LBFGS",
    "bfgs": "BFGS",
    "levenberg_marquardt": "Levenberg-Marquardt",
    "l2lbgdbgd": "L2LBGDBGD",
    "kfac": "K-FAC",
    "lbfgs": "L-BFGS",
    "psgd_kron": "PSGD-Kron",
    "soap": "SOAP",
    "shampoo": "Shampoo",
    "sgd_hd": "SGD-HD",
}

# Reference §8.4: the first case-insensitive substring match wins. Two deliberate changes: the LODO ablations are
# matched before "momentum" (the authors' order drew LODO-No-Momentum blue, the same as Momentum), and the
# optimizers the authors' table lacks get their own colours instead of LODO's black.
COLOURS = [
    ("lodo-diagonal", (1, 0, 1)),
    ("lodo-global", (0, 1, 1)),
    ("lodo-residuals", (0.5, 0, 1)),
    ("lodo-sgd", (139 / 255, 69 / 255, 19 / 255)),
    ("lodo-no-momentum", (34 / 255, 139 / 255, 34 / 255)),
    ("pretrained lodo", (1, 0, 0)),
    ("adam", (1, 0, 0)),
    ("rmsprop", (0, 1, 0)),
    ("momentum", (0, 0, 1)),
    ("lars", (0, 0.5, 0.5)),
    ("yogi", (1, 0.75, 0)),
    ("l-bfgs", (0, 0.4, 0)),
    ("o-lbfgs", (0.8, 0.8, 0)),
    ("adahessian", (0.5, 0, 0.5)),
    ("levenberg-marquardt", (139 / 255, 69 / 255, 19 / 255)),
    ("bfgs", (34 / 255, 139 / 255, 34 / 255)),
    ("l2lbgdbgd", (1, 0.4, 0.7)),
    ("k-fac", (0.45, 0.45, 0.45)),
    ("lodo", (0, 0, 0)),
]


def label(name: str) -> str:
    return LABELS.get(name, name)


def colour(name: str) -> tuple[float, float, float]:
    """The paper's colour of an optimizer (by registry name or label), black if none matches."""
    text = label(name).lower()
    return next((c for key, c in COLOURS if key in text), (0, 0, 0))


def _light(c):
    return tuple(0.5 + v / 2 for v in c)


def _style(ax, xlabel: str, ylabel: str, log_y: bool = False) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.minorticks_on()
    ax.xaxis.set_tick_params(which="minor", bottom=False)
    ax.grid(True, which="major", color="0.6")
    ax.grid(True, which="minor", axis="y", color="0.8")


def save(fig, path: str | Path) -> Path:
    """Write ``path`` as PNG and PDF (tight bounding box) and close the figure; return the PNG path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        fig.savefig(path.with_suffix(suffix), bbox_inches="tight", dpi=120)
    plt.close(fig)
    return path.with_suffix(".png")


def learning_curves(
    curves: pd.DataFrame,
    path: str | Path,
    x: str = "step",
    milestone: float | None = None,
    order: list[str] | None = None,
    log_y: bool = False,
    clip: tuple[float, float] | None = None,
    newton: float | None = None,
    title: str = "",
    column: str = "loss",
    ylabel: str = "training loss",
) -> Path:
    """Mean ± std over runs of each optimizer's binned curve (reference §8.3) against steps or wall time.

    Time is drawn in hours when the milestone is over an hour, else in seconds. ``newton`` draws the dashed Newton
    line (½·tr H on the quadratic).
    """
    fig, ax = plt.subplots(figsize=(8, 5.5))
    names = order or list(dict.fromkeys(curves["optimizer"]))
    scale, unit = (3600.0, "h") if x == "time" and (milestone or 0) > 3600 else (1.0, "s")
    for name in names:
        runs = curves[curves["optimizer"] == name]
        if runs.empty:
            continue
        binned = binned_curve(runs, x, milestone, column)
        if binned.empty:
            continue
        xs, mean, std = binned["x"] / scale, binned["mean"].to_numpy(), binned["std"].to_numpy()
        if clip:
            mean, low, high = (np.clip(v, *clip) for v in (mean, mean - std, mean + std))
        else:
            low, high = mean - std, mean + std
        if log_y:
            low = np.where(low > 0, low, np.nan)
        c = colour(name)
        if name != "lodo_diagonal":  # reference §8.3: the band is skipped for LODO-Diagonal
            ax.fill_between(xs, low, high, color=_light(c), alpha=0.5, linewidth=0)
        n = runs["run_dir"].nunique()
        ax.plot(xs, mean, color=c, label=f"{label(name)} ({n} runs)", linewidth=1.5)
    if newton is not None:
        ax.axhline(newton, color="black", linestyle="--", linewidth=1, label=f"Newton ½·tr H = {newton:.6g}")
    _style(ax, "step" if x == "step" else f"time ({unit})", ylabel, log_y)
    if not log_y:
        bottom, top = ax.get_ylim()
        if bottom > 0 and top / bottom > 3:
            ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def rosenbrock_trajectories(curves: pd.DataFrame, path: str | Path, order: list[str] | None = None, title="") -> Path:
    """Each optimizer's trajectory (seed 0's (x, y) per step) over the RdBu heat map of log(f + 1e-3) on
    [−1.2, 1.5] × [−1, 2.5], with a star at the minimum (1, 1) (SPEC §3, ``figures/rosenbrock_heatmap.png``)."""
    from lodo.tasks.rosenbrock import Rosenbrock

    fig, ax = plt.subplots(figsize=(7, 7))
    xs, ys = np.meshgrid(np.linspace(-1.2, 1.5, 400), np.linspace(-1, 2.5, 400))
    heat = ax.imshow(  # a raster image: light in the PDF, unlike a 400×400 mesh
        np.log(Rosenbrock.function(xs, ys) + 1e-3),
        cmap="RdBu",
        origin="lower",
        extent=(-1.2, 1.5, -1, 2.5),
        aspect="auto",
        interpolation="bilinear",
    )
    fig.colorbar(heat, ax=ax, label="log(f + 1e-3)", fraction=0.046)
    for name in order or list(dict.fromkeys(curves["optimizer"])):
        runs = curves[curves["optimizer"] == name]
        if runs.empty or "x" not in runs:
            continue
        first = runs[runs["seed"] == runs["seed"].min()].dropna(subset=["x", "y"])
        path_x = np.concatenate([[Rosenbrock.start[0]], first["x"].to_numpy()])
        path_y = np.concatenate([[Rosenbrock.start[1]], first["y"].to_numpy()])
        ax.plot(path_x, path_y, color=colour(name), label=label(name), linewidth=1.2, marker=".", markersize=2)
    ax.plot(*Rosenbrock.minimum, marker="*", color="gold", markersize=18, markeredgecolor="black", linestyle="none")
    ax.set_xlim(-1.2, 1.5)
    ax.set_ylim(-1, 2.5)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def frozen_vs_on_the_fly(
    on_the_fly: pd.DataFrame,
    frozen: pd.DataFrame,
    path: str | Path,
    column: str = "loss",
    milestone: float | None = None,
    newton: float | None = None,
    title: str = "",
) -> Path:
    """Reference §7.5: LODO learning on the fly (black) against LODO restarted with its learned preconditioner
    frozen (red), by step; ``column`` "loss" (with the Newton line) or "hessian_error"."""
    curves = pd.concat(
        [on_the_fly.assign(optimizer="LODO on the fly"), frozen.assign(optimizer="pretrained LODO")],
        ignore_index=True,
    )
    is_loss = column == "loss"
    return learning_curves(
        curves,
        path,
        "step",
        milestone,
        order=["LODO on the fly", "pretrained LODO"],
        clip=(0, 40) if is_loss else None,
        newton=newton if is_loss else None,
        title=title,
        column=column,
        ylabel="training loss" if is_loss else "‖I − GH‖_F / √n",
    )


def sweep(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    parameter: str,
    path: str | Path,
    lodo_std: float | None = None,
    title: str = "",
) -> Path:
    """Reference §7.3: the final-10%-window loss of each sweep run against its parameter value, with error bars
    ±(std across the main LODO runs) and a grey band of ± std(window losses)/(count − 1) (the authors' formula)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    points = []
    for run in runs.sort_values("sweep_r").to_dict("records"):
        rows = curves[curves["run_dir"] == run["run_dir"]]
        milestone = run["milestone_steps"]
        window = rows[(rows["step"] > 0.9 * milestone) & (rows["step"] <= milestone)]["loss"].to_numpy(dtype=float)
        value = run.get(f"hp.{parameter}", np.nan)
        spread = float(np.std(window) / (len(window) - 1)) if len(window) > 1 else 0.0
        points.append((value, float(np.mean(window)) if len(window) else np.nan, spread))
    if points:
        xs, ys, spreads = (np.array(v, dtype=float) for v in zip(*points))
        ax.fill_between(xs, ys - spreads, ys + spreads, color="0.8")
        errors = None if lodo_std is None or not np.isfinite(lodo_std) else np.full_like(ys, lodo_std)
        ax.errorbar(xs, ys, yerr=errors, color="black", capsize=5, marker="o", markersize=3)
    ax.set_xlabel(parameter)
    ax.set_ylabel("loss")
    ax.grid(True)
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def sample_grid(runs: pd.DataFrame, path: str | Path, order: list[str] | None = None, title: str = "") -> Path | None:
    """The generated digits (the task's samples.png) of each optimizer's lowest-seed run, side by side."""
    images = []
    for name in order or list(dict.fromkeys(runs["optimizer"])):
        group = runs[runs["optimizer"] == name].sort_values("seed")
        for run in group.itertuples():
            png = Path(run.run_dir) / "samples.png"
            if png.exists():
                images.append((name, plt.imread(png)))
                break
    if not images:
        return None
    columns = min(4, len(images))
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, image) in zip(axes.flat, images):
        ax.imshow(image, cmap="gray")
        ax.set_title(label(name), fontsize=10)
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def tuning_spread(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Each optimizer's check loss for each tuning seed (log y): how far repeating the tuning moves the result."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(dict.fromkeys(table["optimizer"]))
    for i, name in enumerate(names):
        group = table[table["optimizer"] == name]
        ax.scatter(np.full(len(group), i), group["check_loss"], color=colour(name), s=40, zorder=3)
        for row in group.itertuples():
            ax.annotate(
                f"seed {row.tune_seed}", (i, row.check_loss), fontsize=7, xytext=(5, 0), textcoords="offset points"
            )
    ax.set_xticks(range(len(names)), [label(n) for n in names])
    _style(ax, "optimizer", "loss of the tuned values", log_y=True)
    ax.set_title(title, fontsize=10)
    return save(fig, path)


__all__ = [
    "colour",
    "frozen_vs_on_the_fly",
    "label",
    "learning_curves",
    "rosenbrock_trajectories",
    "sample_grid",
    "save",
    "sweep",
    "tuning_spread",
]
