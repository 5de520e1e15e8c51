"""Questions over many runs: which runs match, in what order, with which values; runs side by side.

The command line (``workbench runs``, ``runs compare``) and the web app ask here and never write
SQL of their own. A page of runs is filtered, sorted, counted and cut in the database, and only
the page's rows and the columns asked for are read: a tracking database of ten thousand runs
answers as fast as one of ten. Parameter values are stored as JSON text; a comparison with a
number (``train.lr>0.001``) reads the text as a number only where it is one, on SQLite and
PostgreSQL alike.

A key names a run field (``id``, ``name``, ``status``, ``launcher``, ``started_at``,
``finished_at``, ``duration_s``), a parameter (a dotted key such as ``train.lr``, or ``seed``,
``store``, ``db``) or a final metric (``val_accuracy``, ``test_roc_auc``); a run that lacks the
key matches no condition on it and sorts last.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Float, and_, case, cast, exists, func, literal, not_, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from workbench.config.schema import SPEC
from workbench.config.secrets import mask
from workbench.errors import ParameterError, TrackingError
from workbench.storage.catalog import CURVES, FIGURES, RunLayout, suffix
from workbench.tracking.tables import artifacts, metrics, params, run_tags, runs, steps
from workbench.tracking.tracker import Tracker, _iso, run_seconds, steps_seconds

RUN_FIELDS = ("id", "name", "status", "launcher", "started_at", "finished_at", "duration_s")
TIMES = ("started_at", "finished_at")
OPS = ("=", "!=", ">", ">=", "<", "<=")
ORDERING = (">", ">=", "<", "<=")
MAX_LIMIT = 1000  # rows per page: a page is what a person reads, never the whole database

Kind = Literal["run", "param", "metric"]


def kind_of(key: str) -> Kind:
    """Whether ``key`` is a run field, a parameter or a metric (metric keys have no dot)."""
    if key in RUN_FIELDS:
        return "run"
    return "param" if "." in key or key in SPEC else "metric"


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Condition:
    """One filter, ``key op value``, e.g. ``train.lr>0.001``, ``train.model=mlp``, ``status!=failed``."""

    key: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"


_CONDITION = re.compile(r"\s*([^\s=!<>]+)\s*(!=|>=|<=|==|=|>|<)\s*(.*?)\s*")
EXAMPLE = "e.g. train.model=mlp or test_accuracy>0.9"


def parse_condition(text: str) -> Condition:
    """``KEY OP VALUE`` with OP one of ``= != > >= < <=``; a ParameterError naming ``text`` if not."""
    found = _CONDITION.fullmatch(text)
    if not found or not found.group(3):
        raise ParameterError(f"condition {text!r}: expected KEY OP VALUE with OP one of {' '.join(OPS)}; {EXAMPLE}")
    key, op, value = found.groups()
    op = "=" if op == "==" else op
    kind = kind_of(key)
    if key in TIMES:
        _time(value, text)
    elif op in ORDERING and kind == "run" and key != "duration_s":
        raise ParameterError(f"condition {text!r}: {key} takes = or != only; {op} compares numbers and times")
    elif op in ORDERING and _number(value) is None:
        raise ParameterError(f"condition {text!r}: {op} compares numbers, and {value!r} is none; {EXAMPLE}")
    elif kind == "metric" and _number(value) is None:
        raise ParameterError(f"condition {text!r}: metric {key} is a number, and {value!r} is none; {EXAMPLE}")
    return Condition(key, op, value)


def _time(value: str, text: str) -> datetime:
    """A time as typed, in UTC as the tracker writes them (a time without an offset is UTC)."""
    try:
        moment = datetime.fromisoformat(value)
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except ValueError:
        raise ParameterError(
            f"condition {text!r}: {value!r} is no time; write it as 2026-12-04 or 2026-12-04T10:30"
        ) from None


@dataclass(frozen=True)
class RunQuery:
    """Which runs, in what order, with which columns; ``sort`` is a key, ``-key`` descending."""

    where: tuple[Condition, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()  # key=value pairs, all must hold
    text: str | None = None  # a piece of the id or the name, any case
    sort: str = "-started_at"
    columns: tuple[str, ...] = ()  # parameter and metric keys (run fields too) to return per row
    limit: int = 20
    offset: int = 0


@dataclass
class RunRow:
    id: str
    name: str | None
    status: str
    launcher: str | None
    started_at: str | None
    duration_s: float | None
    tags: dict[str, str]
    values: dict[str, Any]  # the query's columns: parameters decoded from JSON, metrics as floats; absent: None
    stale: tuple[str, ...] = ()  # those of the columns that are metrics of a stale step (JSON-ready)


@dataclass
class RunPage:
    rows: list[RunRow]
    total: int  # runs matching the query, on every page


# ---- SQL pieces ----------------------------------------------------------------------------------


def _numeric(text: Any) -> ColumnElement[Any]:
    """JSON text as a number where it is one, else NULL (a JSON number starts with - or a digit).

    CASE, not AND, keeps PostgreSQL from casting '"mlp"' to a number: it evaluates the branches
    only where their condition holds, whatever order the planner picks.
    """
    return case((func.substr(text, 1, 1).in_(list("-0123456789")), cast(text, Float)), else_=None)


class _Seconds(FunctionElement[float]):
    """A run's seconds from start to end, in each database's own date arithmetic."""

    type = Float()
    name = "seconds"
    inherit_cache = True


@compiles(_Seconds, "sqlite")
def _seconds_sqlite(element: _Seconds, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"round((julianday({end}) - julianday({start})) * 86400.0, 3)"  # julianday is a float of days


@compiles(_Seconds)
def _seconds_sql(element: _Seconds, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


def _duration() -> ColumnElement[Any]:
    """A run's seconds as :func:`~workbench.tracking.tracker.run_seconds` counts them: a notebook
    run's are the sum of its steps' (the time their cells ran), any other's its start to its end."""
    step_time = select(func.sum(steps.c.duration_s)).where(steps.c.run_id == runs.c.id).scalar_subquery()
    notebook = and_(runs.c.launcher == "notebook", runs.c.finished_at.isnot(None))
    return case((notebook, step_time), else_=_Seconds(runs.c.started_at, runs.c.finished_at))


