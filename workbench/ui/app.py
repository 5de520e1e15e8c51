"""The web app's routes: the runs table, a run, runs compared, their files, and JSON for scripts.

Every page is a GET whose whole state is in its URL (filters, sort, page, columns, the compared
runs), read through :mod:`workbench.tracking.queries` and the tracker: nothing is kept per visitor
and nothing is written, so people sharing a tracking database and a link see the same page. A
filter a person mistyped is answered 400 with the one line that says what is wrong (the page
shows it above an empty table; the API as ``{"error": ...}``); an unknown run or file is 404.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader
from markupsafe import Markup
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from workbench.config.secrets import mask
from workbench.errors import ParameterError, StoreError, TrackingError, WorkbenchError
from workbench.storage import open_store
from workbench.storage.catalog import CONFUSION, PER_CLASS, REPORT_INDEX, RunLayout, suffix
from workbench.tracking.aliases import is_alias, resolve
from workbench.tracking.queries import (
    Comparison,
    Condition,
    RunPage,
    RunQuery,
    better,
    compare_runs,
    find_runs,
    kind_of,
    parameters_and_metrics,
    parse_condition,
)
from workbench.tracking.tracker import Tracker
from workbench.ui import charts
from workbench.ui.files import open_file

STATUSES = ("finished", "failed", "running", "incomplete", "stale")
PAGE_SIZES = range(1, 501)  # a page is what a person reads; scripts page through with offset
# metrics shown when no columns are chosen, those the page's runs hold
DEFAULT_COLUMNS = ("test_accuracy", "val_accuracy", "test_rmse", "val_rmse", "val_loss")
MAX_AXES = 6  # parameters drawn by default in parallel coordinates
MAX_TABLE_BYTES = 1 << 20  # a per-class table or confusion matrix larger than this is a download only

# the app's own pages run no script and load nothing from elsewhere; a run's report opens in a
# sandboxed frame from this origin
PAGE_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
)


# ---- presenting values ---------------------------------------------------------------------------


def show(value: Any) -> str:
    """A value as a cell shows it: numbers to 6 significant digits, URLs with passwords masked,
    mappings and lists as JSON."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list, tuple)):
        return mask(json.dumps(value))
    return mask(str(value))


def _number(text: str) -> Any:
    """A CSV cell as the number it spells (shown to 6 digits), else as its text."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _masked(value: Any) -> Any:
    """``value`` for JSON output with every URL's password masked, at any depth."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    return value


@cache
def _templates() -> Environment:
    env = Environment(loader=PackageLoader("workbench.ui", "templates"), autoescape=True, trim_blocks=True)
    env.filters["show"] = show
    env.filters["urlpart"] = lambda text: quote(str(text), safe="")
    env.filters["when"] = lambda iso: iso[:16].replace("T", " ") + " UTC" if iso else ""  # stored in UTC
    return env


@cache
def _stylesheet() -> bytes:
    return resources.files("workbench.ui").joinpath("static/app.css").read_bytes()


# ---- reading a request ---------------------------------------------------------------------------


def _items(request: Request, name: str) -> list[str]:
    """Every value of a repeatable query parameter, blanks (an empty form field) left out."""
    return [v.strip() for v in request.query_params.getlist(name) if v.strip()]


def _listed(request: Request, name: str) -> list[str]:
    """A list given as ``name=a,b`` or as ``name=a&name=b`` (a form's checkboxes), in order, once each."""
    found = [part.strip() for value in request.query_params.getlist(name) for part in value.split(",")]
    return list(dict.fromkeys(p for p in found if p))


def _count(request: Request, name: str, default: int, allowed: range) -> int:
    text = request.query_params.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ParameterError(f"{name} {text!r}: expected a whole number") from None
    if value not in allowed:
        raise ParameterError(f"{name} {value}: must be between {allowed.start} and {allowed.stop - 1}")
    return value


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParameterError(f"tag {text!r}: expected KEY=VALUE, e.g. team=vision")
    return key.strip(), value.strip()


