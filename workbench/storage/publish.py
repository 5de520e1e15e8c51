"""Publishing result rows to a SQL table that the rest of the company reads.

Rows are tagged with the run id and the step; publishing a step again first removes that step's
rows of the run, so a rerun or a resumed run never duplicates them. Validation and scoring write
one shape of prediction row (:func:`prediction_rows`) to ``publish.table`` and their metrics to
``<publish.table>_metrics``, so one query reads both. A table is created on first use with the
frame's column types. On PostgreSQL (RDS, and Redshift-compatible loads) rows go in with COPY,
an order of magnitude faster than INSERTs; other databases get batched INSERTs.
"""

from __future__ import annotations

import functools
import io
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, Table, and_, create_engine, delete, inspect
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from workbench.config.secrets import mask as display_url
from workbench.errors import PublishError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from sqlalchemy.engine import Engine

__all__ = ["PublishError", "Publisher", "prediction_rows", "publish_metrics", "publish_part"]

TAGS = ("run_id", "step")


@functools.cache
def _engine(url: str) -> Engine:
    """One connection pool per database per process, shared by a step's prediction and metric tables."""
    return create_engine(url)


class Publisher:
    """Appends frames to ``table`` at ``url`` (any SQLAlchemy URL) for one step of one run."""

    def __init__(self, url: str, table: str, run_id: str, step: str) -> None:
        self.url, self.table, self.run_id, self.step = url, table, run_id, step
        self.columns: list[str] | None = None
        self.kinds: dict[str, str | None] = {}
        try:
            self.engine = _engine(url)
            with self.engine.begin() as conn:
                if inspect(conn).has_table(table):
                    target = Table(table, MetaData(), autoload_with=conn)
                    lacking = [c for c in TAGS if c not in target.c]
                    if lacking:
                        raise PublishError(
                            f"publish.table {table!r} at {display_url(url)} has no {' or '.join(lacking)} column; "
                            "it holds something else: pick another table"
                        )
                    self.columns = list(target.c.keys())
                    self.kinds = {c.name: _sql_kind(c.type) for c in target.c}
                    conn.execute(delete(target).where(and_(target.c.run_id == run_id, target.c.step == step)))
        except ArgumentError as exc:
            raise PublishError(f"publish.url {display_url(url)!r} is not a valid SQLAlchemy URL ({exc})") from exc
        except SQLAlchemyError as exc:
            raise PublishError(f"publish.url {display_url(url)!r}: {str(exc).splitlines()[0]}") from exc

    def append(self, frame: pd.DataFrame) -> None:
        frame = frame.assign(run_id=self.run_id, step=self.step)
        if self.columns is None:  # first rows: the table takes their column types
            self._create(frame)
        missing = [c for c in frame.columns if c not in self.columns]
        if missing:
            raise PublishError(
                f"publish.table {self.table!r} at {display_url(self.url)} lacks columns {missing}; "
                "its columns conflict with the results: pick another table"
            )
        for name in frame.columns if self.kinds else ():  # SQLite would store text in a number column
            held, given = self.kinds.get(name), _frame_kind(frame[name])
            if held and given and held != given:
                raise PublishError(
                    f"publish.table {self.table!r} at {display_url(self.url)}: column {name!r} holds {held}, and "
                    f"these rows give {given} (another model's table?); pick another table"
                )
        self.kinds = {}  # the first rows settle it for the rest
        try:
            if self.engine.dialect.name == "postgresql":
                self._copy(frame)
            else:
                frame.to_sql(self.table, self.engine, if_exists="append", index=False, chunksize=10_000)
        except SQLAlchemyError as exc:
            raise PublishError(
                f"publish.table {self.table!r} at {display_url(self.url)} rejects the rows ({str(exc.orig).splitlines()[0]})"
            ) from exc

    def _create(self, frame: pd.DataFrame) -> None:
        try:
            frame.head(0).to_sql(self.table, self.engine, if_exists="append", index=False)
        except SQLAlchemyError as exc:
            raise PublishError(
                f"publish.table {self.table!r} at {display_url(self.url)}: cannot create it ({str(exc).splitlines()[0]})"
            ) from exc
        self.columns = list(frame.columns)

    def _copy(self, frame: pd.DataFrame) -> None:
        """COPY ... FROM STDIN in CSV: one round trip for the whole frame."""
        import psycopg  # the driver behind postgresql:// engines; COPY goes through it, not SQLAlchemy

        buf = io.StringIO()
        frame.to_csv(buf, index=False, header=False)
        columns = ", ".join(f'"{c}"' for c in frame.columns)
        raw = self.engine.raw_connection()
        try:
            with raw.cursor() as cur, cur.copy(f'COPY "{self.table}" ({columns}) FROM STDIN WITH (FORMAT csv)') as copy:
                copy.write(buf.getvalue())
            raw.commit()
        except psycopg.Error as exc:
            raise PublishError(
                f"publish.table {self.table!r} at {display_url(self.url)} rejects the rows ({str(exc).splitlines()[0]})"
            ) from exc
        finally:
            raw.close()


