"""Batch scoring: rows/s against raw onnxruntime, and peak memory as the data grows tenfold.

1. Throughput: ``score_batch`` (read Parquet, normalise, onnxruntime, softmax, write Parquet) vs
   ``InferenceSession.run`` alone on the fast form (initializers as constants, what the onnxruntime
   backend runs) on pre-built float32 arrays of the same batches, alternating in one process.
   Target: at least 0.9. The digits CNN is small (about 11 us of onnxruntime CPU per row), so
   reading, encoding and writing weigh most there; the same ratio follows for an MLP of width
   2,048 and depth 2 (``--heavy-rows`` rows, 0 to skip), where the model dominates as in most use.
   Alongside, raw onnxruntime on the fast form vs the file as exported (initializers as graph
   inputs, for MXNet) at batch 4,096: what the fast form is worth.
2. Memory: peak RSS of a fresh process scoring N rows and one scoring 10 N rows. Target: at most
   1.2 (streaming: memory follows the batch size, not the data).

    python benchmarks/score_throughput.py [--rows 500000] [--batch-size 4096] [--repeat 3] [--heavy-rows 100000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
from peak_memory import peak_rss_mib

from workbench.config.schema import DataParams, ExportParams, ScoreParams, TrainParams
from workbench.ml.runtimes import fast_form, onnx_file_check
from workbench.run.context import StepContext, step_context
from workbench.stages.batch_score import model_inputs, score_batch
from workbench.stages.export_onnx import export_onnx
from workbench.stages.prepare_data import prepare_data
from workbench.stages.train import train_model
from workbench.storage.sources import read_source

FORMS_BATCH = 4096  # the batch size the two forms are compared at, whatever --batch-size is
HEAVY = TrainParams(model="mlp", width=2048, depth=2, epochs=1, batch_size=64, device="cpu", amp=False)


def make_source(path: Path, rows: int) -> None:
    """Digits tiled to ``rows``, written in row groups so it never sits in memory whole."""
    digits = read_source("bundled:digits")
    with pq.ParquetWriter(path, pa.Schema.from_pandas(digits, preserve_index=False)) as writer:
        for start in range(0, rows, 65_536):
            n = min(65_536, rows - start)
            writer.write_table(
                pa.Table.from_pandas(digits.sample(n, replace=True, random_state=start), preserve_index=False)
            )


def make_model(tmp: Path, run: str = "model", train: TrainParams | None = None) -> tuple[str, str]:
    """Prepare, train (the digits CNN unless ``train`` says otherwise) and export run ``run``."""
    store, db = str(tmp / "store"), f"sqlite:///{tmp}/t.db"
    prepare_data(step_context("prepare", run, store, db), DataParams(), seed=0)
    train = train or TrainParams(epochs=2, batch_size=64, device="cpu", amp=False)
    train_model(step_context("train", run, store, db), train, seed=0)
    export_onnx(step_context("export", run, store, db), ExportParams())
    return store, db


def fast_session(blob: bytes) -> ort.InferenceSession:
    """What the onnxruntime backend runs: the fast form, onnxruntime's default options."""
    return ort.InferenceSession(
        fast_form(onnx_file_check(blob)).SerializeToString(), providers=["CPUExecutionProvider"]
    )


def rate(session: ort.InferenceSession, xs: list[np.ndarray], rows: int) -> float:
    """Rows per second of ``InferenceSession.run`` alone over the pre-built batches."""
    started = time.perf_counter()
    for x in xs:
        session.run(None, {"input": x})
    return rows / (time.perf_counter() - started)


def scoring_rate(ctx: StepContext, source: Path, rows: int, batch: int, run: str) -> float:
    """Rows per second of a whole ``score_batch`` call: load, read, encode, predict, write, report."""
    started = time.perf_counter()
    score_batch(ctx, ScoreParams(source=str(source), batch_size=batch, model_run=run), progress=False)
    return rows / (time.perf_counter() - started)


def encoded_batches(ctx: StepContext, run: str, source: Path, batch: int) -> list[np.ndarray]:
    """The source's batches as the model's float32 input, built before any clock starts."""
    inputs = model_inputs(ctx, run)
    return [inputs.matrix(pa.table(b), str(source)) for b in pq.ParquetFile(source).iter_batches(batch_size=batch)]