def _final(key: str) -> Any:
    """A run's final value of metric ``key`` (its latest record: a step run again records anew)."""
    return (
        select(metrics.c.value)
        .where(metrics.c.run_id == runs.c.id, metrics.c.key == key, metrics.c.epoch.is_(None))
        .order_by(metrics.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def _compare(left: Any, op: str, right: Any) -> ColumnElement[bool]:
    return {
        "=": left == right,
        "!=": left != right,
        ">": left > right,
        ">=": left >= right,
        "<": left < right,
        "<=": left <= right,
    }[op]


def _param_matches(value: Any, cond: Condition) -> ColumnElement[bool]:
    """Whether a parameter's JSON text ``value`` satisfies ``cond``; a number as typed compares as a
    number (``train.lr=1e-3`` matches 0.001), anything else as the value's JSON (text, true, null)."""
    number = _number(cond.value)
    if cond.op in ORDERING:
        return and_(_numeric(value).isnot(None), _compare(_numeric(value), cond.op, number))
    spellings = {json.dumps(cond.value)}
    if cond.value in ("true", "false", "null"):
        spellings.add(cond.value)
    equal = value.in_(sorted(spellings))
    if number is not None:
        equal = or_(equal, and_(_numeric(value).isnot(None), _numeric(value) == number))
    return equal if cond.op == "=" else not_(equal)


def _condition(cond: Condition) -> ColumnElement[bool]:
    kind = kind_of(cond.key)
    if kind == "param":
        return exists().where(
            params.c.run_id == runs.c.id, params.c.key == cond.key, _param_matches(params.c.value, cond)
        )
    if kind == "metric":
        return _compare(_final(cond.key), cond.op, float(cond.value))
    if cond.key in TIMES:
        return _compare(runs.c[cond.key], cond.op, _time(cond.value, str(cond)))
    if cond.key == "duration_s":
        return _compare(_duration(), cond.op, float(cond.value))
    return _compare(runs.c[cond.key], cond.op, cond.value)


def _filters(query: RunQuery) -> list[ColumnElement[bool]]:
    found = [_condition(c) for c in query.where]
    for key, value in query.tags:
        found.append(exists().where(run_tags.c.run_id == runs.c.id, run_tags.c.key == key, run_tags.c.value == value))
    if query.text:
        found.append(
            or_(runs.c.id.icontains(query.text, autoescape=True), runs.c.name.icontains(query.text, autoescape=True))
        )
    return found


def _order(query: RunQuery) -> tuple[list[Any], list[Any]]:
    """ORDER BY terms for ``query.sort`` (missing values last either way), and the outer joins they need."""
    key = query.sort.removeprefix("-")
    descending = query.sort.startswith("-")
    if not key:
        raise ParameterError(f"sort {query.sort!r}: name a key, e.g. -val_accuracy or train.lr")
    kind = kind_of(key)
    joins: list[Any] = []
    if kind == "run":
        column = runs.c[key] if key != "duration_s" else _duration()
        terms = [func.lower(column) if key == "name" else column]  # names as people read them
    elif kind == "metric":
        terms = [_final(key)]
    else:  # numbers by value, then everything else by its JSON text
        sorted_param = params.alias("sorted_param")
        joins.append((sorted_param, and_(sorted_param.c.run_id == runs.c.id, sorted_param.c.key == key)))
        terms = [_numeric(sorted_param.c.value), sorted_param.c.value]
    ordered = [(t.desc() if descending else t.asc()).nulls_last() for t in terms]
    return [*ordered, runs.c.started_at.desc(), runs.c.id.desc()], joins


# ---- answers -------------------------------------------------------------------------------------


def find_runs(tracker: Tracker, query: RunQuery) -> RunPage:
    """One page of the runs matching ``query``, in its order, with its columns, and how many match."""
    if not 1 <= query.limit <= MAX_LIMIT:
        raise ParameterError(f"limit {query.limit}: must be between 1 and {MAX_LIMIT}")
    if query.offset < 0:
        raise ParameterError(f"offset {query.offset}: must be 0 or more")
    filters = _filters(query)
    order, joins = _order(query)
    source: Any = runs
    for alias, on in joins:
        source = source.outerjoin(alias, on)
    page = (
        select(runs.c.id, runs.c.name, runs.c.status, runs.c.launcher, runs.c.started_at, runs.c.finished_at)
        .select_from(source)
        .where(*filters)
        .order_by(*order)
        .limit(query.limit)
        .offset(query.offset)
    )
    counted = select(func.count()).select_from(runs).where(*filters)
    with tracker.engine.connect() as conn:
        rows = conn.execute(page).mappings().all()
        total = conn.execute(counted).scalar_one()
        ids = [r["id"] for r in rows]
        tags = _tags(conn, ids)
        values = _values(conn, ids, query.columns)
        stale = _stale(conn, ids, query.columns)
        step_time = steps_seconds(conn, ids)
    found = []
    for r in rows:
        fields = {
            "id": r["id"],
            "name": r["name"],
            "status": r["status"],
            "launcher": r["launcher"],
            "started_at": _iso(r["started_at"]),
            "finished_at": _iso(r["finished_at"]),
            "duration_s": run_seconds(r, step_time.get(r["id"])),
        }
        own = values.get(r["id"], {})
        row_values = {c: fields[c] if kind_of(c) == "run" else own.get(c) for c in query.columns}
        found.append(
            RunRow(
                r["id"],
                r["name"],
                r["status"],
                r["launcher"],
                fields["started_at"],
                fields["duration_s"],
                tags.get(r["id"], {}),
                row_values,
                tuple(sorted(stale.get(r["id"], ()))),
            )
        )
    return RunPage(found, total)


def _stale(conn: Any, ids: list[str], keys: tuple[str, ...] | None) -> dict[str, set[str]]:
    """Per run, the final metrics (of ``keys``, or all) whose latest record came from a step that is
    stale now (a notebook step run again with new outputs after it): results of earlier inputs."""
    found: dict[str, set[str]] = {}
    wanted = None if keys is None else [k for k in keys if kind_of(k) == "metric"]
    if not ids or wanted == []:
        return found
    stale_steps = set(
        conn.execute(
            select(steps.c.run_id, steps.c.name).where(steps.c.run_id.in_(ids), steps.c.status == "stale")
        ).all()
    )
    if not stale_steps:
        return found
    query = select(metrics.c.run_id, metrics.c.key, metrics.c.step).where(
        metrics.c.run_id.in_({run_id for run_id, _ in stale_steps}), metrics.c.epoch.is_(None)
    )
    if wanted is not None:
        query = query.where(metrics.c.key.in_(wanted))
    latest = {(run_id, key): step for run_id, key, step in conn.execute(query.order_by(metrics.c.id))}
    for (run_id, key), step in latest.items():
        if (run_id, step) in stale_steps:
            found.setdefault(run_id, set()).add(key)
    return found


def stale_metrics(tracker: Tracker, run_ids: list[str]) -> dict[str, list[str]]:
    """Per run, every final metric that a stale step recorded (see :func:`find_runs`' ``stale``)."""
    with tracker.engine.connect() as conn:
        found = _stale(conn, run_ids, None)
    return {run_id: sorted(found.get(run_id, ())) for run_id in run_ids}


def _tags(conn: Any, ids: list[str]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    if ids:
        query = select(run_tags.c.run_id, run_tags.c.key, run_tags.c.value).where(run_tags.c.run_id.in_(ids))
        for run_id, key, value in conn.execute(query.order_by(run_tags.c.key)):
            found.setdefault(run_id, {})[key] = value
    return found


def _values(conn: Any, ids: list[str], keys: tuple[str, ...] | None) -> dict[str, dict[str, Any]]:
    """Parameters (decoded) and final metrics of ``ids``: those in ``keys``, or all when ``keys`` is None."""
    found: dict[str, dict[str, Any]] = {}
    if not ids:
        return found
    wanted_params = None if keys is None else [k for k in keys if kind_of(k) == "param"]
    wanted_metrics = None if keys is None else [k for k in keys if kind_of(k) == "metric"]
    if wanted_params is None or wanted_params:
        query = select(params.c.run_id, params.c.key, params.c.value).where(params.c.run_id.in_(ids))
        if wanted_params is not None:
            query = query.where(params.c.key.in_(wanted_params))
        for run_id, key, value in conn.execute(query):
            found.setdefault(run_id, {})[key] = json.loads(value)
    if wanted_metrics is None or wanted_metrics:
        query = select(metrics.c.run_id, metrics.c.key, metrics.c.value).where(
            metrics.c.run_id.in_(ids), metrics.c.epoch.is_(None)
        )
        if wanted_metrics is not None:
            query = query.where(metrics.c.key.in_(wanted_metrics))
        for run_id, key, value in conn.execute(query.order_by(metrics.c.id)):  # the latest record wins
            found.setdefault(run_id, {})[key] = value
    return found


def parameters_and_metrics(tracker: Tracker, run_ids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every parameter and final metric of each run: ``{id: {"parameters": {...}, "metrics": {...}}}``."""
    with tracker.engine.connect() as conn:
        values = _values(conn, run_ids, None)
    return {
        run_id: {
            "parameters": {k: v for k, v in sorted(values.get(run_id, {}).items()) if kind_of(k) == "param"},
            "metrics": {k: v for k, v in sorted(values.get(run_id, {}).items()) if kind_of(k) == "metric"},
        }
        for run_id in run_ids
    }


def unrecorded(tracker: Tracker, keys: list[str]) -> list[str]:
    """The parameter and metric keys among ``keys`` that no run in the database records (typos)."""
    missing = []
    with tracker.engine.connect() as conn:
        for key in dict.fromkeys(keys):
            kind = kind_of(key)
            if kind == "param":
                hit = conn.execute(select(literal(1)).where(params.c.key == key).limit(1)).first()
            elif kind == "metric":
                final = and_(metrics.c.key == key, metrics.c.epoch.is_(None))
                hit = conn.execute(select(literal(1)).where(final).limit(1)).first()
            else:
                continue
            if hit is None:
                missing.append(key)
    return missing


# ---- several runs side by side -------------------------------------------------------------------

# what a metric's name says about which way is better; a metric matching none (a count, a size, a
# flag, seconds) is no score, and no run is best at it
_LOWER = re.compile(r"loss|rmse|mae|mape|_err")
_HIGHER = re.compile(r"accuracy|auc|f1|precision|recall|r2|average_precision|agreement")


def better(key: str) -> Literal["higher", "lower"] | None:
    """Which way metric ``key`` improves: lower for losses and errors (rmse, mae, mape), higher for
    scores (accuracy, ROC AUC, F1, R²), None for what is no score."""
    if _LOWER.search(key):
        return "lower"
    if _HIGHER.search(key):
        return "higher"
    return None


@dataclass(frozen=True)
class RunRef:
    id: str
    name: str | None
    status: str
    started_at: str | None
    tags: dict[str, str] = field(default_factory=dict)
    store: str = ""  # where its artifacts live, as recorded

    @property
    def label(self) -> str:
        """What a person calls the run: its name, else its id."""
        return self.name or self.id


@dataclass(frozen=True)
class MetricLine:
    values: list[float | None]  # one per compared run, in the comparison's order
    better: Literal["higher", "lower"] | None
    best: tuple[int, ...]  # indexes of the runs holding the best value (none when no score or one value)


@dataclass(frozen=True)
class StepCell:
    status: str
    duration_s: float | None
    reused_from: str | None


@dataclass(frozen=True)
class Figure:
    """A figure a run recorded (a catalog figure: the validation confusion matrix or residuals, parity...)."""

    run_id: str
    uri: str
    key: str


@dataclass
class Comparison:
    runs: list[RunRef]
    params: dict[str, list[Any]]  # key -> value per run (None where a run lacks it); only differing unless all
    metrics: dict[str, MetricLine]  # final metrics, scores first: key -> values per run and the best
    steps: dict[str, list[StepCell | None]]  # step name (pipeline order) -> per run
    histories: dict[str, list[list[tuple[int, float]]]]  # per-epoch metric -> per run (epoch, value) pairs
    figures: dict[str, list[Figure | None]]  # catalog figure title -> per run, for the ones any run recorded
    all_params: bool = False
    same: int = 0  # parameters left out because every run has the same value


def _best(values: list[float | None], direction: str | None) -> tuple[int, ...]:
    present = [(v, i) for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    if direction is None or len(present) < 2:
        return ()
    top = max(v for v, _ in present) if direction == "higher" else min(v for v, _ in present)
    if all(v == top for v, _ in present):
        return ()  # a tie of everyone marks no one
    return tuple(i for v, i in present if v == top)


def compare_runs(tracker: Tracker, run_ids: list[str], all_params: bool = False) -> Comparison:
    """Runs side by side: the parameters that differ (all with ``all_params``), final metrics with
    the best marked, step durations and reuse, per-epoch histories and the figures they recorded.

    A few queries for all runs together, each bounded by the runs' own rows.
    """
    ids = list(dict.fromkeys(run_ids))
    if len(ids) < 2:
        raise ParameterError(f"compare needs two runs or more, got {len(ids)}; e.g. runs compare RUN_A RUN_B")
    where = runs.c.id.in_(ids)
    with tracker.engine.connect() as conn:
        found = {r["id"]: r for r in conn.execute(select(runs).where(where)).mappings()}
        if missing := [i for i in ids if i not in found]:
            raise TrackingError(f"no run {missing[0]!r} in db {mask(tracker.url)!r}; `workbench runs` lists the runs")
        tags = _tags(conn, ids)
        param_rows = conn.execute(
            select(params.c.run_id, params.c.key, params.c.value).where(params.c.run_id.in_(ids))
        ).all()
        metric_rows = conn.execute(
            select(metrics.c.run_id, metrics.c.key, metrics.c.value, metrics.c.epoch)
            .where(metrics.c.run_id.in_(ids))
            .order_by(metrics.c.id)
        ).all()
        step_rows = conn.execute(
            select(steps.c.run_id, steps.c.name, steps.c.status, steps.c.duration_s, steps.c.reused_from)
            .where(steps.c.run_id.in_(ids))
            .order_by(steps.c.position)
        ).all()
        figure_keys = {f"{a.path}" for a in FIGURES if a.name != CURVES.name}
        artifact_rows = conn.execute(
            select(artifacts.c.run_id, artifacts.c.key, artifacts.c.uri)
            .where(artifacts.c.run_id.in_(ids), artifacts.c.key.like("%" + suffix("png")))
            .order_by(artifacts.c.id)
        ).all()
    position = {run_id: i for i, run_id in enumerate(ids)}
    n = len(ids)
    refs = [
        RunRef(
            i, found[i]["name"], found[i]["status"], _iso(found[i]["started_at"]), tags.get(i, {}), found[i]["store"]
        )
        for i in ids
    ]

    table: dict[str, list[Any]] = {}
    has: dict[str, list[bool]] = {}
    for run_id, key, value in param_rows:
        table.setdefault(key, [None] * n)[position[run_id]] = json.loads(value)
        has.setdefault(key, [False] * n)[position[run_id]] = True
    differing = {
        k: v for k, v in sorted(table.items()) if all_params or not all(has[k]) or len({json.dumps(x) for x in v}) > 1
    }

    finals: dict[str, list[float | None]] = {}
    histories: dict[str, list[list[tuple[int, float]]]] = {}
    for run_id, key, value, epoch in metric_rows:
        if epoch is None:
            finals.setdefault(key, [None] * n)[position[run_id]] = value
        else:
            histories.setdefault(key, [[] for _ in range(n)])[position[run_id]].append((epoch, value))
    for curves in histories.values():
        for points in curves:  # a retrained epoch keeps its latest value
            points[:] = sorted(dict(points).items())
    scores_first = sorted(finals, key=lambda key: (better(key) is None, key))  # then counts, sizes, seconds
    lines = {key: MetricLine(finals[key], better(key), _best(finals[key], better(key))) for key in scores_first}

    step_table: dict[str, list[StepCell | None]] = {}
    for run_id, name, status, duration_s, reused_from in step_rows:
        step_table.setdefault(name, [None] * n)[position[run_id]] = StepCell(status, duration_s, reused_from)

    figures: dict[str, list[Figure | None]] = {}
    titles = {a.path: a.title for a in FIGURES}
    for run_id, key, uri in artifact_rows:
        rel = RunLayout(run_id).relative(key)
        if rel in figure_keys:
            figures.setdefault(titles[rel], [None] * n)[position[run_id]] = Figure(run_id, uri, key)
    ordered_figures = {a.title: figures[a.title] for a in FIGURES if a.title in figures}

    return Comparison(
        refs,
        differing,
        lines,
        step_table,
        dict(sorted(histories.items())),
        ordered_figures,
        all_params,
        len(table) - len(differing),
    )
