"""Publishing result rows to a SQL table that the rest of the company reads.

Rows are tagged with the run id; publishing a run again first removes that run's rows, so a rerun
or a resumed run never duplicates them. The table is created on first use with the frame's column
types. On PostgreSQL (RDS, and Redshift-compatible loads) rows go in with COPY, which is an order
of magnitude faster than INSERTs; other databases get batched INSERTs.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from sqlalchemy import MetaData, Table, create_engine, delete, inspect
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from workbench.errors import WorkbenchError
from workbench.tracking import display_url

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Engine


class PublishError(WorkbenchError):
    """The publish database or table cannot take the rows."""


class Publisher:
    """Appends frames to ``table`` at ``url`` (any SQLAlchemy URL) for one run."""

    def __init__(self, url: str, table: str, run_id: str) -> None:
        self.url, self.table, self.run_id = url, table, run_id
        self.columns: list[str] | None = None
        try:
            self.engine: Engine = create_engine(url)
            with self.engine.begin() as conn:
                if inspect(conn).has_table(table):
                    target = Table(table, MetaData(), autoload_with=conn)
                    if "run_id" not in target.c:
                        raise PublishError(
                            f"publish.table {table!r} at {display_url(url)} has no run_id column; pick another table"
                        )
                    self.columns = list(target.c.keys())
                    conn.execute(delete(target).where(target.c.run_id == run_id))
        except ArgumentError as exc:
            raise PublishError(f"publish.url {display_url(url)!r} is not a valid SQLAlchemy URL ({exc})") from None
        except SQLAlchemyError as exc:
            raise PublishError(f"publish.url {display_url(url)!r}: {str(exc).splitlines()[0]}") from None

    def append(self, frame: pd.DataFrame) -> None:
        frame = frame.assign(run_id=self.run_id)
        if self.columns is None:  # first rows: the table takes their column types
            self._create(frame)
        missing = [c for c in frame.columns if c not in self.columns]
        if missing:
            raise PublishError(
                f"publish.table {self.table!r} at {display_url(self.url)} lacks columns {missing}; "
                "its columns conflict with the results: pick another table"
            )
        try:
            if self.engine.dialect.name == "postgresql":
                self._copy(frame)
            else:
                frame.to_sql(self.table, self.engine, if_exists="append", index=False, chunksize=10_000)
        except SQLAlchemyError as exc:
            raise PublishError(
                f"publish.table {self.table!r} at {display_url(self.url)} rejects the rows ({str(exc.orig).splitlines()[0]})"
            ) from None
        except Exception as exc:  # psycopg's own errors from COPY
            if type(exc).__module__.startswith("psycopg"):
                raise PublishError(
                    f"publish.table {self.table!r} at {display_url(self.url)} rejects the rows ({str(exc).splitlines()[0]})"
                ) from None
            raise

    def _create(self, frame: pd.DataFrame) -> None:
        try:
            frame.head(0).to_sql(self.table, self.engine, if_exists="append", index=False)
        except SQLAlchemyError as exc:
            raise PublishError(
                f"publish.table {self.table!r} at {display_url(self.url)}: cannot create it ({str(exc).splitlines()[0]})"
            ) from None
        self.columns = list(frame.columns)

    def _copy(self, frame: pd.DataFrame) -> None:
        """COPY ... FROM STDIN in CSV: one round trip for the whole frame."""
        buf = io.StringIO()
        frame.to_csv(buf, index=False, header=False)
        columns = ", ".join(f'"{c}"' for c in frame.columns)
        raw = self.engine.raw_connection()
        try:
            with raw.cursor() as cur, cur.copy(f'COPY "{self.table}" ({columns}) FROM STDIN WITH (FORMAT csv)') as copy:
                copy.write(buf.getvalue())
            raw.commit()
        finally:
            raw.close()
