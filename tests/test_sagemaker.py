"""The SageMaker model archive, served the way the PyTorch inference toolkit calls it."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from support.archive import import_handler, unpack

from workbench.errors import DataError, ModelError
from workbench.ml.encoding import Encoding, fit_encoding, fit_target
from workbench.ml.models import build_model, model_config
from workbench.ml.sagemaker import model_archive

JSON, CSV, NPY = "application/json", "text/csv", "application/x-npy"


@dataclass
class Served:
    """A trained model, its archive unpacked, and the archive's handler module as the container imports it."""

    frame: pd.DataFrame
    encoding: Encoding
    model: torch.nn.Module
    root: Path
    handler: types.ModuleType
    served: Any

    @property
    def target(self):
        return self.encoding.target

    def reference(self, rows: pd.DataFrame) -> list:
        """What the package predicts: PyTorch on Encoding.apply, then Target.predicted."""
        with torch.no_grad():
            outputs = self.model(torch.from_numpy(self.encoding.apply(rows))).numpy()
        values = self.target.predicted(outputs)
        if self.target.regression:
            return [float(v) for v in values]
        return [self.target.classes[i] for i in values]

    def probabilities(self, rows: pd.DataFrame) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(self.model(torch.from_numpy(self.encoding.apply(rows))).double(), dim=1).numpy()

    def serve(self, body: Any, content_type: str | None, accept: str | None = JSON) -> tuple[Any, str]:
        h = self.handler
        return h.output_fn(h.predict_fn(h.input_fn(body, content_type), self.served), accept)


