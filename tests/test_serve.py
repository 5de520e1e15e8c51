"""workbench serve: real server processes spoken to over HTTP, answering as batch scoring does."""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from support.cli import ROOT, Place, copy_run, run_id_of, sets, workbench
from support.server import Server, serving
from support.tables import churn, penguins

from workbench.errors import DataError
from workbench.ml.encoding import Encoding, fit_encoding
from workbench.serve import media
from workbench.serve.batching import MEASURE_UP_TO, BackendFailed, Batcher, merge_rows
from workbench.serve.encoder import RowEncoder
from workbench.serve.media import RequestError
from workbench.storage.sources import read_source
from workbench.tracking.tracker import Tracker

JSON, CSV, NPY = "application/json", "text/csv", "application/x-npy"


# ---- helpers: pipelines, servers, requests -------------------------------------------------------------


@dataclass
class Model:
    """A trained run and the batch scoring of ``table`` by ``workbench run --steps score``."""

    place: Place
    run_id: str
    table: pd.DataFrame
    predictions: pd.DataFrame
    encoding: Encoding

    @property
    def columns(self) -> list[str]:
        return self.encoding.inputs

    def records(self, rows: slice) -> list[dict[str, Any]]:
        """Rows as a client's JSON has them: NaN is null."""
        return json.loads(self.table.iloc[rows][self.columns].to_json(orient="records"))

    def expected(self, rows: slice) -> pd.DataFrame:
        return self.predictions.iloc[rows].reset_index(drop=True)


@dataclass
class Pipeline:
    """A `workbench run` of prepare, train, export and score started in the background."""

    place: Place
    table: pd.DataFrame
    proc: subprocess.Popen
    log: Path

    def model(self) -> Model:
        assert self.proc.wait(timeout=600) == 0, self.log.read_text()[-3000:]
        run_id = re.search(r"^run (\S+) finished$", self.log.read_text(), re.MULTILINE).group(1)
        folder = self.place.store / "runs" / run_id
        predictions = pd.read_parquet(folder / "score" / "predictions.parquet")
        encoding = Encoding.from_json(json.loads((folder / "prepare" / "encoding.json").read_text()))
        return Model(self.place, run_id, self.table, predictions, encoding)


def _pipeline(tmp: Path, table: pd.DataFrame, *settings: str) -> Pipeline:
    source = tmp / "table.csv"
    table.to_csv(source, index=False)
    place = Place(tmp / "store", f"sqlite:///{tmp}/tracking.db")
    every = [f"data.source={source}", f"score.source={source}", "train.epochs=3", "train.batch_size=64"]
    log = tmp / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workbench",
                "run",
                "--steps",
                "prepare,train,export,score",
                *place.sets(*every, "export.sagemaker=true", *settings),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Pipeline(place, table, proc, log)


def _classes(answer: dict[str, Any]) -> np.ndarray:
    return np.asarray(answer["predictions"])


def _assert_same_classes(predicted: Any, probabilities: Any, expected: pd.DataFrame) -> None:
    """As batch scoring: the same class per row, and its probability as the scoring's confidence."""
    assert list(predicted) == expected.predicted.tolist()
    assert np.allclose(np.max(np.asarray(probabilities, dtype=np.float64), axis=1), expected.confidence, atol=2e-5)


