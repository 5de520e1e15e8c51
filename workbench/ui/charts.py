"""Charts as inline SVG, drawn on the server: learning curves overlaid, parallel coordinates.

SVG text is escaped here (run names, metric and parameter keys, category values come from users);
every mark carries ``data-*`` attributes naming its run, so a page's charts can be checked in the
DOM as well as seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

# ten colours apart on white and for the common colour blindnesses
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)


def color(index: int) -> str:
    """The colour of the ``index``-th run on a page, the same in every chart and legend."""
    return PALETTE[index % len(PALETTE)]


def _num(value: float) -> str:
    return f"{value:.1f}"


def _tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def nice_ticks(low: float, high: float, count: int = 5, whole: bool = False) -> list[float]:
    """Round values (1, 2, 2.5 or 5 times a power of ten) from below ``low`` to above ``high``, about
    ``count`` of them: the axis is drawn from the first to the last. ``whole``: integers only (epochs)."""
    if low == high:
        pad = abs(low) * 0.05 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    if whole:
        step = max(1.0, round(step))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _span(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if low == high:  # one value: centre it
        pad = abs(low) * 0.05 or 1.0
        return low - pad, high + pad
    return low, high


@dataclass(frozen=True)
class Series:
    """One run's line: its id (for ``data-run``), its legend label, its colour and its points."""

    run: str
    label: str
    color: str
    points: Sequence[tuple[float, float]]


def line_chart(title: str, series: Sequence[Series], width: int = 460, height: int = 260) -> str:
    """Every run's curve of one metric over epochs, on shared axes, as one ``<svg>``."""
    left, right, top, bottom = 58, 12, 26, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    drawn = [s for s in series if any(_finite(y) for _, y in s.points)]
    head = (
        f'<svg class="chart line-chart" data-metric="{escape(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)} by epoch">'
        f'<text class="title" x="{left}" y="16">{escape(title)}</text>'
    )
    if not drawn:
        return head + f'<text x="{left}" y="{top + plot_h / 2:.0f}">no values</text></svg>'
    xs = [x for s in drawn for x, y in s.points if _finite(y)]
    ys = [y for s in drawn for _, y in s.points if _finite(y)]
    x_ticks = nice_ticks(min(xs), max(xs), 6, whole=True)
    y_ticks = nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [head, f'<rect class="frame" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/>']
    for value in y_ticks:
        y = py(value)
        parts.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{_num(y)}" y2="{_num(y)}"/>')
        parts.append(f'<text class="tick" x="{left - 4}" y="{_num(y + 4)}" text-anchor="end">{_tick(value)}</text>')
    for value in x_ticks:
        parts.append(
            f'<text class="tick" x="{_num(px(value))}" y="{top + plot_h + 14}" text-anchor="middle">{value:g}</text>'
        )
    parts.append(f'<text class="axis" x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle">epoch</text>')
    for s in drawn:
        shown = [(px(x), py(y)) for x, y in s.points if _finite(y)]
        points = " ".join(f"{_num(x)},{_num(y)}" for x, y in shown)
        parts.append(
            f'<polyline class="curve" data-run="{escape(s.run)}" points="{points}" stroke="{s.color}">'
            f"<title>{escape(s.label)}</title></polyline>"
        )
        if len(shown) == 1:  # one epoch is no line: a dot shows it
            parts.append(f'<circle cx="{_num(shown[0][0])}" cy="{_num(shown[0][1])}" r="3" fill="{s.color}"/>')
    parts.append("</svg>")
    return "".join(parts)


MAX_LABELS = 6  # values written beside a numeric axis