def runs_query(request: Request) -> RunQuery:
    """The runs table's query from a URL: ``where`` (repeatable), ``status``, ``tag`` (repeatable,
    key=value), ``q`` (a piece of id or name), ``sort`` (a key, ``-key`` descending), ``columns``,
    ``limit`` and ``offset``; one ParameterError line for the first that is wrong."""
    where = [parse_condition(text) for text in _items(request, "where")]
    if status := request.query_params.get("status", "").strip():
        where.append(Condition("status", "=", status))
    return RunQuery(
        where=tuple(where),
        tags=tuple(_tag(text) for text in _items(request, "tag")),
        text=request.query_params.get("q", "").strip() or None,
        sort=request.query_params.get("sort", "").strip() or "-started_at",
        columns=tuple(_listed(request, "columns")),
        limit=_count(request, "limit", 20, PAGE_SIZES),
        offset=_count(request, "offset", 0, range(0, 2**31)),
    )


def _link(request: Request, path: str = "", **changes: Any) -> str:
    """This page's URL with some query parameters replaced (None drops one), relative to the site."""
    pairs = [(k, v) for k, v in request.query_params.multi_items() if k not in changes]
    pairs += [(k, v) for k, v in changes.items() if v is not None]
    query = urlencode([(k, v) for k, v in pairs if v != ""])
    return f"{path or request.url.path}?{query}" if query else path or request.url.path


# ---- the app -------------------------------------------------------------------------------------