async def _burst(url: str, bodies: list[bytes], content_type: str = JSON) -> list[httpx.Response]:
    """All ``bodies`` at once, each on its own connection."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        return await asyncio.gather(
            *[client.post(url, content=body, headers={"content-type": content_type}) for body in bodies]
        )


# ---- the models: a digits run (the shared small run), churn (classes), penguins (a number) ------------


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Pipeline]:
    """Churn and penguins runs, started together in the background while the digits run is made."""
    return {
        "churn": _pipeline(tmp_path_factory.mktemp("churn"), churn(), "data.target=churned", "data.drop=customer_id"),
        "penguins": _pipeline(tmp_path_factory.mktemp("penguins"), penguins(), "data.target=body_mass_g"),
    }


@pytest.fixture(scope="module")
def digits(pipelines, small_run, tmp_path_factory) -> Model:
    """The shared digits run (a private copy), scored by `workbench run --steps score`."""
    run = copy_run(small_run, tmp_path_factory.mktemp("digits"))
    result = workbench(
        "run", "--steps", "score", *run.place.sets(f"score.model_run={run.run_id}", "score.source=bundled:digits")
    )
    assert result.code == 0, result.stderr[-3000:]
    scored = run.place.store / "runs" / run_id_of(result.stdout) / "score" / "predictions.parquet"
    encoding = Encoding.from_json(json.loads((run.folder / "prepare" / "encoding.json").read_text()))
    return Model(run.place, run.run_id, read_source("bundled:digits"), pd.read_parquet(scored), encoding)


@pytest.fixture(scope="module")
def churned(pipelines) -> Model:
    return pipelines["churn"].model()


@pytest.fixture(scope="module")
def weighed(pipelines) -> Model:
    return pipelines["penguins"].model()


@pytest.fixture(scope="module")
def digits_server(digits, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("digits-server") / "serve.log"
    with serving(digits.place, log, f"serve.model={digits.run_id}", "serve.max_body_mb=1") as server:
        yield server


@pytest.fixture(scope="module")
def churn_server(churned, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("churn-server") / "serve.log"
    with serving(churned.place, log, f"serve.model={churned.run_id}", "serve.name=churn") as server:
        yield server


# ---- same answers as batch scoring ------------------------------------------------------------------------


@pytest.mark.e2e
def test_sagemaker_requests_answer_as_batch_scoring(digits, digits_server):
    rows = slice(0, 300)
    records, expected = digits.records(rows), digits.expected(rows)
    values = [[r[c] for c in digits.columns] for r in records]
    table = digits.table.iloc[rows]  # with the label: a column the model ignores
    npy = io.BytesIO()
    np.save(npy, table[digits.columns].to_numpy(np.float32))
    bodies = {
        "records": (json.dumps(records), JSON),
        "instances": (json.dumps({"instances": records}), JSON),
        "values": (json.dumps({"instances": values}), JSON),
        "csv header": (table.to_csv(index=False), CSV),
        "csv": (table[digits.columns].to_csv(index=False, header=False), f"{CSV}; header=absent"),
        "npy": (npy.getvalue(), NPY),
    }
    for name, (body, kind) in bodies.items():
        response = digits_server.post("/invocations", body, kind)
        assert response.status_code == 200, (name, response.text)
        assert response.headers["content-type"] == JSON
        answer = response.json()
        assert answer["classes"] == list(range(10))
        _assert_same_classes(answer["predictions"], answer["probabilities"], expected)
    one = digits_server.post("/invocations", json.dumps(values[7]))  # a single row as a bare list of values
    assert one.json()["predictions"] == [expected.predicted[7]]

    csv = digits_server.post(
        "/invocations", json.dumps(records[:5]), accept="text/html;q=0.9, text/csv;header=present, */*;q=0.1"
    )
    assert csv.status_code == 200 and csv.headers["content-type"] == "text/csv; charset=utf-8; header=present"
    answer = pd.read_csv(io.StringIO(csv.text))
    assert answer.columns.tolist() == ["label", *map(str, range(10))]
    _assert_same_classes(answer.label, answer.iloc[:, 1:].to_numpy(), expected.iloc[:5])
    raw = digits_server.post("/invocations", json.dumps(records[:5]), accept=NPY)
    logits = np.load(io.BytesIO(raw.content))
    assert logits.shape == (5, 10) and (logits.argmax(axis=1) == expected.predicted[:5]).all()


@pytest.mark.e2e
def test_v2_tensors_from_tritonclient_answer_as_batch_scoring(digits, digits_server):
    client = triton.InferenceServerClient(f"127.0.0.1:{digits_server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("workbench")
    meta = client.get_model_metadata("workbench")
    assert [i["name"] for i in meta["inputs"]] == digits.columns
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"predicted": [-1], "probabilities": [-1, 10]}
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"predicted": "INT64", "probabilities": "FP32"}
    rows = slice(0, 200)
    table, expected = digits.table.iloc[rows], digits.expected(rows)

    per_column = []
    for i, name in enumerate(digits.columns):  # FP32 as binary tensors and INT64 as JSON, mixed
        kind, dtype = ("FP32", np.float32) if i % 2 else ("INT64", np.int64)
        tensor = triton.InferInput(name, [len(table)], kind)
        tensor.set_data_from_numpy(table[name].to_numpy(dtype), binary_data=bool(i % 2))
        per_column.append(tensor)
    matrix = triton.InferInput("pixels", [len(table), 64], "FP32")
    matrix.set_data_from_numpy(table[digits.columns].to_numpy(np.float32))
    for inputs in (per_column, [matrix]):
        for binary in (True, False):
            outputs = [
                triton.InferRequestedOutput("predicted", binary_data=binary),
                triton.InferRequestedOutput("probabilities", binary_data=binary),
            ]
            result = client.infer("workbench", inputs, outputs=outputs, request_id="r1")
            # the class 1 as the number 1, as /invocations answers it, not the text "1"
            assert result.as_numpy("predicted").dtype == np.int64
            predicted = result.as_numpy("predicted").tolist()
            probabilities = result.as_numpy("probabilities")
            assert probabilities.dtype == np.float32 and probabilities.shape == (200, 10)
            _assert_same_classes(predicted, probabilities, expected)
            assert result.get_response()["id"] == "r1"
    every = client.infer("workbench", [matrix])  # no outputs named: all of them, binary
    assert every.as_numpy("probabilities").shape == (200, 10)
    versioned = client.infer("workbench", [matrix], model_version="1")  # /v2/models/workbench/versions/1/infer
    assert np.array_equal(versioned.as_numpy("probabilities"), every.as_numpy("probabilities"))
    assert client.get_model_metadata("workbench", model_version="1") == meta
    assert client.is_model_ready("workbench", model_version="1")


@pytest.mark.e2e
def test_churn_rows_with_gaps_text_and_dates_answer_as_batch_scoring(churned, churn_server):
    rows = slice(0, 400)
    records, expected = churned.records(rows), churned.expected(rows)
    assert any(r["monthly_charges"] is None for r in records) and any(r["plan"] is None for r in records)
    answer = churn_server.post("/invocations", json.dumps(records)).json()
    assert answer["classes"] == ["No", "Yes"]
    _assert_same_classes(answer["predictions"], answer["probabilities"], expected)

    table = churned.table.iloc[rows]  # with customer_id and the label, ignored
    by_csv = churn_server.post("/invocations", table.to_csv(index=False), CSV).json()
    _assert_same_classes(by_csv["predictions"], by_csv["probabilities"], expected)

    client = triton.InferenceServerClient(f"127.0.0.1:{churn_server.port}")
    inputs = []
    for spec in churned.encoding.columns:
        values = table[spec["name"]]
        if spec["type"] in ("category", "date"):
            data = np.array(["" if pd.isna(v) else str(v) for v in values], dtype=np.object_)
            kind = "BYTES"
        elif spec["type"] == "boolean":
            data, kind = values.to_numpy(np.bool_), "BOOL"
        elif spec["name"] == "store":
            data, kind = values.to_numpy(np.int64), "INT64"
        else:
            data, kind = values.to_numpy(np.float64), "FP64"
        tensor = triton.InferInput(spec["name"], [len(table)], kind)
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    result = client.infer("churn", inputs)
    predicted = [v.decode() for v in result.as_numpy("predicted")]
    _assert_same_classes(predicted, result.as_numpy("probabilities"), expected)


@pytest.mark.e2e
def test_gap_words_and_far_dates_answer_as_batch_scoring(churned, churn_server, tmp_path):
    """A CSV as R, numpy or a database export writes it (NA, nan, NULL for gaps) and dates beyond
    pandas' nanoseconds (9999-12-31 for "no end"): the server reads the bytes batch scoring reads."""
    table = churned.table.iloc[:120].astype(object)
    table.loc[1::4, "monthly_charges"] = "nan"
    table.loc[2::4, "tenure_months"] = "NULL"
    table.loc[3::5, "has_partner"] = "N/A"
    table.loc[::7, "signup_date"] = "9999-12-31"
    table.loc[5::9, "signup_date"] = "1600-01-01"
    source = tmp_path / "export.csv"
    table.to_csv(source, index=False, na_rep="NA")
    scored = workbench(
        "run", "--steps", "score", *churned.place.sets(f"score.model_run={churned.run_id}", f"score.source={source}")
    )
    assert scored.code == 0, scored.stderr[-3000:]
    folder = churned.place.store / "runs" / run_id_of(scored.stdout) / "score"
    expected = pd.read_parquet(folder / "predictions.parquet")
    assert expected.predicted.notna().all()
    answer = churn_server.post("/invocations", source.read_bytes(), CSV)
    assert answer.status_code == 200, answer.text
    _assert_same_classes(answer.json()["predictions"], answer.json()["probabilities"], expected)


@pytest.mark.e2e
def test_a_boolean_column_takes_true_or_false_in_every_reader(churned, churn_server, tmp_path):
    """2, -7.5 or 1e6 in a boolean column, and true in a number column, are refused by JSON records,
    JSON lists, CSV, v2 tensors and batch scoring alike, each naming the column and the value."""
    record = churned.records(slice(0, 1))[0]
    for value, shown in ((2, "2"), (-7.5, "-7.5"), (1e6, "1000000.0")):
        wrong = {**record, "has_partner": value}
        for body in ([wrong], {"instances": [[wrong[name] for name in churned.columns]]}):
            answer = churn_server.post("/invocations", json.dumps(body))
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"] == f"column 'has_partner': {shown} is not true or false"
    answer = churn_server.post("/invocations", json.dumps([{**record, "tenure_months": True}]))
    assert answer.status_code == 400 and answer.json()["error"] == "column 'tenure_months': True is not a number"
    table = churned.table.iloc[:5].assign(has_partner=[1, 0, 2, 1, 0])
    answer = churn_server.post("/invocations", table.to_csv(index=False), CSV)
    assert answer.status_code == 400 and answer.json()["error"] == "column 'has_partner': '2' is not true or false"
    tensors = [
        {
            "name": spec["name"],
            "datatype": {"boolean": "INT64", "numeric": "FP64"}.get(spec["type"], "BYTES"),
            "shape": [1],
            "data": [2 if spec["type"] == "boolean" else record[spec["name"]]],
        }
        for spec in churned.encoding.columns
    ]
    answer = churn_server.post("/v2/models/churn/infer", json.dumps({"inputs": tensors}))
    assert answer.status_code == 400 and answer.json()["error"] == "column 'has_partner': 2 is not true or false"
    accepted = churn_server.post(
        "/invocations", json.dumps([{**record, "has_partner": 1}, {**record, "has_partner": 0}])
    )
    assert accepted.status_code == 200, accepted.text  # 1 and 0 are true and false, as a CSV's 1 and 0 are
    source = tmp_path / "numbers.parquet"
    table.to_parquet(source)  # an integer column, not text: the rule is the column's, not the reader's
    scored = workbench(
        "run", "--steps", "score", *churned.place.sets(f"score.model_run={churned.run_id}", f"score.source={source}")
    )
    assert scored.code == 1 and "column 'has_partner': 2 is not true or false" in scored.stderr, scored.stderr


