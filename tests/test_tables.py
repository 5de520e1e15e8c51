"""An analyst's own tables end to end through the real CLI: a churn export (an ID, text categories,
gaps, a date, a Yes/No label) and a regression on penguins' body mass, each trained, exported,
validated with parity PASS, then scored from raw rows with the predictions PyTorch gives."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from support.archive import unpack
from support.cli import SMALL, CLIResult, Place, Run, checked_output, run_id_of, workbench
from support.tables import churn, penguins

from workbench.ml.encoding import Encoding
from workbench.ml.models import load_model

pytestmark = pytest.mark.e2e


def _run(tmp, source: pd.DataFrame, *settings: str) -> Run:
    path = tmp / "table.csv"
    source.to_csv(path, index=False)
    place = Place(tmp / "store", f"sqlite:///{tmp}/tracking.db")
    result = workbench("run", *place.sets(f"data.source={path}", "export.sagemaker=true", *settings))
    assert result.code == 0, result.stderr[-3000:]
    run_id = run_id_of(result.stdout)
    return Run(place, result, run_id, place.store / "runs" / run_id)


@pytest.fixture(scope="module")
def churn_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("churn")
    return _run(
        tmp,
        churn(),
        "data.target=churned",
        "data.drop=customer_id",
        "data.categorical=store",
        "data.max_categories=3",
        "train.width=64",
        "train.depth=3",
        "train.epochs=15",
        "train.batch_size=32",
    )


@pytest.fixture(scope="module")
def mass_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("mass")
    return _run(
        tmp, penguins(), "data.target=body_mass_g", "data.task=regression", "train.epochs=40", "train.batch_size=16"
    )


def _torch_predictions(run: Run, rows: pd.DataFrame) -> tuple[Encoding, np.ndarray]:
    """What the trained PyTorch model says for raw rows, through the run's own encoding."""
    encoding = Encoding.from_json(json.loads((run.folder / "prepare/encoding.json").read_text()))
    config = json.loads((run.folder / "train/model_config.json").read_text())
    state = torch.load(io.BytesIO((run.folder / "train/model.pth").read_bytes()), weights_only=True)
    with torch.no_grad():
        outputs = load_model(config, state)(torch.from_numpy(encoding.apply(rows))).numpy()
    return encoding, outputs


def _score_run(run: Run, path, rows: pd.DataFrame) -> CLIResult:
    """``workbench run --steps score`` of ``rows``, written as a CSV at ``path``, with the run's model."""
    rows.to_csv(path, index=False)
    return workbench(
        "run", "--steps", "score", *run.place.sets(f"score.source={path}", f"score.model_run={run.run_id}")
    )


def _score(run: Run, tmp, rows: pd.DataFrame) -> pd.DataFrame:
    result = _score_run(run, tmp / "to_score.csv", rows)
    assert result.code == 0, result.stderr[-3000:]
    return pq.read_table(run.place.store / "runs" / run_id_of(result.stdout) / "score/predictions.parquet").to_pandas()


def test_a_churn_table_trains_and_passes_parity_on_mxnet(churn_run):
    folder = churn_run.folder
    schema = json.loads((folder / "prepare/schema.json").read_text())
    assert schema["task"] == "classification" and schema["classes"] == ["No", "Yes"]
    assert "customer_id" not in schema["inputs"] and "store=47" in schema["features"]
    assert "monthly_charges:missing" in schema["features"] and "signup_date:year" in schema["features"]
    plans = [f for f in schema["features"] if f.startswith("plan=")]
    assert len(plans) == 5 and plans[-2:] == ["plan=<missing>", "plan=<other>"]  # the 3 most frequent of 4
    config = json.loads((folder / "train/model_config.json").read_text())
    assert config == {"model": "mlp", "in_features": len(schema["features"]), "num_classes": 2, "width": 64, "depth": 3}
    parity = json.loads((folder / "validate/parity.json").read_text())
    assert parity["verdict"] == "PASS" and set(parity["stats"]) == {"pytorch", "onnxruntime", "mxnet"}
    assert checked_output(folder / "02_train.ipynb").endswith(": True\n")
    assert checked_output(folder / "04_validate_mxnet.ipynb").startswith(
        "verdict: PASS\nevery backend scores as PyTorch does: True\n"
    )
    assert (folder / "train/fit.png").is_file() and (folder / "export/model.tar.gz").is_file()


