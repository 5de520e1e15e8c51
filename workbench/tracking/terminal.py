"""Runs as text for a terminal: the runs table, one run, runs side by side, models and alias moves.

Plain aligned columns that survive ``| less``, ``| grep`` and a narrow window: a run's first four
columns (id, status, start, seconds) never hold spaces, so ``awk '{print $1}'`` gets the ids.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from workbench.config.parameters import changed_from_defaults
from workbench.storage.catalog import RunLayout
from workbench.tracking.queries import Comparison, RunPage, RunQuery

if TYPE_CHECKING:
    from workbench.tracking.aliases import ModelRow, Move

WIDEST = 40  # a longer value (a SQL source, a path) is cut, with … saying so
CHANGED = "*"  # marks a parameter that differs from its default, and the best value of a metric
STALE = "stale"  # a result recorded by a step whose inputs changed since it ran


def show(value: Any) -> str:
    """One value as a cell: numbers to 4 significant digits, lists comma-joined, nothing as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if value != int(value) or abs(value) >= 1e6 else f"{int(value)}"
    if isinstance(value, (list, tuple)):
        return ",".join(show(v) for v in value) or "[]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    text = str(value).replace("\n", " ")
    return text if len(text) <= WIDEST else text[: WIDEST - 1] + "…"


def _cell(key: str, value: Any, stale: bool = False) -> str:
    """A metric's cell; one a stale step recorded is never shown as current: a parity verdict reads
    ``stale``, a number carries ``(stale)``."""
    if key == "parity_pass" and value is not None:
        return STALE if stale else {1.0: "PASS", 0.0: "FAIL"}.get(value, show(value))
    return f"{show(value)} ({STALE})" if stale and value is not None else show(value)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] = ()) -> str:
    """Columns padded to their widest cell (numbers right-aligned where ``right`` says)."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    flags = [*right, *[False] * (len(header) - len(right))]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, flags, strict=True)]
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def runs_table(page: RunPage, query: RunQuery) -> str:
    """The runs listing: id, status, start, seconds, the query's columns, then name and tags."""
    header = ["run", "status", "started", "seconds", *query.columns, "name", "tags"]
    rows = [
        [
            r.id,
            r.status,
            r.started_at or "-",
            "-" if r.duration_s is None else f"{r.duration_s:.1f}",
            *(_cell(c, r.values.get(c), c in r.stale) for c in query.columns),
            show(r.name),
            " ".join(f"{k}={v}" for k, v in r.tags.items()),
        ]
        for r in page.rows
    ]
    text = table(header, rows, right=[False, False, False, True, *[True] * len(query.columns)])
    shown = query.offset + len(page.rows)
    if any(r.stale for r in page.rows):
        text += f"\n{STALE}: recorded by a step whose inputs changed since it ran; `workbench runs show RUN` says which"
    if page.total > shown:
        text += f"\n{len(page.rows)} of {page.total} runs shown; --limit shows more, --where fewer"
    return text


def run_text(run: dict[str, Any]) -> str:
    """One run: status, name, tags and note, its steps, parameters (changed ones first, marked),
    final metrics and artifacts."""
    seconds = "-" if run["duration_s"] is None else f"{run['duration_s']:.1f} s"
    lines = [f"run {run['id']}  {run['status']}  started {run['started_at']}  {seconds}"]
    if run.get("name"):
        lines.append(f"name   {run['name']}")
    if run.get("tags"):
        lines.append("tags   " + " ".join(f"{k}={v}" for k, v in run["tags"].items()))
    if run.get("note"):
        lines.append(f"note   {run['note']}")
    if run["error"]:
        lines.append(f"error  {run['error']}")
    lines += ["", "steps"]
    for step in run["steps"]:
        took = "-" if step["duration_s"] is None else f"{step['duration_s']:.1f} s"
        why = (step.get("reuse_note") or "").removeprefix(f"{step['name']} ")  # "runs: train.lr 0.002 -> 0.01 ..."
        lines.append(f"  {step['name']:<9} {step['status']:<9} {took:>9}  {step['error'] or why}".rstrip())
    parameters = run["parameters"]
    changed = changed_from_defaults(parameters)
    origins = run.get("origins", {})
    lines += ["", f"parameters ({CHANGED} differs from the default; where each value came from)"]
    ordered = sorted(parameters, key=lambda k: (k not in changed, k))
    rows = [[CHANGED if k in changed else "", k, show(parameters[k]), origins.get(k) or ""] for k in ordered]
    lines.append(_body(rows, "none recorded"))
    stale = run.get("stale_metrics", {})
    lines += ["", f"metrics ({STALE}: recorded by a step that must run again)" if stale else "metrics"]
    rows = [
        ["", k, _cell(k, v, k in stale), _stale_note(k, v, stale[k]) if k in stale else ""]
        for k, v in sorted(run["metrics"].items())
    ]
    lines.append(_body(rows, "none recorded"))
    prefix = RunLayout(run["id"]).root + "/"
    where = next((a["uri"].removesuffix(a["key"].removeprefix(prefix)) for a in run["artifacts"]), "")
    lines += ["", f"artifacts (in {where})" if where else "artifacts"]
    rows = [["", a["key"].removeprefix(prefix), f"{a['bytes']:,} B", a["sha256"][:12]] for a in run["artifacts"]]
    lines.append(_body(rows, "none recorded", right=[False, False, True]))
    return "\n".join(lines)