@pytest.mark.e2e
def test_a_semicolon_csv_with_decimal_commas_answers_as_batch_scoring(churned, churn_server, tmp_path):
    """A spreadsheet's CSV in many locales: `;` between fields and `71,5` for a number. Batch scoring
    reads the layout off the file's first lines; the server reads a request's the same way."""
    source = tmp_path / "export.csv"
    churned.table.iloc[:80].to_csv(source, index=False, sep=";", decimal=",")
    assert ";" in source.read_text().splitlines()[0] and re.search(r";\d+,\d+;", source.read_text())
    scored = workbench(
        "run", "--steps", "score", *churned.place.sets(f"score.model_run={churned.run_id}", f"score.source={source}")
    )
    assert scored.code == 0, scored.stderr[-3000:]
    expected = pd.read_parquet(
        churned.place.store / "runs" / run_id_of(scored.stdout) / "score" / "predictions.parquet"
    )
    assert expected.predicted.notna().all()
    answer = churn_server.post("/invocations", source.read_bytes(), CSV)
    assert answer.status_code == 200, answer.text
    _assert_same_classes(answer.json()["predictions"], answer.json()["probabilities"], expected)
    _assert_same_classes(answer.json()["predictions"], answer.json()["probabilities"], churned.expected(slice(0, 80)))


@pytest.mark.e2e
def test_null_in_any_v2_tensor_is_a_gap(churned, churn_server):
    """null where a client has no value, in number, boolean and text tensors alike: as a gap in a
    record is imputed (the same answer as the record with null)."""
    record = {**churned.records(slice(0, 1))[0], "tenure_months": None, "has_partner": None, "plan": None}
    kinds = {"category": "BYTES", "date": "BYTES", "boolean": "BOOL"}
    inputs = [
        {
            "name": spec["name"],
            "datatype": kinds.get(spec["type"], "INT64" if spec["name"] in ("store", "tenure_months") else "FP64"),
            "shape": [1],
            "data": [record[spec["name"]]],
        }
        for spec in churned.encoding.columns
    ]
    v2 = churn_server.post("/v2/models/churn/infer", json.dumps({"inputs": inputs}))
    assert v2.status_code == 200, v2.text
    by_record = churn_server.post("/invocations", json.dumps([record])).json()
    [probabilities] = by_record["probabilities"]
    assert np.allclose(v2.json()["outputs"][1]["data"], probabilities, atol=1e-6)


@pytest.mark.e2e
def test_a_sagemaker_archive_serves_as_its_run(churned, tmp_path):
    """model.tar.gz (torch weights, exported to ONNX at start) and its unpacked folder (torch itself)."""
    archive = churned.place.store / "runs" / churned.run_id / "export" / "model.tar.gz"
    folder = tmp_path / "opt-ml-model"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    rows = slice(0, 300)
    records, expected = churned.records(rows), churned.expected(rows)
    for model, backend in ((archive, "onnxruntime"), (folder, "torch")):
        with serving(
            churned.place, tmp_path / f"{backend}.log", f"serve.model={model}", f"serve.backend={backend}"
        ) as s:
            answer = s.post("/invocations", json.dumps({"instances": records})).json()
            _assert_same_classes(answer["predictions"], answer["probabilities"], expected)
            exported = "torch weights exported to ONNX at start for onnxruntime" in s.line
            assert exported == (backend == "onnxruntime"), s.line


@pytest.mark.e2e
def test_an_archive_and_a_run_folder_on_s3_serve(churned, s3_server, tmp_path):
    s3 = s3_server.client()
    s3.create_bucket(Bucket="models")
    folder = churned.place.store / "runs" / churned.run_id
    s3.upload_file(str(folder / "export" / "model.tar.gz"), "models", "churn/v1/model.tar.gz")
    for part in ("export/model.onnx", "prepare/encoding.json"):
        s3.upload_file(str(folder / part), "models", f"runs/{churned.run_id}/{part}")
    rows = slice(0, 100)
    records, expected = churned.records(rows), churned.expected(rows)
    for i, model in enumerate(("s3://models/churn/v1/model.tar.gz", f"s3://models/runs/{churned.run_id}/")):
        with serving(churned.place, tmp_path / f"{i}.log", f"serve.model={model}") as server:
            answer = server.post("/invocations", json.dumps(records)).json()
            _assert_same_classes(answer["predictions"], answer["probabilities"], expected)


@pytest.mark.e2e
def test_a_regression_answers_the_number_as_batch_scoring(weighed, tmp_path):
    rows = slice(0, 344)
    records, expected = weighed.records(rows), weighed.expected(rows)
    with serving(weighed.place, tmp_path / "serve.log", f"serve.model={weighed.run_id}") as server:
        answer = server.post("/invocations", json.dumps(records)).json()
        assert set(answer) == {"predictions"}
        assert np.allclose(answer["predictions"], expected.predicted, rtol=1e-5)
        csv = server.post("/invocations", json.dumps(records[:3]), accept=CSV)
        assert np.allclose([float(line) for line in csv.text.split()], expected.predicted[:3], rtol=1e-5)
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        inputs = []
        for spec in weighed.encoding.columns:
            values = weighed.table.iloc[rows][spec["name"]]
            if spec["type"] == "category":
                tensor = triton.InferInput(spec["name"], [len(values), 1], "BYTES")
                tensor.set_data_from_numpy(
                    np.array([["" if pd.isna(v) else v] for v in values], dtype=np.object_), binary_data=False
                )
            else:
                tensor = triton.InferInput(spec["name"], [len(values)], "FP64")
                tensor.set_data_from_numpy(values.to_numpy(np.float64))
            inputs.append(tensor)
        result = client.infer("workbench", inputs)
        assert result.as_numpy("predicted").dtype == np.float64
        assert np.allclose(result.as_numpy("predicted"), expected.predicted, rtol=1e-5)


# ---- batching, back-pressure, shutdown ---------------------------------------------------------------------


@pytest.mark.parametrize("call_seconds", [0.0, 0.002], ids=["on the loop", "in the thread"])
def test_the_batcher_answers_each_request_with_its_own_rows(call_seconds):
    """Requests of 1 to 12 rows at once, calls of at most 5 rows: each request, split or not, gets
    its own rows back in order, whichever call each part fell into and while the next call runs."""
    calls: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        time.sleep(call_seconds)
        return x * 2

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(predict, max_batch=5, max_delay=0.001)
        batcher.start()
        requests = [np.arange(n * 100, n * 100 + n, dtype=np.float32)[:, None] for n in range(1, 13)]
        for _ in requests:
            batcher.arrived()
        answers = await asyncio.gather(*[batcher.predict(x) for x in requests])
        await batcher.close()
        return [a - 2 * x for a, x in zip(answers, requests, strict=True)]

    differences = asyncio.run(scenario())
    assert all(d.shape[1] == 1 and not d.any() for d in differences)
    assert sum(calls) == sum(range(1, 13)) and max(calls) == 5


