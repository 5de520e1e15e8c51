"""Aliases: ``@champion`` names the model that ships, moved on purpose, with a record of every move.

``latest`` follows whatever ran last; a team needs one name for "the model in production" that
changes only when someone moves it, through a gate or by hand, saying why. An alias points at a run
whose export finished and whose parity verdict passed (neither stale since); every move and removal
is kept with who made it (user@host), when and why, and a gated promotion keeps the figures it
passed. ``@NAME`` is accepted wherever a model run is named (``score.model_run``, ``serve.model``,
``workbench runs show``), resolved here.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from workbench.config.secrets import mask
from workbench.errors import ParameterError, TrackingError
from workbench.storage.catalog import ENCODING, ONNX_MODEL
from workbench.tracking.queries import parameters_and_metrics
from workbench.tracking.tables import alias_moves, aliases, artifacts, run_tags, runs
from workbench.tracking.tracker import Tracker, _iso, now

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
PREFIX = "@"


def alias_name(text: str, key: str = "alias") -> str:
    """An alias as typed (``champion`` or ``@champion``) without its ``@``; one line naming a bad one."""
    name = text.strip().removeprefix(PREFIX)
    if not NAME.fullmatch(name):
        raise ParameterError(
            f"{key} {text!r}: an alias is a letter then letters, digits, '_' or '-' (64 at most), e.g. champion"
        )
    return name


def is_alias(spec: str) -> bool:
    return spec.startswith(PREFIX)


def who() -> str:
    """user@host of whoever moves an alias (a scheduler's job user on its machine, a person's login)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@contextlib.contextmanager
def _writing(tracker: Tracker) -> Iterator[Any]:
    try:
        with tracker.engine.begin() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise TrackingError(f"db {mask(tracker.url)!r}: write failed: {str(exc).splitlines()[0]}") from exc


def current(tracker: Tracker) -> dict[str, str]:
    """Every alias and the run it names."""
    with tracker.engine.connect() as conn:
        return dict(conn.execute(select(aliases.c.name, aliases.c.run_id).order_by(aliases.c.name)).all())


def resolve(tracker: Tracker, spec: str, key: str = "model") -> str:
    """The run ``@NAME`` points at; an alias that does not exist is one line listing those that do."""
    name = alias_name(spec, key)
    known = current(tracker)
    if name not in known:
        listed = ", ".join(f"@{n}" for n in known) or "none yet (`workbench models alias set NAME RUN`)"
        raise TrackingError(f"{key} {spec!r}: no alias {name!r} in db {mask(tracker.url)!r}; aliases: {listed}")
    return known[name]


def pointing(tracker: Tracker, spec: str, key: str = "model") -> tuple[str, str | None]:
    """The run ``@NAME`` points at and when it was set there: a server following the alias tries a
    model that failed to load again once the alias is set again, to the same run or another."""
    name = alias_name(spec, key)
    with tracker.engine.connect() as conn:
        row = conn.execute(select(aliases.c.run_id, aliases.c.moved_at).where(aliases.c.name == name)).first()
    if row is None:
        return resolve(tracker, spec, key), None  # the one line listing the aliases there are
    return row.run_id, _iso(row.moved_at)


def _exported(tracker: Tracker, run_id: str) -> str | None:
    """Why ``run_id``'s model may not carry an alias, or None when it may."""
    if not tracker.has_run(run_id):
        return f"there is no run {run_id!r} in db {mask(tracker.url)!r} (`workbench runs` lists them)"
    with tracker.engine.connect() as conn:
        keys = set(conn.execute(select(artifacts.c.key).where(artifacts.c.run_id == run_id)).scalars())
    if not all(any(k.endswith("/" + a.path) for k in keys) for a in (ONNX_MODEL, ENCODING)):
        return f"run {run_id} has no exported model"
    doubt = tracker.model_doubts([run_id])[run_id]
    return f"run {run_id}: {doubt}" if doubt else None


@dataclass(frozen=True)
class Move:
    name: str
    run_id: str | None  # None: removed
    previous: str | None
    moved_at: str | None
    moved_by: str
    reason: str | None
    comparison: dict[str, Any] | None


