from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from support.nets import VIEW_NET

from workbench.config.schema import PublishParams, ScoreParams, ValidateParams
from workbench.errors import ModelError
from workbench.ml import runtimes
from workbench.ml.onnx_export import check_mxnet_ops, to_onnx
from workbench.ml.parity import compare, three_way
from workbench.ml.runtimes import load_mxnet, load_onnxruntime
from workbench.stages.batch_score import score_batch
from workbench.stages.validate_mxnet import validate_model


def test_compare_statistics_and_elementwise_rule():
    ref = np.array([[1.0, 2.0], [3.0, -1.0]])
    out = ref + np.array([[0.0, 0.1], [0.0, 0.0]])
    stats = compare(out, ref, np.array([1, 0]), atol=0.01, rtol=0.0)
    assert stats["max_abs_err"] == pytest.approx(0.1)
    assert stats["max_rel_err"] == pytest.approx(0.05)
    assert stats["within_tolerance"] == 0.75
    # an element passes on either tolerance, as in Polygraphy's elementwise check
    assert compare(out, ref, np.array([1, 0]), atol=0.01, rtol=0.06)["within_tolerance"] == 1.0
    assert stats["argmax_agreement"] == 1.0 and stats["accuracy"] == 1.0


def test_three_way_parity_passes(trained, stage_ctx_factory):
    ctx = stage_ctx_factory("validate")
    parity = validate_model(ctx, ValidateParams())
    assert parity.verdict == "PASS", parity.reasons
    parity.check()
    assert list(parity.table.columns) == ["pytorch", "onnxruntime", "mxnet"]
    for backend in ("onnxruntime", "mxnet"):
        assert parity.stats[backend]["max_abs_err"] < 1e-4 and parity.stats[backend]["dynamic_batch"] == 1.0
    metrics = ctx.tracker.get_run("unit")["metrics"]
    assert metrics["parity_pass"] == 1.0 and metrics["mxnet_p99_abs_err"] <= metrics["mxnet_max_abs_err"]
    assert "PASS" in parity._repr_html_() and "array" not in repr(parity)


def test_validation_publishes_metrics_and_every_backends_rows(trained, stage_ctx_factory, tmp_path):
    """Published next to scoring's rows of the same run, reruns replacing only their own step."""
    url = f"sqlite:///{tmp_path}/warehouse.db"
    ctx = stage_ctx_factory("validate")
    for _ in range(2):
        parity = validate_model(ctx, ValidateParams(), PublishParams(url=url, table="results"))
    score_batch(
        stage_ctx_factory("score"),
        ScoreParams(source="bundled:digits", backend="torch", batch_size=900, model_run="unit"),
        PublishParams(url=url, table="results"),
        progress=False,
    )
    rows = pd.read_sql("select * from results where step = 'validate'", url)
    n = len(parity.labels)
    assert rows.groupby("backend").size().to_dict() == {"mxnet": n, "onnxruntime": n, "pytorch": n}
    assert (rows.run_id == "unit").all() and set(rows.columns) >= {"row", "predicted", "confidence", "actual"}
    mxnet = rows[rows.backend == "mxnet"].sort_values("row")
    assert np.array_equal(mxnet.predicted, parity.outputs["mxnet"].argmax(1))  # digits' classes are 0-9
    assert (mxnet.predicted == mxnet.actual).mean() == pytest.approx(parity.stats["mxnet"]["accuracy"])
    assert pd.read_sql("select count(*) from results where step = 'score'", url).iloc[0, 0] == 1797
    metrics = pd.read_sql("select step, name, value from results_metrics where run_id = 'unit'", url)
    assert metrics.set_index(["step", "name"]).value[("validate", "parity_pass")] == 1.0
    assert len(metrics) == len(metrics.drop_duplicates(["step", "name"]))


def test_both_runtimes_accept_batches_of_1_and_257(trained, stage_ctx_factory):
    blob = stage_ctx_factory("export").load("model.onnx", "export")
    for batch in (1, 257):
        x = np.zeros((batch, 64), dtype=np.float32)
        assert load_mxnet(blob)(x).shape == load_onnxruntime(blob)(x).shape == (batch, 10)


