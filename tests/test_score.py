from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text

from workbench.config.schema import PublishParams, ScoreParams
from workbench.errors import DataError, ParameterError, TrackingError
from workbench.ml.encoding import fit_encoding
from workbench.stages.batch_score import DataWarning, score_batch
from workbench.storage.publish import PublishError
from workbench.storage.sources import read_source

DIGITS = "bundled:digits"  # the whole bundled table, 1,797 rows (not the default: the model run's test split)


@pytest.fixture(scope="module")
def scored(trained, stage_ctx_factory):
    """The same 1,797 rows scored by every backend, in odd-sized batches."""
    frames = {}
    for backend in ("onnxruntime", "mxnet", "torch"):
        ctx = stage_ctx_factory("score", run_id=f"score-{backend}")
        result = score_batch(
            ctx, ScoreParams(source=DIGITS, backend=backend, batch_size=500, model_run="unit"), progress=False
        )
        frames[backend] = (result, pd.read_parquet(ctx.store.local_path(ctx.key("predictions.parquet"))))
    return frames


def test_every_backend_scores_every_row_alike(scored):
    reference = scored["onnxruntime"][1]
    assert len(reference) == 1797 and reference.row.tolist() == list(range(1797))
    assert set(reference.columns) == {"row", "predicted", "confidence", "actual"}
    for backend in ("mxnet", "torch"):
        result, frame = scored[backend]
        assert (frame.predicted == reference.predicted).all(), backend
        assert np.allclose(frame.confidence, reference.confidence, atol=1e-5)
        assert result.metrics["rows_scored"] == 1797 and result.metrics["score_accuracy"] > 0.85
    assert scored["torch"][0].class_counts.rows.sum() == 1797


def test_parquet_sources_stream_by_row_group(trained, stage_ctx_factory, tmp_path):
    digits = read_source("bundled:digits").drop(columns="label")
    path = tmp_path / "unlabelled.parquet"
    pq.write_table(pa.Table.from_pandas(digits), path, row_group_size=300)
    ctx = stage_ctx_factory("score", run_id="score-parquet")
    result = score_batch(ctx, ScoreParams(source=str(path), batch_size=256, model_run="unit"), progress=False)
    assert result.metrics["rows_scored"] == 1797 and "score_accuracy" not in result.metrics
    assert ctx.load_json("model.json", "score")["model_run"] == "unit"


def test_latest_is_the_newest_run_with_a_model_and_its_encoding(trained, stage_ctx_factory):
    """Other tests export models into the same store: latest must name one scoring can use whole
    (a model without the encoding it was trained with is no candidate) and that passed validation."""
    from workbench.stages.batch_score import resolve_model_run
    from workbench.storage.catalog import ENCODING, ONNX_MODEL

    ctx = stage_ctx_factory("score", run_id="score-latest")
    for step in ("export", "validate"):  # other tests reopen the shared run's steps in this process
        ctx.tracker.notebook_step("unit", step, "finished")
    latest = resolve_model_run(ctx, "latest")
    assert ctx.has_artifact(ONNX_MODEL, run=latest) and ctx.has_artifact(ENCODING, run=latest)
    assert ctx.tracker.model_doubts([latest]) == {latest: None}
    with_model = [r["id"] for r in ctx.tracker.list_runs(limit=1000) if ctx.has_artifact(ONNX_MODEL, run=r["id"])]
    assert "unit" in with_model and latest in with_model


def test_a_sql_table_scores_like_its_csv(trained, stage_ctx_factory, tmp_path):
    url = f"sqlite:///{tmp_path}/warehouse.db"
    read_source("bundled:digits").to_sql("digits", create_engine(url), index=False)
    ctx = stage_ctx_factory("score", run_id="score-sql")
    result = score_batch(
        ctx, ScoreParams(source={"url": url, "table": "digits"}, batch_size=700, model_run="unit"), progress=False
    )
    assert result.metrics["rows_scored"] == 1797 and result.metrics["score_accuracy"] > 0.85
    assert ctx.load_json("model.json", "score")["source"] == f"{url} table digits"


