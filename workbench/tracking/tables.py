"""The tracking tables: runs, their steps, parameters, metrics, artifacts, tags and file hashes."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()


runs = Table(
    "runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("store", Text, nullable=False),
    Column("error", Text),
    Column("launcher", String(16)),  # "workbench" (workbench run) or "notebook" (JupyterLab, papermill)
    Column("holder", String(128)),  # host:pid:token of the process executing its steps, if any
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("name", String(128)),  # what people call the run (`workbench run --name`)
    Column("note", Text),
)
Index("ix_runs_started_at", runs.c.started_at)  # the runs listing's default order


steps = Table(
    "steps",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.id"), primary_key=True),
    Column("name", String(32), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("duration_s", Float),
    Column("notebook", Text),
    Column("error", Text),
    Column("cache_key", String(64), index=True),  # digest of everything that decides the step's result
    Column("ingredients", Text),  # JSON: what went into cache_key, to say which one changed
    Column("reused_from", String(64)),  # the run whose artifacts a reused step took
    Column("reuse_note", Text),  # why the step ran or was reused: "train.lr 0.002 -> 0.01 since ..."
)


params = Table(
    "params",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.id"), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
    Column("origin", Text, nullable=False),
)
Index("ix_params_key_run", params.c.key, params.c.run_id)  # one key of every run: filters and sorts


metrics = Table(
    "metrics",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.id"), nullable=False, index=True),
    Column("step", String(32), nullable=False),
    Column("key", String(128), nullable=False),
    Column("value", Float, nullable=False),
    Column("epoch", Integer),
)
Index(  # one final metric of every run, its latest record last
    "ix_metrics_final",
    metrics.c.key,
    metrics.c.run_id,
    metrics.c.id,
    sqlite_where=metrics.c.epoch.is_(None),
    postgresql_where=metrics.c.epoch.is_(None),
)


artifacts = Table(
    "artifacts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.id"), nullable=False, index=True),
    Column("step", String(32), nullable=False),
    Column("key", Text, nullable=False),
    Column("uri", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


run_tags = Table(
    "run_tags",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.id"), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)


file_hashes = Table(  # a local data file's sha256, remembered by path, size and mtime
    "file_hashes",
    metadata,
    Column("host", String(255), primary_key=True),
    Column("path", String(1024), primary_key=True),
    Column("bytes", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
)


aliases = Table(  # where each alias (champion, staging, ...) points now
    "aliases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("run_id", String(64), ForeignKey("runs.id"), nullable=False),
    Column("moved_at", DateTime(timezone=True), nullable=False),
)


alias_moves = Table(  # every move and removal of an alias: the record of who shipped what, and why
    "alias_moves",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, index=True),
    Column("run_id", String(64)),  # None: the alias was removed
    Column("previous", String(64)),
    Column("moved_at", DateTime(timezone=True), nullable=False),
    Column("moved_by", String(255), nullable=False),  # user@host
    Column("reason", Text),
    Column("comparison", Text),  # JSON: the gate's figures, for a promotion
)