def heavy_line(tmp: Path, rows: int, batch: int, repeat: int) -> None:
    """The throughput ratio with a model that outweighs reading and writing (HEAVY), on ``rows`` rows."""
    store, db = make_model(tmp, "heavy", HEAVY)
    source = tmp / "heavy.parquet"
    make_source(source, rows)
    ctx = step_context("score", "bench-heavy", store, db)
    batches = encoded_batches(ctx, "heavy", source, batch)
    session = fast_session(ctx.load("model.onnx", "export", "heavy"))
    score_rates, raw_rates = [], []
    for _ in range(repeat):
        score_rates.append(scoring_rate(ctx, source, rows, batch, "heavy"))
        raw_rates.append(rate(session, batches, rows))
    score, raw = statistics.median(score_rates), statistics.median(raw_rates)
    print(f"heavy model (mlp width {HEAVY.width}, depth {HEAVY.depth}): {rows:,} rows, batch {batch}")
    print(f"  workbench scoring      {score:>12,.0f} rows/s")
    print(f"  raw InferenceSession   {raw:>12,.0f} rows/s  (fast form)")
    print(f"heavy model throughput ratio: {score / raw:.3f}  (target >= 0.9)")


def child(source: str, store: str, db: str, batch: int) -> None:
    """Score in this fresh process and print its peak RSS in MiB."""
    score_batch(
        step_context("score", f"mem-{Path(source).stem}", store, db),
        ScoreParams(source=source, batch_size=batch, model_run="model"),
        progress=False,
    )
    print(peak_rss_mib())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--heavy-rows", type=int, default=100_000, help="rows for the heavier model (0: skip it)")
    parser.add_argument("--child", nargs=3, metavar=("SOURCE", "STORE", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.batch_size)
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store, db = make_model(tmp)
        small, large = tmp / "small.parquet", tmp / "large.parquet"
        make_source(small, args.rows)
        make_source(large, args.rows * 10)

        ctx = step_context("score", "bench", store, db)
        batches = encoded_batches(ctx, "model", small, args.batch_size)
        forms_batches = encoded_batches(ctx, "model", small, FORMS_BATCH)
        blob = ctx.load("model.onnx", "export", "model")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the file as exported warns once per weight
        session = fast_session(blob)
        exported = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])

        score_rates, raw_rates, fast_rates, exported_rates = [], [], [], []
        for _ in range(args.repeat):
            score_rates.append(scoring_rate(ctx, small, args.rows, args.batch_size, "model"))
            raw_rates.append(rate(session, batches, args.rows))
            fast_rates.append(rate(session, forms_batches, args.rows))
            exported_rates.append(rate(exported, forms_batches, args.rows))
        score, raw = statistics.median(score_rates), statistics.median(raw_rates)
        fast, as_exported = statistics.median(fast_rates), statistics.median(exported_rates)
        print(f"{args.rows:,} rows, batch {args.batch_size}")
        print(f"  workbench scoring      {score:>12,.0f} rows/s")
        print(f"  raw InferenceSession   {raw:>12,.0f} rows/s  (fast form)")
        print(f"throughput ratio: {score / raw:.3f}  (target >= 0.9)")
        print(
            f"fast form vs as exported (raw InferenceSession, batch {FORMS_BATCH:,}): "
            f"{fast:,.0f} vs {as_exported:,.0f} rows/s, ratio {fast / as_exported:.2f}"
        )
        if args.heavy_rows:
            heavy_line(tmp, args.heavy_rows, args.batch_size, args.repeat)

        peaks = {}
        for path in (small, large):
            out = subprocess.run(
                [sys.executable, __file__, "--batch-size", str(args.batch_size), "--child", str(path), store, db],
                capture_output=True,
                text=True,
                check=True,
            )
            peaks[path] = float(out.stdout.strip().splitlines()[-1])
        print(f"peak RSS: {args.rows:,} rows {peaks[small]:,.0f} MiB, {args.rows * 10:,} rows {peaks[large]:,.0f} MiB")
        print(f"memory ratio (10x rows): {peaks[large] / peaks[small]:.3f}  (target <= 1.2)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