def test_scoring_bad_input_is_named(trained, stage_ctx_factory, tmp_path):
    ctx = stage_ctx_factory("score", run_id="score-bad")
    read_source("bundled:digits").drop(columns=["p3", "p4"]).to_csv(tmp_path / "narrow.csv", index=False)
    with pytest.raises(
        DataError, match=r"score.source .*narrow.csv: lacks the model's input columns 'p3', 'p4' \(2 missing\)"
    ):
        score_batch(
            ctx, ScoreParams(source=str(tmp_path / "narrow.csv"), batch_size=100, model_run="unit"), progress=False
        )
    with pytest.raises(
        ParameterError,
        match=r"^score\.batch_size in ScoreParams\(batch_size=0, .*\): must be greater than 0 and at most 10000000, got 0$",
    ):
        score_batch(ctx, ScoreParams(batch_size=0, model_run="unit"), progress=False)
    with pytest.raises(TrackingError, match=r"^score\.model_run 'nope' is not a run in db .*; `workbench runs` lists"):
        score_batch(ctx, ScoreParams(batch_size=100, model_run="nope"), progress=False)
    ctx.tracker.ensure_run("bare", ctx.store.root)  # a run that exported nothing
    with pytest.raises(TrackingError, match=r"^score\.model_run 'bare' has no exported model"):
        score_batch(ctx, ScoreParams(batch_size=100, model_run="bare"), progress=False)
    assert not ctx.store.exists(ctx.key("predictions.parquet"))


def test_publishing_appends_once_per_run(trained, stage_ctx_factory, tmp_path):
    url = f"sqlite:///{tmp_path}/warehouse.db"
    for _ in range(2):  # a rerun replaces its own rows instead of duplicating them
        ctx = stage_ctx_factory("score", run_id="score-publish")
        score_batch(
            ctx,
            ScoreParams(source=DIGITS, batch_size=700, model_run="unit"),
            PublishParams(url=url, table="preds"),
            progress=False,
        )
    other = stage_ctx_factory("score", run_id="score-publish-2")
    score_batch(
        other,
        ScoreParams(source=DIGITS, batch_size=700, model_run="unit"),
        PublishParams(url=url, table="preds"),
        progress=False,
    )
    with create_engine(url).connect() as conn:
        counts = dict(conn.execute(text("select run_id, count(*) from preds group by run_id")).all())
        tags = conn.execute(text("select distinct step, backend from preds")).all()
        metrics = dict(conn.execute(text("select name, value from preds_metrics where run_id = 'score-publish'")).all())
    assert counts == {"score-publish": 1797, "score-publish-2": 1797}
    assert tags == [("score", "onnxruntime")]
    assert metrics["rows_scored"] == 1797 and 0.85 < metrics["score_accuracy"] <= 1


def test_publishing_into_a_foreign_table_is_refused(trained, stage_ctx_factory, tmp_path):
    url = f"sqlite:///{tmp_path}/warehouse.db"
    with create_engine(url).begin() as conn:
        conn.execute(text("create table preds (id integer primary key, amount real)"))
    ctx = stage_ctx_factory("score", run_id="score-foreign")
    with pytest.raises(
        PublishError,
        match=r"publish\.table 'preds' at sqlite:///.* has no run_id or step column; it holds something else",
    ):
        score_batch(
            ctx,
            ScoreParams(source=DIGITS, batch_size=700, model_run="unit"),
            PublishParams(url=url, table="preds"),
            progress=False,
        )


