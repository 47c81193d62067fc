"""``frontier.png``: leakage (ROUGE-1, ROUGE-2) against accuracy per setting, and training loss per round.

Labels are placed by ``label_positions`` (a deterministic greedy layout, testable without drawing): a numbered box
``"k ε=…"`` next to each point, never on another label or point, tied to its point by a thin line; the legend below
names each number. The Pareto front takes, per defense, its most leaking attack (the verdict's worst case).
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, Sequence

from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fedsim.core.plots import pyplot
from fedsim.frontier.verdict import THRESHOLD, epsilon_text

LABEL_BOX = (0.13, 0.06)  # width, height of a label in axes fractions ("12 ε=0.123" at 8 pt on a ~5 in axes)
MARKERS = "osD^v<>pPX*h"


def _overlaps(a: tuple[float, float], b: tuple[float, float], w: float, h: float) -> bool:
    return abs(a[0] - b[0]) < w and abs(a[1] - b[1]) < h


def label_positions(points: Sequence[tuple[float, float]],
                    box: tuple[float, float] = LABEL_BOX) -> list[tuple[float, float]]:
    """Centres (axes fractions) of one ``box``-sized label per point: no two overlap and none covers a point.

    Greedy and deterministic: each label, in order, takes the first free spot on rings of growing size around its
    point (inside the axes for the first rings, anywhere after). Points that coincide get distinct spots.
    """
    w, h = box
    placed: list[tuple[float, float]] = []
    for px, py in points:
        ring = 0
        while True:
            ring += 1
            spots = [(px + ring * 0.75 * w * math.cos(a), py + ring * 1.2 * h * math.sin(a))
                     for a in (math.pi / 4 + 2 * math.pi * k / (8 * ring) for k in range(8 * ring))]
            free = [s for s in spots
                    if (ring > 12 or (w / 2 <= s[0] <= 1 - w / 2 and h / 2 <= s[1] <= 1 - h / 2))
                    and not any(_overlaps(s, q, w, h) for q in placed)
                    and not any(_overlaps(s, p, w / 2 + 0.01, h / 2 + 0.01) for p in points)]
            if free:
                placed.append(free[0])
                break
    return placed


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (higher accuracy x, lower leakage y), by x."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(x2 >= x and y2 <= y and (x2 > x or y2 < y) for x2, y2 in points)]
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


def plot_frontier(rows: Sequence[dict[str, Any]], losses: dict[str, list[tuple[int, float]]], command: str = "",
                  reused: int = 0, runs: int = 0) -> Any:
    """The figure for ``frontier.png`` from the aggregated rows and the mean loss curve of each defense."""
    plt = pyplot()
    shown = [r for r in rows if r.get("accuracy_mean") is not None]
    ncol = 2
    legend_h = 0.22 * math.ceil((len(shown) + 2) / ncol) + 0.8
    fig = plt.figure(figsize=(18, 5.2 + legend_h))
    grid = fig.add_gridspec(2, 3, height_ratios=[5.2, legend_h])
    axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
    colors = [plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")(i % 20) for i in range(len(shown))]
    markers = {a: MARKERS[i % len(MARKERS)] for i, a in enumerate(dict.fromkeys(r["attack"] for r in shown))}
    for ax, key, name in ((axes[0], "rouge1", "ROUGE-1"), (axes[1], "rouge2", "ROUGE-2")):
        _leakage_panel(ax, shown, key, name, colors, markers)
    _loss_panel(axes[2], losses)
    legend = fig.add_subplot(grid[1, :])
    legend.axis("off")
    handles = [Line2D([], [], ls="none", marker=markers[r["attack"]], color=c, markersize=7,
                      label=f"{i}: {r['defense']} / attack {r['attack']}, {epsilon_text(r.get('epsilon'))}, "
                            f"{r.get('n_seeds')} seed(s), {r.get('n_updates')} attacked updates "
                            f"({r.get('n_failed')} failed)") for i, (r, c) in enumerate(zip(shown, colors), 1)]
    handles += [Line2D([], [], color="black", marker="o", mfc="none", ms=10, label="Pareto front (each defense at "
                       "its most leaking attack; more accuracy, less leakage is better)"),
                Line2D([], [], color="gray", ls=":", label=f"ROUGE-1 = {THRESHOLD:g}: the verdict's threshold")]
    legend.legend(handles=handles, loc="upper left", ncol=ncol, frameon=False, fontsize=8)
    updates = sorted({r.get("n_updates") or 0 for r in shown}) or [0]
    seeds = sorted({r.get("n_seeds") for r in shown}) or [0]
    fig.suptitle(f"Leakage against accuracy per setting (attack: {', '.join(markers) or 'none'}); "
                 f"{_span(seeds)} seed(s) and {_span(updates)} attacked updates per setting")
    note = (f"Error bars: accuracy ±1 sd over seeds (dev accuracy of the final global model); ROUGE 95% t-interval "
            f"of the mean over every attacked update of every seed. Runs reused from an earlier run (--resume): "
            f"{reused} of {runs}. Command: {command or 'n/a'}")
    legend.text(0, 0, textwrap.fill(note, 230), transform=legend.transAxes, fontsize=7.5, va="bottom")
    return fig


def _span(values: list) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def _leakage_panel(ax: Any, rows: Sequence[dict[str, Any]], key: str, name: str, colors: list, markers: dict) -> None:
    xs = [r["accuracy_mean"] for r in rows]
    sds = [r.get("accuracy_sd") or 0.0 for r in rows]
    lo, hi = min((x - s for x, s in zip(xs, sds)), default=0.0), max((x + s for x, s in zip(xs, sds)), default=1.0)
    pad = max(0.1 * (hi - lo), 0.01)
    x0, x1 = lo - pad, hi + pad
    ax.set_xlim(x0, x1)
    ax.set_ylim(-0.05, 1.05)
    points, numbers = [], []
    for i, (r, color) in enumerate(zip(rows, colors), 1):
        y = r.get(f"{key}_mean")
        if y is None:
            continue
        ylo, yhi = r.get(f"{key}_lo"), r.get(f"{key}_hi")
        yerr = None if ylo is None else [[y - ylo], [yhi - y]]
        ax.errorbar(r["accuracy_mean"], y, xerr=r.get("accuracy_sd") or None, yerr=yerr, fmt=markers[r["attack"]],
                    color=color, capsize=3, markersize=7)
        points.append((r["accuracy_mean"], y))
        numbers.append((i, r, color))
    if not points:
        ax.text(0.5, 0.5, "no attacked update was scored", ha="center", transform=ax.transAxes)
    worst: dict[str, tuple[float, float]] = {}
    for (x, y), (_, r, _) in zip(points, numbers):
        if r["defense"] not in worst or y > worst[r["defense"]][1]:
            worst[r["defense"]] = (x, y)
    front = [list(worst.values())[i] for i in pareto_front(list(worst.values()))]
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="pre", color="black", lw=1, zorder=0)
        ax.plot([p[0] for p in front], [p[1] for p in front], "o", mfc="none", mec="black", ms=13, zorder=0)
    if key == "rouge1":
        ax.axhline(THRESHOLD, color="gray", ls=":", lw=1)
    spots = label_positions([((x - x0) / (x1 - x0), (y + 0.05) / 1.1) for x, y in points])
    for (x, y), (i, r, color), spot in zip(points, numbers, spots):
        ax.annotate(f"{i} {epsilon_text(r.get('epsilon'))}", xy=(x, y), xytext=spot, textcoords="axes fraction",
                    ha="center", va="center", fontsize=8, annotation_clip=False,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": color, "lw": 0.6},
                    arrowprops={"arrowstyle": "-", "color": color, "lw": 0.6})
    ax.set_xlabel("dev accuracy (whole dev split), mean over seeds")
    ax.set_ylabel(f"{name} of the reconstructions (leakage)")
    ax.set_title(f"{name} against accuracy")
    ax.grid(alpha=0.3)


def _loss_panel(ax: Any, losses: dict[str, list[tuple[int, float]]]) -> None:
    for defense, curve in losses.items():
        if curve:
            ax.plot([r for r, _ in curve], [v for _, v in curve], marker=".", label=defense)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("client training loss, mean over seeds")
    ax.set_title("SGD converges under perturbed gradients")
    if losses:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
