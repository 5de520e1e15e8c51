"""Batch scoring: rows/s against raw onnxruntime, and peak memory as the data grows tenfold.

1. Throughput: ``score_batch`` (read Parquet, normalise, onnxruntime, softmax, write Parquet) vs
   ``InferenceSession.run`` alone on the fast form (initializers as constants, what the onnxruntime
   backend runs) on pre-built float32 arrays of the same batches, alternating in one process.
   Target: at least 0.9. Alongside, raw onnxruntime on the fast form vs the file as exported
   (initializers as graph inputs, for MXNet) at batch 4,096: what the fast form is worth.
2. Memory: peak RSS of a fresh process scoring N rows and one scoring 10 N rows. Target: at most
   1.2 (streaming: memory follows the batch size, not the data).

    python benchmarks/score_throughput.py [--rows 500000] [--batch-size 4096] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.config.schema import DataParams, ExportParams, ScoreParams, TrainParams
from workbench.ml.runtimes import fast_form, onnx_file_check
from workbench.run.context import step_context
from workbench.stages.batch_score import model_inputs, score_batch
from workbench.stages.export_onnx import export_onnx
from workbench.stages.prepare_data import prepare_data
from workbench.stages.train import train_model
from workbench.storage.sources import read_source

FORMS_BATCH = 4096  # the batch size the two forms are compared at, whatever --batch-size is


def make_source(path: Path, rows: int) -> None:
    """Digits tiled to ``rows``, written in row groups so it never sits in memory whole."""
    digits = read_source("bundled:digits")
    with pq.ParquetWriter(path, pa.Schema.from_pandas(digits, preserve_index=False)) as writer:
        for start in range(0, rows, 65_536):
            n = min(65_536, rows - start)
            writer.write_table(
                pa.Table.from_pandas(digits.sample(n, replace=True, random_state=start), preserve_index=False)
            )


def make_model(tmp: Path) -> tuple[str, str]:
    store, db = str(tmp / "store"), f"sqlite:///{tmp}/t.db"
    prepare_data(step_context("prepare", "model", store, db), DataParams(), seed=0)
    train_model(
        step_context("train", "model", store, db), TrainParams(epochs=2, batch_size=64, device="cpu", amp=False), seed=0
    )
    export_onnx(step_context("export", "model", store, db), ExportParams())
    return store, db


def child(source: str, store: str, db: str, batch: int) -> None:
    """Score in this fresh process and print its peak RSS in MiB."""
    score_batch(
        step_context("score", f"mem-{Path(source).stem}", store, db),
        ScoreParams(source=source, batch_size=batch, model_run="model"),
        progress=False,
    )
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
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
        inputs = model_inputs(ctx, "model")
        source = pq.ParquetFile(small)
        batches = [inputs.matrix(pa.table(b), str(small)) for b in source.iter_batches(batch_size=args.batch_size)]
        forms_batches = [inputs.matrix(pa.table(b), str(small)) for b in source.iter_batches(batch_size=FORMS_BATCH)]
        import onnxruntime as ort

        blob = ctx.load("model.onnx", "export", "model")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the file as exported warns once per weight
        session = ort.InferenceSession(
            fast_form(onnx_file_check(blob)).SerializeToString(), providers=["CPUExecutionProvider"]
        )
        exported = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])

        def rate(sess: ort.InferenceSession, xs: list[np.ndarray]) -> float:
            started = time.perf_counter()
            for x in xs:
                sess.run(None, {"input": x})
            return args.rows / (time.perf_counter() - started)

        score_rates, raw_rates, fast_rates, exported_rates = [], [], [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            score_batch(
                ctx, ScoreParams(source=str(small), batch_size=args.batch_size, model_run="model"), progress=False
            )
            score_rates.append(args.rows / (time.perf_counter() - started))
            raw_rates.append(rate(session, batches))
            fast_rates.append(rate(session, forms_batches))
            exported_rates.append(rate(exported, forms_batches))
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