def test_publishing_numbers_into_a_table_of_class_names_is_refused(trained, stage_ctx_factory, tmp_path):
    """SQLite would take them (its columns hold anything): another model's table is named instead."""
    url = f"sqlite:///{tmp_path}/warehouse.db"
    with create_engine(url).begin() as conn:
        conn.execute(
            text(
                "create table preds (run_id text, step text, backend text, row integer, predicted text, "
                "confidence real, actual text)"
            )
        )
        conn.execute(text("insert into preds values ('old', 'score', 'onnxruntime', 0, 'Adelie', 0.9, 'Adelie')"))
    ctx = stage_ctx_factory("score", run_id="score-kinds")
    with pytest.raises(
        PublishError,
        match=r"^publish\.table 'preds' at sqlite:///.*: column 'predicted' holds text, and these rows give numbers "
        r"\(another model's table\?\); pick another table$",
    ):
        score_batch(
            ctx,
            ScoreParams(source=DIGITS, batch_size=700, model_run="unit"),
            PublishParams(url=url, table="preds"),
            progress=False,
        )
    with create_engine(url).connect() as conn:
        assert conn.execute(text("select count(*) from preds")).scalar() == 1  # the old rows are kept


def test_publishing_to_postgres_uses_copy_and_stays_idempotent(trained, stage_ctx_factory, postgres):
    url = postgres()
    for _ in range(2):
        ctx = stage_ctx_factory("score", run_id="score-pg")
        score_batch(
            ctx,
            ScoreParams(source=DIGITS, batch_size=500, model_run="unit"),
            PublishParams(url=url, table="preds"),
            progress=False,
        )
    with create_engine(url).connect() as conn:
        assert conn.execute(
            text("select count(*), count(distinct row) from preds where run_id = 'score-pg'")
        ).one() == (1797, 1797)
        types = dict(
            conn.execute(
                text("select column_name, data_type from information_schema.columns where table_name = 'preds'")
            ).all()
        )
    assert types["row"] == "bigint" and types["confidence"] == "real" and types["run_id"] == "text"
    assert types["actual"] == types["predicted"] == "bigint"


def test_a_publish_table_with_conflicting_columns_is_named(trained, stage_ctx_factory, postgres):
    url = postgres()
    with create_engine(url).begin() as conn:
        conn.execute(text("create table preds (run_id text, step text, score double precision)"))
    ctx = stage_ctx_factory("score", run_id="score-conflict")
    with pytest.raises(
        PublishError,
        match=r"publish\.table 'preds' at postgresql\+psycopg://postgres@.* lacks columns \['backend', 'row', 'predicted', 'confidence', 'actual'\]",
    ):
        score_batch(
            ctx,
            ScoreParams(source=DIGITS, batch_size=500, model_run="unit"),
            PublishParams(url=url, table="preds"),
            progress=False,
        )


def test_unlabelled_rows_score_without_accuracy(trained, stage_ctx_factory, tmp_path):
    """Unlabelled data is the normal case: the summary says so instead of showing a number."""
    path = tmp_path / "unlabelled.csv"
    read_source("bundled:digits").drop(columns="label").to_csv(path, index=False)
    ctx = stage_ctx_factory("score", run_id="score-unlabelled")
    result = score_batch(
        ctx, ScoreParams(source=str(path), backend="torch", batch_size=600, model_run="unit"), progress=False
    )
    assert result.accuracy is None and "score_accuracy" not in result.metrics
    assert result.metrics["rows_scored"] == 1797 and result.metrics["rows_unscored"] == 0 and result.warnings == []
    assert result.summary.loc["accuracy (where labelled)", "value"] == "n/a (unlabelled)"
    assert result.summary.loc["rows not scored", "value"] == "0"
    assert "actual" not in result.preview.columns


def holes_csv(tmp_path, value: float = np.nan) -> tuple[str, list[int]]:
    """The digits with ``value`` (empty cells by default) in a few rows; returns the path and the rows."""
    frame = read_source("bundled:digits").astype({"p5": float, "p0": float, "p7": float, "p63": float, "p10": float})
    culprits = {3: ["p5"], 250: ["p0", "p7"], 901: ["p63"], 1500: ["p5"], 1796: ["p10"]}
    for row, columns in culprits.items():
        frame.loc[row, columns] = value
    path = tmp_path / "holes.csv"
    frame.to_csv(path, index=False)  # NaN is written as an empty cell
    return str(path), sorted(culprits)


