"""The SageMaker model archive, served the way the PyTorch inference toolkit calls it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest

from workbench.config.schema import ExportParams, ScoreParams, TrainParams
from workbench.errors import DataError, ModelError
from workbench.ml.dataset import load_split
from workbench.ml.sagemaker import model_archive
from workbench.stages.batch_score import score_batch
from workbench.stages.export_onnx import export_onnx
from workbench.storage.sources import read_source

SERVE = r"""
import io, json, sys
import numpy as np
sys.modules["workbench"] = None  # prove the archive needs nothing of the workbench package
sys.path.insert(0, "code")
import inference

model = inference.model_fn(".")
rows = np.load("rows.npy")
buf = io.BytesIO(); np.save(buf, rows)
as_npy = inference.output_fn(inference.predict_fn(inference.input_fn(buf.getvalue(), "application/x-npy"), model), "application/x-npy")
as_json = inference.output_fn(
    inference.predict_fn(inference.input_fn(json.dumps({"instances": rows.tolist()}), "application/json"), model),
    "application/json",
)
np.save("logits.npy", np.load(io.BytesIO(as_npy)))
open("answer.json", "w").write(as_json)
"""


def test_archive_serves_the_workbenchs_predictions(trained, stage_ctx_factory, tmp_path):
    export_onnx(stage_ctx_factory("export"), ExportParams(sagemaker=True))
    blob = stage_ctx_factory("export").load("model.tar.gz", "export")
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path, filter="data")
    assert names == {
        "model.pth",
        "code/inference.py",
        "code/architectures.py",
        "code/model.json",
        "code/requirements.txt",
    }

    np.save(tmp_path / "rows.npy", read_source("bundled:digits").drop(columns="label").head(50).to_numpy(np.float32))
    proc = subprocess.run(
        [sys.executable, "-I", "-c", SERVE], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    ctx = stage_ctx_factory("score", run_id="sagemaker-compare")
    score_batch(ctx, ScoreParams(backend="torch", batch_size=50, model_run="unit"), progress=False)
    ours = pd.read_parquet(ctx.store.local_path(ctx.key("predictions.parquet"))).head(50)
    answer = json.loads((tmp_path / "answer.json").read_text())
    assert answer["predictions"] == ours.predicted.tolist()
    assert np.allclose(np.max(answer["probabilities"], axis=1), ours.confidence, atol=1e-5)
    assert np.load(tmp_path / "logits.npy").shape == (50, 10)


def test_archive_needs_a_builtin_architecture():
    with pytest.raises(ModelError, match="built-in architectures only"):
        model_archive(
            b"", {"model": "mypkg.nets:Wide", "in_features": 4, "num_classes": 2}, {"mean": [], "std": []}, [0, 1]
        )


def test_training_follows_sagemaker_channels_and_folders(trained, stage_ctx_factory, tmp_path, monkeypatch):
    """With SM_* set (as in a SageMaker training job) the splits come from the channels and the
    model and reports land where SageMaker collects them."""
    from workbench.stages.train import train_model

    source = stage_ctx_factory("prepare")
    channels = {"SM_CHANNEL_TRAIN": tmp_path / "train", "SM_CHANNEL_VALIDATION": tmp_path / "validation"}
    for variable, folder in channels.items():
        folder.mkdir()
        monkeypatch.setenv(variable, str(folder))
    train = pd.read_parquet(io.BytesIO(source.load("train.parquet", "prepare"))).head(300)  # a smaller channel
    train.to_parquet(channels["SM_CHANNEL_TRAIN"] / "train.parquet")
    for name in ("schema.json", "normalization.json"):
        (channels["SM_CHANNEL_TRAIN"] / name).write_bytes(source.load(name, "prepare"))
    (channels["SM_CHANNEL_VALIDATION"] / "val.parquet").write_bytes(source.load("val.parquet", "prepare"))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "model"))
    monkeypatch.setenv("SM_OUTPUT_DATA_DIR", str(tmp_path / "output"))

    result = train_model(
        stage_ctx_factory("train", run_id="sagemaker-job"),
        TrainParams(model="mlp", epochs=2, batch_size=100, device="cpu", amp=False),
        seed=0,
    )
    assert result.history.epoch.tolist() == [1, 2]
    assert {p.name for p in (tmp_path / "model").iterdir()} == {"model.pth", "model_config.json"}
    assert {"history.csv", "curves.png", "metrics.json"} <= {p.name for p in (tmp_path / "output").iterdir()}
    assert json.loads((tmp_path / "model" / "model_config.json").read_text())["model"] == "mlp"
    assert load_split(stage_ctx_factory("train", run_id="sagemaker-job"), "train").x.shape == (
        300,
        64,
    )  # the channel's rows

    (channels["SM_CHANNEL_TRAIN"] / "schema.json").unlink()
    with pytest.raises(DataError, match=r"SM_CHANNEL_TRAIN=.* has no schema\.json"):
        train_model(
            stage_ctx_factory("train", run_id="sagemaker-job-2"),
            TrainParams(model="mlp", epochs=1, batch_size=100, device="cpu", amp=False),
            seed=0,
        )


def test_the_archives_normalisation_is_the_packages(monkeypatch):
    """The inference template keeps its own copy of Normalization.apply (it cannot import workbench):
    the same rows give the same model input, bit for bit."""
    import importlib.util
    import types
    from pathlib import Path

    import workbench
    from workbench.ml.features import Normalization

    template = Path(workbench.__file__).parent / "templates" / "sagemaker_inference.py"
    monkeypatch.setitem(sys.modules, "architectures", types.SimpleNamespace(BUILTIN={}))
    spec = importlib.util.spec_from_file_location("sagemaker_inference_copy", template)
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)

    rows = (np.random.default_rng(0).normal(size=(257, 6)) * 50 + 3).astype(np.float32)
    std = rows.std(axis=0)
    std[2] = 0.0  # a constant feature: scale 1, not a division by zero
    norm = Normalization.fit([f"f{i}" for i in range(6)], rows.mean(axis=0), std)
    meta = json.loads(json.dumps(norm.to_json()))  # as model.json carries it
    ours, theirs = norm.apply(rows), inference.normalize(rows, meta)
    assert theirs.dtype == ours.dtype == np.float32
    assert np.array_equal(theirs, ours)