def _stale_note(key: str, value: Any, step: str) -> str:
    was = f"was {_cell(key, value)} before; " if key == "parity_pass" else ""
    return f"{was}{step} must run again"


def _body(rows: list[list[str]], empty: str, right: Sequence[bool] = ()) -> str:
    """Rows under a section title, without a header; a line saying ``empty`` when there are none."""
    if not rows:
        return f"  {empty}"
    return "\n".join(table([""] * len(rows[0]), rows, right).splitlines()[1:])


def comparison_text(seen: Comparison) -> str:
    """Runs side by side: one column per run, the parameters that differ, the metrics with the
    best of each marked, and each step's seconds (or the run it was reused from)."""
    labels = [r.id for r in seen.runs]
    names = [r.name or "" for r in seen.runs]
    head = ["", *labels]
    blocks = [table(head, [["name", *names]] if any(names) else [])]
    title = "parameters" if seen.all_params else f"parameters that differ ({seen.same} the same; --all shows them)"
    rows = [[key, *(show(v) for v in values)] for key, values in seen.params.items()]
    blocks.append(title + ("\n" + table(head, rows) if rows else "\n  none differ"))

    rows = []
    for key, line in seen.metrics.items():
        cells = [_cell(key, v) + (CHANGED if i in line.best else " ") for i, v in enumerate(line.values)]
        rows.append([key, *cells])
    title = f"metrics ({CHANGED} best: higher is better, lower for losses and errors)"
    blocks.append(title + ("\n" + table(head, rows, right=[False, *[True] * len(labels)]) if rows else "\n  none"))

    rows = []
    for name, cells in seen.steps.items():
        row = [name]
        for cell in cells:
            if cell is None:
                row.append("-")
            elif cell.reused_from:
                row.append(f"reused {cell.reused_from}")
            elif cell.status != "finished":
                row.append(cell.status)
            else:
                row.append("-" if cell.duration_s is None else f"{cell.duration_s:.1f} s")
        rows.append(row)
    blocks.append("steps (seconds, or the run a step was reused from)" + ("\n" + table(head, rows) if rows else ""))
    return "\n\n".join(blocks)


def models_table(found: list[ModelRow]) -> str:
    """Exported models, newest first: run, name, aliases, key test metrics, and why ``latest``
    would pass over one."""
    keys = sorted({k for m in found for k in m.metrics})
    rows = [
        [
            m.id,
            m.name or "",
            " ".join(f"@{a}" for a in m.aliases),
            *[_cell(k, m.metrics[k]) if k in m.metrics else "-" for k in keys],
            m.doubt or "vouched for",
        ]
        for m in found
    ]
    return table(["run", "name", "aliases", *keys, "model"], rows, [False, False, False, *[True] * len(keys)])


def moves_table(moves: list[Move]) -> str:
    """Every move of an alias, oldest first: when, who, from which run to which, and why."""
    rows = [
        [
            m.moved_at or "",
            m.moved_by,
            m.previous or "-",
            m.run_id or "(removed)",
            m.reason or "",
        ]
        for m in moves
    ]
    return table(["when", "who", "from", "to", "why"], rows)