@pytest.mark.unit
def test_requests_merge_within_merge_rows_and_a_larger_one_gets_its_own_calls():
    """Merging up to 4 rows, calls of at most 10: small requests share a call while they fit, whole
    and in order; one of 4 rows or more goes alone, split only past 10 rows; every request gets its
    own rows back."""
    calls: list[list[int]] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(sorted({int(v) // 100 for v in x[:, 0]}))  # which requests' rows the call holds
        return x * 2

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(predict, max_batch=10, max_delay=0.001, merge_rows=4)
        batcher.start()
        sizes = [1, 1, 1, 6, 1, 12, 2, 2]
        requests = [np.arange(i * 100, i * 100 + n, dtype=np.float32)[:, None] for i, n in enumerate(sizes)]
        for _ in requests:
            batcher.arrived()
        answers = await asyncio.gather(*[batcher.predict(x) for x in requests])
        await batcher.close()
        return [a - 2 * x for a, x in zip(answers, requests, strict=True)]

    differences = asyncio.run(scenario())
    assert all(not d.any() for d in differences)
    assert calls == [[0, 1, 2], [3], [4], [5], [5, 6], [7]]


@pytest.mark.unit
def test_a_short_batch_does_not_wait_for_company_when_the_next_request_cannot_join():
    """With another request still arriving and a minute of max_delay, a 1-row request followed by a
    6-row one (more than merge_rows) is answered at once: the batch could only grow by a request
    that cannot join it."""

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(lambda x: x * 2, max_batch=10, max_delay=60.0, merge_rows=4)
        batcher.start()
        batcher.arrived()  # admitted, its body still on its way: worth waiting for, if anything fits
        for _ in range(2):
            batcher.arrived()
        small, large = np.ones((1, 1), np.float32), np.ones((6, 1), np.float32)
        answers = await asyncio.wait_for(asyncio.gather(batcher.predict(small), batcher.predict(large)), 20)
        batcher.gave_up()
        await batcher.close()
        return answers

    small, large = asyncio.run(scenario())
    assert small.tolist() == [[2.0]] and large.tolist() == [[2.0]] * 6


def _spin(seconds: float) -> None:
    until = time.process_time() + seconds
    while time.process_time() < until:
        pass


@pytest.mark.unit
def test_merge_rows_grows_while_a_larger_call_costs_less_per_row():
    """A model whose cost is all per call is worth merging as far as it is measured; one whose cost
    is all per row gains nothing from company."""
    assert merge_rows(lambda x: _spin(0.001) or x, width=3) == MEASURE_UP_TO
    assert merge_rows(lambda x: _spin(0.0005 * len(x)) or x, width=3) <= 4


def test_a_failing_backend_fails_its_batch_and_the_batcher_goes_on():
    def predict(x: np.ndarray) -> np.ndarray:
        if (x < 0).any():
            raise ValueError("negative")
        return x

    async def scenario() -> tuple[BaseException | np.ndarray, np.ndarray]:
        batcher = Batcher(predict, max_batch=4, max_delay=0.0)
        batcher.start()
        batcher.arrived()
        failed = await asyncio.gather(batcher.predict(-np.ones((2, 1), np.float32)), return_exceptions=True)
        batcher.arrived()
        fine = await batcher.predict(np.ones((3, 1), np.float32))
        await batcher.close()
        return failed[0], fine

    failed, fine = asyncio.run(scenario())
    assert isinstance(failed, BackendFailed) and "ValueError: negative" in str(failed)
    assert fine.tolist() == [[1.0]] * 3


@pytest.mark.e2e
def test_concurrent_requests_share_backend_calls(digits, digits_server):
    before = digits_server.metrics()
    n = 120  # under serve.max_queue (128)
    records, expected = digits.records(slice(0, n)), digits.expected(slice(0, n))
    bodies = [json.dumps([record]).encode() for record in records]
    answers = asyncio.run(_burst(digits_server.url + "/invocations", bodies))
    assert [a.status_code for a in answers] == [200] * n
    assert [a.json()["predictions"][0] for a in answers] == expected.predicted.tolist()
    after = digits_server.metrics()
    calls = after["workbench_serve_batch_rows_count"] - before.get("workbench_serve_batch_rows_count", 0)
    rows = after["workbench_serve_batch_rows_sum"] - before.get("workbench_serve_batch_rows_sum", 0)
    assert rows == n and calls < n / 2, f"{calls} backend calls for {n} concurrent requests"


@pytest.mark.e2e
def test_requests_as_large_as_the_merge_size_get_calls_of_their_own(digits, digits_server):
    found = re.search(r"requests merged into backend calls of up to (\d+) rows", digits_server.line)
    assert found, digits_server.line
    size = int(found.group(1))
    before = digits_server.metrics()
    records, expected = digits.records(slice(0, size)), digits.expected(slice(0, size)).predicted.tolist()
    answers = asyncio.run(_burst(digits_server.url + "/invocations", [json.dumps(records).encode()] * 6))
    assert [a.json()["predictions"] for a in answers] == [expected] * 6
    after = digits_server.metrics()
    calls = after["workbench_serve_batch_rows_count"] - before.get("workbench_serve_batch_rows_count", 0)
    rows = after["workbench_serve_batch_rows_sum"] - before.get("workbench_serve_batch_rows_sum", 0)
    assert (calls, rows) == (6, 6 * size)


@pytest.mark.e2e
def test_a_full_queue_answers_429_and_the_rest_correctly(digits, tmp_path):
    records = digits.records(slice(0, 400))
    expected = digits.expected(slice(0, 400)).predicted.tolist()
    body = json.dumps(records).encode()
    with serving(digits.place, tmp_path / "serve.log", f"serve.model={digits.run_id}", "serve.max_queue=2") as server:
        answers = asyncio.run(_burst(server.url + "/invocations", [body] * 40))
        refused = [a for a in answers if a.status_code == 429]
        served = [a for a in answers if a.status_code == 200]
        assert refused and served and len(refused) + len(served) == 40
        assert all(a.headers["retry-after"] == "1" and "serve.max_queue" in a.json()["error"] for a in refused)
        assert all(a.json()["predictions"] == expected for a in served)
        assert server.metrics()["workbench_serve_rejected_total"] == len(refused)
        assert httpx.get(server.url + "/ping").status_code == 200


@pytest.mark.e2e
def test_sigterm_answers_every_admitted_request_then_exits_0(digits, tmp_path):
    records = digits.records(slice(0, 1797)) * 2
    expected = (digits.expected(slice(0, 1797)).predicted.tolist()) * 2
    body = json.dumps(records).encode()
    log = tmp_path / "serve.log"
    with serving(digits.place, log, f"serve.model={digits.run_id}", "serve.max_batch=64") as server:

        async def scenario() -> tuple[list[httpx.Response], str]:
            flight = asyncio.ensure_future(_burst(server.url + "/invocations", [body] * 8))
            while True:  # every request admitted: the server holds them all
                await asyncio.sleep(0.02)
                gauge = await asyncio.to_thread(server.metrics)
                if gauge["workbench_serve_inflight_requests"] == 8:
                    break
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            try:
                late = httpx.get(server.url + "/ping", timeout=5)
                after = f"status {late.status_code}"
                assert late.headers["connection"] == "close"  # no next request on a closing connection
            except httpx.TransportError:
                after = "refused"
            return await flight, after

        answers, after = asyncio.run(scenario())
        assert after in ("refused", "status 503")
        assert [a.status_code for a in answers] == [200] * 8
        assert all(a.json()["predictions"] == expected for a in answers)
        assert server.proc.wait(timeout=30) == 0
    assert "stopping: answering the 8 requests admitted" in log.read_text()


@pytest.mark.e2e
def test_workers_share_the_port_and_the_metrics(digits, tmp_path):
    records, expected = digits.records(slice(0, 50)), digits.expected(slice(0, 50)).predicted.tolist()
    with serving(digits.place, tmp_path / "serve.log", f"serve.model={digits.run_id}", "serve.workers=2") as server:
        bodies = [json.dumps([record]).encode() for record in records]
        answers = asyncio.run(_burst(server.url + "/invocations", bodies))
        assert [a.json()["predictions"][0] for a in answers] == expected
        counted = server.metrics()["workbench_serve_requests_total{route=/invocations,status=200}"]
        assert counted == 50  # whichever worker answers /metrics counts both
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0


# ---- bad input: a clear 4xx, logged once, and the server stays up -------------------------------------------


def _npy_claiming(shape: tuple[int, ...]) -> bytes:
    """A .npy header announcing ``shape`` of float64, then 512 bytes."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return out.getvalue() + b"\0" * 512


DIGIT = {f"p{i}": 0 for i in range(64)}
BAD = [
    ("malformed JSON", "/invocations", '[{"p0": 1,', JSON, {}, 400, r"^malformed JSON: Expecting"),
    ("a column missing", "/invocations", json.dumps([{**DIGIT, "p5": None}, {k: 0 for k in DIGIT if k != "p5"}]), JSON, {}, 400, r"^record 2 lacks column 'p5'; send null for a gap$"),
    ("no known column", "/invocations", '[{"pixel": 1}]', JSON, {}, 400, r"^record 1 holds none of the model's columns \(p0, p1, .*\); it holds 'pixel'$"),
    ("too few values", "/invocations", json.dumps([[0] * 63]), JSON, {}, 400, r"^row 1 has 63 values; the model takes 64, in this order: p0, p1"),
    ("text for a number", "/invocations", json.dumps([{**DIGIT, "p3": "dark"}]), JSON, {}, 400, r"^column 'p3': 'dark' is not a number$"),
    ("no rows", "/invocations", "[]", JSON, {}, 400, r"^the request holds no rows$"),
    ("no instances", "/invocations", '{"instances": []}', JSON, {}, 400, r"^the request holds no rows$"),
    ("empty CSV", "/invocations", "\n", CSV, {}, 400, r"^the request body is empty; send rows$"),
    ("short CSV line", "/invocations", "1,2,3\n", CSV, {}, 400, r"^CSV line 1 has 3 values; the model takes 64"),
    ("bad content type", "/invocations", "p0\n1", "text/plain", {}, 415, r"^Content-Type 'text/plain' is not served here"),
    ("no content type", "/invocations", "[]", None, {}, 415, r"^the request has no Content-Type"),
    ("unmet Accept", "/invocations", json.dumps([DIGIT]), JSON, {"accept": "text/html, application/json;q=0"}, 406, r"^Accept 'text/html, application/json;q=0' matches nothing served here"),
    ("too large", "/invocations", json.dumps([DIGIT] * 2500), JSON, {}, 413, r"^the body has [\d,]+ bytes, over serve.max_body_mb \(1 MiB\)"),
    ("unknown v2 model", "/v2/models/other/infer", '{"inputs": []}', JSON, {}, 404, r"^no model 'other' here; this server serves 'workbench'$"),
    ("unknown v2 input", "/v2/models/workbench/infer", json.dumps({"inputs": [{"name": "pixel", "shape": [1], "datatype": "FP32", "data": [1]}]}), JSON, {}, 400, r"^input 'pixel' is not a column of the model"),
    ("v2 column missing", "/v2/models/workbench/infer", json.dumps({"inputs": [{"name": "p0", "shape": [1], "datatype": "FP32", "data": [1]}]}), JSON, {}, 400, r"^input for column 'p1' is missing \(and 62 more\)"),
    ("v2 wrong width", "/v2/models/workbench/infer", json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}), JSON, {}, 400, r"^input 'x' has 3 columns; the model takes 64"),
    ("v2 text for a number", "/v2/models/workbench/infer", json.dumps({"inputs": [{"name": n, "shape": [1], "datatype": "BYTES" if n == "p9" else "FP32", "data": ["ink"] if n == "p9" else [0]} for n in DIGIT]}), JSON, {}, 400, r"^column 'p9': 'ink' is not a number$"),
    ("v2 shape and data", "/v2/models/workbench/infer", json.dumps({"inputs": [{"name": "x", "shape": [2, 64], "datatype": "FP32", "data": [0] * 64}]}), JSON, {}, 400, r"^input 'x': shape \[2, 64\] holds 128 elements, but 64 came$"),
    ("v2 no rows", "/v2/models/workbench/infer", json.dumps({"inputs": [{"name": "x", "shape": [0, 64], "datatype": "FP32", "data": []}]}), JSON, {}, 400, r"^the request holds no rows$"),
    ("v2 unknown output", "/v2/models/workbench/infer", json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}], "outputs": [{"name": "logits"}]}), JSON, {}, 400, r"^output 'logits' is not served; ask for 'predicted' or 'probabilities'$"),
    ("v2 unknown version", "/v2/models/workbench/versions/2/infer", json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]}), JSON, {}, 404, r"^model 'workbench' has no version '2'; it has '[0-9a-z-]+' \(its run id\)$"),
    ("v2 beyond UINT8", "/v2/models/workbench/infer", json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "UINT8", "data": [300] * 64}]}), JSON, {}, 400, r"^input 'x' is UINT8, but holds 300; send whole numbers from 0 to 255$"),
    ("v2 fraction as INT64", "/v2/models/workbench/infer", json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "INT64", "data": [3.7] * 64}]}), JSON, {}, 400, r"^input 'x' is INT64, but holds 3.7; send whole numbers"),
    ("v2 beyond FP32", "/v2/models/workbench/infer", json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [1e39] * 64}]}), JSON, {}, 400, r"^input 'x': 1e\+39 is beyond FP32's range; send FP64$"),
    ("v2 parameters a list", "/v2/models/workbench/infer", json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64, "parameters": [1]}]}), JSON, {}, 400, r"^input 'x': parameters must be an object, got \[1\]$"),
    ("v2 long text echoed short", "/v2/models/workbench/infer", json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": ["x" * 5000] * 64}]}), JSON, {}, 400, r"^input 'x' is FP32, but holds 'x{36}\.\.\.; send numbers$"),
    ("npy header beyond its body", "/invocations", _npy_claiming((10**12, 64)), NPY, {}, 400, r"^the body is not a \.npy array \(its header announces \(1000000000000, 64\) of float64, 512,000,000,000,000 bytes, but 512 follow\)$"),
    ("CSV header in another case", "/invocations", ",".join(f"P{i}" for i in range(64)) + "\n" + ",".join(["0"] * 64), CSV, {}, 400, r"^the CSV header names 'P0', and the model's column is 'p0'; column names match exactly$"),
    ("CSV to the v2 route", "/v2/models/workbench/infer", "p0,p1\n1,2\n", CSV, {}, 415, r"^Content-Type 'text/csv' is not served on the v2 infer route; send application/json"),
    ("CSV not UTF-8", "/invocations", b"p0\n\xe9", CSV, {}, 400, r"^the body is not utf-8 text \(byte 0xe9 at offset 3\)$"),
    ("gzip with bytes after it", "/invocations", gzip.compress(json.dumps([DIGIT]).encode()) + b"junk", JSON, {"content-encoding": "gzip"}, 400, r"^the body has 4 bytes after its gzip stream; send the stream alone$"),
    ("gzip cut short", "/invocations", gzip.compress(json.dumps([DIGIT]).encode())[:-6], JSON, {"content-encoding": "gzip"}, 400, r"^the body's gzip stream is cut short; send it whole$"),
]  # fmt: skip


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("path", "body", "content_type", "headers", "status", "message"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_input_is_a_clear_error_and_the_server_stays_up(
    digits_server, path, body, content_type, headers, status, message
):
    logged_before = sum(1 for line in digits_server.log.read_text().splitlines() if re.search(message[1:], line))
    response = digits_server.post(path, body, content_type, **headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSON
    error = response.json()["error"]
    assert re.search(message, error) and "\n" not in error, error
    ping = httpx.get(digits_server.url + "/ping")
    assert ping.status_code == 200 and ping.json()["status"] == "ok" and ping.headers["content-type"] == JSON
    logged = [line for line in digits_server.log.read_text().splitlines() if line.endswith(f" {status}: {error}")]
    assert len(logged) == logged_before + 1, logged


@pytest.mark.e2e
def test_gaps_null_nan_and_inf_are_imputed_alike(churned, churn_server):
    """null is a gap; so are NaN (as Python's json writes it) and "inf" in a number column, as in training."""
    record = churned.records(slice(0, 1))[0]
    gaps = [{**record, "monthly_charges": value} for value in (None, "inf", "-Infinity", float("nan"), 1e999)]
    body = json.dumps(gaps)
    assert "NaN" in body and "Infinity" in body  # not strict JSON: what Python clients send
    answer = churn_server.post("/invocations", body).json()
    assert len(answer["probabilities"]) == 5
    assert len({tuple(p) for p in answer["probabilities"]}) == 1
    known = churn_server.post("/invocations", json.dumps([{**record, "monthly_charges": 70.0}])).json()
    assert known["probabilities"][0] != answer["probabilities"][0]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("change", "content_type", "status", "message"),
    [
        ({"signup_date": "last spring"}, JSON, 400, r"^column 'signup_date': 'last spring' does not parse as a date$"),
        ({"tenure_months": "long"}, JSON, 400, r"^column 'tenure_months': 'long' is not a number$"),
        ({}, NPY, 415, r"^application/x-npy carries numbers, and column 'contract' is a category"),
    ],
)
def test_bad_values_of_a_mixed_table_name_the_column(churned, churn_server, change, content_type, status, message):
    record = {**churned.records(slice(0, 1))[0], **change}
    response = churn_server.post("/invocations", json.dumps([record]), content_type)
    assert response.status_code == status and re.search(message, response.json()["error"]), response.text


@pytest.mark.e2e
def test_gzip_bodies_are_read_and_their_size_checked(digits, digits_server):
    records = digits.records(slice(0, 20))
    answer = digits_server.post(
        "/invocations", gzip.compress(json.dumps(records).encode()), **{"content-encoding": "gzip"}
    )
    assert answer.json()["predictions"] == digits.expected(slice(0, 20)).predicted.tolist()
    body = json.dumps(records).encode()
    halves = gzip.compress(body[: len(body) // 2]) + gzip.compress(body[len(body) // 2 :])  # `cat a.gz b.gz`
    for coding in ("gzip", "x-gzip"):
        answer = digits_server.post("/invocations", halves, **{"content-encoding": coding})
        assert answer.json()["predictions"] == digits.expected(slice(0, 20)).predicted.tolist(), answer.text
    bomb = gzip.compress(b"[" + b" " * (3 * 2**20) + b"]")
    refused = digits_server.post("/invocations", bomb, **{"content-encoding": "gzip"})
    assert refused.status_code == 413
    assert refused.json()["error"] == (
        "the body inflates to more than serve.max_body_mb (1 MiB); send fewer rows per request"
    )


@pytest.mark.e2e
def test_metrics_are_prometheus_text(digits_server):
    digits_server.post("/invocations", json.dumps([DIGIT]))
    text = httpx.get(digits_server.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["workbench_serve_requests"].type == "counter"
    assert families["workbench_serve_errors"].type == "counter"
    assert families["workbench_serve_request_seconds"].type == "histogram"
    assert families["workbench_serve_batch_rows"].type == "histogram"
    assert families["workbench_serve_queue_rows"].type == "gauge"
    routes = {s.labels.get("route") for s in families["workbench_serve_requests"].samples}
    assert {"/invocations", "/ping"} <= routes


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/invocations", 405, "GET is not allowed on /invocations"),
        ("POST", "/ping", 405, "POST is not allowed on /ping"),
        ("GET", "/v2/models/workbench/infer", 405, "GET is not allowed on /v2/models/workbench/infer"),
        ("POST", "/v2/models/a/b/infer", 404, "no route /v2/models/a/b/infer; see /ping, /invocations"),
        ("POST", "/v2/models//infer", 404, "no route /v2/models//infer; see /ping, /invocations"),
    ],
)
def test_wrong_methods_and_paths_beside_the_prediction_routes(digits_server, method, path, status, message):
    """The prediction routes and /ping are answered before the router: what they do not take still
    gets the router's answer, and is counted."""
    response = httpx.request(method, digits_server.url + path, content=b"[]")
    assert response.status_code == status and response.json()["error"].startswith(message), response.text
    counted = digits_server.metrics()
    assert any(key.startswith("workbench_serve_errors_total{") and f"status={status}" in key for key in counted)


def _read_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (the 30 s bound only fails a test that hangs)."""
    sock.settimeout(30)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.mark.e2e
def test_a_request_sent_too_slowly_is_answered_408_and_closed(digits, tmp_path):
    """Headers sent halfway, or a body that stops short of its Content-Length, hold no connection past
    serve.read_timeout_s: many such clients are answered 408 and closed while a whole request is served."""
    log = tmp_path / "serve.log"
    with serving(digits.place, log, f"serve.model={digits.run_id}", "serve.read_timeout_s=1") as server:
        body = json.dumps([DIGIT]).encode()
        partial = {
            "headers": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
            "body": b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10],
            "nothing": b"",
        }
        slow = {}
        for name, sent in partial.items():
            for i in range(20):
                sock = socket.create_connection(("127.0.0.1", server.port))
                sock.sendall(sent)
                slow[f"{name} {i}"] = sock
        whole = server.post("/invocations", body)
        assert whole.status_code == 200 and len(whole.json()["predictions"]) == 1
        for name, sock in slow.items():
            with sock:
                answer = _read_all(sock)
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), (name, answer)
            assert answer.endswith(b'{"error": "the request was not sent within serve.read_timeout_s (1 s)"}')
        assert httpx.get(server.url + "/ping").status_code == 200


# ---- start errors: one line, non-zero, nothing listening ----------------------------------------------------


@pytest.mark.e2e
def test_start_errors_are_one_line_before_anything_listens(digits, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    empty = Place(tmp_path / "empty", f"sqlite:///{tmp_path}/empty.db")
    Tracker(empty.db)  # a tracking database without runs
    mistyped = Place(tmp_path / "empty", f"sqlite:///{tmp_path}/typo/tracking.db")
    cases = {
        "missing run": (digits.place, ["serve.model=nope"], 1, r"^error: serve\.model 'nope': no exported model"),
        "no run yet": (empty, [], 1, r"^error: serve\.model 'latest': no run in db .* has an exported model that passed validation"),
        "no db": (mistyped, [], 1, r"^error: db .*: no tracking database at .*/typo/tracking\.db; check the db parameter"),
        "missing file": (digits.place, [f"serve.model={tmp_path}/model.tar.gz"], 1, r"^error: serve\.model .*: no such file or folder"),
        "port in use": (digits.place, [f"serve.model={digits.run_id}", f"serve.port={port}"], 2, rf"^error: serve\.port {port} on 127\.0\.0\.1 is in use"),
        "bad value": (digits.place, ["serve.max_batch=0"], 2, r"^error: serve\.max_batch in --set serve\.max_batch=0: must be greater than 0 and at most 1048576, got 0$"),
    }  # fmt: skip
    started = {
        name: subprocess.Popen(
            [sys.executable, "-m", "workbench", "serve", *place.sets(*settings)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (place, settings, _, _) in cases.items()
    }
    try:
        for name, proc in started.items():
            out, err = proc.communicate(timeout=120)
            _, _, code, message = cases[name]
            lines = err.strip().splitlines()
            assert proc.returncode == code and len(lines) == 1 and re.search(message, lines[0]), (name, err)
            assert "serving" not in out
        assert not (tmp_path / "typo").exists()  # a mistyped db is not created by a reader
    finally:
        taken.close()


class _Shell:
    """A pickle that runs a command when unpickled: what a model.pth from a stranger may hold."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch pwned",))


def _archive_with(archive: Path, out: Path, replaced: dict[str, bytes]) -> Path:
    """A copy of the model.tar.gz ``archive`` with some members' bytes replaced, by name."""
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    files |= replaced
    with tarfile.open(out, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


@pytest.mark.e2e
def test_a_damaged_model_is_one_line_before_anything_listens(churned, tmp_path):
    """An archive whose model.pth is cut short or holds a pickle that would run a command, one naming
    a class whose constructor raises, a run whose encoding.json is cut short: one line each naming
    the file and what is wrong, exit 1, nothing listening, nothing run; scoring names the file too."""
    import torch

    folder = churned.place.store / "runs" / churned.run_id
    archive = folder / "export" / "model.tar.gz"
    with tarfile.open(archive) as tar:
        state = tar.extractfile("model.pth").read()  # type: ignore[union-attr]
        meta = json.loads(tar.extractfile("code/model.json").read())  # type: ignore[union-attr]
    shell = io.BytesIO()
    torch.save({"fc.weight": _Shell()}, shell)
    (tmp_path / "broken_nets.py").write_text(
        "from torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self, in_features, num_classes):\n"
        "        super().__init__()\n"
        "        raise RuntimeError('no GPU driver found')\n"
    )
    copied = tmp_path / "store"
    shutil.copytree(churned.place.store, copied)
    damaged = copied / "runs" / churned.run_id / "prepare" / "encoding.json"
    damaged.write_bytes(damaged.read_bytes()[:200])
    cases = {
        "cut short": (
            _archive_with(archive, tmp_path / "short.tar.gz", {"model.pth": state[: len(state) // 2]}),
            r"model\.pth is cut short or damaged \((ValueError|RuntimeError): [^;]+\); copy it again or export the "
            r"model again$",
        ),
        "pickle": (
            _archive_with(archive, tmp_path / "pickle.tar.gz", {"model.pth": shell.getvalue()}),
            r"model\.pth holds objects that are not weights \(posix\.system\), refused without running them",
        ),
        "constructor": (
            _archive_with(
                archive,
                tmp_path / "ctor.tar.gz",
                {"code/model.json": json.dumps({**meta, "model": "broken_nets:Net"}).encode()},
            ),
            r"train\.model 'broken_nets:Net': its constructor raised RuntimeError: no GPU driver found; fix the class",
        ),
        "encoding": (
            copied / "runs" / churned.run_id,
            rf"^error: {re.escape(str(damaged))} is not valid JSON \([^;]+, line \d+ "
            r"column \d+\); the file is damaged: run the prepare step again to write it$",
        ),
    }
    started = {
        name: subprocess.Popen(
            [sys.executable, "-m", "workbench", "serve", *churned.place.sets(f"serve.model={path}", "serve.port=0")],
            cwd=tmp_path,  # where an unpickled command would leave its file
            env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (path, _) in cases.items()
    }
    for name, proc in started.items():
        out, err = proc.communicate(timeout=120)
        path, message = cases[name]
        lines = err.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, (name, err)
        assert re.search(message, lines[0]) and (name == "encoding" or f"serve.model '{path}': " in lines[0]), lines
        assert "serving" not in out
    assert not (tmp_path / "pwned").exists()
    scored = workbench(
        "run",
        "--steps",
        "score",
        *sets(f"store={copied}", f"db={churned.place.db}", f"score.model_run={churned.run_id}"),
    )
    assert scored.code == 1
    message = cases["encoding"][1].removeprefix("^error: ")
    assert re.search(message, scored.stderr.strip().splitlines()[-1]), scored.stderr


# ---- pieces that need no server ------------------------------------------------------------------------------


def _same(encoder: RowEncoder, encoding: Encoding, rows: list[dict[str, Any]]) -> None:
    try:
        expected: Any = encoding.apply(rows)
    except DataError as exc:
        expected = str(exc)
    try:
        got: Any = encoder.records(rows)
    except RequestError as exc:
        got = exc.message
    if isinstance(expected, str):
        assert got == expected
    else:
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.tobytes() == expected.tobytes(), rows


@pytest.mark.unit
def test_the_fast_encoding_is_encoding_apply():
    from workbench.ml.encoding import fit_encoding, fit_target

    table = churn(300)
    encoding = fit_encoding([table], target="churned", drop=["customer_id"])
    encoding.target = fit_target([table], "churned")
    encoder = RowEncoder(encoding)
    records = json.loads(table.drop(columns=["customer_id", "churned"]).to_json(orient="records"))
    _same(encoder, encoding, records)
    undated = fit_encoding([table.drop(columns="signup_date")], target="churned", drop=["customer_id"])
    plain = RowEncoder(undated)
    base = {k: v for k, v in records[0].items() if k != "signup_date"}
    odd: list[Any] = [None, 0, 1, 2.5, -0.0, True, False, "3", "inf", "", " ", "abc", 2**60, float("nan")]
    for column in ("plan", "tenure_months", "monthly_charges", "has_partner", "store"):
        for value in odd:
            _same(plain, undated, [{**base, column: value}])
            _same(plain, undated, [{**base, column: value}, {**base, column: None}, base])
    with pytest.raises(RequestError, match=r"^column 'store': 100000000000\.\.\.0000 \(401 digits\) is beyond"):
        plain.records([{**base, "store": 10**400}, base])
    digits = read_source("bundled:digits")
    pixels = fit_encoding([digits], target="label")
    grid = RowEncoder(pixels)
    rows = json.loads(digits.drop(columns="label").head(50).to_json(orient="records"))
    _same(grid, pixels, rows)
    for value in odd:  # the all-numbers path of a model whose columns are all numbers
        _same(grid, pixels, [{**rows[0], "p3": value}])
        _same(grid, pixels, [{**rows[0], "p3": value}, {**rows[1], "p3": None}, rows[2]])
    frame = digits.drop(columns="label").head(50).to_numpy(np.float64)
    assert grid.matrix(frame).tobytes() == pixels.apply(digits.head(50)).tobytes()


@pytest.mark.unit
def test_a_columns_values_follow_one_rule_on_every_path():
    """The all-number paths (a matrix of records, an .npy, Arrow columns) refuse what pandas' column
    by column path refuses: a number but 0 and 1 in a boolean column, true or false in a number column."""
    import pyarrow as pa

    train = pd.DataFrame({"partner": [True, False] * 20, "tenure": np.arange(40.0), "y": [0, 1] * 20})
    encoding = fit_encoding([train], target="y")
    encoder = RowEncoder(encoding)
    assert encoder.numeric
    refusals = {
        "column 'partner': 2 is not true or false": [{"partner": 2, "tenure": 1.5}],
        "column 'partner': -7.5 is not true or false": [{"partner": -7.5, "tenure": 1.5}],
        "column 'partner': '2' is not true or false": [{"partner": "2", "tenure": 1.5}],
        "column 'tenure': True is not a number": [{"partner": True, "tenure": True}],
    }
    for message, rows in refusals.items():
        _same(encoder, encoding, rows)
        with pytest.raises(RequestError, match=f"^{re.escape(message)}$"):
            encoder.records(rows)
    for table in (
        pa.table({"partner": [1, 2], "tenure": [1.0, 2.0]}),
        pd.DataFrame({"partner": [1, 2], "tenure": [1.0, 2.0]}),
    ):
        with pytest.raises(DataError, match=r"^column 'partner': 2 is not true or false$"):
            encoding.apply(table)
    with pytest.raises(DataError, match=r"^column 'tenure': True is not a number$"):
        encoding.apply(pa.table({"partner": [True], "tenure": [True]}))
    with pytest.raises(RequestError, match=r"^column 'partner': 2 is not true or false$"):
        encoder.matrix(np.array([[2, 1]]))
    with pytest.raises(RequestError, match=r"^column 'tenure': False is not a number$"):
        encoder.matrix(np.array([[True, False]]))
    ones = [{"partner": 1, "tenure": 1.5}, {"partner": 0.0, "tenure": None}, {"partner": True, "tenure": 2}]
    _same(encoder, encoding, ones)
    assert (
        encoder.records(ones).tobytes()
        == encoding.apply(pa.table({"partner": [True, False, True], "tenure": [1.5, None, 2.0]})).tobytes()
    )


def _either_way(fast: RowEncoder, general: RowEncoder, text: str, header: str = "") -> Any:
    """csv_input's answer with the fast path and with the general one (field by field through pandas)."""
    from workbench.serve.sagemaker import csv_input

    answers = []
    for encoder in (fast, general):
        try:
            answers.append(csv_input(text, encoder, header).tobytes())
        except RequestError as exc:
            answers.append(exc.message)
    assert answers[0] == answers[1], text[:200]
    return answers[0]


@pytest.mark.unit
def test_a_csv_of_numbers_reads_as_field_by_field():
    """A CSV of plain numbers goes into one matrix at once (pandas' converter, or its reader for
    many fields) and gives the bytes and refusals of the general path, which reads it field by field."""
    from workbench.serve.sagemaker import _plain_csv
    from workbench.storage.sources import text_layout

    digits = read_source("bundled:digits")
    encoding = fit_encoding([digits], target="label")
    fast, general = RowEncoder(encoding), RowEncoder(encoding)
    general.numbers_only = False  # the switch the fast path checks first
    names = encoding.inputs
    rng = np.random.default_rng(0)
    long = pd.DataFrame(rng.standard_normal((40, 64)) * 10.0 ** rng.integers(-6, 7, (40, 64)), columns=names)
    gappy = long.mask(rng.random(long.shape) < 0.1)
    plain = {
        "few ints": digits[names].head(3).to_csv(index=False, header=False),
        "long decimals, many fields": long.to_csv(index=False, header=False, float_format="%.17g"),
        "long decimals, few fields": long.head(2).to_csv(index=False, header=False, float_format="%r"),
        "gaps, many fields": gappy.to_csv(index=False, header=False),
        "gaps, few fields": gappy.head(3).to_csv(index=False, header=False),
        "header, shuffled, an extra column": long[names[::-1]].assign(extra=1.5).to_csv(index=False),
        "spaces, CRLF, empty lines": "\r\n\r\n" + digits[names].head(40).to_csv(index=False, header=False, sep=",", lineterminator="\r\n\r\n").replace(",", ", "),
        "semicolons": long.head(3).to_csv(index=False, header=False, sep=";"),
    }  # fmt: skip
    for name, text in plain.items():
        head = text.lstrip("\r\n").splitlines()
        assert _plain_csv(text, text_layout(head[0], head[1] if len(head) > 1 else ""), fast, "") is not None, name
        assert isinstance(_either_way(fast, general, text), bytes), name
    row = digits[names].head(1).to_csv(index=False, header=False).strip().split(",")
    for odd in ["", " ", "1e400", "-1e400", "-", "1 2", "abc", "NA", str(2**60), "9007199254740993", "0x10", '"3"']:
        for copies in (1, 40):  # the converter and the reader
            text = "\n".join([",".join([odd, *row[1:]])] * copies) + "\n"
            _either_way(fast, general, text)
    for text in [
        ",".join(row) + ",\n",  # a field too many
        ",".join(row[:-1]) + "\n",  # one too few
        ",".join(names).upper() + "\n" + ",".join(row) + "\n",  # a header in another case
        ",".join(names) + "\n",  # a header and no rows
        ",".join(names[:-1] + names[:1]) + "\n" + ",".join(row) + "\n",  # a column twice
        ";".join(row).replace("0", "0,5") + "\n",  # decimal commas
        "",
    ]:
        assert isinstance(_either_way(fast, general, text), str), text
    partner = fit_encoding(
        [pd.DataFrame({"partner": [True, False] * 20, "tenure": np.arange(40.0), "y": [0, 1] * 20})], target="y"
    )
    assert not RowEncoder(partner).numbers_only  # "1.00" is no word for true: field by field


@pytest.mark.unit
def test_number_columns_make_one_matrix_as_column_by_column():
    """One input per column, all numbers: standardised as one matrix, the bytes of Encoding.apply."""
    digits = read_source("bundled:digits")
    encoding = fit_encoding([digits], target="label")
    encoder = RowEncoder(encoding)
    head = digits.head(20)
    columns = {name: head[name].to_numpy() for name in encoding.inputs}
    assert encoder.columns(columns, 20).tobytes() == encoding.apply(head).tobytes()
    gappy = {**columns, "p5": np.where(np.arange(20) % 3 == 0, np.nan, head["p5"].to_numpy(np.float32))}
    expected = encoding.apply(head.assign(p5=gappy["p5"].astype(np.float64)))
    assert encoder.columns(gappy, 20).tobytes() == expected.tobytes()
    train = pd.DataFrame({"partner": [True, False] * 20, "tenure": np.arange(40.0), "y": [0, 1] * 20})
    flags = RowEncoder(fit_encoding([train], target="y"))
    with pytest.raises(RequestError, match=r"^column 'partner': 2 is not true or false$"):
        flags.columns({"partner": np.array([2, 1]), "tenure": np.array([1.0, 2.0])}, 2)


def _handler() -> Any:
    """The archive's inference.py, with architectures.py beside it as in the archive's code/ folder."""
    spec = importlib.util.spec_from_file_location(
        "archive_inference", ROOT / "workbench/templates/sagemaker_inference.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "workbench" / "ml"))
    try:
        sys.modules.pop("architectures", None)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "workbench" / "ml"))
        sys.modules.pop("architectures", None)
    return module


@pytest.mark.unit
def test_accept_is_negotiated_as_the_archive_handler_does():
    handler = _handler()
    headers = [
        None,
        "",
        "*/*",
        "text/csv",
        "text/*;q=0.5, application/json;q=0.4",
        "text/csv;header=present;q=0.9, application/json;q=0.8",
        'text/csv; charset="UTF-8"; header=present',
        "text/csv;charset=latin-1",
        "application/x-npy, */*;q=0.1",
        "image/png, */*;q=0",
        "application/json;q=0, text/csv;q=0",
        "text/html",
        "application/json;q=2",
        "nonsense",
    ]
    for accept in headers:
        try:
            theirs: Any = handler.negotiate(accept)[2]
        except handler.RequestError as exc:
            theirs = exc.status_code
        try:
            ours: Any = media.negotiate(accept)[2]
        except RequestError as exc:
            ours = exc.status
        assert ours == theirs, accept


# ---- the README's examples ----------------------------------------------------------------------------------


def _readme_bodies() -> list[str]:
    """The JSON bodies (`-d '...'`) of the README's serving examples."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Serving") : text.index("**Following an alias.**")]
    return re.findall(r"-d '(.+?)'\n", section, re.DOTALL)


@pytest.mark.e2e
def test_the_readme_serving_examples_answer(digits, digits_server, churned, churn_server):
    """After `make demo` the README's examples are for its digits model; the churn ones follow."""
    bodies = _readme_bodies()
    first = digits.expected(slice(0, 1)).predicted.tolist()[0]  # the examples send the bundled table's first row
    asked = {"digits": 0, "churn": 0}
    for body in bodies:
        kind = "churn" if "contract" in body else "digits"
        server = churn_server if kind == "churn" else digits_server
        v2 = '"inputs"' in body
        path = f"/v2/models/{'churn' if kind == 'churn' else 'workbench'}/infer" if v2 else "/invocations"
        answer = server.post(path, body)
        assert answer.status_code == 200, (body[:80], answer.text)
        if kind == "digits":
            predicted = answer.json()["outputs"][0] if v2 else answer.json()["predictions"]
            assert (predicted["datatype"], predicted["data"]) == ("INT64", [first]) if v2 else predicted == [first]
        asked[kind] += 1
    assert asked == {"digits": 2, "churn": 2}
    assert httpx.get(digits_server.url + "/ping").json()["status"] == "ok"