def _sql_kind(sql_type: Any) -> str | None:
    """``numbers`` or ``text`` for a column's SQL type, None for anything else (dates, unknown types)."""
    try:
        python = sql_type.python_type
    except NotImplementedError:
        return None
    if python is str:
        return "text"
    return "numbers" if python in (int, float, bool, Decimal) else None


def _frame_kind(column: pd.Series) -> str | None:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
        return "numbers"
    first = column.dropna()[:1].tolist()
    return "text" if first and isinstance(first[0], str) else None


def prediction_rows(predictions: pa.Table, backend: str) -> pd.DataFrame:
    """Rows to publish: backend, row, predicted, confidence, actual (NULL when unlabelled; confidence
    NULL for a predicted number).

    ``actual`` keeps the class type even when empty, so whichever step creates the table gives
    the column its proper type. ``predicted`` and ``confidence`` are NULL for a row scoring could
    not score (a missing feature): integers map to pandas' nullable Int64 and a null confidence
    to NaN, which both INSERT (pandas) and COPY (an empty CSV field) write as NULL.
    """
    import pandas as pd
    import pyarrow as pa

    n = predictions.num_rows
    predicted = predictions.column("predicted")
    actual = predictions.column("actual") if "actual" in predictions.column_names else pa.nulls(n, predicted.type)
    table = pa.table(
        {
            "backend": pa.array([backend] * n, pa.string()),
            "row": predictions.column("row"),
            "predicted": predicted,
            "confidence": (
                predictions.column("confidence")
                if "confidence" in predictions.column_names
                else pa.nulls(n, pa.float64())  # a predicted number has no confidence
            ),
            "actual": actual.cast(predicted.type),
        }
    )
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int64Dtype()}.get)


def publish_part(
    url: str, table: str, run_id: str, step: str, frames: list[pd.DataFrame], rows: tuple[int, int]
) -> None:
    """One partition's prediction rows (numbered ``rows[0]`` up to ``rows[1]``) into ``table``, which
    exists already, in one transaction that first deletes the step's rows in that range: a task that
    runs again after its worker died (even after its COPY committed) replaces its rows, never adds
    them twice. On PostgreSQL the rows go in with COPY; elsewhere with batched INSERTs."""
    import pandas as pd
    from sqlalchemy import text

    frame = pd.concat(frames, ignore_index=True).assign(run_id=run_id, step=step)
    bounds = (run_id, step, rows[0], rows[1])
    replace = f'DELETE FROM "{table}" WHERE run_id = {{}} AND step = {{}} AND "row" >= {{}} AND "row" < {{}}'
    engine = _engine(url)
    shown = f"publish.table {table!r} at {display_url(url)} rejects the rows"
    if engine.dialect.name != "postgresql":
        try:
            with engine.begin() as conn:
                conn.execute(text(replace.format(":a", ":b", ":c", ":d")), dict(zip("abcd", bounds, strict=True)))
                frame.to_sql(table, conn, if_exists="append", index=False, chunksize=10_000)
        except SQLAlchemyError as exc:
            raise PublishError(f"{shown} ({str(exc).splitlines()[0]})") from exc
        return
    import psycopg

    buf = io.StringIO()
    frame.to_csv(buf, index=False, header=False)
    columns = ", ".join(f'"{c}"' for c in frame.columns)
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute(replace.format("%s", "%s", "%s", "%s"), bounds)
            with cur.copy(f'COPY "{table}" ({columns}) FROM STDIN WITH (FORMAT csv)') as copy:
                copy.write(buf.getvalue())
        raw.commit()
    except psycopg.Error as exc:
        raise PublishError(f"{shown} ({str(exc).splitlines()[0]})") from exc
    finally:
        raw.close()


def publish_metrics(url: str, table: str, run_id: str, step: str, metrics: dict[str, float]) -> None:
    """The step's metrics as (name, value) rows in ``<table>_metrics``."""
    import pandas as pd

    frame = pd.DataFrame({"name": list(metrics), "value": [float(v) for v in metrics.values()]})
    Publisher(url, f"{table}_metrics", run_id, step).append(frame)
