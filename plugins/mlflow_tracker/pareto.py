"""Pareto fronts of (cost, quality) points and the comparison plot.

A point p = (cost, quality) is *dominated* when another point q has cost_q ≤ cost_p and
quality_q ≥ quality_p with at least one strict inequality; the Pareto front is the set of points no
other point dominates (the best quality reachable at each cost). Cost is the parameter count or the
measured latency; quality the task metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@dataclass(frozen=True)
class Point:
    """One run in a cost/quality plane."""

    label: str
    cost: float
    quality: float
    is_teacher: bool = False


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points, ordered by increasing cost.

    Sort by cost (ties: best quality first), then sweep keeping each point whose quality beats every
    cheaper point's: O(n log n). Points with a non-finite cost or quality are never on the front.
    """
    usable = [i for i, p in enumerate(points) if math.isfinite(p.cost) and math.isfinite(p.quality)]
    order = sorted(usable, key=lambda i: (points[i].cost, -points[i].quality))
    front: list[int] = []
    best = -math.inf
    for index in order:
        if points[index].quality > best:
            front.append(index)
            best = points[index].quality
    return front


def plot_pareto(
    panels: Sequence[tuple[str, Sequence[Point]]], metric: str, output: str | Path, title: str = ""
) -> Path:
    """Write one scatter panel per ``(x label, points)`` with its Pareto front drawn, as a PNG.

    Uses matplotlib's Agg canvas directly, so no global backend is switched and no display is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0 * max(1, len(panels)), 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    for index, (x_label, points) in enumerate(panels, start=1):
        _draw_panel(figure.add_subplot(1, max(1, len(panels)), index), x_label, points, metric)
    if title:
        figure.suptitle(title)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _draw_panel(ax: Axes, x_label: str, points: Sequence[Point], metric: str) -> None:
    students = [p for p in points if not p.is_teacher]
    teachers = [p for p in points if p.is_teacher]
    ax.scatter([p.cost for p in students], [p.quality for p in students], color="tab:blue", label="runs")
    if teachers:
        ax.scatter(
            [p.cost for p in teachers],
            [p.quality for p in teachers],
            marker="*",
            s=160,
            color="tab:orange",
            label="teacher",
        )
    front = pareto_front(points)
    if front:
        ax.plot(
            [points[i].cost for i in front],
            [points[i].quality for i in front],
            color="tab:red",
            marker="o",
            fillstyle="none",
            markersize=11,
            drawstyle="steps-post",
            label="Pareto front",
        )
    for point in points:
        ax.annotate(
            point.label, (point.cost, point.quality), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    costs = [p.cost for p in points if math.isfinite(p.cost)]
    if costs and min(costs) > 0 and max(costs) >= 10 * min(costs):
        ax.set_xscale("log")  # costs spanning a decade or more (e.g. 1M to 22M parameters)
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
