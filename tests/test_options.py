"""Options a user may pick, end to end through the real CLI: each must finish, or fail with one clear line.

The notebooks' checked cells print facts that hold for every option, so an option that is not the
default (another export target, unlabelled data, a backend that cannot take the model) must not
die on a lookup of something that option leaves out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from support.cli import FEW, Place, Run, checked_output, run_id_of, workbench
from support.nets import OTHER_BATCH_NET

from workbench.storage.sources import read_source
from workbench.tracking.tracker import Tracker

pytestmark = pytest.mark.e2e


def failed_run(place: Place) -> dict:
    (listed,) = Tracker(place.db).list_runs()
    return Tracker(place.db).get_run(listed["id"])


def test_an_onnxruntime_export_validates_on_onnxruntime_alone(place):
    result = workbench("run", *place.sets(*FEW, "export.target=onnxruntime", "export.opset=17"))
    assert result.code == 0, result.stderr[-2000:]
    folder = place.store / "runs" / run_id_of(result.stdout)
    parity = json.loads((folder / "validate/parity.json").read_text())
    assert parity["verdict"] == "PASS" and set(parity["stats"]) == {"pytorch", "onnxruntime"}
    metrics = Tracker(place.db).get_run(run_id_of(result.stdout))["metrics"]
    assert not [name for name in metrics if name.startswith("mxnet_")]  # MXNet was not run
    assert checked_output(folder / "04_validate_mxnet.ipynb").startswith(
        "verdict: PASS\nevery backend scores as PyTorch does: True"
    )


def test_a_model_mxnet_cannot_import_fails_at_export_naming_the_node(place, tmp_path, monkeypatch):
    (tmp_path / "mod.py").write_text(OTHER_BATCH_NET)
    # the CLI and its kernels inherit it
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    result = workbench("run", *place.sets(*FEW, "train.model=mod:Net"))
    assert result.code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step export failed: ModelError: Reshape node '/Reshape_1' has 2 sizes known only"), (
        result.stderr[-2000:]
    )
    assert last.endswith("e.g. x.view(-1, 1, 8, 8) or x.flatten(1), or set export.target=onnxruntime to skip MXNet")
    run = failed_run(place)
    steps = {s["name"]: s["status"] for s in run["steps"]}
    assert run["status"] == "failed" and steps["export"] == "failed" and steps["validate"] == "pending"
    assert not (place.store / "runs" / run["id"] / "export/model.onnx").exists()


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("unlabelled") / "unlabelled.parquet"
    read_source("bundled:digits").drop(columns="label").to_parquet(path)
    return path


@pytest.mark.parametrize("backend", ["onnxruntime", "mxnet", "torch"])
def test_unlabelled_rows_score_on_every_backend(small_run: Run, unlabelled: Path, backend: str):
    result = workbench(
        "run",
        "--steps",
        "score",
        *small_run.place.sets(
            f"score.model_run={small_run.run_id}", f"score.source={unlabelled}", f"score.backend={backend}"
        ),
    )
    assert result.code == 0, result.stderr[-2000:]
    run_id = run_id_of(result.stdout)
    metrics = Tracker(small_run.place.db).get_run(run_id)["metrics"]
    assert metrics["rows_scored"] == 1797 and metrics["rows_unscored"] == 0 and "score_accuracy" not in metrics
    folder = small_run.place.store / "runs" / run_id
    assert checked_output(folder / "05_batch_score.ipynb") == (
        "rows scored: 1797\nrows not scored: 0\nbetter than chance where labelled: True\nmeasured on: n/a (unlabelled)\n"
    )
    assert "actual" not in pq.read_schema(folder / "score/predictions.parquet").names


def test_rows_with_empty_cells_are_imputed_as_in_training(small_run: Run, tmp_path: Path):
    """A gap is filled with the training mean, as the encoding does wherever the model predicts."""
    frame = read_source("bundled:digits")
    holes = {7: "p3", 64: "p20", 1000: "p41"}
    for row, column in holes.items():
        frame[column] = frame[column].astype("Int64")
        frame.loc[row, column] = pd.NA
    path = tmp_path / "holes.csv"
    frame.to_csv(path, index=False)  # a missing value is an empty cell
    result = workbench(
        "run", "--steps", "score", *small_run.place.sets(f"score.model_run={small_run.run_id}", f"score.source={path}")
    )
    assert result.code == 0, result.stderr[-2000:]
    run_id = run_id_of(result.stdout)
    metrics = Tracker(small_run.place.db).get_run(run_id)["metrics"]
    assert metrics["rows_unscored"] == 0 and metrics["rows_scored"] == 1797
    predictions = pd.read_parquet(small_run.place.store / "runs" / run_id / "score/predictions.parquet")
    assert predictions.loc[sorted(holes)].predicted.notna().all()
    assert np.isfinite(predictions.confidence).all()
