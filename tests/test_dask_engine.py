"""engine: dask. The partial states prepare combines (merged in partition order they equal one pass),
then prepare and batch scoring on a LocalCluster of two worker processes against the local engine."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from support.tables import churn

from workbench.errors import DataError, ParameterError, WorkbenchError
from workbench.ml.encoding import EncodingFitter, TargetFitter
from workbench.ml.splits import Histograms, Moments, Ranges

CUTS = (0, 137, 138, 600, 1500)  # parts of unequal sizes, one of a single row


def _parts(table: pa.Table) -> list[pa.Table]:
    return [table.slice(a, b - a) for a, b in zip(CUTS, (*CUTS[1:], table.num_rows), strict=True)]


def _fitter() -> EncodingFitter:
    return EncodingFitter(target="churned", drop=["customer_id"], max_categories=3)


def test_merged_encoding_fits_equal_one_pass():
    table = pa.Table.from_pandas(churn(2000, seed=3), preserve_index=False)
    whole = _fitter()
    whole.add(table)
    partials = []
    for part in _parts(table):
        fitter = _fitter()
        fitter.add(part)
        partials.append(fitter)
    # a tree: (p0 + p1) + (p2 + p3), then + p4, each merge an earlier state and the one after it
    merged = partials[0].merge(partials[1]).merge(partials[2].merge(partials[3])).merge(partials[4])
    one, other = whole.finish().to_json(), merged.finish().to_json()
    for a, b in zip(one["columns"], other["columns"], strict=True):
        assert {k: v for k, v in a.items() if k not in ("mean", "scale")} == {
            k: v for k, v in b.items() if k not in ("mean", "scale")
        }
        if "mean" in a:
            np.testing.assert_allclose(b["mean"], a["mean"], rtol=1e-12)
            np.testing.assert_allclose(b["scale"], a["scale"], rtol=1e-12)
    assert one["features"] == other["features"] and one["rows"] == other["rows"]


def test_merged_vocabulary_breaks_ties_as_one_pass():
    """Two values with the same count overall but not per part: the kept ones are those one pass keeps."""
    values = ["b", "b", "a", "c", "a", "c", "d"]
    whole = EncodingFitter(max_categories=2)
    whole.add(pa.table({"x": values}))
    first, second = EncodingFitter(max_categories=2), EncodingFitter(max_categories=2)
    first.add(pa.table({"x": values[:2]}))
    second.add(pa.table({"x": values[2:]}))
    assert first.merge(second).finish().columns[0]["values"] == whole.finish().columns[0]["values"] == ["a", "b"]


def test_merge_refuses_a_column_that_changes_type():
    first, second = EncodingFitter(), EncodingFitter()
    first.add(pa.table({"x": [1.0, 2.0]}))
    second.add(pa.table({"x": ["a", "b"]}))
    with pytest.raises(DataError, match="column 'x' changes type partway through the table"):
        first.merge(second)


def test_a_part_of_gaps_takes_the_type_of_the_next():
    first, second = EncodingFitter(), EncodingFitter()
    first.add(pa.table({"x": pa.nulls(3), "y": [1, 2, 3]}))  # a CSV block of gaps: no type yet
    second.add(pa.table({"x": ["a", "b"], "y": [4, 5]}))
    spec = first.merge(second).finish().columns[0]
    assert spec["type"] == "category" and spec["values"] == ["a", "b"] and spec["gaps"] == 3


def test_merged_target_counts_equal_one_pass():
    table = pa.Table.from_pandas(churn(2000, seed=3), preserve_index=False)
    whole = TargetFitter("churned")
    whole.add(table)
    parts = []
    for part in _parts(table):
        fitter = TargetFitter("churned")
        fitter.add(part)
        parts.append(fitter)
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    assert merged.finish() == whole.finish()
    assert merged.counts == whole.counts


def test_merged_moments_ranges_and_histograms_equal_one_pass():
    rng = np.random.default_rng(0)
    x = rng.normal(1e6, 3.0, (3000, 3))  # a large mean: a sum of squares would lose the variance
    x[rng.random(x.shape) < 0.1] = np.nan
    table = pa.table({f"c{i}": x[:, i] for i in range(3)})
    names = table.column_names
    whole_ranges = Ranges(table.schema, names)
    whole_ranges.add(table)
    whole, hist = Moments(3), Histograms(whole_ranges, names)
    whole.add(x)
    hist.add(x)
    merged, merged_ranges, merged_hist = Moments(3), Ranges(table.schema, names), Histograms(whole_ranges, names)
    for a, b in zip(CUTS, (*CUTS[1:], 3000), strict=True):
        part, ranges, counts = Moments(3), Ranges(table.schema, names), Histograms(whole_ranges, names)
        part.add(x[a:b])
        ranges.add(table.slice(a, b - a))
        counts.add(x[a:b])
        merged.merge(part)
        merged_ranges.merge(ranges)
        merged_hist.merge(counts)
    np.testing.assert_array_equal(merged.n, whole.n)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.std, whole.std, rtol=1e-9)
    assert (merged.low == whole.low).all() and (merged.high == whole.high).all()
    assert merged_ranges.low == whole_ranges.low and merged_ranges.high == whole_ranges.high
    for a, b in zip(merged_hist.counts, hist.counts, strict=True):
        np.testing.assert_array_equal(a, b)


# ---- prepare and scoring on a LocalCluster of two worker processes -------------------------------------

CHURN = {"target": "churned", "drop": ["customer_id"], "max_categories": 3}
FILES = (0, 700, 701, 2400, 3100, 4000)  # five files of unequal sizes, one of a single row


def _write_dataset(frame: pd.DataFrame, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (a, b) in enumerate(itertools.pairwise(FILES)):
        frame.iloc[a:b].to_parquet(folder / f"part-{i:04d}.parquet", index=False)


@pytest.fixture(scope="module")
def churn_run(tmp_path_factory):
    """A churn table whole and as a five-file dataset; run ``local`` prepared, trained and exported
    from the whole file by the local engine."""
    from workbench.config.schema import DataParams, ExportParams, ScoreParams, TrainParams
    from workbench.run.context import step_context
    from workbench.stages.batch_score import score_batch
    from workbench.stages.export_onnx import export_onnx
    from workbench.stages.prepare_data import prepare_data
    from workbench.stages.train import train_model

    root = tmp_path_factory.mktemp("dask")
    frame = churn(4000, seed=1)
    frame.to_parquet(root / "whole.parquet", index=False)
    _write_dataset(frame, root / "dataset")
    store, db = str(root / "store"), f"sqlite:///{root}/tracking.db"

    def ctx(step: str, run: str):
        return step_context(step, run, store, db)

    local = prepare_data(ctx("prepare", "local"), DataParams(source=str(root / "whole.parquet"), **CHURN), seed=7)
    train_model(ctx("train", "local"), TrainParams(epochs=2, batch_size=128, device="cpu"), seed=7)
    export_onnx(ctx("export", "local"), ExportParams())
    for step in ("prepare", "train", "export"):  # as its notebooks' cells would leave them
        ctx(step, "local").tracker.notebook_step("local", step, "finished")
    scored = score_batch(
        ctx("score", "score-local"), ScoreParams(source=str(root / "whole.parquet"), model_run="local"), progress=False
    )
    return SimpleNamespace(root=root, frame=frame, ctx=ctx, local=local, scored=scored)


def _same_encoding(one: dict, other: dict) -> None:
    """Categories, vocabularies, types and gaps identical; means and scales within 1e-9 relative."""
    assert one["features"] == other["features"] and one["rows"] == other["rows"]
    assert one["target"] == other["target"]
    for a, b in zip(one["columns"], other["columns"], strict=True):
        assert {k: v for k, v in a.items() if k not in ("mean", "scale")} == {
            k: v for k, v in b.items() if k not in ("mean", "scale")
        }
        if "mean" in a:
            np.testing.assert_allclose(b["mean"], a["mean"], rtol=1e-9)
            np.testing.assert_allclose(b["scale"], a["scale"], rtol=1e-9)


def _split_ids(store, run: str, name: str) -> list[str]:
    from workbench.storage.catalog import SPLIT_ARTIFACTS, RunLayout
    from workbench.storage.parts import read_table

    return read_table(store, RunLayout(run).key(SPLIT_ARTIFACTS[name])).column("customer_id").to_pylist()


@pytest.mark.e2e
def test_prepare_on_two_workers_gives_the_local_engines_splits_and_encoding(churn_run):
    from workbench.config.schema import DaskParams, DataParams
    from workbench.stages.prepare_data import prepare_data

    ctx = churn_run.ctx("prepare", "dask")
    dist = prepare_data(
        ctx,
        DataParams(source=str(churn_run.root / "dataset"), **CHURN),
        seed=7,
        engine="dask",
        dask=DaskParams(scheduler="local:2"),
        progress=False,
    )
    _same_encoding(churn_run.local.encoding.to_json(), dist.encoding.to_json())
    for name in ("train", "val", "test"):
        assert _split_ids(ctx.store, "dask", name) == _split_ids(ctx.store, "local", name), name
    assert sorted(ctx.store.list("runs/dask/prepare/train/")) == [
        f"runs/dask/prepare/train/part-{i:05d}.parquet" for i in range(5)
    ]
    assert dist.counts.equals(churn_run.local.counts)
    pd.testing.assert_frame_equal(dist.feature_summary, churn_run.local.feature_summary, rtol=1e-9)
    # the train step's streaming loader reads the parts as it reads one file
    from workbench.ml.streaming import open_split, parquet_shape, split_file

    assert parquet_shape(split_file(ctx, "train"), 1)[0] == len(_split_ids(ctx.store, "local", "train"))
    streamed = open_split(ctx, "train", torch.device("cpu"))
    assert sum(len(y) for _, y in streamed.batches(1000)) == streamed.rows


def _predictions(store, run: str) -> pd.DataFrame:
    from workbench.storage.catalog import PREDICTIONS, RunLayout
    from workbench.storage.parts import read_table

    return read_table(store, RunLayout(run).key(PREDICTIONS)).to_pandas()


@pytest.mark.e2e
def test_scoring_on_two_workers_gives_the_local_engines_predictions(churn_run):
    from workbench.config.schema import DaskParams, ScoreParams
    from workbench.stages.batch_score import score_batch

    local = churn_run.scored
    ctx = churn_run.ctx("score", "score-dask")
    dist = score_batch(
        ctx,
        ScoreParams(source=str(churn_run.root / "dataset"), model_run="local", batch_size=333),
        engine="dask",
        dask=DaskParams(scheduler="local:2"),
        progress=False,
    )
    one, other = _predictions(ctx.store, "score-local"), _predictions(ctx.store, "score-dask")
    assert other["row"].tolist() == list(range(4000))
    pd.testing.assert_frame_equal(one, other)
    assert dist.metrics["score_accuracy"] == local.metrics["score_accuracy"]
    assert dist.metrics["rows_scored"] == 4000
    assert dist.class_counts.equals(local.class_counts)


@pytest.mark.e2e
def test_prepare_and_scoring_on_two_workers_read_and_write_s3(churn_run, s3_server):
    from workbench.config.schema import DaskParams, DataParams, ScoreParams
    from workbench.run.context import step_context
    from workbench.stages.batch_score import score_batch
    from workbench.stages.prepare_data import prepare_data

    client = s3_server.client()
    client.create_bucket(Bucket="lake")
    for path in sorted((churn_run.root / "dataset").iterdir()):
        client.upload_file(str(path), "lake", f"churn/{path.name}")
    store, db = "s3://lake/store", f"sqlite:///{churn_run.root}/s3.db"
    ctx = step_context("prepare", "s3-dask", store, db)
    dist = prepare_data(
        ctx,
        DataParams(source="s3://lake/churn/", **CHURN),
        seed=7,
        engine="dask",
        dask=DaskParams(scheduler="local:2"),
        progress=False,
    )
    _same_encoding(churn_run.local.encoding.to_json(), dist.encoding.to_json())
    local_store = churn_run.ctx("prepare", "local").store
    for name in ("train", "val", "test"):
        assert _split_ids(ctx.store, "s3-dask", name) == _split_ids(local_store, "local", name), name
    score = step_context("score", "s3-score", store, db)
    for key in ("model.onnx",):  # the local run's model, copied into this store
        client.put_object(
            Bucket="lake",
            Key=f"store/runs/local/export/{key}",
            Body=(churn_run.root / "store/runs/local/export" / key).read_bytes(),
        )
    client.put_object(
        Bucket="lake",
        Key="store/runs/local/prepare/encoding.json",
        Body=(churn_run.root / "store/runs/local/prepare/encoding.json").read_bytes(),
    )
    score_batch(
        score,
        ScoreParams(source="s3://lake/churn/*.parquet", model_run="local"),
        engine="dask",
        dask=DaskParams(scheduler="local:2"),
        progress=False,
    )
    pd.testing.assert_frame_equal(_predictions(score.store, "s3-score"), _predictions(local_store, "score-local"))


def _kill_a_busy_worker(client, prefix: str, killed: list[int], done: threading.Event) -> None:
    """Kill (SIGKILL) the process of the first worker seen running a task whose key starts with ``prefix``."""
    while not done.is_set():
        busy = [w for w, keys in client.processing().items() if any(str(k).startswith(prefix) for k in keys)]
        if busy:
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.01)


@pytest.mark.e2e
def test_a_killed_worker_loses_and_duplicates_no_rows(churn_run, postgres, tmp_path):
    """A worker process killed while it scores: Dask runs its task again elsewhere, and the predictions
    dataset and the published table hold every row once."""
    from distributed import Client, LocalCluster
    from sqlalchemy import create_engine, text

    from workbench.config.schema import DaskParams, PublishParams, ScoreParams
    from workbench.stages.batch_score import score_batch

    many = tmp_path / "many"
    many.mkdir()
    for i in range(16):  # 16 files: the job outlasts the kill
        churn_run.frame.iloc[i * 250 : (i + 1) * 250].to_parquet(many / f"part-{i:04d}.parquet", index=False)
    url = postgres()
    killed: list[int] = []
    done = threading.Event()
    with (
        LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as watcher,
    ):
        thread = threading.Thread(target=_kill_a_busy_worker, args=(watcher, "_score_part", killed, done))
        thread.start()
        ctx = churn_run.ctx("score", "killed")
        try:
            result = score_batch(
                ctx,
                ScoreParams(source=str(many), model_run="local", batch_size=100),
                PublishParams(url=url, table="churn_scores"),
                engine="dask",
                dask=DaskParams(scheduler=cluster.scheduler_address),
                progress=False,
            )
        finally:
            done.set()
            thread.join()
    assert killed, "no worker was killed while it scored"
    assert result.metrics["rows_scored"] == 4000
    predictions = _predictions(ctx.store, "killed")
    assert predictions["row"].tolist() == list(range(4000))
    pd.testing.assert_frame_equal(predictions, _predictions(ctx.store, "score-local"))
    with create_engine(url).connect() as conn:
        counts = conn.execute(
            text("select count(*), count(distinct row), min(row), max(row) from churn_scores where run_id = 'killed'")
        ).one()
    assert counts == (4000, 4000, 0, 3999)


# ---- a dataset that lacks one of the model's input columns ---------------------------------------------


def _lacking(frame: pd.DataFrame, folder: Path, files: tuple[int, ...], column: str = "tenure_months") -> Path:
    """The five-file dataset with ``column`` left out of the files numbered ``files``."""
    folder.mkdir(parents=True)
    for i, (a, b) in enumerate(itertools.pairwise(FILES)):
        part = frame.iloc[a:b]
        (part.drop(columns=[column]) if i in files else part).to_parquet(folder / f"part-{i:04d}.parquet", index=False)
    return folder


def _score_left(store: Path, db: str, run: str) -> tuple[str, list[str], list[str]]:
    """The score step's status, what it recorded under its folder (beside its notebook and log), and
    the Parquet files there."""
    from workbench.tracking.tracker import Tracker

    tracker = Tracker(db)
    status = next(s["status"] for s in tracker.get_run(run)["steps"] if s["name"] == "score")
    recorded = [a["key"] for a in tracker.step_artifacts(run, ("score",)) if f"{run}/score/" in a["key"]]
    written = sorted(p.name for p in (store / "runs" / run / "score").rglob("*.parquet"))
    return status, recorded, written


@pytest.mark.e2e
@pytest.mark.parametrize("engine", ["local", "dask"])
def test_a_dataset_lacking_an_input_column_is_one_line_and_leaves_no_predictions(churn_run, tmp_path, engine):
    """`workbench run --steps score` on a dataset whose files all lack a model input column names the
    column and the source; one whose third file alone lacks it (the unified schema has it, null in
    that file) names that file, rather than scoring its rows on the training means. Either way, with
    either engine: exit non-zero, the step failed, no predictions written or recorded."""
    from support.cli import sets, workbench

    store, db = churn_run.root / "store", f"sqlite:///{churn_run.root}/tracking.db"
    engine_sets = [f"engine={engine}"] + (["dask.scheduler=local:2"] if engine == "dask" else [])
    every = _lacking(churn_run.frame, tmp_path / "every", (0, 1, 2, 3, 4))
    third = _lacking(churn_run.frame, tmp_path / "third", (2,))
    lacks = "lacks the model's input column 'tenure_months'"
    expected = {
        every: rf"score.source {re.escape(str(every))}: {lacks} \(1 missing\); score a table with the columns the "
        "model was trained on",
        third: rf"score.source {re.escape(str(third))}/part-0002.parquet: {lacks}, which other files of "
        rf"{re.escape(str(third))} hold and training never saw empty; write the column into this file or leave the "
        "file out of score.source",
    }
    for source, said in expected.items():
        given = sets(f"store={store}", f"db={db}", "score.model_run=local", f"score.source={source}", *engine_sets)
        result = workbench("run", *given, "--steps", "score")
        assert result.code != 0, result.stdout
        last = result.stderr.strip().splitlines()[-1]
        assert re.fullmatch(rf"error: step score failed: DataError: {said}", last), result.stderr
        assert "Traceback" not in result.stderr
        run = re.search(r"run (\S+): 1 steps", result.stdout + result.stderr).group(1)
        assert _score_left(store, db, run) == ("failed", [], [])


@pytest.mark.e2e
def test_a_later_file_that_fails_on_a_worker_leaves_no_predictions_parts(churn_run, tmp_path):
    """A value only a worker can find wrong (a date that does not parse, in the last file): the step
    fails in one line and the parts the other files' tasks wrote are removed, none recorded."""
    from workbench.config.schema import DaskParams, ScoreParams
    from workbench.stages.batch_score import score_batch

    folder = tmp_path / "late"
    folder.mkdir()
    for i, (a, b) in enumerate(itertools.pairwise(FILES)):
        part = churn_run.frame.iloc[a:b]
        (part.assign(signup_date="soon") if i == 4 else part).to_parquet(folder / f"part-{i:04d}.parquet", index=False)
    ctx = churn_run.ctx("score", "late")
    with pytest.raises(
        DataError,
        match=rf"^score.source {re.escape(str(folder))}: column 'signup_date': 'soon' does not parse as a date$",
    ):
        score_batch(
            ctx,
            ScoreParams(source=str(folder), model_run="local"),
            engine="dask",
            dask=DaskParams(scheduler="local:2"),
            progress=False,
        )
    assert not list((churn_run.root / "store" / "runs" / "late").rglob("*.parquet"))
    assert ctx.tracker.step_artifacts("late", ("score",)) == []


