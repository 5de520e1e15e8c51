"""engine: dask against the local engine, side by side in one run: batch scoring and prepare.

A mixed table (``prepare_large.py --table mixed``: 20 numbers with gaps, 5 categories, an ISO date,
an ID, a three-class label) of ``--rows`` rows, written once as one Parquet file (what the local
engine reads) and once as a 40-file Parquet dataset (what engine dask reads, a file per task). With
``--s3`` both live in moto's S3 on 127.0.0.1 and so do the stores.

Printed per job (scoring, then prepare): rows/s of the local engine, of engine dask on ``local:1`` and
on ``local:2``, and the ratios; and the peak memory of one dask worker process against the local
engine's process (each measured in a fresh process: VmHWM). Targets on this 2-core machine: dask on
local:2 at least 0.8 of the local engine's rows/s (this shows the path scales, not a speedup), and a
worker's peak at most 1.2x the local engine's.

    python benchmarks/scale_out.py [--rows 10000000] [--files 40] [--s3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from prepare_large import mixed_block

BLOCK = 100_000
MODEL_ROWS = 50_000  # the model is trained on the first rows: this measures scoring, not training


def peak_mib() -> float:
    """This process's own peak resident memory (VmHWM), in MiB; defined here so workers get it by value."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_table(folder: Path, rows: int, files: int) -> tuple[Path, Path]:
    """The table as one file and as ``files`` files of (nearly) equal size, written block by block."""
    rng = np.random.default_rng(0)
    whole, dataset = folder / "whole.parquet", folder / "dataset"
    dataset.mkdir()
    per_file = -(-rows // files)
    parts: dict[int, pq.ParquetWriter] = {}
    with contextlib.ExitStack() as stack:
        writer = None
        for start in range(0, rows, BLOCK):
            block = mixed_block(rng, start, min(BLOCK, rows - start))
            if writer is None:
                writer = stack.enter_context(pq.ParquetWriter(whole, block.schema))
            writer.write_table(block)
            at = 0
            while at < block.num_rows:  # the block cut where a file ends
                index = (start + at) // per_file
                if index not in parts:
                    path = dataset / f"part-{index:05d}.parquet"
                    parts[index] = stack.enter_context(pq.ParquetWriter(path, block.schema))
                end = min(block.num_rows, (index + 1) * per_file - start)
                parts[index].write_table(block.slice(at, end - at))
                at = end
    return whole, dataset


def upload(folder: Path, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    for path in [folder / "whole.parquet", *sorted((folder / "dataset").iterdir())]:
        s3.upload_file(str(path), bucket, str(path.relative_to(folder)))


def job(
    kind: str, engine: str, scheduler: str, source: str, store: str, db: str, run: str
) -> tuple[float, float, list[float]]:
    """One job in this (fresh) process: seconds, this process's peak MiB, and each worker's peak MiB."""
    from workbench.config.schema import DaskParams, DataParams, ScoreParams
    from workbench.run.context import step_context

    warnings.filterwarnings("ignore", "score.model_run")  # the model is named on purpose: no validate step
    workers: list[float] = []
    cluster = client = None
    if engine == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=int(scheduler.split(":")[1]), processes=True, threads_per_worker=1, dashboard_address=":0"
        )
        client = Client(cluster)
        scheduler = cluster.scheduler_address
    dask = DaskParams(scheduler=scheduler)
    started = time.perf_counter()
    if kind == "score":
        from workbench.stages.batch_score import score_batch

        score_batch(
            step_context("score", run, store, db),
            ScoreParams(source=source, model_run="model", batch_size=4096),
            engine=engine,
            dask=dask,
            progress=False,
        )
    else:
        from workbench.stages.prepare_data import prepare_data

        prepare_data(
            step_context("prepare", run, store, db),
            DataParams(source=source, drop=["id"]),
            seed=0,
            engine=engine,
            dask=dask,
            progress=False,
        )
    seconds = time.perf_counter() - started
    if client is not None:
        workers = list(client.run(peak_mib).values())
        client.close()
        cluster.close()
    return seconds, peak_mib(), workers


def fresh(*args: str) -> tuple[float, float, list[float]]:
    """:func:`job` in a new process, so its peak memory is its own."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(job, *args).result()


def make_model(source: str, store: str, db: str) -> None:
    """Run ``model``: prepared on the first rows by the local engine, trained one epoch, exported."""
    from workbench.config.schema import DataParams, ExportParams, TrainParams
    from workbench.run.context import step_context
    from workbench.stages.export_onnx import export_onnx
    from workbench.stages.prepare_data import prepare_data
    from workbench.stages.train import train_model

    prepare_data(
        step_context("prepare", "model", store, db), DataParams(source=source, drop=["id"]), seed=0, progress=False
    )
    train_model(step_context("train", "model", store, db), TrainParams(epochs=1, batch_size=512, device="cpu"), seed=0)
    export_onnx(step_context("export", "model", store, db), ExportParams())
    for step in ("prepare", "train", "export"):
        step_context(step, "model", store, db).tracker.notebook_step("model", step, "finished")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--s3", action="store_true", help="the table and the stores in moto's S3 on 127.0.0.1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        t = time.perf_counter()
        whole, dataset = make_table(folder, args.rows, args.files)
        head = folder / "head.parquet"
        pq.write_table(pq.ParquetFile(whole).read_row_groups([0]).slice(0, MODEL_ROWS), head)
        print(f"table: {args.rows:,} rows, {args.files} files, written in {time.perf_counter() - t:.0f} s", flush=True)
        store, db = str(folder / "store"), f"sqlite:///{folder}/t.db"
        sources = {"local": str(whole), "dask": str(dataset)}
        if args.s3:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from support.locals3 import moto_endpoint, s3_environment

            endpoint = stack.enter_context(moto_endpoint())
            os.environ.update(s3_environment(endpoint))
            upload(folder, "bench")
            store = "s3://bench/store"
            sources = {"local": "s3://bench/whole.parquet", "dask": "s3://bench/dataset/"}
        warnings.filterwarnings("ignore", "score.model_run")
        make_model(str(head), store, db)
        print(f"{'job':<8} {'engine':<14} {'rows/s':>12} {'vs local':>9} {'peak MiB':>9} {'vs local':>9}", flush=True)
        for kind in ("score", "prepare"):
            local_s, local_peak, _ = fresh(kind, "local", "local:1", sources["local"], store, db, f"{kind}-local")
            local_rate = args.rows / local_s
            print(f"{kind:<8} {'local':<14} {local_rate:>12,.0f} {1:>9.2f} {local_peak:>9.0f} {1:>9.2f}", flush=True)
            for n in (1, 2):
                s, _, workers = fresh(kind, "dask", f"local:{n}", sources["dask"], store, db, f"{kind}-dask{n}")
                rate, peak = args.rows / s, max(workers)
                print(
                    f"{kind:<8} {f'dask local:{n}':<14} {rate:>12,.0f} {rate / local_rate:>9.2f} {peak:>9.0f} "
                    f"{peak / local_peak:>9.2f}",
                    flush=True,
                )
        print("targets: dask local:2 rows/s >= 0.8 x local; a worker's peak <= 1.2 x the local engine's")


if __name__ == "__main__":
    main()
