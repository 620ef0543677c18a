"""One function per paper figure. Each reads the tidy tables of :mod:`experiments.aggregate` (never a run itself)
and writes ``<path>.png`` and ``<path>.pdf``; each returns the PNG path. Styles follow METHODS.md §A.8.3–A.8.4."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.aggregate import binned_curve  # noqa: E402
from lodo.optim.registry import optimizer_label  # noqa: E402

# METHODS.md §A.8.4: the first case-insensitive substring match wins. Two deliberate changes: the LODO ablations are
# matched before "momentum" (the authors' order drew LODO-No-Momentum blue, the same as Momentum), and the
# optimizers the authors' table lacks get their own colours instead of LODO's black.
COLOURS = [
    ("lodo-diagonal", (1, 0, 1)),
    ("lodo-global", (0, 1, 1)),
    ("lodo-residuals", (0.5, 0, 1)),
    ("lodo-sgd", (139 / 255, 69 / 255, 19 / 255)),
    ("lodo-no-momentum", (34 / 255, 139 / 255, 34 / 255)),
    ("pretrained lodo", (1, 0, 0)),
    ("frozen θ, same hessian", (1, 0, 0)),
    ("frozen θ, fresh eigenbasis", (0, 0, 1)),
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


# Ten or more curves in one plot cannot be told apart by colour alone (several optimizers share a hue family): each
# optimizer also gets its own line style and marker, fixed by its position in the plot's order.
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]


def line_style(index: int) -> dict:
    return {"linestyle": LINESTYLES[index % len(LINESTYLES)], "marker": MARKERS[index % len(MARKERS)]}


def label(name: str) -> str:
    """The paper's label of a registry name (the registry's one list); any other name is shown as it is."""
    return optimizer_label(name)


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
) -> Path | None:
    """Mean ± std over runs of each optimizer's binned curve (METHODS.md §A.8.3) against steps or wall time.

    Time is drawn in hours when the milestone is over an hour, else in seconds. ``newton`` draws the dashed Newton
    line (½·tr H on the quadratic). A curve cut by ``clip`` says so in its label and marks the cut points with
    open triangles at the edge. Returns None (and draws nothing) when no optimizer has a point to draw.
    """
    fig, ax = plt.subplots(figsize=(8, 5.5))
    names = order or list(dict.fromkeys(curves["optimizer"]))
    scale, unit = (3600.0, "h") if x == "time" and (milestone or 0) > 3600 else (1.0, "s")
    drawn = 0
    for index, name in enumerate(names):
        runs = curves[curves["optimizer"] == name]
        if runs.empty or column not in runs:
            continue
        binned = binned_curve(runs, x, milestone, column)
        if binned.empty:  # e.g. a metric recorded only at the milestone itself: draw its points as they are
            binned = point_curve(runs, x, milestone, column)
        if binned.empty:
            continue
        xs, mean, std = binned["x"].to_numpy() / scale, binned["mean"].to_numpy(), binned["std"].to_numpy()
        low, high = mean - std, mean + std
        clipped = np.zeros(len(mean), dtype=bool)
        if clip:
            clipped = (mean < clip[0]) | (mean > clip[1])
            mean, low, high = (np.clip(v, *clip) for v in (mean, low, high))
        if log_y:
            low = np.where(low > 0, low, np.nan)
        c = colour(name)
        if name != "lodo_diagonal":  # METHODS.md §A.8.3: the band is skipped for LODO-Diagonal
            ax.fill_between(xs, low, high, color=_light(c), alpha=0.5, linewidth=0)
        n = runs["run_dir"].nunique()
        text = f"{label(name)} ({n} run{'s' * (n != 1)})" + (
            f", clipped to [{clip[0]:g}, {clip[1]:g}]" if clipped.any() else ""
        )
        style = line_style(index)
        ax.plot(xs, mean, color=c, label=text, linewidth=1.5, markevery=max(1, len(xs) // 8), markersize=4, **style)
        if clipped.any():
            ax.plot(xs[clipped], mean[clipped], linestyle="none", marker="^", fillstyle="none", color=c, markersize=5)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
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


def point_curve(curves: pd.DataFrame, x: str, milestone: float | None, column: str) -> pd.DataFrame:
    """Mean ± std over runs at each recorded x (no binning): for metrics recorded at a few steps only."""
    data = curves[[x, column]].dropna()
    if milestone:
        data = data[data[x] <= float(milestone)]
    stats = data.groupby(x)[column].agg(mean="mean", std=lambda v: float(np.std(v)), count="count").reset_index()
    return stats.rename(columns={x: "x"})


def hessian_error(
    curves: pd.DataFrame,
    path: str | Path,
    order: list[str] | None = None,
    references: dict[str, float] | None = None,
    milestone: float | None = None,
    title: str = "",
) -> Path | None:
    """‖I − GH‖_F/√n by step, mean ± std over runs at each recorded step, on a log step axis that still shows step 0
    (symlog, linear below step 1), with dotted reference lines (``references``: name → value) and 0 = H⁻¹."""
    if "hessian_error" not in curves:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    names = order or list(dict.fromkeys(curves["optimizer"]))
    drawn = 0
    for index, name in enumerate(names):
        stats = point_curve(curves[curves["optimizer"] == name], "step", milestone, "hessian_error")
        if stats.empty:
            continue
        c, style = colour(name), line_style(index)
        xs, mean, std = stats["x"].to_numpy(), stats["mean"].to_numpy(), stats["std"].to_numpy()
        ax.fill_between(xs, mean - std, mean + std, color=_light(c), alpha=0.4, linewidth=0)
        n = curves.loc[curves["optimizer"] == name, "run_dir"].nunique()
        ax.plot(
            xs,
            mean,
            color=c,
            label=f"{label(name)} ({n} run{'s' * (n != 1)})",
            markevery=max(1, len(xs) // 8),
            markersize=4,
            **style,
        )
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    greys = ["0.15", "0.35", "0.55", "0.7"]
    for (name, value), grey in zip((references or {}).items(), greys):
        ax.axhline(value, color=grey, linestyle=":", linewidth=1.5, label=f"{name}: {value:.4g}")
    ax.axhline(0.0, color="black", linewidth=1, label="G = H⁻¹: 0")
    ax.set_xscale("symlog", linthresh=1.0)
    _style(ax, "step (log scale; 0 shown)", "‖I − GH‖_F / √n")
    ax.set_ylim(bottom=-0.02)
    ax.set_xlim(left=0)  # the symlog axis would otherwise pad into negative steps
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=10)
    return save(fig, path)


# The map of the paper's Rosenbrock figure, and how far it may widen to hold a trajectory that leaves it.
MAP = (-1.2, 1.5, -1.0, 2.5)
MAP_LIMIT = (-3.0, 3.0, -2.0, 6.0)


def rosenbrock_trajectories(curves: pd.DataFrame, path: str | Path, order: list[str] | None = None, title="") -> Path:
    """Each optimizer's trajectory (its lowest seed's (x, y) per step) over the RdBu heat map of log(f + 1e-3), with a
    star at the minimum (1, 1). The map is the paper's [−1.2, 1.5] × [−1, 2.5], widened to hold every trajectory up
    to ``MAP_LIMIT``; a trajectory that goes beyond is drawn up to the edge and labelled as clipped, so every line
    stays on the map."""
    from lodo.tasks.rosenbrock import Rosenbrock

    paths = {}
    for name in order or list(dict.fromkeys(curves["optimizer"])):
        runs = curves[curves["optimizer"] == name]
        if runs.empty or "x" not in runs:
            continue
        first = runs[runs["seed"] == runs["seed"].min()].dropna(subset=["x", "y"])
        px = np.concatenate([[Rosenbrock.start[0]], first["x"].to_numpy(dtype=float)])
        py = np.concatenate([[Rosenbrock.start[1]], first["y"].to_numpy(dtype=float)])
        keep = np.isfinite(px) & np.isfinite(py)
        paths[name] = (px[keep], py[keep])
    every_x = np.concatenate([MAP[:2], *(p[0] for p in paths.values())])
    every_y = np.concatenate([MAP[2:], *(p[1] for p in paths.values())])
    x0, x1 = max(every_x.min(), MAP_LIMIT[0]), min(every_x.max(), MAP_LIMIT[1])
    y0, y1 = max(every_y.min(), MAP_LIMIT[2]), min(every_y.max(), MAP_LIMIT[3])
    fig, ax = plt.subplots(figsize=(7, 7))
    xs, ys = np.meshgrid(np.linspace(x0, x1, 400), np.linspace(y0, y1, 400))
    heat = ax.imshow(  # a raster image: light in the PDF, unlike a 400×400 mesh
        np.log(Rosenbrock.function(xs, ys) + 1e-3),
        cmap="RdBu",
        origin="lower",
        extent=(x0, x1, y0, y1),
        aspect="auto",
        interpolation="bilinear",
    )
    fig.colorbar(heat, ax=ax, label="log(f + 1e-3)", fraction=0.046)
    for index, (name, (px, py)) in enumerate(paths.items()):
        outside = (px < x0) | (px > x1) | (py < y0) | (py > y1)
        text = label(name) + (" (clipped: leaves the map)" if outside.any() else "")
        ax.plot(
            np.clip(px, x0, x1),
            np.clip(py, y0, y1),
            color=colour(name),
            label=text,
            linewidth=1.2,
            markersize=3,
            markevery=max(1, len(px) // 10),
            **line_style(index),
        )
    ax.plot(*Rosenbrock.minimum, marker="*", color="gold", markersize=18, markeredgecolor="black", linestyle="none")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def frozen_vs_on_the_fly(
    curves: pd.DataFrame,
    path: str | Path,
    variants: list[str],
    column: str = "loss",
    milestone: float | None = None,
    newton: float | None = None,
    title: str = "",
) -> Path | None:
    """METHODS.md §A.7.5: LODO learning on the fly against LODO restarted with its learned preconditioner frozen (on the
    same Hessian, and as the control on a fresh eigenbasis), by step. ``curves`` holds the variants' names in its
    ``optimizer`` column; ``column`` is "loss" (with the Newton line) or "hessian_error"."""
    is_loss = column == "loss"
    return learning_curves(
        curves,
        path,
        "step",
        milestone,
        order=variants,
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
) -> Path | None:
    """METHODS.md §A.7.3: the final-10%-window loss against the swept value. With several seeds per value, the point is
    their mean and the error bar their std (each point its own); with one, the authors' plot: error bars ±(std across
    the main LODO runs) and a grey band of ± std(window losses)/(count − 1)."""
    points = []
    for value, group in runs.groupby(f"hp.{parameter}", sort=True):
        windows, spreads = [], []
        for run in group.to_dict("records"):
            rows = curves[curves["run_dir"] == run["run_dir"]]
            milestone = run["milestone_steps"]
            window = rows[(rows["step"] > 0.9 * milestone) & (rows["step"] <= milestone)]["loss"].to_numpy(dtype=float)
            if len(window):
                windows.append(float(np.mean(window)))
                spreads.append(float(np.std(window) / (len(window) - 1)) if len(window) > 1 else 0.0)
        if windows:
            points.append((float(value), np.mean(windows), np.std(windows), np.mean(spreads), len(windows)))
    if not points:
        return None
    xs, ys, seed_std, spreads, counts = (np.array(v, dtype=float) for v in zip(*points))
    fig, ax = plt.subplots(figsize=(6, 4))
    if counts.min() > 1:
        ax.errorbar(
            xs, ys, yerr=seed_std, color="black", capsize=5, marker="o", markersize=3, label="mean ± std over seeds"
        )
        ax.legend(fontsize=8)
    else:
        ax.fill_between(xs, ys - spreads, ys + spreads, color="0.8")
        errors = None if lodo_std is None or not np.isfinite(lodo_std) else np.full_like(ys, lodo_std)
        ax.errorbar(xs, ys, yerr=errors, color="black", capsize=5, marker="o", markersize=3)
    ax.set_xlabel(parameter)
    ax.set_ylabel("final-window training loss")
    ax.grid(True)
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def sample_grid(
    runs: pd.DataFrame,
    path: str | Path,
    order: list[str] | None = None,
    title: str = "",
    filename: str = "samples.png",
) -> Path | None:
    """A picture each run drew (``filename`` in its folder: the generated digits, the 5-channel input) of each
    optimizer's lowest-seed run, side by side; None if no run has one."""
    images = []
    for name in order or list(dict.fromkeys(runs["optimizer"])):
        group = runs[runs["optimizer"] == name].sort_values("seed")
        for run in group.itertuples():
            png = Path(run.run_dir) / filename
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
    """Each optimizer's check loss for each tuning seed (log y): how far repeating the tuning moves the result. The
    tuning seed is the marker (legend), so no text sits on the points; optimizer names are slanted to stay apart."""
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * table["optimizer"].nunique() + 2), 4.5))
    names = list(dict.fromkeys(table["optimizer"]))
    seeds = sorted(table["tune_seed"].unique())
    for j, seed in enumerate(seeds):
        for i, name in enumerate(names):
            group = table[(table["optimizer"] == name) & (table["tune_seed"] == seed)]
            ax.scatter(
                np.full(len(group), i + 0.08 * (j - (len(seeds) - 1) / 2)),
                group["check_loss"],
                color=colour(name),
                marker=MARKERS[j % len(MARKERS)],
                s=40,
                zorder=3,
                edgecolor="black",
                linewidth=0.5,
                label=f"tuning seed {seed}" if i == 0 else None,
            )
    ax.set_xticks(range(len(names)), [label(n) for n in names], rotation=30, ha="right")
    _style(ax, "optimizer", "check loss of the tuned values", log_y=True)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    return save(fig, path)


__all__ = [
    "colour",
    "frozen_vs_on_the_fly",
    "hessian_error",
    "label",
    "learning_curves",
    "rosenbrock_trajectories",
    "sample_grid",
    "save",
    "sweep",
    "tuning_spread",
]