@pytest.mark.services
def test_a_part_published_again_replaces_its_rows(postgres):
    """A task that runs again after its first COPY committed (its worker died after it) publishes
    its rows once: the retry deletes that part's range of rows in the same transaction."""
    from sqlalchemy import create_engine, text

    from workbench.storage.publish import Publisher, publish_part

    url = postgres()
    frame = pd.DataFrame({"row": np.arange(10, 20), "predicted": ["Yes", "No"] * 5})
    Publisher(url, "parts", "r1", "score").append(frame.head(0))
    for _ in range(2):
        publish_part(url, "parts", "r1", "score", [frame.head(4), frame.iloc[4:]], (10, 20))
    publish_part(url, "parts", "r1", "score", [frame.assign(row=frame.row - 10)], (0, 10))  # its neighbour stays
    with create_engine(url).connect() as conn:
        got = conn.execute(text("select count(*), count(distinct row) from parts where run_id = 'r1'")).one()
    assert got == (20, 20)


def test_a_bad_scheduler_is_one_line_naming_the_key():
    from workbench.config.parameters import checked

    with pytest.raises(ParameterError, match=r"^dask.scheduler in --set: must be local:N .*got 'local:0'$"):
        checked({"dask.scheduler": "local:0"}, {"dask.scheduler": "--set"})


