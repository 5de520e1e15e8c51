"""Reading and writing the tracking database.

One SQLAlchemy schema serves SQLite (the embedded default) and server databases. Steps write
their own metrics and artifacts while the pipeline writes run and step status, so a step run
alone from JupyterLab is tracked the same way as one run by ``workbench run``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import secrets
import socket
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError, SQLAlchemyError

from workbench.config.parameters import project_root
from workbench.config.secrets import mask as display_url  # the URL with any password masked
from workbench.config.secrets import mask_value
from workbench.errors import TrackingError
from workbench.storage.base import ArtifactInfo
from workbench.storage.catalog import ENCODING, ONNX_MODEL, STEP_ORDER
from workbench.tracking.tables import artifacts, file_hashes, metrics, params, run_tags, runs, steps


def now() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    """Sortable by start time and unique across machines sharing one DB."""
    return now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _resolve(url: str, create: bool = True) -> str:
    """Relative SQLite paths are taken from the project root, like the local store. A reader that
    only looks a run up (``create=False``) must not leave an empty database where a path was mistyped."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).expanduser()
        if not path.is_absolute():
            path = project_root() / path
        if not create and not path.exists():
            raise TrackingError(
                f"db {display_url(url)!r}: no tracking database at {path}; check the db parameter "
                "(`workbench run` creates it)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        parsed = parsed.set(database=str(path))
        if not create and not _writable(path):
            parsed = _read_only(parsed, path)
    return parsed.render_as_string(hide_password=False)


def _writable(path: Path) -> bool:
    """Whether SQLite can write the file and, for its WAL and shared-memory files, its folder."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def _read_only(parsed: URL, path: Path) -> URL:
    """A database file a reader cannot write (a read-only file or folder, a snapshot someone shared)
    opened read-only. With no write-ahead log beside it, nothing can change it while it is read, so
    it opens ``immutable``: SQLite then needs no shared-memory file, which the folder cannot take."""
    wal = path.with_name(path.name + "-wal")
    options = {"mode": "ro", "uri": "true"}
    if not (wal.exists() and wal.stat().st_size):
        options["immutable"] = "1"
    return parsed.set(database=f"file:{quote(str(path))}").update_query_dict(options)


# A process executing a run's steps refreshes its heartbeat this often; a holder silent for
# STALE_AFTER is taken for dead (a killed process, a lost spot instance) and the run may be resumed.
HEARTBEAT = timedelta(seconds=5)


STALE_AFTER = timedelta(seconds=30)


def new_holder() -> str:
    """This process's claim on a run: host and pid say who, the token tells two claims apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _holder_alive(holder: str, heartbeat: datetime | None) -> bool:
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return heartbeat is not None and now() - _as_utc(heartbeat) < STALE_AFTER


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "workbench.tracking:migrations")
    config.attributes["connection"] = connection
    return config


@functools.cache
def schema_head() -> str:
    """The newest migration's revision, read from the migration scripts themselves."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision of the migration scripts."""
    from alembic.script import ScriptDirectory

    return frozenset(rev.revision for rev in ScriptDirectory.from_config(_alembic_config(None)).walk_revisions())


# The tables of the first schema (migration 0001) and their columns: a database holding exactly
# these, with no version, was made by a workbench from before migrations existed.
FIRST_SCHEMA = {
    "runs": {"id", "status", "started_at", "finished_at", "store", "error"},
    "steps": {"run_id", "name", "position", "status", "started_at", "finished_at", "duration_s", "notebook", "error"},
    "params": {"run_id", "key", "value", "origin"},
    "metrics": {"id", "run_id", "step", "key", "value", "epoch"},
    "artifacts": {"id", "run_id", "step", "key", "uri", "sha256", "bytes", "created_at"},
}


