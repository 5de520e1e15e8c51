"""Runs compared as one HTML page (``workbench runs compare ... --html FILE``).

The page holds everything it shows: learning curves drawn inline as SVG, one chart per metric with
a line per run, and each figure the runs recorded (the validation confusion matrix or residual plot,
and any other figure of the catalog) embedded side by side, so it opens offline, from a mail or a
ticket. Names, tags and values are escaped: a run called ``<script>`` is text.
"""

from __future__ import annotations

import base64
import io
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import StoreError, WorkbenchError
from workbench.storage import open_store
from workbench.tracking.queries import Comparison, Figure
from workbench.tracking.terminal import show

if TYPE_CHECKING:
    from workbench.storage.base import Store

COLORS = (  # matplotlib's tab10, then tab20's lighter shades: 20 runs keep 20 colours
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip


def color(index: int) -> str:
    return COLORS[index % len(COLORS)]


def curves_svg(metric: str, curves: list[list[tuple[int, float]]]) -> str:
    """One metric's per-epoch values, a line per run in the run's colour (the line's group has the id
    ``curve-<n>``, n the run's place), as inline SVG; the page's legend names the runs, so no name a
    user chose is inside the drawing."""
    from matplotlib.figure import Figure as Chart
    from matplotlib.ticker import MaxNLocator

    chart = Chart(figsize=(5.2, 3.2))
    ax = chart.subplots()
    for i, points in enumerate(curves):
        if points:
            epochs, values = zip(*points, strict=True)
            (line,) = ax.plot(epochs, values, color=color(i), lw=1.6, marker="o" if len(points) < 3 else None, ms=3)
            line.set_gid(f"curve-{i}")
    ax.set(title=metric, xlabel="epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    chart.tight_layout()
    buf = io.StringIO()
    chart.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg") :]  # the element alone: no XML prologue inside HTML


def _image(store: Store | None, figure: Figure) -> str | None:
    """A recorded figure as a data: URI, or None when its store no longer holds it."""
    if store is None:
        return None
    try:
        data = store.read_bytes(figure.key)
    except (StoreError, OSError):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _stores(seen: Comparison) -> dict[str, Store | None]:
    """Each run's recorded store, opened once; one that cannot be opened shows no figures."""
    found: dict[str, Store | None] = {}
    for ref in seen.runs:
        if ref.store and ref.store not in found:
            try:
                found[ref.store] = open_store(ref.store)
            except WorkbenchError:
                found[ref.store] = None
    return found


def render_comparison(seen: Comparison) -> str:
    """The comparison as a self-contained HTML page."""
    from jinja2 import Environment

    stores = _stores(seen)
    by_run = {ref.id: stores.get(ref.store) for ref in seen.runs}
    figures = {
        title: [None if f is None else _image(by_run[f.run_id], f) for f in cells]
        for title, cells in seen.figures.items()
    }
    charts = [(metric, curves_svg(metric, curves)) for metric, curves in seen.histories.items()]
    template = (resources.files("workbench") / "templates" / "compare.html.j2").read_text()
    return (
        Environment(autoescape=True)
        .from_string(template)
        .render(seen=seen, charts=charts, figures=figures, show=show, color=color)
    )


def write_comparison(seen: Comparison, path: str | Path) -> Path:
    """Write the page to ``path`` (a local file) atomically; one line naming it if it cannot be written."""
    target = Path(path).expanduser().resolve()
    page = render_comparison(seen)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WorkbenchError(f"--html {path}: cannot write it ({exc.strerror}); pick a writable file") from exc
    return target