def _archive_predictions(run: Run, tmp, rows: pd.DataFrame) -> list:
    """What the run's SageMaker archive answers for the rows sent as CSV with a header, and as JSON records."""
    handler, model = unpack((run.folder / "export/model.tar.gz").read_bytes(), tmp / "opt-ml-model")
    answers = []
    for body, content_type in (
        (rows.to_csv(index=False), "text/csv"),
        (rows.to_json(orient="records"), "application/json; charset=utf-8"),
    ):
        answer, media = handler.output_fn(
            handler.predict_fn(handler.input_fn(body, content_type), model), "application/json"
        )
        assert media.startswith("application/json")
        answers.append(json.loads(answer)["predictions"])
    assert answers[0] == answers[1]
    return answers[0]


def test_churn_scores_raw_rows_in_any_column_order_as_pytorch_and_the_archive_do(churn_run, tmp_path):
    rows = churn(60, seed=7).drop(columns="churned")
    rows = rows[list(reversed(rows.columns))].assign(notes="extra columns are ignored")
    rows.loc[3, "plan"] = "enterprise"  # never seen in training: the other bucket
    scored = _score(churn_run, tmp_path, rows)
    encoding, outputs = _torch_predictions(churn_run, rows)
    assert scored.predicted.tolist() == [encoding.target.classes[i] for i in outputs.argmax(axis=1)]
    assert scored.predicted.tolist() == _archive_predictions(churn_run, tmp_path, rows)
    assert "actual" not in scored and scored.confidence.between(0.5, 1.0).all()


def test_a_regression_on_penguins_reports_its_errors_in_grams(mass_run):
    folder = mass_run.folder
    schema = json.loads((folder / "prepare/schema.json").read_text())
    assert schema["task"] == "regression" and schema["classes"] is None and schema["rows_without_target"] == 2
    metrics = json.loads((folder / "train/metrics.json").read_text())
    assert metrics["val_r2"] > 0.6 and 150 < metrics["val_rmse"] < 600 and metrics["val_mae"] < metrics["val_rmse"]
    parity = json.loads((folder / "validate/parity.json").read_text())
    assert parity["verdict"] == "PASS" and "argmax_agreement" not in parity["stats"]["mxnet"]
    assert "every backend scores as PyTorch does: True\n" in checked_output(folder / "04_validate_mxnet.ipynb")
    history = pd.read_csv(folder / "train/history.csv")
    assert {"val_rmse", "val_mae", "val_r2", "train_mae"} <= set(history.columns)


def test_penguin_masses_score_as_numbers_equal_to_pytorch(mass_run, tmp_path):
    rows = penguins().sample(40, random_state=3)
    scored = _score(mass_run, tmp_path, rows)
    encoding, outputs = _torch_predictions(mass_run, rows)
    expected = encoding.target.predicted(outputs)
    assert np.allclose(scored.predicted.to_numpy(), expected, rtol=1e-5, atol=1e-2)
    assert np.allclose(_archive_predictions(mass_run, tmp_path, rows), expected, rtol=1e-5, atol=1e-2)
    assert scored.predicted.between(2000, 7000).all() and "confidence" not in scored
    labelled = scored.actual.notna()
    assert np.allclose(scored.actual[labelled], rows.body_mass_g.to_numpy()[labelled.to_numpy()])


def _shown_metrics(run: Run) -> dict[str, float]:
    shown = workbench("runs", "show", run.run_id, "--json", *run.place.sets())
    assert shown.code == 0, shown.stderr
    return json.loads(shown.stdout)["metrics"]


CLASS_METRICS = {"accuracy", "balanced_accuracy", "f1_macro", "log_loss", "roc_auc"}
NUMBER_METRICS = {"rmse", "mae", "r2", "mape"}


def test_churn_has_a_test_score_beside_gradient_boosting_and_chance(churn_run):
    metrics = _shown_metrics(churn_run)
    for prefix in ("test_", "baseline_test_", "chance_test_"):
        assert {k.removeprefix(prefix) for k in metrics if k.startswith(prefix)} == CLASS_METRICS | {
            "average_precision"
        }, prefix
    # always "No" (the majority): half the balanced accuracy of two classes, AUC a coin's, AP the share of "Yes"
    assert metrics["chance_test_balanced_accuracy"] == 0.5 and metrics["chance_test_roc_auc"] == 0.5
    test = pd.read_parquet(churn_run.folder / "prepare/test.parquet")
    assert metrics["chance_test_average_precision"] == pytest.approx((test.churned == "Yes").mean())
    assert metrics["test_roc_auc"] > 0.75 and metrics["baseline_test_roc_auc"] > 0.75
    assert metrics["loses_to_baseline"] == float(
        round(metrics["baseline_test_roc_auc"], 3) > round(metrics["test_roc_auc"], 3)
    )
    per_class = pd.read_csv(churn_run.folder / "validate/per_class.csv")
    assert per_class["class"].tolist() == ["No", "Yes"] and per_class.support.sum() == len(test) == metrics["rows_test"]
    line = f"test ROC AUC {metrics['test_roc_auc']:.3f}; gradient boosting {metrics['baseline_test_roc_auc']:.3f}; chance 0.500"
    assert line in (churn_run.folder / "report/index.html").read_text()
    assert f"test rows: {len(test)}\n" in checked_output(churn_run.folder / "04_validate_mxnet.ipynb")