def test_gaps_are_imputed_as_in_training(trained, stage_ctx_factory, tmp_path):
    """The encoding fills a gap with the training mean, in scoring as everywhere the model predicts."""
    source, culprits = holes_csv(tmp_path)
    assert ",," in Path(source).read_text()
    ctx = stage_ctx_factory("score", run_id="score-holes")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*rows not scored", DataWarning)
        result = score_batch(ctx, ScoreParams(source=source, batch_size=400, model_run="unit"), progress=False)
    assert result.metrics["rows_unscored"] == 0 and result.metrics["rows_scored"] == 1797
    frame = pd.read_parquet(ctx.store.local_path(ctx.key("predictions.parquet")))
    assert frame.loc[culprits].predicted.notna().all() and 0.85 < result.accuracy <= 1


def test_rows_the_model_cannot_score_are_flagged_not_classed(trained, stage_ctx_factory, tmp_path):
    """A value too large for float32 makes the model's output NaN: null, named, never class 0."""
    source, culprits = holes_csv(tmp_path, 1e300)
    ctx = stage_ctx_factory("score", run_id="score-huge")
    with pytest.warns(DataWarning, match=r"^5 of 1,797 rows not scored \(the model's output is not finite\)") as caught:
        result = score_batch(ctx, ScoreParams(source=source, batch_size=400, model_run="unit"), progress=False)
    message = next(str(w.message) for w in caught if "rows not scored" in str(w.message))
    assert message.endswith("rows 3, 250, 901, 1500, 1796")
    assert result.warnings == [message] and "\n" not in message
    assert result.metrics["rows_unscored"] == 5 and result.metrics["rows_scored"] == 1792
    assert result.summary.loc["rows not scored", "value"].startswith("5 (see the warning")
    assert result.class_counts.rows.sum() == 1792 and 0.85 < result.accuracy <= 1
    frame = pd.read_parquet(ctx.store.local_path(ctx.key("predictions.parquet")))
    assert len(frame) == 1797 and frame.row.tolist() == list(range(1797))
    unscored = frame[frame.predicted.isna()]
    assert unscored.row.tolist() == culprits and unscored.confidence.isna().all()
    assert frame.drop(index=unscored.index).confidence.notna().all()


def test_unscored_rows_publish_as_nulls(trained, stage_ctx_factory, tmp_path, postgres):
    """Both publish paths (INSERT on SQLite, COPY on PostgreSQL) take null predictions."""
    source, culprits = holes_csv(tmp_path, 1e300)
    for url in (f"sqlite:///{tmp_path}/warehouse.db", postgres()):
        ctx = stage_ctx_factory("score", run_id="score-holes-publish")
        with pytest.warns(DataWarning):
            score_batch(
                ctx,
                ScoreParams(source=source, batch_size=1000, model_run="unit"),
                PublishParams(url=url, table="preds"),
                progress=False,
            )
        with create_engine(url).connect() as conn:
            nulls = conn.execute(text("select row from preds where predicted is null and confidence is null")).all()
            total = conn.execute(text("select count(*), count(actual) from preds")).one()
            metrics = dict(conn.execute(text("select name, value from preds_metrics")).all())
        assert sorted(r[0] for r in nulls) == culprits, url
        assert tuple(total) == (1797, 1797) and metrics["rows_unscored"] == 5


