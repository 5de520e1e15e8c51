"""Preparing a large table from S3: rows/s, and peak memory as the rows grow tenfold.

A generated digits-shaped table (64 integer features and a label) of N and 10 N rows, as CSV and
as its Parquet twin, is uploaded to a local S3 endpoint (moto's server on 127.0.0.1). Each is
prepared by ``prepare_data`` (download, check, stratified split into Parquet, normalisation) in a
fresh process that reports its time and peak RSS. Target: peak memory for 10 N rows at most 1.5x
that for N rows.

    python benchmarks/prepare_large.py [--rows 500000]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from workbench.storage.sources import read_source

# the local S3 and PostgreSQL servers are the tests' helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.locals3 import moto_endpoint, s3_environment

BLOCK = 100_000


def make_sources(folder: Path, rows: int) -> list[Path]:
    """``rows`` digits rows drawn with replacement, written block by block as CSV and Parquet."""
    digits = pa.Table.from_pandas(read_source("bundled:digits"), preserve_index=False)
    rng = np.random.default_rng(rows)
    csv_path, parquet_path = folder / f"digits-{rows}.csv", folder / f"digits-{rows}.parquet"
    with pa_csv.CSVWriter(csv_path, digits.schema) as csv, pq.ParquetWriter(parquet_path, digits.schema) as parquet:
        for start in range(0, rows, BLOCK):
            block = digits.take(rng.integers(0, digits.num_rows, min(BLOCK, rows - start)))
            csv.write_table(block)
            parquet.write_table(block)
    return [csv_path, parquet_path]


def child(uri: str, folder: str) -> None:
    """Prepare ``uri`` in this fresh process; print seconds and peak RSS (MiB)."""
    from workbench.config.schema import DataParams
    from workbench.run.context import step_context
    from workbench.stages.prepare_data import prepare_data

    ctx = step_context("prepare", "bench", f"{folder}/store", f"sqlite:///{folder}/bench.db")
    started = time.perf_counter()
    prepare_data(ctx, DataParams(source=uri), seed=0, progress=False)
    print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000, help="the smaller size; the larger is 10x")
    parser.add_argument("--child", nargs=2, metavar=("URI", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = (args.rows, args.rows * 10)
    with tempfile.TemporaryDirectory() as tmp_name, moto_endpoint() as endpoint:
        tmp = Path(tmp_name)
        os.environ.update(s3_environment(endpoint))  # for boto3 here and the child processes
        import boto3

        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        print(f"generating {sizes[0]:,} and {sizes[1]:,} rows as CSV and Parquet, uploading to {endpoint}")
        uris = {}
        for rows in sizes:
            for path in make_sources(tmp, rows):
                s3.upload_file(str(path), "bench", path.name)
                uris[rows, path.suffix[1:]] = (f"s3://bench/{path.name}", path.stat().st_size)
                path.unlink()
        results = {}
        for (rows, fmt), (uri, size) in uris.items():
            work = tmp / f"{fmt}-{rows}"
            work.mkdir()
            out = subprocess.run([sys.executable, __file__, "--child", uri, str(work)], capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"preparing {uri} failed:\n{out.stderr[-2000:]}")
            seconds, peak = map(float, out.stdout.split()[-2:])
            results[rows, fmt] = peak
            print(
                f"  {fmt:<8}{rows:>11,} rows  {size / 2**20:>8,.0f} MiB  {seconds:>7.1f} s  "
                f"{rows / seconds:>10,.0f} rows/s  peak RSS {peak:>7,.0f} MiB"
            )
        for fmt in ("csv", "parquet"):
            ratio = results[sizes[1], fmt] / results[sizes[0], fmt]
            print(f"{fmt} memory ratio ({sizes[1]:,} vs {sizes[0]:,} rows): {ratio:.3f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
