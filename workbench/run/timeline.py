"""Where a ``workbench run`` spends its wall time, for ``workbench run --profile FILE``.

The run's own process does one thing after another: setting up, computing a step's reuse key,
writing to the tracking DB, waiting for a step's kernel, papermill executing the notebook's cells,
storing the executed notebook, rendering the report. Those are *phases*, each a span of wall
clock. A kernel boots and imports its step's modules beside earlier steps; its own clock says
when, and what was not done by the time its step began shows as the phase ``kernel wait``.
A notebook's cells carry their own start and duration (papermill writes them into it), so the
profile says how much of a step was its cells and how much the machinery around them.

Everything is wall clock (``time.time()``), so a caller that started the process can put its
own launch time beside the profile's first span.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


def _seconds(stamp: str | None) -> float | None:
    """papermill's ISO time stamp as seconds since the epoch."""
    if not stamp:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(stamp).timestamp()
    return None


def notebook_cells(path: Path) -> list[dict[str, Any]]:
    """Each executed cell's start (epoch seconds) and duration, from papermill's cell metadata;
    empty for a notebook that cannot be read (a kernel that died early leaves little)."""
    try:
        cells = json.loads(path.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return []
    timed = []
    for cell in cells:
        meta = cell.get("metadata", {}).get("papermill", {})
        start, duration = _seconds(meta.get("start_time")), meta.get("duration")
        if cell.get("cell_type") == "code" and start is not None and isinstance(duration, (int, float)):
            timed.append({"start": start, "seconds": float(duration), "source": "".join(cell["source"])[:60]})
    return timed


@dataclass
class Timeline:
    """The spans of one run, written as JSON by :meth:`write` (``enabled`` False: nothing read
    beyond the clock, nothing written)."""

    enabled: bool = False
    spans: list[dict[str, Any]] = field(default_factory=list)
    kernels: dict[str, dict[str, float]] = field(default_factory=dict)
    cells: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str, step: str | None = None) -> Iterator[None]:
        began = time.time()
        try:
            yield
        finally:
            self.spans.append({"phase": name, "step": step, "start": began, "end": time.time()})

    def kernel(self, step: str, **stamps: float) -> None:
        """Moments in a step kernel's life: ``launched``, ``imports_start``, ``imports_end``, ``ready``."""
        self.kernels.setdefault(step, {}).update(stamps)

    def executed(self, step: str, output: Path) -> None:
        """The executed notebook's cell times (read only when profiling)."""
        if self.enabled:
            self.cells[step] = notebook_cells(output)

    def write(self, path: Path | None) -> None:
        if not self.enabled or path is None:
            return
        data = {"spans": self.spans, "kernels": self.kernels, "cells": self.cells}
        path.write_text(json.dumps(data, indent=1))