def _revision(connection: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """SQLite has no advisory locks: processes creating one database file queue on a lock file."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the report and the CLI read while a step writes; the busy timeout makes
    # concurrent writers wait instead of failing with "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Tracker:
    """Reads and writes the tracking DB at ``url`` (a SQLAlchemy URL).

    ``check=False`` skips the schema check: only `workbench db upgrade` wants that. ``create=False``
    refuses a SQLite file that does not exist yet instead of creating it.
    """

    def __init__(self, url: str, check: bool = True, create: bool = True) -> None:
        self.url = url
        try:
            self.engine: Engine = create_engine(_resolve(url, create))
        except (ArgumentError, ValueError) as exc:
            raise TrackingError(
                f"db {display_url(url)!r} is not a valid SQLAlchemy URL ({exc}); e.g. sqlite:///artifacts/workbench.db"
            ) from exc
        except ModuleNotFoundError as exc:
            raise TrackingError(
                f"db {display_url(url)!r} needs the driver {exc.name!r}; install it or pick another URL"
            ) from exc
        try:
            self._refuse_foreign()  # before the SQLite pragmas (WAL): a database not ours stays as it was
            if self.engine.dialect.name == "sqlite" and self.engine.url.query.get("mode") != "ro":
                self.engine.dispose()  # the connections made from now on get the pragmas
                event.listen(self.engine, "connect", _sqlite_pragmas)
            if check:
                self._check_schema()
            else:
                self.engine.connect().close()
        except OperationalError as exc:
            raise TrackingError(
                f"db {display_url(url)!r} is unreachable: {str(exc.orig).strip().splitlines()[0]}; check the db parameter"
            ) from exc
        except DatabaseError as exc:  # e.g. SQLite's "file is not a database"
            raise TrackingError(
                f"db {display_url(url)!r} is not a usable tracking database ({str(exc.orig).strip().splitlines()[0]}); "
                "point db at another file, or move this one aside"
            ) from exc

    # schema -----------------------------------------------------------------------------------
    def _refuse_foreign(self) -> None:
        """Refuse a database that holds another application's tables, before anything is written.

        A database with no workbench schema version may be empty (created here), or hold the
        tables of a workbench from before migrations (stamped and upgraded); anything else there
        (an unrelated ``runs`` table, another application's Alembic version) is not ours to change.
        """
        with self.engine.connect() as conn:
            inspector = inspect(conn)
            names = set(inspector.get_table_names()) - {"alembic_version"}
            # the version after the tables: another process creating this database commits both at
            # once, so tables seen here come with a version read after them (never "foreign" ones)
            revision = _revision(conn)
            if revision is None:
                foreign = sorted(
                    name
                    for name in names
                    if name not in FIRST_SCHEMA
                    or not FIRST_SCHEMA[name] <= {c["name"] for c in inspector.get_columns(name)}
                )
        shown = display_url(self.url)
        if revision is not None and revision not in known_revisions():
            raise TrackingError(
                f"db {shown!r} is at schema {revision!r}, which no workbench migration knows (another application's, "
                "or a newer workbench's); point db at a database of its own"
            )
        if revision is None and foreign:
            listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise TrackingError(
                f"db {shown!r} holds tables that are not workbench's ({listed}); nothing was changed: point db at "
                "a database of its own, or an empty one"
            )

    def _check_schema(self) -> None:
        """A new, empty database is created at the current schema; an older one is never upgraded
        behind the user's back (that can lock or break a shared production database)."""
        head = schema_head()
        if self._state()[0] == head:
            return
        with _migration_lock(self.engine):  # another process may be creating it right now
            current, empty = self._state()
            if current == head:
                return
            if current is None and empty:
                self._upgrade()
                return
        raise TrackingError(
            f"db {display_url(self.url)!r} is at schema {current or 'unversioned'}, this workbench needs {head}; "
            "back it up, then run `workbench db upgrade` with the same -p/--set"
        )

    def _state(self) -> tuple[str | None, bool]:
        """The schema revision, and whether the database has no workbench tables at all."""
        with self.engine.connect() as conn:
            return _revision(conn), not inspect(conn).has_table("runs")

    def upgrade(self) -> str:
        """Create or upgrade the schema to the current revision; idempotent, and safe when several
        processes try at once (they queue on a lock, then find the work done)."""
        with _migration_lock(self.engine):
            self._upgrade()
        return schema_head()

    def _upgrade(self) -> None:
        from alembic import command

        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(74837)")  # one migrator at a time
            config = _alembic_config(conn)
            if _revision(conn) is None and inspect(conn).has_table("runs"):
                command.stamp(config, "0001")  # tables made before migrations existed: the first schema
            command.upgrade(config, "head")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise TrackingError(f"db {display_url(self.url)!r}: write failed: {str(exc).splitlines()[0]}") from exc

    def _write(self, *statements: Any) -> None:
        with self._transaction() as conn:
            for stmt in statements:
                conn.execute(stmt)

    # runs -------------------------------------------------------------------------------------
    def create_run(
        self,
        store: str,
        values: dict[str, Any],
        origin: dict[str, str],
        run_id: str | None = None,
        holder: str | None = None,
        name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """A `workbench run`'s row, parameters, name and tags; ``holder`` claims it from the start."""
        run_id = run_id or new_run_id()
        rows = [
            {"run_id": run_id, "key": k, "value": json.dumps(mask_value(v)), "origin": display_url(origin.get(k, ""))}
            for k, v in values.items()
        ]
        started = now()
        self._write(
            insert(runs).values(
                id=run_id,
                status="running",
                started_at=started,
                store=store,
                launcher="workbench",
                holder=holder,
                heartbeat_at=started if holder else None,
                name=name,
            ),
            *([insert(params).values(rows)] if rows else []),
            *(
                [insert(run_tags).values([{"run_id": run_id, "key": k, "value": v} for k, v in tags.items()])]
                if tags
                else []
            ),
        )
        return run_id

    def record_parameters(self, run_id: str, values: dict[str, Any], origin: dict[str, str]) -> None:
        """Record (or replace) some of a run's parameters: a notebook run records each notebook's own
        as it starts, so running one again with other values keeps the values it last ran with."""
        if not values:
            return
        rows = [
            {"run_id": run_id, "key": k, "value": json.dumps(mask_value(v)), "origin": display_url(origin.get(k, ""))}
            for k, v in values.items()
        ]
        self._write(
            delete(params).where(params.c.run_id == run_id, params.c.key.in_(list(values))), insert(params).values(rows)
        )

    def _known(self, run_id: str) -> None:
        if not self.has_run(run_id):
            raise TrackingError(f"no run {run_id!r} in db {display_url(self.url)!r}; `workbench runs` lists the runs")

    def tag_run(self, run_id: str, key: str, value: str) -> None:
        """Set one tag of a run (a tag it already has takes the new value)."""
        self._known(run_id)
        self._write(
            delete(run_tags).where(run_tags.c.run_id == run_id, run_tags.c.key == key),
            insert(run_tags).values(run_id=run_id, key=key, value=value),
        )

    def note_run(self, run_id: str, note: str) -> None:
        """Set a run's note: free text on what it tried and what came of it."""
        self._known(run_id)
        self._write(update(runs).where(runs.c.id == run_id).values(note=note))

    def ensure_run(self, run_id: str, store: str) -> bool:
        """A notebook run by hand (JupyterLab, plain papermill, a scheduler) gets a run row on first use.

        Returns whether the run is such a notebook-started one rather than a `workbench run`.
        """
        with self.engine.connect() as conn:
            found = conn.execute(select(runs.c.launcher, runs.c.status).where(runs.c.id == run_id)).first()
        if not found:
            self._write(
                insert(runs).values(id=run_id, status="running", started_at=now(), store=store, launcher="notebook")
            )
            return True
        return found[0] == "notebook" or found[1] == "interactive"

    def notebook_step(
        self, run_id: str, name: str, status: str, error: str | None = None, seconds: float | None = None
    ) -> None:
        """Status of a step of a notebook-started run, and the run's status that follows from its steps.

        ``running`` (re)starts the step's clock; ``finished`` and ``failed`` stop it. ``seconds`` is
        the time the step's cells ran (the kernel measures it, leaving out the time a notebook sat idle
        between cells); without it the step lasted from its context being opened to its last executed
        cell. Opening a step again leaves later steps as they are: only new outputs make them stale
        (:meth:`outputs_changed`).
        """
        stamp = now()
        with self._transaction() as conn:
            row = conn.execute(
                select(steps.c.started_at, steps.c.position).where(steps.c.run_id == run_id, steps.c.name == name)
            ).first()
            if row is None:
                position = conn.execute(select(func.count()).where(steps.c.run_id == run_id)).scalar()
                conn.execute(
                    insert(steps).values(run_id=run_id, name=name, position=position, status=status, started_at=stamp)
                )
                started = stamp
            else:
                started = stamp if status == "running" else _as_utc(row[0]) if row[0] else stamp
            done = status != "running"
            took = seconds if seconds is not None else (stamp - started).total_seconds()
            conn.execute(
                update(steps)
                .where(steps.c.run_id == run_id, steps.c.name == name)
                .values(
                    status=status,
                    started_at=started,
                    finished_at=stamp if done else None,
                    duration_s=took if done else None,
                    error=error,
                )
            )
            _settle_run(conn, run_id, stamp, error=error if status == "failed" else None)

    def step_outputs(self, run_id: str, step: str) -> dict[str, tuple[int, str | None]]:
        """The artifacts ``step`` of the run recorded: key -> (order of its latest record, its sha256)."""
        query = (
            select(artifacts.c.key, artifacts.c.id, artifacts.c.sha256)
            .where(artifacts.c.run_id == run_id, artifacts.c.step == step)
            .order_by(artifacts.c.id)
        )
        with self.engine.connect() as conn:
            return {key: (order, sha256) for key, order, sha256 in conn.execute(query)}

    def outputs_changed(self, run_id: str, step: str, files: list[str]) -> list[str]:
        """``step`` of a notebook run wrote outputs unlike those its later steps read (``files``, by
        name in its folder): each later finished step is marked stale, saying so. Returns the steps
        marked now, in pipeline order; a step rerun that wrote the same bytes marks none."""
        later = list(STEP_ORDER[STEP_ORDER.index(step) + 1 :]) if step in STEP_ORDER else []
        if not later or not files:
            return []
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        why = f"{step} wrote a new {shown} after it ran; run this step again"
        with self._transaction() as conn:
            marked = set(
                conn.execute(
                    select(steps.c.name).where(
                        steps.c.run_id == run_id, steps.c.name.in_(later), steps.c.status == "finished"
                    )
                ).scalars()
            )
            if marked:
                conn.execute(
                    update(steps)
                    .where(steps.c.run_id == run_id, steps.c.name.in_(marked))
                    .values(status="stale", error=why)
                )
                _settle_run(conn, run_id, now())
        return [name for name in later if name in marked]

    # holding a run ----------------------------------------------------------------------------
    def claim_run(self, run_id: str, holder: str) -> None:
        """Take the run for this process, unless a live process holds it (here or on another machine).

        The check and the take are one conditional UPDATE, so of two processes claiming at once
        exactly one wins, on SQLite and on PostgreSQL alike.
        """
        with self.engine.connect() as conn:
            row = conn.execute(select(runs.c.holder, runs.c.heartbeat_at).where(runs.c.id == run_id)).first()
        if row is None:
            raise TrackingError(f"no run {run_id!r} in db {display_url(self.url)!r}; `workbench runs` lists the runs")
        seen, heartbeat = row
        if seen and seen != holder and _holder_alive(seen, heartbeat):
            raise TrackingError(
                f"run {run_id} is being executed by {seen.rsplit(':', 1)[0]} (host:pid); "
                "wait for it to end, or stop that process first"
            )
        claimed = (
            update(runs)
            .where(runs.c.id == run_id, runs.c.holder.is_(None) if seen is None else runs.c.holder == seen)
            .values(holder=holder, heartbeat_at=now())
        )
        with self._transaction() as conn:
            taken = conn.execute(claimed).rowcount == 1
        if not taken:
            raise TrackingError(f"run {run_id} was claimed by another process just now; wait for it to end")

    def heartbeat(self, run_id: str, holder: str) -> None:
        self._write(update(runs).where(runs.c.id == run_id, runs.c.holder == holder).values(heartbeat_at=now()))

    def release_run(self, run_id: str, holder: str) -> None:
        self._write(update(runs).where(runs.c.id == run_id, runs.c.holder == holder).values(holder=None))

    def reopen_run(self, run_id: str) -> None:
        self._write(update(runs).where(runs.c.id == run_id).values(status="running", finished_at=None, error=None))

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        self._write(update(runs).where(runs.c.id == run_id).values(status=status, finished_at=now(), error=error))

    def report_written(self, run_id: str) -> None:
        """A run left ``incomplete`` by a report that could not be written is finished once it is."""
        self._write(
            update(runs).where(runs.c.id == run_id, runs.c.status == "incomplete").values(status="finished", error=None)
        )

    def plan_steps(self, run_id: str, names: list[str]) -> None:
        self._write(
            insert(steps).values(
                [{"run_id": run_id, "name": n, "position": i, "status": "pending"} for i, n in enumerate(names)]
            )
        )

    def start_step(self, run_id: str, name: str, notebook: str) -> None:
        self._write(
            update(steps)
            .where(steps.c.run_id == run_id, steps.c.name == name)
            .values(status="running", started_at=now(), notebook=notebook)
        )

    def finish_step(self, run_id: str, name: str, status: str, duration_s: float, error: str | None = None) -> None:
        self._write(
            update(steps)
            .where(steps.c.run_id == run_id, steps.c.name == name)
            .values(status=status, finished_at=now(), duration_s=duration_s, error=error)
        )

    # metrics and artifacts --------------------------------------------------------------------
    def log_metrics(self, run_id: str, step: str, values: dict[str, float], epoch: int | None = None) -> None:
        rows = [
            {"run_id": run_id, "step": step, "key": k, "value": float(v), "epoch": epoch} for k, v in values.items()
        ]
        if rows:
            self._write(insert(metrics).values(rows))

    def clear_history(self, run_id: str, step: str) -> None:
        """Forget a step's per-epoch metrics (a notebook run that retrains from scratch)."""
        self._write(
            delete(metrics).where(metrics.c.run_id == run_id, metrics.c.step == step, metrics.c.epoch.isnot(None))
        )

    def log_artifact(self, run_id: str, step: str, info: ArtifactInfo) -> None:
        self._write(
            insert(artifacts).values(
                run_id=run_id,
                step=step,
                key=info.key,
                uri=info.uri,
                sha256=info.sha256,
                bytes=info.bytes,
                created_at=now(),
            )
        )

    def forget_artifacts(self, run_id: str, keys: list[str]) -> None:
        """Drop the records of artifacts a step removed before writing them again in another form:
        reuse and the report then see only what the step's latest attempt wrote."""
        if keys:
            self._write(delete(artifacts).where(artifacts.c.run_id == run_id, artifacts.c.key.in_(keys)))

    # reading ----------------------------------------------------------------------------------
    def has_run(self, run_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is not None

    def get_run(self, run_id: str) -> dict[str, Any]:
        """Everything known about one run, JSON-ready."""
        with self.engine.connect() as conn:
            run = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
            if run is None:
                raise TrackingError(
                    f"no run {run_id!r} in db {display_url(self.url)!r}; `workbench runs` lists the runs"
                )
            step_rows = (
                conn.execute(select(steps).where(steps.c.run_id == run_id).order_by(steps.c.position)).mappings().all()
            )
            param_rows = (
                conn.execute(select(params).where(params.c.run_id == run_id).order_by(params.c.key)).mappings().all()
            )
            tag_rows = conn.execute(
                select(run_tags.c.key, run_tags.c.value).where(run_tags.c.run_id == run_id).order_by(run_tags.c.key)
            ).all()
            metric_rows = (
                conn.execute(select(metrics).where(metrics.c.run_id == run_id).order_by(metrics.c.id)).mappings().all()
            )
            artifact_rows = (
                conn.execute(select(artifacts).where(artifacts.c.run_id == run_id).order_by(artifacts.c.id))
                .mappings()
                .all()
            )
        final = {r["key"]: r["value"] for r in metric_rows if r["epoch"] is None}
        recorded_by = {r["key"]: r["step"] for r in metric_rows if r["epoch"] is None}  # the latest record's step
        stale_steps = {s["name"] for s in step_rows if s["status"] == "stale"}
        history: dict[str, list[dict[str, Any]]] = {}
        for r in metric_rows:
            if r["epoch"] is not None:
                history.setdefault(r["key"], []).append({"epoch": r["epoch"], "value": r["value"]})
        latest: dict[str, dict[str, Any]] = {}
        for a in artifact_rows:  # a rewritten artifact (e.g. a rerun step) keeps its latest record
            latest[a["key"]] = {k: a[k] for k in ("step", "key", "uri", "sha256", "bytes")}
        return {
            "id": run["id"],
            "name": run["name"],
            "tags": dict(tag_rows),
            "note": run["note"],
            "status": run["status"],
            "store": run["store"],
            "launcher": run["launcher"],
            "started_at": _iso(run["started_at"]),
            "finished_at": _iso(run["finished_at"]),
            "duration_s": run_seconds(run, _total(s["duration_s"] for s in step_rows)),
            "error": run["error"],
            "steps": [
                {
                    k: (_iso(s[k]) if k.endswith("_at") else s[k])
                    for k in (
                        "name",
                        "status",
                        "started_at",
                        "finished_at",
                        "duration_s",
                        "notebook",
                        "error",
                        "reused_from",
                        "reuse_note",
                    )
                }
                for s in step_rows
            ],
            "parameters": {p["key"]: mask_value(json.loads(p["value"])) for p in param_rows},
            "origins": {p["key"]: p["origin"] for p in param_rows},  # a file, --set, notebook or papermill
            "metrics": final,
            "metric_steps": recorded_by,  # metric -> the step that recorded its final value
            # metric -> its step, for each final metric whose step is stale: a result of earlier inputs
            "stale_metrics": {k: step for k, step in recorded_by.items() if step in stale_steps},
            "history": history,
            "artifacts": list(latest.values()),
        }

    def recorded_sha256(self, key: str) -> str | None:
        """The sha256 recorded for the artifact ``key`` (``runs/<id>/<step>/<file>``) when it was
        last written, or None when none was recorded."""
        query = select(artifacts.c.sha256).where(artifacts.c.key == key).order_by(artifacts.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def latest_with_artifacts(self, *suffixes: str, validated: bool = False) -> str | None:
        """The newest run that recorded artifacts with every one of these key suffixes (newest by
        the first suffix's record): a model is usable only with the inputs it was trained on.

        ``validated``: only a run whose model :meth:`model_doubts` has nothing against (what
        ``latest`` means for scoring and serving): a model that failed validation is never picked
        because it happens to be the newest.
        """
        first, *rest = suffixes
        newest = func.max(artifacts.c.id)
        query = select(artifacts.c.run_id).where(artifacts.c.key.endswith("/" + first))
        for suffix in rest:
            query = query.where(
                artifacts.c.run_id.in_(select(artifacts.c.run_id).where(artifacts.c.key.endswith("/" + suffix)))
            )
        query = query.group_by(artifacts.c.run_id).order_by(newest.desc())
        with self.engine.connect() as conn:
            if not validated:
                return conn.execute(query.limit(1)).scalar()
            candidates = list(conn.execute(query).scalars())
        doubts = self.model_doubts(candidates)
        return next((run_id for run_id in candidates if doubts[run_id] is None), None)

    def latest_model(self, own: str | None = None) -> str | None:
        """The run ``latest`` names for scoring and serving: ``own`` (the run asking) when it exported
        a model itself, so a run scores what it trained; else the newest run whose export finished
        and whose parity verdict passed, neither stale since (see :meth:`model_doubts`)."""
        suffixes = (ONNX_MODEL.path, ENCODING.path)
        if own is not None:
            with self.engine.connect() as conn:
                keys = list(conn.execute(select(artifacts.c.key).where(artifacts.c.run_id == own)).scalars())
            if all(any(key.endswith("/" + suffix) for key in keys) for suffix in suffixes):
                return own
        return self.latest_with_artifacts(*suffixes, validated=True)

    def model_doubts(self, run_ids: list[str]) -> dict[str, str | None]:
        """For each run, why its exported model is not vouched for, or None when it is: its export
        finished and its parity verdict passed, and neither has gone stale since (train ran again)."""
        found: dict[str, dict[str, tuple[str, str | None]]] = {run_id: {} for run_id in run_ids}
        verdict: dict[str, float] = {}
        last = (
            select(func.max(metrics.c.id))
            .where(
                metrics.c.run_id.in_(run_ids),
                metrics.c.step == "validate",
                metrics.c.key == "parity_pass",
                metrics.c.epoch.is_(None),
            )
            .group_by(metrics.c.run_id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(steps.c.run_id, steps.c.name, steps.c.status, steps.c.error).where(
                    steps.c.run_id.in_(run_ids), steps.c.name.in_(("export", "validate"))
                )
            )
            for run_id, name, status, error in rows:
                found[run_id][name] = (status, error)
            for run_id, value in conn.execute(select(metrics.c.run_id, metrics.c.value).where(metrics.c.id.in_(last))):
                verdict[run_id] = value
        return {run_id: _doubt(found[run_id], verdict.get(run_id)) for run_id in run_ids}

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first, with each run's final metrics."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(runs).order_by(runs.c.started_at.desc()).limit(limit)).mappings().all()
            ids = [r["id"] for r in rows]
            final = conn.execute(
                select(metrics.c.run_id, metrics.c.key, func.max(metrics.c.id))
                .where(metrics.c.run_id.in_(ids), metrics.c.epoch.is_(None))
                .group_by(metrics.c.run_id, metrics.c.key)
            ).all()
            latest_ids = [row[2] for row in final]
            values = conn.execute(
                select(metrics.c.run_id, metrics.c.key, metrics.c.value).where(metrics.c.id.in_(latest_ids))
            ).all()
            step_time = steps_seconds(conn, ids)
        by_run: dict[str, dict[str, float]] = {}
        for run_id, key, value in values:
            by_run.setdefault(run_id, {})[key] = value
        return [
            {
                "id": r["id"],
                "status": r["status"],
                "started_at": _iso(r["started_at"]),
                "duration_s": run_seconds(r, step_time.get(r["id"])),
                "metrics": by_run.get(r["id"], {}),
            }
            for r in rows
        ]

    # reusing steps ------------------------------------------------------------------------------
    def step_artifacts(self, run_id: str, names: Iterable[str]) -> list[dict[str, Any]]:
        """The artifacts these steps of the run recorded, the latest record of each key."""
        query = (
            select(artifacts.c.step, artifacts.c.key, artifacts.c.uri, artifacts.c.sha256, artifacts.c.bytes)
            .where(artifacts.c.run_id == run_id, artifacts.c.step.in_(list(names)))
            .order_by(artifacts.c.id)
        )
        with self.engine.connect() as conn:
            latest = {row["key"]: dict(row) for row in conn.execute(query).mappings()}
        return list(latest.values())

    def reuse_candidates(self, step: str, key: str, store: str, exclude: str) -> list[str]:
        """Runs whose ``step`` finished with this key under ``workbench run`` in this store, newest
        first. Notebook runs are never sources: their cells may have been edited or run out of order."""
        query = (
            select(steps.c.run_id)
            .join(runs, runs.c.id == steps.c.run_id)
            .where(
                steps.c.name == step,
                steps.c.cache_key == key,
                steps.c.status == "finished",
                runs.c.launcher == "workbench",
                runs.c.store == store,
                runs.c.id != exclude,
            )
            .order_by(steps.c.finished_at.desc())
            .limit(5)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def last_keyed_step(self, step: str, exclude: str) -> tuple[str, dict[str, str]] | None:
        """The newest finished ``step`` of a `workbench run` that recorded its key's ingredients:
        what a step that cannot be reused is compared with, to say what changed."""
        query = (
            select(steps.c.run_id, steps.c.ingredients)
            .join(runs, runs.c.id == steps.c.run_id)
            .where(
                steps.c.name == step,
                steps.c.status == "finished",
                steps.c.ingredients.isnot(None),
                runs.c.launcher == "workbench",
                runs.c.id != exclude,
            )
            .order_by(steps.c.finished_at.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return (row[0], json.loads(row[1])) if row else None

    def set_step_key(self, run_id: str, step: str, key: str, ingredients: dict[str, str], note: str) -> None:
        """A step's reuse key, what went into it, and the line saying why it runs or was reused."""
        self._write(
            update(steps)
            .where(steps.c.run_id == run_id, steps.c.name == step)
            .values(cache_key=key, ingredients=json.dumps(ingredients, sort_keys=True), reuse_note=note)
        )

    def record_reuse(
        self, run_id: str, step: str, source: str, copies: list[ArtifactInfo], notebook: str | None, seconds: float
    ) -> None:
        """Mark ``step`` finished as reused from run ``source``, in one transaction: its copied
        artifacts, and the source step's metrics and history. Until it commits, the step is not done
        (an interruption leaves it to run again on resume)."""
        stamp = now()
        copied = select(metrics.c.key, metrics.c.value, metrics.c.epoch).where(
            metrics.c.run_id == source, metrics.c.step == step
        )
        with self._transaction() as conn:
            rows = [{"run_id": run_id, "step": step, **row} for row in conn.execute(copied).mappings()]
            if rows:
                conn.execute(insert(metrics).values(rows))
            if copies:
                conn.execute(
                    insert(artifacts).values(
                        [
                            {
                                "run_id": run_id,
                                "step": step,
                                "key": info.key,
                                "uri": info.uri,
                                "sha256": info.sha256,
                                "bytes": info.bytes,
                                "created_at": stamp,
                            }
                            for info in copies
                        ]
                    )
                )
            conn.execute(
                update(steps)
                .where(steps.c.run_id == run_id, steps.c.name == step)
                .values(
                    status="finished",
                    started_at=stamp,
                    finished_at=stamp,
                    duration_s=seconds,
                    notebook=notebook,
                    error=None,
                    reused_from=source,
                )
            )

    def remembered_hash(self, path: str, size: int, mtime_ns: int) -> str | None:
        """A local file's sha256 as last hashed here, if its size and modification time still match."""
        query = select(file_hashes.c.sha256).where(
            file_hashes.c.host == socket.gethostname(),
            file_hashes.c.path == path,
            file_hashes.c.bytes == size,
            file_hashes.c.mtime_ns == mtime_ns,
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def remember_hash(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        host = socket.gethostname()
        self._write(
            delete(file_hashes).where(file_hashes.c.host == host, file_hashes.c.path == path),
            insert(file_hashes).values(host=host, path=path, bytes=size, mtime_ns=mtime_ns, sha256=sha256),
        )


def _settle_run(conn: Any, run_id: str, stamp: datetime, **also: str | None) -> None:
    """A notebook run's status from its steps' (failed, running or stale if any step is); ``also``
    sets other columns of the run, e.g. ``error`` (its failing cell's line, or None)."""
    states = set(conn.execute(select(steps.c.status).where(steps.c.run_id == run_id)).scalars())
    overall = next((state for state in ("failed", "running", "stale") if state in states), "finished")
    conn.execute(
        update(runs)
        .where(runs.c.id == run_id)
        .values(status=overall, finished_at=None if overall == "running" else stamp, **also)
    )


def _doubt(steps_found: dict[str, tuple[str, str | None]], parity_pass: float | None) -> str | None:
    """What stands against a run's model, from its export and validate steps and its last verdict."""
    export, export_error = steps_found.get("export", ("missing", None))
    validate, validate_error = steps_found.get("validate", ("missing", None))
    if export == "stale":
        return f"its export is stale ({export_error})"
    if export != "finished":
        return f"its export step is {export}"
    if validate == "stale":
        return f"its parity verdict is stale ({validate_error})"
    if validate == "missing":
        return "it has no parity verdict (its validate step never ran)"
    if parity_pass == 0:
        return "it failed validation (parity FAIL)"
    if validate == "failed":
        return f"its validate step failed ({validate_error})"
    if validate != "finished" or parity_pass is None:
        return f"its validate step is {validate}, with no parity verdict"
    return None


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every value written here is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return _as_utc(value).isoformat(timespec="seconds") if value else None


def run_seconds(run: Any, step_time: float | None) -> float | None:
    """A run's seconds (``run`` a row of ``runs``): a `workbench run`'s from its start to its end; a
    notebook run's, the time its steps' cells ran (``step_time``, the sum of its steps' seconds),
    not the hours a notebook may sit open between cells. None while it runs."""
    if run["launcher"] != "notebook" or run["finished_at"] is None:
        return _duration(run["started_at"], run["finished_at"])
    return None if step_time is None else round(step_time, 1)


def steps_seconds(conn: Any, run_ids: list[str]) -> dict[str, float]:
    """The sum of each run's step seconds (runs none of whose steps has any are left out)."""
    query = (
        select(steps.c.run_id, func.sum(steps.c.duration_s))
        .where(steps.c.run_id.in_(run_ids), steps.c.duration_s.isnot(None))
        .group_by(steps.c.run_id)
    )
    return {run_id: float(total) for run_id, total in conn.execute(query)} if run_ids else {}


def _total(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    return round((_as_utc(end) - _as_utc(start)).total_seconds(), 1) if start and end else None
