"""Preparing a large table: rows/s, and peak memory as the rows grow tenfold.

Two tables, each of N and 10 N rows, as CSV and as its Parquet twin, generated block by block so
that making them takes bounded memory. Every measurement runs in a fresh process that reports its
time and peak RSS (its own ``VmHWM``) and is stopped at a time and a memory limit, so one side that
cannot finish is reported as such instead of taking the machine down.

``--table digits`` (the default): a digits-shaped table (64 integer features and a label), uploaded
to a local S3 endpoint (moto's server on 127.0.0.1) and prepared by ``prepare_data`` from there
(download, check, stratified split into Parquet, encoding fit). Target: peak memory for 10 N rows
at most 1.5x that for N rows.

``--table mixed``: what a real table looks like: 20 numeric columns with 5% gaps, 5 text categories
of 10, 30, 100, 300 and 1,000 levels (Zipf-like frequencies, so the top 50 leave an "other"
bucket; 2% gaps), an ISO date column (2019 to 2024), a unique ID column and a three-class label
that depends on two numbers, a category and the date. It is read from local disk (uploading
gigabytes to moto's in-memory S3 would measure moto). Two sides prepare it:

- workbench: ``prepare_data`` with ``data.drop: [id]``, the whole step: two streamed passes (a CSV
  is kept as Parquet between them), the train/val/test splits (70/15/15, stratified) written as
  Parquet and copied into the run's store, the encoding (imputed and standardised numbers with
  missing indicators, top-50 one-hot categories plus missing and other, date parts) fitted on the
  training split. It encodes no rows: training applies the encoding chunk by chunk.
- scikit-learn, as users write it by hand: ``pandas.read_csv`` / ``read_parquet`` of the whole file,
  the ID dropped, the date turned into year, month, weekday and day of year with pandas,
  ``train_test_split(train_size=0.7, stratify=y)``, then a ``ColumnTransformer`` of
  ``SimpleImputer(mean, add_indicator) + StandardScaler`` on the numbers and date parts and
  ``SimpleImputer(constant) + OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=50)``
  on the categories, fitted on the training rows and used to transform all rows (scikit-learn's
  default sparse output) into the matrix a model would train on. Writing the splits is the
  workbench's counterpart to this transform; the time without it is printed too, the stricter
  comparison.

Targets: workbench peak memory for 10 N rows at most 1.5x that for N rows; workbench rows/s at
least scikit-learn's at each size.

    python benchmarks/prepare_large.py [--rows 500000]
    python benchmarks/prepare_large.py --table mixed [--rows 500000] [--format csv|parquet|both]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from peak_memory import peak_rss_mib

from workbench.storage.sources import read_source

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the local S3 server is the tests' helper

BLOCK = 100_000
NUMBERS = 20
NUMBER_GAPS = 0.05
LEVELS = (10, 30, 100, 300, 1_000)
CATEGORY_GAPS = 0.02
FIRST_DAY, DAYS = np.datetime64("2019-01-01"), 6 * 365 + 2  # 2019-01-01 .. 2024-12-31
NUMERIC_COLUMNS = [f"x{i:02d}" for i in range(NUMBERS)]
CATEGORY_COLUMNS = [f"cat{n}" for n in LEVELS]
SIDES = {"workbench": "workbench", "sklearn": "scikit-learn"}


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


def mixed_block(rng: np.random.Generator, start: int, rows: int) -> pa.Table:
    """Rows ``start`` .. ``start + rows`` of the mixed table (see the module docstring)."""
    columns: dict[str, pa.Array] = {}
    x = np.round(rng.normal(size=(rows, NUMBERS)) * np.linspace(1, 50, NUMBERS) + np.arange(NUMBERS), 3)
    gaps = rng.random((rows, NUMBERS)) < NUMBER_GAPS
    for i, name in enumerate(NUMERIC_COLUMNS):
        columns[name] = pa.array(x[:, i], mask=gaps[:, i])
    effect = 0.0
    for n, name in zip(LEVELS, CATEGORY_COLUMNS, strict=True):
        weights = 1.0 / np.arange(1, n + 1)
        codes = rng.choice(n, size=rows, p=weights / weights.sum())
        if n == LEVELS[0]:
            effect = np.linspace(-1, 1, n)[codes]
        names = pa.array([f"{name}-{k:04d}" for k in range(n)])
        columns[name] = names.take(pa.array(codes, mask=rng.random(rows) < CATEGORY_GAPS))
    days = rng.integers(0, DAYS, rows)
    columns["date"] = pa.array(FIRST_DAY + days.astype("timedelta64[D]")).cast(pa.string())
    columns["id"] = pc.binary_join_element_wise("row-", pa.array(np.arange(start, start + rows)).cast(pa.string()), "")
    filled = np.where(gaps[:, :2], 0.0, x[:, :2])
    score = filled[:, 0] - 0.03 * filled[:, 1] + effect + days / DAYS + rng.normal(scale=0.7, size=rows)
    columns["label"] = pa.array(np.digitize(score, [-0.2, 1.4]).astype(np.int64))
    return pa.table(columns)


def make_mixed(folder: Path, rows: int) -> list[Path]:
    """``rows`` mixed rows, written block by block as CSV and Parquet (one row group per block)."""
    rng = np.random.default_rng(rows)
    csv_path, parquet_path = folder / f"mixed-{rows}.csv", folder / f"mixed-{rows}.parquet"
    csv = parquet = None
    try:
        for start in range(0, rows, BLOCK):
            block = mixed_block(rng, start, min(BLOCK, rows - start))
            if csv is None:
                csv = pa_csv.CSVWriter(csv_path, block.schema)
                parquet = pq.ParquetWriter(parquet_path, block.schema)
            csv.write_table(block)
            parquet.write_table(block)
    finally:
        for writer in (csv, parquet):
            if writer is not None:
                writer.close()
    return [csv_path, parquet_path]


def child_workbench(source: str, folder: str, table: str) -> dict:
    """``prepare_data`` on ``source`` in this fresh process, timed without the imports."""
    from workbench.config.schema import DataParams
    from workbench.run.context import step_context
    from workbench.stages.prepare_data import prepare_data

    ctx = step_context("prepare", "bench", f"{folder}/store", f"sqlite:///{folder}/bench.db")
    params = DataParams(source=source, drop=["id"]) if table == "mixed" else DataParams(source=source)
    started = time.perf_counter()
    prepared = prepare_data(ctx, params, seed=0, progress=False)
    seconds = time.perf_counter() - started
    detail = f"{len(prepared.features)} inputs -> {len(prepared.encoding.features)} features, 3 splits written"
    return {"seconds": seconds, "peak": peak_rss_mib(), "detail": detail}


def child_sklearn(source: str) -> dict:
    """The hand-written pandas + scikit-learn preparation of the mixed table (see the module docstring)."""
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    started = time.perf_counter()
    parquet = source.endswith(".parquet")
    frame = pd.read_parquet(source) if parquet else pd.read_csv(source)
    read = time.perf_counter()
    y = frame.pop("label")
    frame = frame.drop(columns=["id"])
    dates = pd.to_datetime(frame.pop("date"), format="ISO8601")
    parts = {
        "year": dates.dt.year,
        "month": dates.dt.month,
        "weekday": dates.dt.dayofweek,
        "yearday": dates.dt.dayofyear,
    }
    for part, values in parts.items():
        frame[f"date_{part}"] = values
    numbers = NUMERIC_COLUMNS + [f"date_{part}" for part in parts]
    train, _rest, y_train, _y_rest = train_test_split(frame, y, train_size=0.7, stratify=y, random_state=0)
    # read_parquet leaves text gaps as None, read_csv as NaN: the imputer must be told which
    gap = None if parquet else np.nan
    encoder = ColumnTransformer(
        [
            ("numbers", make_pipeline(SimpleImputer(strategy="mean", add_indicator=True), StandardScaler()), numbers),
            (
                "categories",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="<missing>", missing_values=gap),
                    OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=50),
                ),
                CATEGORY_COLUMNS,
            ),
        ]
    )
    encoder.fit(train, y_train)
    fitted = time.perf_counter()
    matrix = encoder.transform(frame)
    done = time.perf_counter()
    detail = (
        f"read {read - started:.1f} s, split+fit {fitted - read:.1f} s, transform {done - fitted:.1f} s "
        f"-> {matrix.shape[0]:,} x {matrix.shape[1]} {type(matrix).__name__}"
    )
    return {"seconds": done - started, "fit_seconds": fitted - started, "peak": peak_rss_mib(), "detail": detail}


def _rss_mib(pid: int) -> float:
    """The process's resident memory now (Linux /proc), 0 where that cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_child(args: list[str], limit_s: float, cap_mib: float) -> dict | str:
    """One measurement in a fresh process: its report, or why it did not finish (time, memory, error)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=out, stderr=err, text=True)
        started, stopped = time.monotonic(), None
        while proc.poll() is None:
            if time.monotonic() - started > limit_s:
                stopped = f"stopped after the {limit_s:,.0f} s limit"
            elif cap_mib and _rss_mib(proc.pid) > cap_mib:
                stopped = f"stopped at the {cap_mib / 1024:,.1f} GiB memory cap"
            if stopped:
                proc.kill()
                proc.wait()
                return stopped
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            lines = err.read().strip().splitlines() or [f"exit status {proc.returncode}"]
            if proc.returncode < 0:
                lines.append(f"killed by signal {-proc.returncode} (out of memory?)")
            return lines[-1][:300]
        return json.loads(out.read().strip().splitlines()[-1])


def _row(rows: int, fmt: str, side: str, result: dict | str) -> str:
    head = f"{rows:>11,}  {fmt:<8}{SIDES[side]:<14}"
    if isinstance(result, str):
        return f"{head}did not finish: {result}"
    seconds = result["seconds"]
    return f"{head}{seconds:>9.1f}{rows / seconds:>12,.0f}{result['peak']:>11,.0f}  {result['detail']}"


def main_digits(args: argparse.Namespace, cap_mib: float) -> None:
    sys.path.insert(0, str(TESTS))
    from support.locals3 import moto_endpoint, s3_environment

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
            result = run_child(["workbench", uri, str(work), "digits"], args.timeout, cap_mib)
            if isinstance(result, str):
                sys.exit(f"preparing {uri} did not finish: {result}")
            seconds, peak = result["seconds"], result["peak"]
            results[rows, fmt] = peak
            print(
                f"  {fmt:<8}{rows:>11,} rows  {size / 2**20:>8,.0f} MiB  {seconds:>7.1f} s  "
                f"{rows / seconds:>10,.0f} rows/s  peak RSS {peak:>7,.0f} MiB"
            )
        for fmt in ("csv", "parquet"):
            ratio = results[sizes[1], fmt] / results[sizes[0], fmt]
            print(f"{fmt} memory ratio ({sizes[1]:,} vs {sizes[0]:,} rows): {ratio:.3f}  (target <= 1.5)")


def main_mixed(args: argparse.Namespace, cap_mib: float) -> None:
    sizes = (args.rows, args.rows * 10)
    formats = ("csv", "parquet") if args.format == "both" else (args.format,)
    results: dict[tuple[int, str, str], dict | str] = {}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prepare-large-") as tmp_name:
        tmp = Path(tmp_name)
        print(f"mixed table, read from local disk ({tmp}); per child: {args.timeout:,.0f} s, {args.memory_cap:g} GiB")
        print(f"{'rows':>11}  {'format':<8}{'side':<14}{'seconds':>9}{'rows/s':>12}{'peak MiB':>11}")
        for rows in sizes:
            made = time.perf_counter()
            paths = {p.suffix[1:]: p for p in make_mixed(tmp, rows)}
            sizes_mib = ", ".join(f"{fmt} {p.stat().st_size / 2**20:,.0f} MiB" for fmt, p in paths.items())
            print(f"{rows:>11,}  generated in {time.perf_counter() - made:.0f} s ({sizes_mib})")
            for fmt in formats:
                work = tmp / f"{fmt}-{rows}"
                work.mkdir()
                for side in SIDES:
                    child = [side, str(paths[fmt]), str(work), "mixed"]
                    results[rows, fmt, side] = result = run_child(child, args.timeout, cap_mib)
                    print(_row(rows, fmt, side, result), flush=True)
            for path in paths.values():
                path.unlink()
    print(f"total {time.perf_counter() - began:,.0f} s")
    for fmt in formats:
        small, large = results[sizes[0], fmt, "workbench"], results[sizes[1], fmt, "workbench"]
        ratio = f"{large['peak'] / small['peak']:.3f}" if isinstance(small, dict) and isinstance(large, dict) else "n/a"
        print(f"{fmt} workbench peak memory ratio ({sizes[1]:,} vs {sizes[0]:,} rows): {ratio}  (target <= 1.5)")
    for fmt in formats:
        for rows in sizes:
            ours, theirs = results[rows, fmt, "workbench"], results[rows, fmt, "sklearn"]
            if isinstance(ours, str) or isinstance(theirs, str):
                shown = "n/a (a side did not finish)"
            else:
                shown = (
                    f"{theirs['seconds'] / ours['seconds']:.2f}  (target >= 1.0; "
                    f"vs scikit-learn read+split+fit only: {theirs['fit_seconds'] / ours['seconds']:.2f})"
                )
            print(f"{fmt} workbench rows/s / scikit-learn rows/s at {rows:,} rows: {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=("digits", "mixed"), default="digits", help="which table to prepare")
    parser.add_argument("--rows", type=int, default=500_000, help="the smaller size; the larger is 10x")
    parser.add_argument(
        "--format", choices=("csv", "parquet", "both"), default="both", help="mixed table: which files to prepare"
    )
    parser.add_argument("--timeout", type=float, default=1200, help="seconds each measuring process may take")
    parser.add_argument(
        "--memory-cap", type=float, default=16, help="GiB of RSS at which a measuring process is stopped (0: none)"
    )
    parser.add_argument("--child", nargs=4, metavar=("SIDE", "SOURCE", "FOLDER", "TABLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        side, source, folder, table = args.child
        result = child_workbench(source, folder, table) if side == "workbench" else child_sklearn(source)
        print(json.dumps(result))
        return
    cap_mib = args.memory_cap * 1024
    if args.table == "mixed":
        main_mixed(args, cap_mib)
    else:
        main_digits(args, cap_mib)


if __name__ == "__main__":
    main()