@dataclass(frozen=True)
class Axis:
    """One vertical axis: a parameter or the metric, with each run's value (None where it has none)."""

    key: str
    values: Sequence[Any]

    @property
    def numeric(self) -> bool:
        present = [v for v in self.values if v is not None]
        return bool(present) and all(_finite(v) for v in present)

    def categories(self) -> list[str]:
        return sorted({_category(v) for v in self.values if v is not None})

    @property
    def log(self) -> bool:
        """Positive numbers spread over two orders of magnitude or more (a learning rate) are
        placed by their logarithm, so 1e-4, 1e-3 and 1e-2 stand evenly apart."""
        present = [v for v in self.values if v is not None]
        return self.numeric and min(present) > 0 and max(present) / min(present) >= 100

    @property
    def title(self) -> str:
        return f"{self.key} (log)" if self.log else self.key

    def _scale(self, value: float) -> float:
        return math.log10(value) if self.log else value

    def position(self, index: int) -> float | None:
        """The run's place on the axis, 0 (bottom) to 1 (top), or None without a value."""
        value = self.values[index]
        if value is None:
            return None
        if self.numeric:
            low, high = _span([self._scale(v) for v in self.values if v is not None])
            return (self._scale(value) - low) / (high - low)
        labels = self.categories()
        return 0.5 if len(labels) == 1 else labels.index(_category(value)) / (len(labels) - 1)

    def labels(self) -> list[tuple[float, str]]:
        """(position, text) of the ticks written beside the axis: each value a run holds."""
        if self.numeric:
            present = sorted({v for v in self.values if v is not None})
            low, high = _span([self._scale(v) for v in present])
            if len(present) > MAX_LABELS:  # evenly chosen among them, the lowest and highest kept
                present = [present[round(i * (len(present) - 1) / (MAX_LABELS - 1))] for i in range(MAX_LABELS)]
            return [((self._scale(v) - low) / (high - low), _tick(v)) for v in present]
        labels = self.categories()
        if len(labels) == 1:
            return [(0.5, labels[0])]
        return [(i / (len(labels) - 1), text) for i, text in enumerate(labels)]


def _category(value: Any) -> str:
    return value if isinstance(value, str) else repr(value) if isinstance(value, bool) else str(value)


def parallel_coordinates(axes: Sequence[Axis], runs: Sequence[tuple[str, str, str]], height: int = 300) -> str:
    """One line per run across the axes (parameters, then the metric); ``runs`` holds (id, label,
    colour) in the axes' value order. A run without a value on an axis breaks its line there."""
    if not axes:
        return '<svg class="chart parallel" width="0" height="0"></svg>'
    left, right, top, bottom = 70, 70, 34, 40
    gap = 150
    width = left + right + gap * max(len(axes) - 1, 1)
    plot_h = height - top - bottom

    def ax(i: int) -> float:
        return left + gap * i if len(axes) > 1 else left + gap / 2

    parts = [
        f'<svg class="chart parallel" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="parallel coordinates of {escape(", ".join(a.key for a in axes))}">'
    ]
    for i, axis in enumerate(axes):
        x = ax(i)
        parts.append(
            f'<line class="axis-line" data-key="{escape(axis.key)}" x1="{_num(x)}" x2="{_num(x)}" y1="{top}" '
            f'y2="{top + plot_h}"/>'
        )
        parts.append(
            f'<text class="axis" x="{_num(x)}" y="{top - 12}" text-anchor="middle">{escape(axis.title)}</text>'
        )
        for position, text in axis.labels():
            y = top + (1 - position) * plot_h
            parts.append(f'<text class="tick" x="{_num(x + 5)}" y="{_num(y + 4)}">{escape(text[:24])}</text>')
    for index, (run, label, stroke) in enumerate(runs):
        segments: list[list[str]] = [[]]
        for i, axis in enumerate(axes):
            position = axis.position(index)
            if position is None:
                segments.append([])
                continue
            segments[-1].append(f"{_num(ax(i))},{_num(top + (1 - position) * plot_h)}")
        for points in (s for s in segments if s):
            parts.append(
                f'<polyline class="run-line" data-run="{escape(run)}" points="{" ".join(points)}" stroke="{stroke}">'
                f"<title>{escape(label)}</title></polyline>"
            )
    parts.append("</svg>")
    return "".join(parts)