def test_a_tampered_reference_fails_with_reasons(trained, stage_ctx_factory):
    source = stage_ctx_factory("export")
    target = stage_ctx_factory("export", run_id="tampered")
    ref = np.load(io.BytesIO(source.load("reference.npz", "export")))
    buf = io.BytesIO()
    np.savez(buf, x=ref["x"], logits=ref["logits"] + 0.5, labels=ref["labels"])
    target.save("reference.npz", buf.getvalue())
    target.save("model.onnx", source.load("model.onnx", "export"))
    target.save_json("export.json", source.load_json("export.json", "export"))
    parity = validate_model(stage_ctx_factory("validate", run_id="tampered"), ValidateParams())
    assert parity.verdict == "FAIL" and parity.reasons[0].startswith("onnxruntime: 100.00% of logits outside")
    with pytest.raises(ModelError, match="parity FAIL"):
        parity.check()


def test_a_model_mxnet_cannot_import_is_a_fail_verdict_not_a_crash():
    from test_export import GeluNet

    model = GeluNet().eval()
    blob = to_onnx(model, 64, 17, "onnxruntime").SerializeToString()
    x = np.random.default_rng(0).normal(size=(20, 64)).astype(np.float32)
    import torch

    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    parity = three_way(blob, x, reference, reference.argmax(1), ["onnxruntime", "mxnet"], 1e-4, 1e-3, 0.999)
    assert parity.verdict == "FAIL"
    assert parity.stats["onnxruntime"]["within_tolerance"] == 1.0
    assert parity.stats["mxnet"] == {"loaded": 0.0}
    assert parity.reasons[0].startswith("mxnet: MXNet cannot import the ONNX model")