class UI:
    """The routes over one tracker (one tracking database)."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.db = mask(tracker.url)

    # pages ----------------------------------------------------------------------------------------
    def _page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = _templates().get_template(name).render(db=self.db, **context)
        return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": PAGE_POLICY})

    def runs(self, request: Request) -> Response:
        problem, status, page = None, 200, RunPage([], 0)
        try:
            query = runs_query(request)
        except ParameterError as exc:
            problem, status = str(exc), 400
            query = RunQuery()
        chosen = query.columns
        if not chosen:  # a first look: the usual scores, those the page's runs hold
            query = replace(query, columns=DEFAULT_COLUMNS)
        if problem is None:
            try:
                page = find_runs(self.tracker, query)
            except ParameterError as exc:  # a sort key or limit the query layer refuses
                problem, status = str(exc), 400
        columns = list(chosen) or [c for c in DEFAULT_COLUMNS if any(r.values.get(c) is not None for r in page.rows)]
        keys = self._keys(page)
        sort_key = query.sort.removeprefix("-")
        fixed = [
            ("id", "run"),
            ("name", "name"),
            ("status", "status"),
            ("started_at", "started"),
            ("duration_s", "seconds"),
        ]
        sort_links, arrows = {}, {}
        for key in [k for k, _ in fixed] + columns:
            descending_first = key in ("started_at", "duration_s") or kind_of(key) == "metric"
            if key == sort_key:
                flipped = key if query.sort.startswith("-") else f"-{key}"
                arrows[key] = " ▼" if query.sort.startswith("-") else " ▲"
            else:
                flipped = f"-{key}" if descending_first else key
                arrows[key] = ""
            sort_links[key] = _link(request, sort=flipped, offset=None)
        offset = query.offset
        prev_link = _link(request, offset=max(offset - query.limit, 0) or None) if offset else None
        next_link = _link(request, offset=offset + query.limit) if offset + query.limit < page.total else None
        view = {
            "text": query.text,
            "status": request.query_params.get("status", ""),
            "where": _items(request, "where"),
            "tags": _items(request, "tag"),
            "columns": columns,
            "sort": query.sort,
            "limit": query.limit,
            "offset": offset,
        }
        return self._page(
            "runs.html.j2",
            status,
            problem=problem,
            view=view,
            page=page,
            fixed=fixed,
            sort_links=sort_links,
            arrows=arrows,
            prev_link=prev_link,
            next_link=next_link,
            statuses=STATUSES,
            keys=keys,
        )

    def _keys(self, page: RunPage) -> list[str]:
        """Parameter and metric keys of the page's first runs, offered while typing a filter or a column."""
        known: set[str] = set()
        for values in parameters_and_metrics(self.tracker, [r.id for r in page.rows[:5]]).values():
            known |= set(values["parameters"]) | set(values["metrics"])
        return sorted(known)

    def run(self, request: Request) -> Response:
        try:
            run = self._run(request.path_params["run_id"])
        except (TrackingError, ParameterError) as exc:
            return self._page("base.html.j2", 404, problem=str(exc))
        run_id = run["id"]  # /runs/@champion shows the run the alias names
        label = run["name"] or run_id
        curves = [
            Markup(
                charts.line_chart(
                    key, [charts.Series(run_id, label, charts.color(0), [(p["epoch"], p["value"]) for p in points])]
                )
            )
            for key, points in sorted(run["history"].items())
        ]
        artifacts = []
        for a in run["artifacts"]:
            name = RunLayout(run_id).relative(a["key"])
            artifacts.append({**a, "name": name, "link": self._file_link(a["key"])})
        figures = [a for a in artifacts if a["link"] and a["key"].endswith((suffix("png"), ".svg"))]
        report = self._report_link(run_id, run["store"])
        return self._page(
            "run.html.j2",
            run=run,
            curves=curves,
            artifacts=artifacts,
            figures=figures,
            scores=[(k, v) for k, v in sorted(run["metrics"].items()) if better(k) is not None],
            others=[(k, v) for k, v in sorted(run["metrics"].items()) if better(k) is None],
            tables=self._tables(run_id, run["store"], run["artifacts"]),
            report=report,
            origins=run["origins"],
        )

    def _tables(
        self, run_id: str, store: str, recorded: list[dict[str, Any]]
    ) -> list[tuple[str, str, list[list[str]]]]:
        """The test split's per-class table and confusion matrix, when the run recorded them: (name,
        title, rows with the header first). Class labels are the data's own text: the page escapes them."""
        wanted = {RunLayout(run_id).key(a): a for a in (PER_CLASS, CONFUSION)}
        found = []
        for a in recorded:
            if a["key"] in wanted and a["bytes"] <= MAX_TABLE_BYTES:
                try:
                    text = open_store(store).read_bytes(a["key"]).decode("utf-8", errors="replace")
                except StoreError:
                    continue
                rows = [[show(_number(cell)) for cell in row] for row in csv.reader(io.StringIO(text))]
                entry = wanted[a["key"]]
                found.append((entry.name, entry.description[:1].upper() + entry.description[1:], rows))
        return found

    def _run(self, run_id: str) -> dict[str, Any]:
        """The tracker's record of the run (what ``workbench runs show --json`` prints), passwords
        masked and values JSON can carry (a diverged loss's NaN becomes null); ``@NAME`` is the run an alias names."""
        if is_alias(run_id):
            run_id = resolve(self.tracker, run_id, "run")
        return _masked(self.tracker.get_run(run_id))

    def _file_link(self, key: str) -> str | None:
        """The app's URL of a store key under ``runs/<id>/`` (served from that run's recorded store)."""
        parts = key.split("/", 2)
        if len(parts) < 3 or parts[0] != "runs":
            return None
        run_id, rest = parts[1], parts[2]
        return f"/runs/{quote(run_id, safe='')}/files/{quote(rest)}"

    def _report_link(self, run_id: str, store: str) -> str | None:
        key = RunLayout(run_id).key(REPORT_INDEX)
        try:
            found = open_store(store).exists(key)
        except StoreError:
            found = False
        return self._file_link(key) if found else None

    def compare(self, request: Request) -> Response:
        ids = _listed(request, "runs")
        if len(ids) < 2:  # from a run's page, or nothing ticked: say what to add, keep what was given
            hint = "add the ids of runs to compare with it" if ids else "tick two runs or more on the runs table"
            return self._page("compare.html.j2", problem=hint, runs=[], given=ids)
        show_all = request.query_params.get("all", "") not in ("", "0")
        try:
            comparison = compare_runs(self.tracker, ids, all_params=True)
        except TrackingError as exc:
            return self._page("compare.html.j2", 404, problem=str(exc), runs=[], given=ids)
        return self._page("compare.html.j2", **self._compare_view(request, comparison, show_all))

    def _compare_view(self, request: Request, comparison: Comparison, show_all: bool) -> dict[str, Any]:
        refs = [
            {"id": r.id, "name": r.name, "status": r.status, "label": r.label, "color": charts.color(i)}
            for i, r in enumerate(comparison.runs)
        ]
        everything = {key: _masked(values) for key, values in comparison.params.items()}
        differing = {k: v for k, v in everything.items() if len({json.dumps(x, sort_keys=True) for x in v}) > 1}
        params = list((everything if show_all else differing).items())
        rows = [(key, line.values, set(line.best), line.better) for key, line in comparison.metrics.items()]
        metrics = [row[:3] for row in rows if row[3] is not None]  # scores: one way is better
        others = [row[:3] for row in rows if row[3] is None]
        curves = [
            Markup(
                charts.line_chart(
                    key,
                    [charts.Series(r["id"], r["label"], r["color"], pts) for r, pts in zip(refs, per_run, strict=True)],
                )
            )
            for key, per_run in comparison.histories.items()
        ]
        metric_keys = list(comparison.metrics)
        metric = request.query_params.get("metric", "").strip()
        if metric not in comparison.metrics:
            metric = next(
                (m for m in DEFAULT_COLUMNS if m in comparison.metrics), metric_keys[0] if metric_keys else ""
            )
        axes = [a for a in _listed(request, "axes") if a in everything] or list(differing)[:MAX_AXES]
        scales = [charts.Axis(key, everything[key]) for key in axes]
        if metric:
            scales.append(charts.Axis(metric, comparison.metrics[metric].values))
        parallel = charts.parallel_coordinates(scales, [(r["id"], r["label"], r["color"]) for r in refs])
        figures = [
            (title, [(r, self._file_link(f.key) if f else None) for r, f in zip(refs, per_run, strict=True)])
            for title, per_run in comparison.figures.items()
        ]
        return {
            "runs": refs,
            "params": params,
            "show_all": show_all,
            "toggle_all": _link(request, all=None if show_all else "1"),
            "metrics": metrics,
            "others": others,
            "steps": list(comparison.steps.items()),
            "curves": curves,
            "parallel": Markup(parallel),
            "axes": axes,
            "metric": metric,
            "metric_keys": metric_keys,
            "param_keys": list(everything),
            "figures": figures,
        }

    def file(self, request: Request) -> Response:
        run_id, path = request.path_params["run_id"], request.path_params["path"]
        try:
            store = self.tracker.get_run(run_id)["store"]
            download = open_file(run_id, store, path)
        except (TrackingError, StoreError) as exc:
            return _line(str(exc), 404)
        return StreamingResponse(download.chunks, media_type=download.media_type, headers=download.headers)

    # JSON -----------------------------------------------------------------------------------------
    def api_runs(self, request: Request) -> Response:
        try:
            query = runs_query(request)
            page = find_runs(self.tracker, query)
        except ParameterError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(
            {
                "total": page.total,
                "offset": query.offset,
                "limit": query.limit,
                "runs": [_masked(row.__dict__) for row in page.rows],
            }
        )

    def api_run(self, request: Request) -> Response:
        try:
            return JSONResponse(self._run(request.path_params["run_id"]))
        except (TrackingError, ParameterError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    @staticmethod
    def stylesheet(_request: Request) -> Response:
        return Response(_stylesheet(), media_type="text/css", headers={"Cache-Control": "max-age=3600"})


def _guarded(handler: Callable[[Request], Response], db: str, api: bool = False) -> Callable[[Request], Response]:
    """A user-caused error a handler did not expect is still one line, never a traceback page; so is
    a database that went away (a server restarting, a dropped connection): 503, try again. The API
    says it as ``{"error": ...}``."""

    def endpoint(request: Request) -> Response:
        try:
            return handler(request)
        except WorkbenchError as exc:
            return _line(str(exc), 400, api)
        except OperationalError as exc:
            reason = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
            return _line(f"db {db!r} failed to answer ({reason}); try again in a moment", 503, api)

    endpoint.__name__ = handler.__name__
    return endpoint


def _line(text: str, status: int, api: bool = False) -> Response:
    if api:
        return JSONResponse({"error": mask(text)}, status_code=status)
    return Response(f"{mask(text)}\n", status_code=status, media_type="text/plain; charset=utf-8")


def create_app(tracker: Tracker) -> Starlette:
    """The web app over ``tracker``'s database: GET routes only (anything else is 405)."""
    ui = UI(tracker)
    routes = [
        Route("/", _guarded(ui.runs, ui.db)),
        Route("/runs/{run_id}", _guarded(ui.run, ui.db)),
        Route("/runs/{run_id}/files/{path:path}", _guarded(ui.file, ui.db)),
        Route("/compare", _guarded(ui.compare, ui.db)),
        Route("/api/runs", _guarded(ui.api_runs, ui.db, api=True)),
        Route("/api/runs/{run_id}", _guarded(ui.api_run, ui.db, api=True)),
        Route("/static/app.css", ui.stylesheet),
    ]
    return Starlette(routes=routes)