def test_a_scheduler_nobody_runs_is_one_line():
    from workbench.engine.cluster import connect

    answer = r"^dask.scheduler tcp://127.0.0.1:1: nothing listens there \(.*\); give the scheduler's address"
    with pytest.raises(WorkbenchError, match=answer), connect("tcp://127.0.0.1:1"):
        pass


def test_dask_is_imported_only_by_engine_dask():
    """``import workbench`` and a prepare and score with the local engine leave Dask unimported."""
    code = (
        "import sys, workbench, workbench.stages.prepare_data, workbench.stages.batch_score, workbench.engine;"
        "import workbench.run.pipeline;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.e2e
def test_workbench_run_with_engine_dask_trains_on_parts_and_scores_its_test_split(churn_run, place):
    """The README's commands: `workbench run` with engine dask prepares a dataset into parts, trains
    and exports from them; `--steps score` scores the run's split:test (parts) on the cluster."""
    from support.cli import sets, workbench

    engine = ["engine=dask", "dask.scheduler=local:2"]
    data = [f"data.source={churn_run.root / 'dataset'}/", "data.target=churned", "data.drop=customer_id"]
    trained = workbench("run", *place.sets(*engine, *data, "train.epochs=1"), "--steps", "prepare,train,export")
    assert trained.code == 0, trained.stderr
    run = trained.stdout.split()[1]
    scored = workbench("run", *place.sets(*engine), *sets(f"score.model_run={run}"), "--steps", "score")
    assert scored.code == 0, scored.stderr
    score_run = scored.stdout.split()[1]
    store = churn_run.ctx("prepare", "local").store
    test_rows = len(_split_ids(store, "local", "test"))  # the local engine's test split: the same rows
    predictions = pd.concat(
        pd.read_parquet(p) for p in sorted((place.store / "runs" / score_run / "score" / "predictions").iterdir())
    )
    assert predictions["row"].tolist() == list(range(test_rows))
    bad = workbench("run", *place.sets("engine=dask", "dask.scheduler=local"), "--steps", "prepare")
    assert bad.code == 2
    assert bad.stderr.strip().startswith("error: dask.scheduler in --set dask.scheduler=local: must be local:N")


# ---- reuse and a split written again in the other form ---------------------------------------------


@pytest.mark.e2e
def test_a_step_prepared_on_the_cluster_is_reused_with_its_parts(churn_run, place):
    """A second `workbench run` reuses prepare, copying every part; training reads the copy; neither
    the scheduler nor the engine is in the key (the same splits, whichever runs them)."""
    from support.cli import workbench

    data = [f"data.source={churn_run.root / 'dataset'}/", "data.target=churned", "data.drop=customer_id"]
    first = workbench(
        "run", *place.sets("engine=dask", "dask.scheduler=local:2", *data, "train.epochs=1"), "--steps", "prepare,train"
    )
    assert first.code == 0, first.stderr
    source = first.stdout.split()[1]
    again = workbench(
        "run", *place.sets("engine=dask", "dask.scheduler=local:1", *data, "train.epochs=2"), "--steps", "prepare,train"
    )
    assert again.code == 0, again.stderr
    run = again.stdout.split()[1]
    assert f"prepare reused from {source}" in again.stderr
    assert "train runs: train.epochs 1 -> 2" in again.stderr  # and it trained from the copied parts
    for name in ("train", "val", "test"):
        copied = sorted(p.name for p in (place.store / "runs" / run / "prepare" / name).iterdir())
        assert copied == [f"part-{i:05d}.parquet" for i in range(5)], name
    local = workbench("run", *place.sets("engine=local", *data, "train.epochs=2"), "--steps", "prepare,train")
    assert local.code == 0, local.stderr
    assert f"prepare reused from {run}" in local.stderr and f"train reused from {run}" in local.stderr


def _forms(store, run: str) -> list[str]:
    return [k.removeprefix(f"runs/{run}/prepare/") for k in store.list(f"runs/{run}/prepare/") if "parquet" in k]


@pytest.mark.e2e
def test_a_split_written_again_replaces_the_other_form(churn_run, tmp_path):
    """prepare run again in one run with the other engine, or on fewer files: the readers see only
    what the latest attempt wrote, and only that is recorded."""
    from workbench.config.schema import DaskParams, DataParams
    from workbench.stages.prepare_data import prepare_data

    ctx = churn_run.ctx("prepare", "twice")
    whole = DataParams(source=str(churn_run.root / "whole.parquet"), **CHURN)
    cluster = DaskParams(scheduler="local:2")
    prepare_data(ctx, whole, seed=7, progress=False)
    prepare_data(ctx, DataParams(source=str(churn_run.root / "dataset"), **CHURN), seed=7, engine="dask", dask=cluster)
    assert _forms(ctx.store, "twice") == [
        f"{s}/part-{i:05d}.parquet" for s in ("test", "train", "val") for i in range(5)
    ]
    three = tmp_path / "three"
    three.mkdir()
    for i in range(3):  # the same rows in three files: parts 3 and 4 of the attempt before must go
        churn_run.frame.iloc[i * 1500 : (i + 1) * 1500].to_parquet(three / f"part-{i}.parquet", index=False)
    prepare_data(ctx, DataParams(source=str(three), **CHURN), seed=7, engine="dask", dask=cluster, progress=False)
    assert _forms(ctx.store, "twice") == [
        f"{s}/part-{i:05d}.parquet" for s in ("test", "train", "val") for i in range(3)
    ]
    for name in ("train", "val", "test"):
        assert _split_ids(ctx.store, "twice", name) == _split_ids(ctx.store, "local", name), name
    prepare_data(ctx, whole, seed=7, progress=False)
    assert _forms(ctx.store, "twice") == ["test.parquet", "train.parquet", "val.parquet"]
    recorded = {a["key"] for a in ctx.tracker.step_artifacts("twice", ("prepare",))}
    assert recorded == {
        f"runs/twice/prepare/{f}"
        for f in ("test.parquet", "train.parquet", "val.parquet", "encoding.json", "schema.json")
    }


@pytest.mark.services
def test_removing_both_forms_on_s3(s3_server):
    from workbench.storage import open_store
    from workbench.storage.parts import remove_forms

    s3_server.client().create_bucket(Bucket="forms")
    store = open_store("s3://forms/store")
    for key in ("r/train.parquet", "r/train/part-00000.parquet", "r/train/part-00001.parquet", "r/val.parquet"):
        store.write_bytes(key, b"x")
    assert remove_forms(store, "r/train.parquet") == [
        "r/train/part-00000.parquet",
        "r/train/part-00001.parquet",
        "r/train.parquet",
    ]
    assert store.list("r/") == ["r/val.parquet"]
    assert remove_forms(store, "r/train.parquet") == []


@pytest.mark.e2e
def test_a_workers_onnxruntime_session_uses_the_workers_threads(churn_run):
    """One session per worker process computes with threads_per_worker threads, sleeping when idle,
    not a thread per core of the host (which several workers on one host would share)."""
    from distributed import Client, LocalCluster

    from workbench.stages.batch_score import _worker_session

    ctx = churn_run.ctx("score", "threads")
    key = ctx.key("model.onnx", step="export", run="local")
    model = (ctx.store.root, key, ctx.tracker.recorded_sha256(key))

    def options(store: str, key: str, sha256: str | None) -> tuple[int, str]:
        chosen = _worker_session(store, key, sha256).get_session_options()
        return chosen.intra_op_num_threads, chosen.get_session_config_entry("session.intra_op.allow_spinning")

    with (
        LocalCluster(n_workers=1, processes=True, threads_per_worker=3, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        assert client.submit(options, *model).result() == (3, "0")
    assert options(*model) == (1, "0")  # outside a worker: one thread


def test_a_port_that_does_not_speak_dask_is_one_line():
    """Something else on the port (a proxy, a web server) answering bytes that are not Dask's
    protocol: one line at once, not a client reading a frame of exabytes."""
    import socket

    from workbench.engine.cluster import connect

    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        while True:  # every connection: the address check's, then the client's
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4)
            conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    with (
        pytest.raises(WorkbenchError, match=f"^dask.scheduler {address}: what listens there does not speak Dask's"),
        connect(address),
    ):
        pass
    server.close()


def test_engine_dask_names_a_csv_source_and_masks_a_database_password():
    from workbench.engine.partitions import partitions

    with pytest.raises(DataError, match=r"^data.source /x/churn.csv: engine dask reads Parquet .*set engine: local$"):
        partitions("/x/churn.csv", "data.source")
    with pytest.raises(DataError, match=r"^score.source postgresql://u:\*\*\*@h/db query 'select 1': engine dask"):
        partitions({"url": "postgresql://u:secret@h/db", "query": "select 1"}, "score.source")


def test_a_glob_matching_a_csv_names_it_as_not_parquet(tmp_path):
    from workbench.storage.datasets import open_dataset

    churn(20, seed=1).to_parquet(tmp_path / "a.parquet", index=False)
    churn(20, seed=2).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(
        DataError, match=r"^data.source .*/b.csv: not a Parquet file \(no Parquet footer\); .*\*\.parquet"
    ):
        open_dataset(f"{tmp_path}/*", "data.source")


@pytest.fixture
def scheduler_process(tmp_path):
    """A `dask scheduler` in a process of its own on a free port (as an existing cluster's is), its
    workers started by the test; everything stopped after."""
    import socket

    from support.localpg import free_port

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    started = [
        subprocess.Popen(
            [*dask, "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]

    for _ in range(300):  # up once its port takes a connection
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)

    def worker(threads: int = 1) -> None:
        command = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", str(threads)]
        started.append(
            subprocess.Popen(
                [*command, "--dashboard-address", ":0", "--local-directory", str(tmp_path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    yield SimpleNamespace(address=address, worker=worker)
    for process in reversed(started):
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.e2e
def test_workbench_run_on_an_existing_cluster(churn_run, place, scheduler_process):
    """The README's `dask.scheduler: tcp://HOST:PORT`: a scheduler and a worker in processes of their
    own; without a worker yet, one line; with one, `workbench run` prepares there (the local
    engine's splits) and batch scoring gives the local engine's predictions."""
    from support.cli import workbench

    from workbench.config.schema import DaskParams, ScoreParams
    from workbench.engine.cluster import connect
    from workbench.stages.batch_score import score_batch
    from workbench.storage import open_store

    address = scheduler_process.address
    with (
        pytest.raises(WorkbenchError, match=r"^dask.scheduler tcp://.*: the scheduler has no workers, and none joined"),
        connect(address, workers_timeout=1),
    ):
        pass
    scheduler_process.worker(threads=2)
    engine = ["engine=dask", f"dask.scheduler={address}"]
    data = [f"data.source={churn_run.root / 'dataset'}/", "data.target=churned", "data.drop=customer_id"]
    prepared = workbench("run", *place.sets(*engine, *data, "seed=7", "data.max_categories=3"), "--steps", "prepare")
    assert prepared.code == 0, prepared.stderr
    run = prepared.stdout.split()[1]
    local = churn_run.ctx("prepare", "local").store
    for name in ("train", "val", "test"):
        assert _split_ids(open_store(str(place.store)), run, name) == _split_ids(local, "local", name), name
    ctx = churn_run.ctx("score", "score-tcp")
    params = ScoreParams(source=str(churn_run.root / "dataset"), model_run="local")
    score_batch(ctx, params, engine="dask", dask=DaskParams(scheduler=address), progress=False)
    pd.testing.assert_frame_equal(_predictions(ctx.store, "score-tcp"), _predictions(ctx.store, "score-local"))


@pytest.mark.services
def test_an_s3_prefix_without_its_slash_says_to_add_it(s3_server):
    from workbench.storage.datasets import open_dataset

    s3_server.client().create_bucket(Bucket="slash")
    s3_server.client().put_object(Bucket="slash", Key="sales/date=1/part-0.parquet", Body=b"x")
    with pytest.raises(
        DataError, match=r"^data.source s3://slash/sales: no object of that name, but a prefix .*s3://slash/sales/\)"
    ):
        open_dataset("s3://slash/sales", "data.source")
    with pytest.raises(DataError, match=r"not found"):
        open_dataset("s3://slash/nothing", "data.source")