def test_penguin_masses_have_a_test_score_in_grams(mass_run):
    metrics = _shown_metrics(mass_run)
    for prefix in ("test_", "baseline_test_", "chance_test_"):
        assert {k.removeprefix(prefix) for k in metrics if k.startswith(prefix)} == NUMBER_METRICS, prefix
    assert metrics["test_r2"] > 0.6 and 150 < metrics["test_rmse"] < 600 and metrics["test_mae"] < metrics["test_rmse"]
    assert metrics["baseline_test_r2"] > 0.5 and metrics["chance_test_r2"] < 0.05  # the training mean explains nothing
    assert 0 < metrics["test_mape"] < 0.2  # a fraction: masses are 2,700 to 6,300 g, errors a few hundred
    folder = mass_run.folder / "validate"
    assert (folder / "test.png").is_file() and not (folder / "per_class.csv").exists()
    assert "test R² " in (mass_run.folder / "report/index.html").read_text()


def test_an_id_column_not_dropped_stops_prepare_in_one_line(place, tmp_path):
    churn().to_csv(tmp_path / "churn.csv", index=False)
    result = workbench("run", *place.sets(f"data.source={tmp_path / 'churn.csv'}", "data.target=churned", *SMALL))
    assert result.code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step prepare failed: DataError: data.source ")
    assert "column 'customer_id' looks like an identifier" in last and last.endswith(
        "add it to data.drop (or to data.categorical, with data.max_categories 560 or more, to keep it)"
    )
    assert not list(place.store.glob("runs/*/prepare/*.parquet"))


def test_a_scoring_table_without_a_training_column_is_named(churn_run, tmp_path):
    result = _score_run(churn_run, tmp_path / "short.csv", churn(20, seed=3).drop(columns=["churned", "contract"]))
    assert result.code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "lacks the model's input column 'contract' (1 missing)" in last
    bad = churn(20, seed=3)
    bad["tenure_months"] = bad["tenure_months"].astype(object)
    bad.loc[4, "tenure_months"] = "twelve"
    result = _score_run(churn_run, tmp_path / "text.csv", bad)
    assert result.code == 1
    assert "column 'tenure_months': 'twelve' is not a number" in result.stderr.strip().splitlines()[-1]


def test_seattle_weather_with_its_date_runs_through_every_stage(stage_ctx_factory, tmp_path):
    """vega_datasets' seattle-weather: a date column and text labels, stage by stage in one process."""
    from vega_datasets import data

    from workbench.config.schema import DataParams, ExportParams, ScoreParams, TrainParams, ValidateParams
    from workbench.stages.batch_score import score_batch
    from workbench.stages.export_onnx import export_onnx
    from workbench.stages.prepare_data import prepare_data
    from workbench.stages.train import train_model
    from workbench.stages.validate_mxnet import validate_model

    weather = data.seattle_weather()
    weather["date"] = weather["date"].dt.strftime("%Y-%m-%d")  # as the CSV gives it: text
    weather.to_csv(tmp_path / "weather.csv", index=False)
    run = "weather"
    prepared = prepare_data(
        stage_ctx_factory("prepare", run), DataParams(source=str(tmp_path / "weather.csv"), target="weather"), seed=0
    )
    assert prepared.task.classes == ["drizzle", "fog", "rain", "snow", "sun"]
    assert prepared.encoding_table.loc["date", "type"] == "date"
    assert [f for f in prepared.encoding.features if f.startswith("date:")] == [
        "date:year",
        "date:month",
        "date:weekday",
        "date:yearday",
    ]
    result = train_model(
        stage_ctx_factory("train", run), TrainParams(epochs=8, batch_size=32, device="cpu", amp=False), seed=0
    )
    assert result.config["model"] == "mlp" and result.metrics["val_accuracy"] > 0.6 and result.fit_png
    export_onnx(stage_ctx_factory("export", run), ExportParams())
    parity = validate_model(stage_ctx_factory("validate", run), ValidateParams())
    assert parity.verdict == "PASS" and parity.scores_agree
    scored = score_batch(
        stage_ctx_factory("score", "weather-score"),
        ScoreParams(source=str(tmp_path / "weather.csv"), model_run=run),
        progress=False,
    )
    assert scored.metrics["rows_scored"] == len(weather) and scored.better_than_chance
