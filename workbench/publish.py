"""Publishing result rows to a SQL table that the rest of the company reads.

Rows are tagged with the run id; publishing a run again first removes that run's rows, so a rerun
or a resumed run never duplicates them.
"""

from __future__ import annotations

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
        try:
            self.engine: Engine = create_engine(url)
            with self.engine.begin() as conn:
                if inspect(conn).has_table(table):
                    target = Table(table, MetaData(), autoload_with=conn)
                    if "run_id" not in target.c:
                        raise PublishError(
                            f"publish.table {table!r} at {display_url(url)} has no run_id column; pick another table"
                        )
                    conn.execute(delete(target).where(target.c.run_id == run_id))
        except ArgumentError as exc:
            raise PublishError(f"publish.url {display_url(url)!r} is not a valid SQLAlchemy URL ({exc})") from None
        except SQLAlchemyError as exc:
            raise PublishError(f"publish.url {display_url(url)!r}: {str(exc).splitlines()[0]}") from None

    def append(self, frame: pd.DataFrame) -> None:
        try:
            frame.assign(run_id=self.run_id).to_sql(
                self.table, self.engine, if_exists="append", index=False, chunksize=10_000
            )
        except SQLAlchemyError as exc:
            raise PublishError(
                f"publish.table {self.table!r} at {display_url(self.url)} rejects the rows ({str(exc.orig).splitlines()[0]}); "
                "its columns conflict with the results: pick another table"
            ) from None
