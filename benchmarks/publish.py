"""Publishing prediction rows to PostgreSQL: workbench's COPY path against pandas' INSERTs.

All three write the same frame of prediction rows (backend, row, predicted, confidence, actual,
run_id, step)
into fresh tables of one throwaway PostgreSQL server, one after another in this process.
Target: workbench at least 10x faster than ``DataFrame.to_sql(method="multi")``.

    python benchmarks/publish.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import create_engine, text

from workbench.storage.publish import Publisher

# the local S3 and PostgreSQL servers are the tests' helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.localpg import throwaway_postgres


def predictions(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "backend": "onnxruntime",
            "row": np.arange(rows),
            "predicted": rng.integers(0, 10, rows),
            "confidence": rng.random(rows).astype(np.float32),
            "actual": rng.integers(0, 10, rows),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    frame = predictions(args.rows)
    with throwaway_postgres() as new_database:
        url = new_database()
        engine = create_engine(url)
        tagged = frame.assign(run_id="bench", step="score")

        def workbench() -> None:
            Publisher(url, "via_workbench", "bench", "score").append(frame)

        def multi() -> None:
            # 5,000 rows x 7 columns stays under PostgreSQL's 65,535 parameters per statement
            tagged.to_sql("via_multi", engine, index=False, method="multi", chunksize=5_000)

        def plain() -> None:
            tagged.to_sql("via_plain", engine, index=False, chunksize=10_000)

        seconds = {}
        for name, job in (("workbench (COPY)", workbench), ('to_sql(method="multi")', multi), ("to_sql()", plain)):
            started = time.perf_counter()
            job()
            seconds[name] = time.perf_counter() - started
            print(f"  {name:<24} {seconds[name]:8.1f} s  {args.rows / seconds[name]:>10,.0f} rows/s", flush=True)
        with engine.connect() as conn:
            for table in ("via_workbench", "via_multi", "via_plain"):
                assert conn.execute(text(f"select count(*) from {table}")).scalar() == args.rows
        engine.dispose()
    fast = seconds["workbench (COPY)"]
    multi_ratio = seconds['to_sql(method="multi")'] / fast
    plain_ratio = seconds["to_sql()"] / fast
    print(f"{args.rows:,} rows: workbench is {multi_ratio:.1f}x faster than to_sql(method='multi') (target >= 10)")
    print(f"{args.rows:,} rows: workbench is {plain_ratio:.1f}x faster than plain to_sql")


if __name__ == "__main__":
    main()