def test_blocks_of_batches_score_as_the_model_does_batch_by_batch(trained, stage_ctx_factory):
    """Scoring reads, encodes and writes many batches at a time, yet calls the model on ``batch_size``
    rows: predictions and confidences are those of the model run batch by batch, to the bit."""
    import onnxruntime as ort

    from workbench.ml.encoding import Encoding
    from workbench.ml.runtimes import fast_form, onnx_file_check, top_class
    from workbench.stages.batch_score import block_rows, model_inputs
    from workbench.storage.catalog import ENCODING, ONNX_MODEL

    ctx = stage_ctx_factory("score", run_id="score-blocks")
    batch = 97
    assert block_rows(batch, model_inputs(ctx, "unit")) > 1797  # one block of 19 batches
    result = score_batch(ctx, ScoreParams(source=DIGITS, batch_size=batch, model_run="unit"), progress=False)
    frame = pd.read_parquet(ctx.store.local_path(ctx.key("predictions.parquet")))

    digits = read_source("bundled:digits")
    encoding = Encoding.from_json(ctx.load_artifact(ENCODING, run="unit"))
    model = fast_form(onnx_file_check(ctx.load(ONNX_MODEL, run="unit"))).SerializeToString()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    best, confidence = [], []
    for start in range(0, len(digits), batch):
        outputs = session.run(None, {name: encoding.apply(digits.iloc[start : start + batch])})[0]
        classes_at, confidences = top_class(outputs)
        best.append(classes_at)
        confidence.append(confidences)
    classes = np.asarray(encoding.target.classes)
    assert frame.predicted.tolist() == classes[np.concatenate(best)].tolist()
    assert np.array_equal(frame.confidence.to_numpy().view(np.uint32), np.concatenate(confidence).view(np.uint32))
    assert result.preview.row.tolist() == list(range(10)) and result.metrics["rows_scored"] == 1797


def test_blocks_stay_whole_batches_within_their_memory_bound():
    """Wide tables get fewer rows per block, never less than one batch, so memory follows the width."""
    from workbench.ml.encoding import Target
    from workbench.stages.batch_score import BLOCK_BYTES, BLOCK_ROWS, ModelInputs, block_rows

    def inputs(width: int) -> ModelInputs:
        encoding = fit_encoding([pa.table({f"x{j}": [0.0, 1.0] for j in range(width)})])
        return ModelInputs(encoding, Target("y", "classification", [0, 1], 2, 0))

    assert block_rows(4096, inputs(64)) == BLOCK_ROWS and block_rows(1000, inputs(64)) == 65_000
    wide = block_rows(512, inputs(2000))
    assert wide % 512 == 0 and wide >= 512 and wide * (4 * 2002 + 8 * 2000) <= BLOCK_BYTES
    assert block_rows(100_000, inputs(64)) == 100_000 and block_rows(4096, inputs(20_000)) == 4096


def test_the_default_scores_the_model_runs_held_out_test_split(trained, stage_ctx_factory):
    ctx = stage_ctx_factory("score", run_id="score-default")
    result = score_batch(ctx, ScoreParams(batch_size=100, model_run="unit"), progress=False)
    test_rows = len(pd.read_parquet(ctx.store.local_path(ctx.key("test.parquet", step="prepare", run="unit"))))
    assert result.metrics["rows_scored"] == test_rows == 269
    assert result.measured_on.startswith("the model run's test split: rows kept from training and tuning")
    assert result.summary.loc["measured on", "value"] == result.measured_on
    assert result.summary.loc["source", "value"] == "split:test of run unit"
    assert ctx.load_json("model.json", "score")["measured_on"] == result.measured_on


def test_scoring_says_when_its_accuracy_is_not_a_quality_measure(scored, trained, stage_ctx_factory):
    whole = scored["onnxruntime"][0]  # the bundled table the model run was prepared from
    assert "its training rows are among these, so not a quality measure" in whole.measured_on
    ctx = stage_ctx_factory("score", run_id="score-train")
    on_train = score_batch(ctx, ScoreParams(source="split:train", batch_size=500, model_run="unit"), progress=False)
    assert on_train.metrics["rows_scored"] == 1259 and on_train.measured_on.endswith("not a quality measure")
    with pytest.raises(
        DataError, match=r"^score.source 'split:tset': no split 'tset'; use split:test, split:val, split:train$"
    ):
        score_batch(ctx, ScoreParams(source="split:tset", batch_size=500, model_run="unit"), progress=False)