def set_alias(
    tracker: Tracker, name: str, run_id: str, reason: str | None = None, comparison: dict[str, Any] | None = None
) -> Move:
    """Point ``name`` at ``run_id``, whose export must have finished and whose parity must have
    passed; the move is recorded in the same transaction."""
    name = alias_name(name)
    if problem := _exported(tracker, run_id):
        raise TrackingError(
            f"alias @{name} not moved: {problem}; an alias names a model that exported and passed parity"
        )
    stamp = now()
    with _writing(tracker) as conn:
        previous = conn.execute(select(aliases.c.run_id).where(aliases.c.name == name)).scalar()
        if previous is None:
            conn.execute(insert(aliases).values(name=name, run_id=run_id, moved_at=stamp))
        else:
            conn.execute(update(aliases).where(aliases.c.name == name).values(run_id=run_id, moved_at=stamp))
        move = Move(name, run_id, previous, _iso(stamp), who(), reason, comparison)
        conn.execute(insert(alias_moves).values(_row(move, stamp)))
    return move


def remove_alias(tracker: Tracker, name: str, reason: str | None = None) -> Move:
    name = alias_name(name)
    stamp = now()
    with _writing(tracker) as conn:
        previous = conn.execute(select(aliases.c.run_id).where(aliases.c.name == name)).scalar()
        if previous is None:
            listed = ", ".join(f"@{n}" for n in current(tracker)) or "none"
            raise TrackingError(f"no alias {name!r} to remove; aliases: {listed}")
        conn.execute(delete(aliases).where(aliases.c.name == name))
        move = Move(name, None, previous, _iso(stamp), who(), reason, None)
        conn.execute(insert(alias_moves).values(_row(move, stamp)))
    return move


def _row(move: Move, stamp: Any) -> dict[str, Any]:
    return {
        "name": move.name,
        "run_id": move.run_id,
        "previous": move.previous,
        "moved_at": stamp,
        "moved_by": move.moved_by,
        "reason": move.reason,
        "comparison": json.dumps(move.comparison) if move.comparison is not None else None,
    }


def history(tracker: Tracker, name: str) -> list[Move]:
    """Every move of ``name``, oldest first."""
    name = alias_name(name)
    query = select(alias_moves).where(alias_moves.c.name == name).order_by(alias_moves.c.id)
    with tracker.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    if not rows:
        listed = ", ".join(f"@{n}" for n in current(tracker)) or "none yet"
        raise TrackingError(f"alias {name!r} was never set; aliases: {listed}")
    return [
        Move(
            r["name"],
            r["run_id"],
            r["previous"],
            _iso(r["moved_at"]),
            r["moved_by"],
            r["reason"],
            json.loads(r["comparison"]) if r["comparison"] else None,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class ModelRow:
    id: str
    name: str | None
    status: str
    started_at: str | None
    tags: dict[str, str]
    metrics: dict[str, float]
    aliases: list[str]
    doubt: str | None  # why latest would skip it (failed or stale parity), None when it is vouched for


KEY_METRICS = (
    "test_accuracy",
    "test_roc_auc",
    "test_f1_macro",
    "test_rmse",
    "test_r2",
    "baseline_test_accuracy",
    "baseline_test_roc_auc",
    "baseline_test_rmse",
)


def models(tracker: Tracker, limit: int = 20) -> list[ModelRow]:
    """The newest runs with an exported model, with their key test metrics and aliases."""
    exported = (
        select(artifacts.c.run_id).where(artifacts.c.key.endswith("/" + ONNX_MODEL.path)).group_by(artifacts.c.run_id)
    )
    query = select(runs).where(runs.c.id.in_(exported)).order_by(runs.c.started_at.desc()).limit(limit)
    with tracker.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
        tags_of: dict[str, dict[str, str]] = {}
        ids = [r["id"] for r in rows]
        for run_id, key, value in conn.execute(
            select(run_tags.c.run_id, run_tags.c.key, run_tags.c.value).where(run_tags.c.run_id.in_(ids))
        ):
            tags_of.setdefault(run_id, {})[key] = value
    values = parameters_and_metrics(tracker, ids)
    named: dict[str, list[str]] = {}
    for alias, run_id in current(tracker).items():
        named.setdefault(run_id, []).append(alias)
    doubts = tracker.model_doubts(ids)
    return [
        ModelRow(
            r["id"],
            r["name"],
            r["status"],
            _iso(r["started_at"]),
            tags_of.get(r["id"], {}),
            {k: v for k, v in values[r["id"]]["metrics"].items() if k in KEY_METRICS},
            named.get(r["id"], []),
            doubts[r["id"]],
        )
        for r in rows
    ]