def test_corrupt_or_truncated_onnx_is_a_model_error(trained, stage_ctx_factory):
    blob = stage_ctx_factory("export").load("model.onnx", "export")
    for broken in (b"not an onnx file", blob[: len(blob) // 3]):
        for load in (load_mxnet, load_onnxruntime):
            with pytest.raises(ModelError, match="the ONNX model is corrupt or truncated"):
                load(broken)


def _copy_export(stage_ctx_factory, run_id: str) -> None:
    """Give ``run_id`` the unit run's export artifacts, so validation runs there on its own."""
    source, target = stage_ctx_factory("export"), stage_ctx_factory("export", run_id=run_id)
    for name in ("model.onnx", "reference.npz"):
        target.save(name, source.load(name, "export"))
    target.save_json("export.json", source.load_json("export.json", "export"))


def test_any_backend_exception_is_a_fail_verdict_with_a_one_line_reason(trained, stage_ctx_factory, monkeypatch):
    """Not only ModelError: whatever a runtime raises while loading or running is recorded, then fails the step."""

    def broken_load(blob: bytes):
        raise RuntimeError("importer exploded\n  Stack trace:\n  frame 0")

    monkeypatch.setitem(runtimes.BACKENDS, "mxnet", broken_load)
    _copy_export(stage_ctx_factory, "broken")
    ctx = stage_ctx_factory("validate", run_id="broken")
    parity = validate_model(ctx, ValidateParams())
    assert parity.verdict == "FAIL" and parity.stats["mxnet"] == {"loaded": 0.0}
    assert parity.reasons == ["mxnet: cannot load the model (RuntimeError: importer exploded)"]
    assert parity.stats["onnxruntime"]["within_tolerance"] == 1.0  # the other backend still ran
    assert set(parity.accuracies) == {"pytorch", "onnxruntime"}
    assert parity.table.loc["loaded", "mxnet"] == "no" and "importer exploded" in parity._repr_html_()
    saved = ctx.load_json("parity.json", "validate")
    assert saved["verdict"] == "FAIL" and saved["reasons"] == parity.reasons
    assert ctx.store.exists(ctx.key("parity.png")) and ctx.tracker.get_run("broken")["metrics"]["mxnet_loaded"] == 0.0
    with pytest.raises(ModelError) as failed:
        parity.check()
    assert str(failed.value) == "parity FAIL: mxnet: cannot load the model (RuntimeError: importer exploded)"

    def crashes_when_run(blob: bytes):
        def predict(x: np.ndarray) -> np.ndarray:
            raise ValueError("bad input shape\nsecond line")

        return predict

    monkeypatch.setitem(runtimes.BACKENDS, "mxnet", crashes_when_run)
    parity = validate_model(ctx, ValidateParams())
    assert parity.stats["mxnet"] == {"loaded": 1.0, "ran": 0.0}
    assert parity.reasons == ["mxnet: fails on the validation split (ValueError: bad input shape)"]
    assert parity.table.loc["ran", "mxnet"] == "no"


def test_a_runtime_batch_reshape_passes_on_mxnet(tmp_path, monkeypatch):
    """x.view(x.shape[0], ...) is exported with a constant shape MXNet's importer reads: PASS on both runtimes."""
    import torch

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "viewnet.py").write_text(VIEW_NET)
    from viewnet import Net

    model = Net().eval()
    proto = to_onnx(model, 64, 12, "mxnet")
    check_mxnet_ops(proto, "viewnet:Net")  # every op is one MXNet knows
    x = np.random.default_rng(0).normal(size=(20, 64)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    parity = three_way(
        proto.SerializeToString(), x, reference, reference.argmax(1), ["onnxruntime", "mxnet"], 1e-4, 1e-3, 0.999
    )
    assert parity.verdict == "PASS", parity.reasons
    for backend in ("onnxruntime", "mxnet"):
        assert parity.stats[backend]["loaded"] == 1.0 and parity.stats[backend]["dynamic_batch"] == 1.0
        assert parity.stats[backend]["max_abs_err"] < 1e-4


def test_an_onnxruntime_export_is_judged_on_onnxruntime_alone(trained, stage_ctx_factory):
    """What the notebook's check reads exists whichever backends the export target implies."""
    _copy_export(stage_ctx_factory, "ort-only")
    ctx = stage_ctx_factory("export", run_id="ort-only")
    ctx.save_json("export.json", {**ctx.load_json("export.json", "export"), "target": "onnxruntime"})
    parity = validate_model(stage_ctx_factory("validate", run_id="ort-only"), ValidateParams())
    assert parity.verdict == "PASS" and set(parity.stats) == {"pytorch", "onnxruntime"}
    assert set(parity.accuracies) == {"pytorch", "onnxruntime"} and min(parity.accuracies.values()) > 0.5


def test_the_test_split_is_scored_with_the_shipped_model_beside_gradient_boosting_and_chance(
    trained, stage_ctx_factory
):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import accuracy_score, roc_auc_score

    from workbench.ml.dataset import load_split
    from workbench.ml.runtimes import load_onnxruntime
    from workbench.stages.validate_mxnet import evaluate_test
    from workbench.storage.catalog import CONFUSION, PER_CLASS, TEST_PLOT, TEST_SCORE

    ctx = stage_ctx_factory("validate")
    held_out = evaluate_test(ctx)
    assert held_out.rows == 269
    test, train = load_split(ctx, "test"), load_split(ctx, "train")
    # the model that ships: model.onnx in onnxruntime, on the test rows
    outputs = load_onnxruntime(ctx.load("model.onnx", step="export"))(test.x)
    metrics = ctx.tracker.get_run("unit")["metrics"]
    assert metrics["test_accuracy"] == pytest.approx(accuracy_score(test.y, outputs.argmax(1)))
    boosting = HistGradientBoostingClassifier(random_state=0).fit(train.x, train.y)
    assert metrics["baseline_test_accuracy"] == pytest.approx(accuracy_score(test.y, boosting.predict(test.x)))
    assert metrics["baseline_test_roc_auc"] == pytest.approx(
        roc_auc_score(test.y, boosting.predict_proba(test.x), multi_class="ovr")
    )
    assert metrics["chance_test_accuracy"] == pytest.approx(np.mean(test.y == np.bincount(train.y).argmax()))
    assert metrics["chance_test_roc_auc"] == 0.5 and metrics["loses_to_baseline"] == float(held_out.loses)
    names = {"accuracy", "balanced_accuracy", "f1_macro", "log_loss", "roc_auc"}
    assert {k.removeprefix("test_") for k in metrics if k.startswith("test_")} == names
    assert list(held_out.table.columns) == ["model (onnxruntime)", "gradient boosting", "chance"]
    line = held_out.comparison.line
    assert (
        line.startswith(f"test accuracy {metrics['test_accuracy']:.3f}; gradient boosting ") and "; chance 0.1" in line
    )
    summary = ctx.load_artifact(TEST_SCORE)
    assert summary["comparison"] == line and summary["rows"] == 269
    per_class = ctx.load_artifact(PER_CLASS)
    assert per_class["class"].tolist() == list(range(10)) and per_class.support.sum() == 269
    confusion = ctx.load_artifact(CONFUSION).set_index("actual")
    assert confusion.to_numpy().sum() == 269 and np.trace(confusion.to_numpy()) == round(metrics["test_accuracy"] * 269)
    assert ctx.load(TEST_PLOT).startswith(b"\x89PNG")
    assert line in held_out._repr_html_() and line in repr(held_out)


def test_a_run_without_test_rows_says_so_instead_of_failing(stage_ctx_factory):
    from workbench.config.schema import DataParams
    from workbench.stages.prepare_data import prepare_data
    from workbench.stages.validate_mxnet import evaluate_test
    from workbench.storage.catalog import TEST_SCORE

    prepared = prepare_data(
        stage_ctx_factory("prepare", run_id="no-test"), DataParams(test_fraction=0), seed=0, progress=False
    )
    assert prepared.counts.set_index("split").rows["test"] == 0
    ctx = stage_ctx_factory("validate", run_id="no-test")
    held_out = evaluate_test(ctx)
    assert held_out.rows == 0 and held_out.comparison is None and not held_out.loses
    assert "held out no test rows (data.test_fraction is 0)" in repr(held_out)
    assert ctx.load_artifact(TEST_SCORE)["metrics"] == {}
    assert not [k for k in ctx.tracker.get_run("no-test")["metrics"] if "test_" in k and k != "rows_test"]


def test_a_digits_run_shows_its_test_score_and_baselines(small_run):
    import json

    from support.cli import checked_output, workbench

    shown = workbench("runs", "show", small_run.run_id, "--json", *small_run.place.sets())
    metrics = json.loads(shown.stdout)["metrics"]
    names = {"accuracy", "balanced_accuracy", "f1_macro", "log_loss", "roc_auc"}
    for prefix in ("test_", "baseline_test_", "chance_test_"):
        assert {k.removeprefix(prefix) for k in metrics if k.startswith(prefix)} == names, prefix
    assert metrics["test_accuracy"] > 0.85 and metrics["baseline_test_accuracy"] > 0.9
    assert metrics["chance_test_accuracy"] < 0.15 and metrics["chance_test_roc_auc"] == 0.5
    assert checked_output(small_run.folder / "04_validate_mxnet.ipynb").endswith(
        f"test rows: 269\nloses to gradient boosting: {bool(metrics['loses_to_baseline'])}\n"
    )
    index = (small_run.folder / "report" / "index.html").read_text()
    assert f"test accuracy {metrics['test_accuracy']:.3f}; gradient boosting " in index


@pytest.mark.e2e
def test_a_regression_on_diabetes_has_a_test_score_beside_gradient_boosting(stage_ctx_factory, tmp_path):
    """scikit-learn's diabetes table (442 rows, a number to predict) through every stage in-process."""
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.metrics import mean_absolute_percentage_error, mean_squared_error, r2_score

    from workbench.config.schema import DataParams, ExportParams, TrainParams
    from workbench.ml.encoding import Encoding
    from workbench.ml.runtimes import load_onnxruntime
    from workbench.stages.export_onnx import export_onnx
    from workbench.stages.prepare_data import prepare_data
    from workbench.stages.train import train_model
    from workbench.stages.validate_mxnet import evaluate_test
    from workbench.storage.catalog import ENCODING, ONNX_MODEL, TEST_SPLIT, TRAIN_SPLIT

    path = tmp_path / "diabetes.csv"
    load_diabetes(as_frame=True).frame.to_csv(path, index=False)
    run = "diabetes"
    prepare_data(
        stage_ctx_factory("prepare", run), DataParams(source=str(path), target="target"), seed=5, progress=False
    )
    train_model(stage_ctx_factory("train", run), TrainParams(epochs=40, batch_size=32, device="cpu"), seed=5)
    export_onnx(stage_ctx_factory("export", run), ExportParams())
    ctx = stage_ctx_factory("validate", run)
    held_out = evaluate_test(ctx)

    encoding = Encoding.from_json(ctx.load_artifact(ENCODING))
    test, train = ctx.load_artifact(TEST_SPLIT), ctx.load_artifact(TRAIN_SPLIT)
    predicted = encoding.target.predicted(load_onnxruntime(ctx.load(ONNX_MODEL))(encoding.apply(test)))
    metrics = ctx.tracker.get_run(run)["metrics"]
    assert metrics["test_rmse"] == pytest.approx(np.sqrt(mean_squared_error(test.target, predicted)))
    assert metrics["test_r2"] == pytest.approx(r2_score(test.target, predicted)) and metrics["test_r2"] > 0.2
    assert metrics["test_mape"] == pytest.approx(mean_absolute_percentage_error(test.target, predicted))
    boosting = HistGradientBoostingRegressor(random_state=5).fit(encoding.apply(train), train.target)
    assert metrics["baseline_test_r2"] == pytest.approx(r2_score(test.target, boosting.predict(encoding.apply(test))))
    assert metrics["chance_test_rmse"] == pytest.approx(np.sqrt(np.mean((test.target - train.target.mean()) ** 2)))
    assert held_out.comparison.line.startswith(f"test R² {metrics['test_r2']:.3f}; gradient boosting ")
    assert held_out.per_class is None and ctx.has_artifact("test_plot") and not ctx.has_artifact("per_class")


@pytest.mark.e2e
def test_a_run_without_a_test_split_finishes_and_says_so(place):
    from support.cli import FEW, checked_output, run_id_of, workbench

    result = workbench("run", *place.sets(*FEW, "data.test_fraction=0"))
    assert result.code == 0, result.stderr[-2000:]
    run_id = run_id_of(result.stdout)
    folder = place.store / "runs" / run_id
    assert checked_output(folder / "04_validate_mxnet.ipynb").endswith(
        "test rows: 0\nloses to gradient boosting: False\n"
    )
    assert "No test score" in (folder / "report" / "04_validate_mxnet.html").read_text()
    assert "no score: the prepare step held out no test rows" in (folder / "report" / "index.html").read_text()
    scored = workbench("run", "--steps", "score", *place.sets(f"score.model_run={run_id}"))
    assert scored.code == 1
    assert (
        scored.stderr.strip()
        .splitlines()[-1]
        .endswith(
            f"score.source split:test: run {run_id} held out no test rows (data.test_fraction 0); "
            "give score.source a table to score"
        )
    )


def test_the_report_says_how_the_model_compares_and_flags_a_loss_to_gradient_boosting(tmp_path):
    from pathlib import Path

    from workbench.run.report import render_report
    from workbench.storage import open_store
    from workbench.tracking.tracker import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/t.db")
    store = open_store(str(tmp_path / "store"))
    run_id = tracker.create_run(store.root, {}, {})
    tracker.log_metrics(run_id, "prepare", {"classes": 2.0, "rows_test": 120.0})
    scores = {"test_roc_auc": 0.81, "baseline_test_roc_auc": 0.843, "chance_test_roc_auc": 0.5}
    tracker.log_metrics(run_id, "validate", scores)
    index = Path(render_report(run_id, tracker, store)).read_text()
    assert "On the test split: <b>test ROC AUC 0.810; gradient boosting 0.843; chance 0.500</b>" in index
    assert "Warnings" in index and "the model loses to gradient boosting on the test split: ROC AUC 0.810" in index
    tracker.log_metrics(run_id, "validate", {"test_roc_auc": 0.85})
    index = Path(render_report(run_id, tracker, store)).read_text()
    assert "test ROC AUC 0.850; gradient boosting 0.843" in index and "Warnings" not in index
