"""Plots for the reports: matplotlib's Agg backend, each figure a base64 PNG embedded in the HTML."""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Sequence

from .tables import COLUMNS


def headless_pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed): every report figure is drawn with it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> str:
    """``fig`` as a base64 PNG (what ``img`` embeds in a page); the figure is closed."""
    plt = headless_pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def scatter_png(rows: Sequence[dict[str, Any]], x: str, y: str, label: str = "artifact",
                title: str | None = None, log_x: bool = False) -> str:
    """Labelled scatter of ``y`` against ``x`` (rows lacking either are left out); base64 PNG. Labels
    are placed so they overlap neither each other nor the points (``place_labels``)."""
    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    points = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    colors = []
    for row in points:
        marker = "*" if row.get("kind") == "reference" else "o"
        colors.append(ax.scatter(row[x], row[y], s=80 if marker == "*" else 40, marker=marker).get_facecolor()[0])
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(COLUMNS.get(x, (x, ""))[0])
    ax.set_ylabel(COLUMNS.get(y, (y, ""))[0])
    ax.set_title(title or f"{COLUMNS.get(y, (y, ''))[0]} vs {COLUMNS.get(x, (x, ''))[0]}")
    ax.grid(alpha=0.3)
    if points:
        ax.margins(x=0.25, y=0.2)  # room for labels beside the outermost points
        place_labels(fig, ax, [(r[x], r[y], str(r.get(label, ""))) for r in points], colors=colors)
    return figure_png(fig)


# Candidate label offsets in points from the point, nearest first (then further out, with a leader line).
_OFFSETS = [(6, 5), (6, -13), (-6, 5), (-6, -13), (0, 14), (0, -22)]
_OFFSETS += [(dx * k, dy * k) for k in (2, 3, 4) for dx, dy in _OFFSETS]


def place_labels(fig, ax, points: list[tuple[float, float, str]], fontsize: int = 8, colors=None) -> None:
    """Greedy placement: each label (points in order of x) takes the first candidate offset whose box
    overlaps no box placed so far and no marker; labels moved away from their point get a thin leader,
    and each label has its point's colour, so crowded points stay readable."""
    fig.canvas.draw()  # fixes limits and transforms
    to_pixels = ax.transData.transform
    scale = fig.dpi / 72.0
    char_w, height = 0.6 * fontsize * scale, 1.3 * fontsize * scale
    markers = [to_pixels((px, py)) for px, py, _ in points]
    taken = [(mx - 5, my - 5, mx + 5, my + 5) for mx, my in markers]

    def overlaps(box):
        return any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken)

    order = sorted(range(len(points)), key=lambda i: (markers[i][0], -markers[i][1]))
    for i in order:
        px, py, text = points[i]
        mx, my = markers[i]
        width = char_w * len(text)
        chosen = _OFFSETS[-1]
        for dx, dy in _OFFSETS:
            left = mx + dx * scale if dx >= 0 else mx + dx * scale - width
            if dx == 0:
                left = mx - width / 2
            bottom = my + dy * scale
            box = (left, bottom, left + width, bottom + height)
            if not overlaps(box):
                chosen = (dx, dy)
                break
        dx, dy = chosen
        left = mx + dx * scale if dx >= 0 else mx + dx * scale - width
        if dx == 0:
            left = mx - width / 2
        taken.append((left, my + dy * scale, left + width, my + dy * scale + height))
        far = abs(dx) > 8 or dy > 8 or dy < -16
        color = colors[i] if colors is not None else "black"
        ax.annotate(text, (px, py), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize, color=color,
                    ha="center" if dx == 0 else ("left" if dx > 0 else "right"), va="bottom",
                    arrowprops={"arrowstyle": "-", "lw": 0.6, "color": color} if far or dx < 0 or dy < 0 else None)


def boxplot_png(series: dict[str, Sequence[float]], title: str, ylabel: str = "latency (ms)") -> str:
    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(series)), 4.5))
    ax.boxplot(list(series.values()), showfliers=True)
    ax.set_xticks(range(1, len(series) + 1), list(series.keys()), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return figure_png(fig)


def confusion_png(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> str:
    plt = headless_pyplot()
    n = len(labels)
    size = min(2.5 + 0.45 * n, 12)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        peak = max(max(r) for r in matrix) or 1
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i][j] > peak / 2 else "black")
    ax.set_title(title)
    return figure_png(fig)


def img(png_base64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_base64}">'