def _serve(frame: pd.DataFrame, target_name: str, task: str, root: Path, **shape: int) -> Served:
    """Fit the encoding and target on ``frame``, train an MLP a few steps, archive it and unpack it."""
    encoding = fit_encoding([frame], target=target_name)
    target = fit_target([frame], target_name, task)
    if target.regression:
        y = target.encode(frame[target_name]).astype(np.float64)
        target = target.with_moments(np.nanmean(y), np.nanstd(y))
    encoding = Encoding(encoding.columns, encoding.max_categories, encoding.rows, target)
    x = torch.from_numpy(encoding.apply(frame))
    y = torch.from_numpy(target.model_target(frame[target_name]))
    torch.manual_seed(0)
    config = model_config("mlp", len(encoding.features), target.outputs, **shape)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(20):
        out = model(x)
        loss = (
            torch.nn.functional.mse_loss(out[:, 0], y)
            if target.regression
            else torch.nn.functional.cross_entropy(out, y)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    state = io.BytesIO()
    torch.save(model.state_dict(), state)
    blob = model_archive(state.getvalue(), config, json.loads(json.dumps(encoding.to_json())))
    handler, served = unpack(blob, root)
    return Served(frame, encoding, model, root, handler, served)


@pytest.fixture(scope="module")
def penguins() -> pd.DataFrame:
    from palmerpenguins import load_penguins

    return load_penguins()


@pytest.fixture(scope="module")
def classifier(penguins, tmp_path_factory) -> Served:
    """Species from island and sex (categories with gaps) and the measurements (numbers with gaps)."""
    train = penguins.sample(frac=0.8, random_state=0)
    return _serve(train, "species", "classification", tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="module")
def regressor(tmp_path_factory) -> Served:
    """Diabetes progression from numbers and one boolean (inputs that application/x-npy can carry), by
    an MLP of another width and depth than the defaults, which the handler rebuilds from model.json."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame.insert(1, "male", frame.pop("sex") == 2.0)
    return _serve(frame, "target", "regression", tmp_path_factory.mktemp("regressor"), width=24, depth=3)


def _records(rows: pd.DataFrame) -> list[dict]:
    return json.loads(rows.to_json(orient="records"))  # NaN is null, as a client's JSON has it


def _bodies(served: Served, rows: pd.DataFrame) -> dict[str, tuple[Any, str]]:
    """The same rows in every request format a client may send."""
    inputs = served.encoding.inputs
    records = _records(rows)
    lists = [[record[name] for name in inputs] for record in records]
    shuffled = [*inputs[::-1]]
    shuffled.insert(1, "comment")
    bodies = {
        "json records": (json.dumps(records), JSON),
        "json instances of records": (json.dumps({"instances": records}).encode(), "application/json; charset=utf-8"),
        "json instances of lists": (json.dumps({"instances": lists}), JSON),
        "json lists": (json.dumps(lists).encode("utf-8"), "Application/JSON"),
        "csv with a shuffled header": (
            rows.assign(comment="seen, twice")[shuffled].to_csv(index=False).encode(),
            "text/csv; charset=UTF-8",
        ),
        "csv without a header": (rows[inputs].to_csv(index=False, header=False), CSV),
    }
    if len(rows) == 1:
        bodies["json one record"] = (json.dumps(records[0]), JSON)
        bodies["json one row of values"] = (json.dumps(lists[0]), JSON)
    return bodies


def _penguin_rows(penguins: pd.DataFrame) -> pd.DataFrame:
    rows = penguins.iloc[[3, 8, *range(0, 344, 23)]].copy()  # rows 3 and 8: gaps everywhere, sex unknown
    rows.iloc[2, rows.columns.get_loc("island")] = "Atlantis"  # never seen in training
    return rows


@pytest.mark.parametrize("size", ["one row", "a batch"])
def test_classifier_serves_raw_rows_as_the_package_predicts(classifier, penguins, size):
    rows = _penguin_rows(penguins)
    rows = rows.iloc[:1] if size == "one row" else rows
    expected, probabilities = classifier.reference(rows), classifier.probabilities(rows)
    for form, (body, content_type) in _bodies(classifier, rows).items():
        answer, media = classifier.serve(body, content_type)
        answer = json.loads(answer)
        assert media == JSON
        assert answer["predictions"] == expected, form
        assert answer["classes"] == classifier.target.classes
        assert np.allclose(answer["probabilities"], probabilities, atol=1e-6), form

        answer, media = classifier.serve(body, content_type, CSV)
        assert media == "text/csv; charset=utf-8"
        lines = list(csv.reader(io.StringIO(answer)))
        assert [line[0] for line in lines] == expected, form
        assert np.allclose([[float(p) for p in line[1:]] for line in lines], probabilities, atol=1e-6)


@pytest.mark.parametrize("size", ["one row", "a batch"])
def test_regressor_serves_raw_rows_as_the_package_predicts(regressor, size):
    rows = regressor.frame.iloc[:1] if size == "one row" else regressor.frame.iloc[::9]
    expected = regressor.reference(rows)
    bodies = _bodies(regressor, rows)
    buf = io.BytesIO()
    np.save(buf, rows[regressor.encoding.inputs].to_numpy(np.float64))
    bodies["npy"] = (buf.getvalue(), NPY)
    for form, (body, content_type) in bodies.items():
        answer, media = regressor.serve(body, content_type)
        assert json.loads(answer) == {"predictions": expected}, form
        answer, media = regressor.serve(body, content_type, CSV)
        assert [float(line) for line in answer.splitlines()] == expected, form

    answer, media = regressor.serve(bodies["json records"][0], JSON, NPY)
    assert media == NPY
    with torch.no_grad():
        raw = regressor.model(torch.from_numpy(regressor.encoding.apply(rows))).numpy()
    assert np.array_equal(np.load(io.BytesIO(answer)), raw)


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        (None, JSON),
        ("", JSON),
        ("*/*", JSON),
        ("application/*", JSON),
        ("text/*", "text/csv; charset=utf-8"),
        ("TEXT/CSV", "text/csv; charset=utf-8"),
        ("application/json; charset=UTF-8", JSON),
        ("text/csv;charset=utf8", "text/csv; charset=utf-8"),
        ("application/json;q=0.4, text/csv;q=0.5", "text/csv; charset=utf-8"),
        ("text/csv, application/json", JSON),
        ("text/*;q=0.9, text/csv;q=0, */*;q=0.1", JSON),
        ("application/json;q=0, */*", "text/csv; charset=utf-8"),
        ("application/x-npy, */*;q=0.1", NPY),
        ('text/csv; header="present"', "text/csv; charset=utf-8; header=present"),
        ("text/csv;q=0.8;level=1, ,application/json;q=0.7", "text/csv; charset=utf-8"),
    ],
)
def test_answers_follow_accept(classifier, penguins, accept, media):
    rows = penguins.iloc[:3]
    answer, given = classifier.serve(json.dumps(_records(rows)), JSON, accept)
    assert given == media
    expected = classifier.reference(rows)
    if media == JSON:
        assert json.loads(answer)["predictions"] == expected
    elif media == NPY:
        assert np.load(io.BytesIO(answer)).shape == (3, 3)
    else:
        lines = answer.splitlines()
        if "header=present" in media:
            assert lines.pop(0) == "species,Adelie,Chinstrap,Gentoo"
        assert [line.split(",")[0] for line in lines] == expected


@pytest.mark.parametrize(
    ("accept", "status", "match"),
    [
        ("text/html", 406, "matches nothing served here"),
        ("application/json;q=0", 406, "matches nothing"),
        ("image/*, application/json; charset=utf-16", 406, "matches nothing"),
        ("json", 400, "'json' is not a media type"),
        ("application/json;q=2", 400, "q must be a number from 0 to 1"),
        ("text/csv;q=high", 400, "q must be"),
    ],
)
def test_an_accept_nothing_satisfies_is_refused(classifier, penguins, accept, status, match):
    with pytest.raises(classifier.handler.RequestError, match=match) as caught:
        classifier.serve(json.dumps(_records(penguins.iloc[:2])), JSON, accept)
    assert caught.value.status_code == status
    assert "\n" not in caught.value.message


def _one(penguins: pd.DataFrame, **changes: Any) -> str:
    return json.dumps([_records(penguins.iloc[:1])[0] | changes])


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


CLASSIFIER_MISTAKES = [
    ("html", "<p>hi</p>", "text/html", 415, "Content-Type 'text/html' is not served here"),
    ("no content type", "[]", None, 415, "has no Content-Type"),
    ("npy with categories", _npy(np.zeros((1, 6))), NPY, 415, "column 'island' is a category"),
    ("unknown charset", b"[]", "application/json; charset=nope", 415, "charset 'nope' is unknown"),
    ("bad media type", "[]", "json", 400, "Content-Type 'json' is not a media type"),
    ("malformed json", '[{"island": "Dream"', JSON, 400, "malformed JSON"),
    ("empty body", "", JSON, 400, "body is empty"),
    ("no rows", '{"instances": []}', JSON, 400, "no rows"),
    ("instances not a list", '{"instances": 5}', JSON, 400, r"\{\"instances\": \[...\]\}, not as int"),
    ("missing column", '[{"island": "Dream", "sex": "male"}]', JSON, 400, "column 'bill_length_mm' is missing"),
    ("few values", "[[1, 2]]", JSON, 400, "row 1 has 2 values; the model takes 7, in this order: island, "),
    ("text in a number", None, JSON, 400, "column 'bill_depth_mm': 'deep' is not a number"),
    ("a mix of rows", '[{"island": "Dream"}, [1]]', JSON, 400, "not a mix"),
    ("a nested value", None, JSON, 400, "row 1: column 'sex' holds a JSON structure"),
    ("not utf-8", b"island\n\xff\xfe", CSV, 400, "not utf-8 text"),
    ("malformed csv", 'island,sex\n"Dream,male\n', CSV, 400, "malformed CSV at line"),
    ("csv few values", "Dream,39.1,18.7\n", CSV, 400, "CSV line 1 has 3 values; the model takes 7"),
    ("csv missing column", "island,sex\nDream,male\n", CSV, 400, "column 'bill_length_mm' is missing"),
    ("csv ragged row", "island,sex\nDream\n", CSV, 400, "CSV line 2 has 1 values; the header names 2"),
    ("csv header twice", "island,island\nDream,Dream\n", CSV, 400, "column 'island' appears twice"),
    ("csv header only", "island,sex\n", CSV, 400, "a header but no rows"),
    ("csv text in a number", "Dream,39.1,x,181,3750,male,2007\n", CSV, 400, "column 'bill_depth_mm': 'x' is not"),
]


@pytest.mark.parametrize(("case", "body", "content_type", "status", "match"), CLASSIFIER_MISTAKES)
def test_client_mistakes_are_4xx(classifier, penguins, case, body, content_type, status, match):
    if case == "text in a number":
        body = _one(penguins, bill_depth_mm="deep")
    elif case == "a nested value":
        body = _one(penguins, sex=["male"])
    with pytest.raises(classifier.handler.RequestError, match=match) as caught:
        classifier.serve(body, content_type)
    assert caught.value.status_code == status
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not an array", "the body is not a .npy array"),
        (_npy(np.zeros((2, 3, 11))), "has 3 dimensions"),
        (_npy(np.zeros((2, 4))), "has 4 columns; the model takes 10, in this order: age, male, bmi"),
        (_npy(np.array([["a"] * 10])), "holds <U1, not numbers"),
    ],
)
def test_npy_mistakes_are_400(regressor, body, match):
    with pytest.raises(regressor.handler.RequestError, match=match) as caught:
        regressor.serve(body, NPY)
    assert caught.value.status_code == 400


def test_the_toolkits_error_class_is_raised_where_it_is_installed(classifier, monkeypatch):
    """sagemaker_inference answers a BaseInferenceToolkitError with its status_code and a 500 otherwise:
    where the toolkit is importable the handler raises its GenericInferenceToolkitError."""
    toolkit, errors = types.ModuleType("sagemaker_inference"), types.ModuleType("sagemaker_inference.errors")

    class GenericInferenceToolkitError(Exception):
        def __init__(self, status_code, message=None, phrase=None):
            self.status_code, self.message, self.phrase = status_code, message, phrase or message

    errors.GenericInferenceToolkitError = GenericInferenceToolkitError
    toolkit.errors = errors
    monkeypatch.setitem(sys.modules, "sagemaker_inference", toolkit)
    monkeypatch.setitem(sys.modules, "sagemaker_inference.errors", errors)
    handler = import_handler(classifier.root / "code")
    with pytest.raises(GenericInferenceToolkitError) as caught:
        handler.input_fn("{", JSON)
    assert (caught.value.status_code, caught.value.message) == (400, caught.value.phrase)
    with pytest.raises(GenericInferenceToolkitError, match="missing from the rows") as caught:
        handler.encode([{"island": "Dream"}], classifier.encoding.to_json())
    assert caught.value.status_code == 400


def _outcome(apply: Any, rows: Any) -> tuple[str, Any]:
    try:
        return "encoded", apply(rows)
    except Exception as exc:  # a refusal is compared by its message
        return type(exc).__name__, getattr(exc, "message", None) or str(exc)


def test_the_handlers_copy_of_the_encoding_is_the_packages(classifier, penguins):
    """inference.py carries its own copy of Encoding.apply and Target.predicted (it runs without
    workbench): the same rows give the same model input bit for bit, or the same refusal."""
    import pyarrow as pa
    from vega_datasets import data

    handler = classifier.handler
    weather = data.seattle_weather()
    weather.loc[::11, "date"] = pd.NaT
    weather.loc[::7, "precipitation"] = np.nan
    weather["dry"] = (weather.precipitation == 0).astype(object).where(weather.precipitation.notna(), None)
    heavy = penguins.assign(heavy=(penguins.body_mass_g > 4000).astype(object).where(penguins.body_mass_g.notna()))
    encodings = {
        "penguins": classifier.encoding,
        "weather": fit_encoding([weather], target="weather"),
        "weather with text dates": fit_encoding([weather.assign(date=weather.date.dt.strftime("%Y-%m-%d"))]),
        "booleans": fit_encoding([heavy], target="species"),
    }
    as_text = penguins.astype(object).where(penguins.notna(), None).map(lambda v: v if v is None else str(v))
    unseen = penguins.assign(island=penguins.island.where(penguins.index % 5 > 0, "Atlantis"))
    unseen.loc[::3, "sex"] = ""
    dated = weather.head(40).assign(date=weather.date.head(40).dt.strftime("%Y-%m-%d %H:%M:%S"))
    dated.loc[::4, "date"] = ""
    inputs = {
        "penguins": [
            penguins,
            penguins.iloc[:0],
            _records(penguins),
            as_text.to_dict("records"),
            unseen[penguins.columns[::-1]],
            pa.Table.from_pandas(penguins),
            penguins.assign(island=penguins.island.astype("category")),
            penguins.drop(columns="sex"),
            penguins.assign(bill_length_mm=penguins.bill_length_mm.astype(object).where(penguins.index > 3, "long")),
            as_text.assign(year=as_text.year.where(as_text.index > 0, "")).to_dict("records"),  # "": a gap
            as_text.map(lambda v: "NA" if v is None else v).to_dict("records"),  # R's word for a gap
            penguins.assign(year=penguins.index % 2 == 0),  # true or false in a number column
            _records(penguins.assign(year=penguins.year.astype(object).where(penguins.index > 0, True))),
        ],
        "weather": [
            weather,
            _records(weather.assign(date=weather.date.dt.strftime("%Y-%m-%d"))),
            dated,
            weather.assign(date=weather.date.astype(object).where(weather.index > 5, "2012-13-45")),
            weather.assign(date=1.5),
            dated.assign(date=dated.date.where(dated.index % 3 > 0, "9999-12-31")),  # beyond pandas' ns
            weather.assign(dry=weather.dry.map({True: "True", False: "False", None: "nan"})),
            weather.assign(weather="hail", dry=weather.dry.map({True: "true", False: "0", None: None})),
        ],
        "weather with text dates": [dated, weather, weather.assign(date="yesterday")],
        "booleans": [
            heavy,
            heavy.assign(heavy=heavy.heavy.map({True: "TRUE", False: "false", None: ""})),
            heavy.assign(heavy=heavy.heavy.map({True: "1", False: 0.0, None: None})),
            heavy.assign(heavy="maybe"),
            heavy.assign(heavy=heavy.heavy.map({True: 2, False: 0, None: None})),  # a number, not true or false
        ],
    }
    refusals = 0
    for name, encoding in encodings.items():
        spec = json.loads(json.dumps(encoding.to_json()))  # as model.json carries it
        for i, rows in enumerate(inputs[name]):
            ours = _outcome(encoding.apply, rows)
            theirs = _outcome(lambda r, s=spec: handler.encode(r, s), rows)
            assert ours[0] in ("encoded", "DataError"), (name, i, ours)
            if ours[0] == "encoded":
                assert theirs[0] == "encoded", (name, i, theirs)
                assert theirs[1].dtype == ours[1].dtype == np.float32
                assert np.array_equal(theirs[1], ours[1]), (name, i)
            else:
                refusals += 1
                assert theirs == ("DataError", ours[1]), (name, i)
    assert refusals == 9  # the refusals above are refusals indeed, each matched word for word

    outputs = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    for target in (classifier.target, classifier.target.__class__("y", "regression", None, 64, 0, 151.25, 77.5)):
        spec = json.loads(json.dumps(target.to_json()))
        column = outputs[:, :1] if target.regression else outputs
        assert np.array_equal(handler.predicted(column, spec), target.predicted(column))


SERVE = r"""
import json, sys
sys.modules["workbench"] = None  # the archive must serve without the workbench package
sys.path.insert(0, "code")
import inference

model = inference.model_fn(".")
body = open(sys.argv[1], "rb").read()
answer, media = inference.output_fn(inference.predict_fn(inference.input_fn(body, "text/csv"), model), "*/*")
print(answer)
"""


def test_the_archive_serves_without_workbench(regressor):
    rows = regressor.frame.iloc[:25]
    (regressor.root / "rows.csv").write_text(rows.to_csv(index=False))
    proc = subprocess.run(
        [sys.executable, "-I", "-c", SERVE, "rows.csv"],
        cwd=regressor.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {"predictions": regressor.reference(rows)}


def test_archive_layout_and_metadata(classifier):
    names = {str(p.relative_to(classifier.root)) for p in classifier.root.rglob("*") if p.is_file()}
    names -= {"rows.csv"}
    # no code/requirements.txt: the toolkit would pip-install it at every start, and the container has
    # every import the handler makes
    assert {n for n in names if "__pycache__" not in n} == {
        "model.pth",
        "code/inference.py",
        "code/architectures.py",
        "code/model.json",
    }
    meta = json.loads((classifier.root / "code" / "model.json").read_text())
    assert meta == model_config("mlp", len(classifier.encoding.features), 3) | {
        "encoding": json.loads(json.dumps(classifier.encoding.to_json()))
    }
    assert meta["encoding"]["target"]["classes"] == ["Adelie", "Chinstrap", "Gentoo"]


def test_archive_refuses_what_could_not_serve(classifier):
    encoding = classifier.encoding.to_json()
    features = len(encoding["features"])
    with pytest.raises(ModelError, match="built-in architectures only"):
        model_archive(b"", {"model": "mypkg.nets:Wide", "in_features": features, "num_classes": 3}, encoding)
    with pytest.raises(ModelError, match="the encoding has no target"):
        model_archive(b"", model_config("mlp", features, 3), encoding | {"target": None})
    with pytest.raises(ModelError, match=f"takes 4 features but the encoding makes {features}"):
        model_archive(b"", model_config("mlp", 4, 3), encoding)
    with pytest.raises(ModelError, match="has 1 outputs but the classification target 'species' needs 3"):
        model_archive(b"", model_config("mlp", features, 1), encoding)


def test_training_follows_sagemaker_channels_and_folders(trained, stage_ctx_factory, tmp_path, monkeypatch):
    """With SM_* set (as in a SageMaker training job) the splits come from the channels and the
    model and reports land where SageMaker collects them."""
    from workbench.config.schema import TrainParams
    from workbench.ml.dataset import load_split
    from workbench.stages.train import train_model

    source = stage_ctx_factory("prepare")
    channels = {"SM_CHANNEL_TRAIN": tmp_path / "train", "SM_CHANNEL_VALIDATION": tmp_path / "validation"}
    for variable, folder in channels.items():
        folder.mkdir()
        monkeypatch.setenv(variable, str(folder))
    train = pd.read_parquet(io.BytesIO(source.load("train.parquet", "prepare"))).head(300)  # a smaller channel
    train.to_parquet(channels["SM_CHANNEL_TRAIN"] / "train.parquet")
    (channels["SM_CHANNEL_TRAIN"] / "encoding.json").write_bytes(source.load("encoding.json", "prepare"))
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

    (channels["SM_CHANNEL_TRAIN"] / "encoding.json").unlink()
    with pytest.raises(DataError, match=r"SM_CHANNEL_TRAIN=.* has no encoding\.json"):
        train_model(
            stage_ctx_factory("train", run_id="sagemaker-job-2"),
            TrainParams(model="mlp", epochs=1, batch_size=100, device="cpu", amp=False),
            seed=0,
        )
