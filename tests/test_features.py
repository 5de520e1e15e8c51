"""Feature columns from Arrow as numbers, and booleans as features end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench.ml.features import column_matrix


def test_the_matrix_takes_booleans_as_0_1_and_nulls_as_nan():
    table = pa.table(
        {
            "flag": pa.array([True, False, None]),
            "count": pa.array([1, None, 3], pa.int64()),
            "empty": pa.nulls(3),
            "x": pa.array([0.5, 1.5, 2.5]),
        }
    )
    x = column_matrix(table, ["flag", "count", "empty", "x"])
    expected = np.array([[1, 1, np.nan, 0.5], [0, np.nan, np.nan, 1.5], [np.nan, 3, np.nan, 2.5]])
    assert x.dtype == np.float64 and np.array_equal(x, expected, equal_nan=True)
    assert column_matrix(table, ["x"], np.float32).dtype == np.float32


def test_a_boolean_feature_trains_and_scores(stage_ctx_factory, tmp_path):
    """Training took booleans and scoring refused them; both now read them as 0/1."""
    from workbench.config.schema import DataParams, ExportParams, ScoreParams, TrainParams
    from workbench.stages.batch_score import score_batch
    from workbench.stages.export_onnx import export_onnx
    from workbench.stages.prepare_data import prepare_data
    from workbench.stages.train import train_model

    rng = np.random.default_rng(0)
    n = 300
    flag = rng.random(n) < 0.5
    frame = pd.DataFrame({"flag": flag, "noise": rng.normal(size=n), "label": flag.astype(int)})
    path = tmp_path / "flags.parquet"
    frame.to_parquet(path)
    assert pa.types.is_boolean(pq.read_schema(path).field("flag").type)

    run = "bool-feature"
    prepared = prepare_data(stage_ctx_factory("prepare", run), DataParams(source=str(path)), seed=0)
    assert "flag" in prepared.features
    trained = train_model(
        stage_ctx_factory("train", run), TrainParams(model="mlp", epochs=3, batch_size=32, device="cpu"), seed=0
    )
    assert trained.metrics["val_accuracy"] > 0.9
    export_onnx(stage_ctx_factory("export", run), ExportParams(target="onnxruntime", opset=17))
    scored = score_batch(
        stage_ctx_factory("score", run),
        ScoreParams(source=str(path), backend="onnxruntime", batch_size=128, model_run=run),
        progress=False,
    )
    assert scored.metrics["rows_scored"] == n and scored.metrics["rows_unscored"] == 0
    assert scored.accuracy == pytest.approx(1.0, abs=0.1)
