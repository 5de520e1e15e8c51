"""SageMaker Batch Transform on `workbench serve`: /execution-parameters, JSON Lines, files split by
line into payloads as the transform agent splits them, and admission by payload size in batch mode."""

from __future__ import annotations

import http.client
import io
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from support.cli import ROOT, Place, copy_run, run_id_of, workbench
from support.server import Server, serving
from support.tables import churn

from workbench.errors import ParameterError
from workbench.ml.encoding import fit_encoding
from workbench.serve.encoder import RowEncoder
from workbench.serve.jsonlines import jsonlines_input, negotiate_lines
from workbench.serve.media import RequestError
from workbench.serve.transform import batch_mode, execution_parameters
from workbench.storage.sources import read_source

JSONLINES, CSV = "application/jsonlines", "text/csv"
MB = 2**20  # the agent's MB, taken at its largest: a payload of this many bytes per MB must be served


# ---- the contract's pieces, in process ---------------------------------------------------------------


@pytest.mark.unit
def test_execution_parameters_follow_the_workers_and_the_body_limit():
    assert execution_parameters(1, 16.0) == {
        "MaxConcurrentTransforms": 1,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 16,
    }
    assert execution_parameters(4, 250.0)["MaxPayloadInMB"] == 100  # SageMaker takes at most 100
    assert execution_parameters(300, 6.5) == {
        "MaxConcurrentTransforms": 100,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 6,
    }
    assert execution_parameters(2, 0.5)["MaxPayloadInMB"] == 1  # 0 would mean "any size"


@pytest.mark.unit
def test_batch_mode_comes_from_sagemakers_environment():
    assert batch_mode({}, 16.0) == batch_mode({"SAGEMAKER_BATCH": "false"}, 16.0)
    assert not batch_mode({}, 16.0).on and batch_mode({}, 16.0).max_body_mb == 16.0
    assert batch_mode({"SAGEMAKER_BATCH": "true"}, 16.0).on
    assert batch_mode({"SAGEMAKER_BATCH": "true"}, 0.5).max_body_mb == 1.0  # what /execution-parameters says
    job = {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "40"}
    assert batch_mode(job, 16.0).max_body_mb == 40.0  # the job's payloads come whatever the container said
    assert batch_mode({**job, "SAGEMAKER_MAX_PAYLOAD_IN_MB": "4"}, 16.0).max_body_mb == 16.0
    assert batch_mode({**job, "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0"}, 16.0).max_body_mb == 16.0
    with pytest.raises(ParameterError, match=r"^SAGEMAKER_MAX_PAYLOAD_IN_MB '6MB' is not a whole number of MB"):
        batch_mode({**job, "SAGEMAKER_MAX_PAYLOAD_IN_MB": "6MB"}, 16.0)


@pytest.fixture(scope="module")
def churn_encoder() -> tuple[RowEncoder, list[dict[str, Any]]]:
    table = churn(200)
    encoder = RowEncoder(fit_encoding([table], target="churned", drop=["customer_id"]))
    records = json.loads(table.drop(columns=["customer_id", "churned"]).to_json(orient="records"))
    return encoder, records


def _lines(rows: list[Any], end: str = "\n") -> bytes:
    return "".join(json.dumps(row) + end for row in rows).encode()


@pytest.mark.unit
def test_json_lines_rows_encode_as_the_same_records(churn_encoder):
    encoder, records = churn_encoder
    expected = encoder.records(records).tobytes()
    values = [[record[name] for name in encoder.names] for record in records]
    mixed = [row if i % 3 else values[i] for i, row in enumerate(records)]
    assert jsonlines_input(_lines(records), encoder).tobytes() == expected
    assert jsonlines_input(_lines(values), encoder).tobytes() == expected
    assert jsonlines_input(_lines(mixed), encoder).tobytes() == expected
    assert jsonlines_input(_lines(records, "\r\n") + b"\n  \n", encoder).tobytes() == expected  # CRLF, blank tail
    assert jsonlines_input(_lines(records)[:-1], encoder).tobytes() == expected  # no newline after the last
    latin = _lines(records).decode().encode("latin-1")
    assert jsonlines_input(latin, encoder, "latin-1").tobytes() == expected


@pytest.mark.unit
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda lines: [*lines[:2], b'{"contract": "One year",', *lines[3:]], r"^JSON Lines line 3: malformed JSON"),
        (lambda lines: [*lines[:1], b"", *lines[1:]], r"^JSON Lines line 2 is blank"),
        (lambda lines: [*lines[:3], b"42", *lines[4:]], r"^JSON Lines line 4 holds int; send a record or a list"),
        (
            lambda lines: [*lines[:1], b'["One year", 1]', *lines[2:]],
            r"^JSON Lines line 2 has 2 values; the model takes 7",
        ),
        (
            lambda lines: [*lines[:4], lines[4].replace(b'"store"', b'"shop"'), *lines[5:]],
            r"^JSON Lines line 5 lacks column 'store'",
        ),
        (lambda lines: [*lines[:2], _text(lines[2]), *lines[3:]], r"^JSON Lines line 3: column 'tenure_months'"),
        (
            lambda lines: [*lines[:5], lines[5].replace(b'"plan":', b'"plan":{"a":1},"x":'), *lines[6:]],
            r"^JSON Lines line 6: column 'plan' holds a JSON structure",
        ),
        (lambda lines: [], r"^the request body is empty"),
    ],
)
def test_a_bad_json_lines_line_is_named(churn_encoder, change, message):
    encoder, records = churn_encoder
    lines = _lines(records[:8]).split(b"\n")[:-1]
    with pytest.raises(RequestError, match=message) as refused:
        jsonlines_input(b"\n".join(change(lines)) + b"\n", encoder)
    assert refused.value.status == 400


@pytest.mark.unit
def test_json_lines_take_a_bom_and_name_csv_sent_as_json_lines(churn_encoder):
    """A body saved by an editor that writes a byte-order mark reads as without one; CSV under a JSON
    Lines Content-Type is a 400 that says to send it as text/csv."""
    encoder, records = churn_encoder
    body = _lines(records[:5])
    assert jsonlines_input(b"\xef\xbb\xbf" + body, encoder).tobytes() == jsonlines_input(body, encoder).tobytes()
    csv = pd.DataFrame(records[:5]).to_csv(index=False, header=False).encode()
    with pytest.raises(
        RequestError, match=r"^JSON Lines line 1 is not JSON but looks like CSV .*Content-Type text/csv"
    ) as refused:
        jsonlines_input(csv, encoder)
    assert refused.value.status == 400
    with pytest.raises(
        RequestError, match=r"^Accept 'application/xml' matches nothing served here; ask for application/jsonlines"
    ) as refused:
        negotiate_lines("application/xml", "application/jsonlines")
    assert refused.value.status == 406


def _text(line: bytes) -> bytes:
    """The line with text where the number of months belongs."""
    record = json.loads(line)
    return json.dumps({**record, "tenure_months": "long"}).encode()


# ---- a real server and the shared run ---------------------------------------------------------------------


@dataclass
class Transform:
    """The shared digits run, an input file for a transform job, and batch scoring's predictions of it."""

    place: Place
    run_id: str
    columns: list[str]
    table: pd.DataFrame  # the input rows, in file order
    predictions: pd.DataFrame


@pytest.fixture(scope="module")
def transform(small_run, tmp_path_factory) -> Transform:
    """Four noisy copies of the digits (7,188 rows, several MB as CSV or JSON Lines), a few gaps, scored
    by `workbench run --steps score` against the shared run."""
    tmp = tmp_path_factory.mktemp("transform")
    run = copy_run(small_run, tmp)
    digits = read_source("bundled:digits").drop(columns="label")
    rng = np.random.default_rng(7)
    copies = [(digits + rng.uniform(0, 2, digits.shape)).round(2) for _ in range(4)]  # each row its own
    table = pd.concat(copies, ignore_index=True)
    table = table.mask(rng.random(table.shape) < 0.01)  # gaps: empty CSV fields, null in JSON
    source = tmp / "transform.csv"
    table.to_csv(source, index=False)
    result = workbench(
        "run", "--steps", "score", *run.place.sets(f"score.model_run={run.run_id}", f"score.source={source}")
    )
    assert result.code == 0, result.stderr[-3000:]
    scored = run.place.store / "runs" / run_id_of(result.stdout) / "score" / "predictions.parquet"
    return Transform(run.place, run.run_id, list(digits.columns), table, pd.read_parquet(scored))


@pytest.fixture(scope="module")
def batch_server(transform, tmp_path_factory) -> Iterator[Server]:
    """Two workers, 1 MiB bodies, as SageMaker starts the container for a transform job."""
    log = tmp_path_factory.mktemp("batch-server") / "serve.log"
    settings = (f"serve.model={transform.run_id}", "serve.max_body_mb=1", "serve.workers=2")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SAGEMAKER_BATCH", "true")  # what SageMaker sets for a transform job's container
        with serving(transform.place, log, *settings) as server:
            yield server


def _payloads(lines: list[bytes], limit: int) -> list[bytes]:
    """Whole lines packed into payloads of at most ``limit`` bytes, in order: the agent's MultiRecord
    split of a file with SplitType Line."""
    payloads, current, size = [], [], 0
    for line in lines:
        assert len(line) <= limit, "a single record over MaxPayloadInMB fails the job"
        if size + len(line) > limit:
            payloads.append(b"".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        payloads.append(b"".join(current))
    return payloads


def _transform_job(server: Server, data: bytes, content_type: str, accept: str) -> tuple[bytes, int]:
    """What the agent does with one input file: ask the container's limits, split the file by line,
    send the payloads MaxConcurrentTransforms at a time, and join the answers in order
    (AssembleWith Line); the joined output and the number of requests."""
    limits = httpx.get(server.url + "/execution-parameters", timeout=30).json()
    assert limits["BatchStrategy"] == "MULTI_RECORD"
    payloads = _payloads(data.splitlines(keepends=True), limits["MaxPayloadInMB"] * MB)
    headers = {"content-type": content_type, "accept": accept}

    def invoke(payload: bytes) -> bytes:
        answer = httpx.post(server.url + "/invocations", content=payload, headers=headers, timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith(accept)
        return answer.content

    with ThreadPoolExecutor(limits["MaxConcurrentTransforms"]) as pool:
        answers = list(pool.map(invoke, payloads))
    return b"".join(answer if answer.endswith(b"\n") else answer + b"\n" for answer in answers), len(payloads)


def _records(table: pd.DataFrame) -> list[bytes]:
    return [line.encode() + b"\n" for line in table.to_json(orient="records", lines=True).splitlines()]


@pytest.mark.e2e
def test_execution_parameters_say_what_the_server_has(batch_server):
    answer = httpx.get(batch_server.url + "/execution-parameters", timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.json() == {"MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 1}
    assert "SageMaker batch transform" in batch_server.line


@pytest.mark.e2e
def test_a_csv_file_split_by_line_answers_as_batch_scoring(transform, batch_server):
    data = transform.table.to_csv(index=False, header=False).encode()
    output, requests = _transform_job(batch_server, data, CSV, CSV)
    assert requests >= 3, f"{len(data):,} bytes went in {requests} requests"
    answer = pd.read_csv(io.BytesIO(output), header=None)
    assert len(answer) == len(transform.table)
    assert answer[0].tolist() == transform.predictions.predicted.tolist()
    confidence = answer.iloc[:, 1:].to_numpy().max(axis=1)
    assert np.allclose(confidence, transform.predictions.confidence, atol=2e-5)


@pytest.mark.e2e
def test_a_json_lines_file_split_by_line_answers_as_batch_scoring_line_for_line(transform, batch_server):
    data = b"".join(_records(transform.table))
    output, requests = _transform_job(batch_server, data, JSONLINES, JSONLINES)
    assert requests >= 3, f"{len(data):,} bytes went in {requests} requests"
    lines = output.decode().split("\n")
    assert lines[-1] == "" and "" not in lines[:-1]  # one line per record, each ended, none blank
    answers = [json.loads(line) for line in lines[:-1]]
    assert len(answers) == len(transform.table)
    assert [a["prediction"] for a in answers] == transform.predictions.predicted.tolist()
    assert list(answers[0]["probabilities"]) == [str(c) for c in range(10)]
    confidence = [max(a["probabilities"].values()) for a in answers]
    assert np.allclose(confidence, transform.predictions.confidence, atol=2e-5)


@pytest.mark.e2e
def test_json_lines_in_and_out_as_the_headers_ask(transform, batch_server):
    rows = transform.table.head(5)
    expected = transform.predictions.predicted.head(5).tolist()
    values = b"".join(
        json.dumps(row).encode() + b"\n" for row in rows.astype(object).where(rows.notna(), None).values.tolist()
    )
    body = b"".join(_records(rows)) + b"\n"  # a blank line at the end is tolerated

    def post(content: bytes, content_type: str, **headers: str) -> httpx.Response:
        return batch_server.post("/invocations", content, content_type, **headers)

    for content, kind in [(body, JSONLINES), (values, "application/jsonl"), (body, "application/jsonl; charset=utf-8")]:
        answer = post(content, kind)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == kind.split(";")[0]  # no Accept: JSON Lines, as sent
        assert [json.loads(line)["prediction"] for line in answer.text.splitlines()] == expected
    whole = post(body, JSONLINES, accept="application/json")
    assert whole.headers["content-type"] == "application/json" and whole.json()["predictions"] == expected
    records = json.loads(rows.to_json(orient="records"))
    lines = post(json.dumps(records).encode(), "application/json", accept="application/jsonlines")
    assert lines.headers["content-type"] == JSONLINES
    assert [json.loads(line)["prediction"] for line in lines.text.splitlines()] == expected


@pytest.mark.e2e
def test_a_bad_line_is_a_400_naming_it(transform, batch_server):
    lines = _records(transform.table.head(6))
    lines[3] = b'{"p0": 1, "p1":\n'
    answer = batch_server.post("/invocations", b"".join(lines), JSONLINES)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("JSON Lines line 4: malformed JSON")
    lines[3] = json.dumps({"p0": "dark", **{c: 0 for c in transform.columns[1:]}}).encode() + b"\n"
    answer = batch_server.post("/invocations", b"".join(lines), JSONLINES)
    assert answer.status_code == 400 and answer.json()["error"].startswith("JSON Lines line 4: column 'p0'")
    assert httpx.get(batch_server.url + "/ping").status_code == 200


# ---- admission by payload size ------------------------------------------------------------------------------


class Held:
    """A request whose headers and half its body are sent; the rest when :meth:`finish` is called."""

    def __init__(self, server: Server, body: bytes) -> None:
        self.body = body
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        self.conn.putrequest("POST", "/invocations")
        self.conn.putheader("Content-Type", JSONLINES)
        self.conn.putheader("Content-Length", str(len(body)))
        self.conn.endheaders()
        self.conn.send(body[: len(body) // 2])
        deadline = time.monotonic() + 30
        while server.metrics()["workbench_serve_inflight_requests"] != 1:  # admitted, its body being read
            assert time.monotonic() < deadline, "the held request was never admitted"
            time.sleep(0.05)

    def finish(self) -> tuple[int, bytes]:
        self.conn.send(self.body[len(self.body) // 2 :])
        answer = self.conn.getresponse()
        status, content = answer.status, answer.read()
        self.conn.close()
        return status, content


def _sized(transform: Transform, size: int) -> tuple[bytes, int]:
    """JSON Lines of the first rows, about ``size`` bytes; and how many lines."""
    lines = _records(transform.table)
    n = next(i for i in range(len(lines)) if sum(map(len, lines[: i + 1])) > size)
    return b"".join(lines[:n]), n


@pytest.mark.e2e
def test_batch_mode_admits_payloads_while_their_bytes_fit(transform, tmp_path):
    held, held_rows = _sized(transform, int(1.2 * MB))
    small, small_rows = _sized(transform, MB // 2)
    large, _ = _sized(transform, int(1.5 * MB))
    expected = transform.predictions.predicted.tolist()
    settings = (f"serve.model={transform.run_id}", "serve.max_queue=1", "serve.max_body_mb=1")

    # by number, as an endpoint: one request inside is the whole queue
    with pytest.MonkeyPatch.context() as env:
        env.delenv("SAGEMAKER_BATCH", raising=False)  # set while this module's batch_server lives
        with serving(transform.place, tmp_path / "endpoint.log", *settings) as server:
            assert "batch transform" not in server.line
            waiting = Held(server, small)
            refused = server.post("/invocations", small, JSONLINES)
            assert refused.status_code == 429 and "serve.max_queue" in refused.json()["error"]
            assert waiting.finish()[0] == 200

    # by size, as a transform job whose MaxPayloadInMB (2) is over serve.max_body_mb: 2 MiB of room
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SAGEMAKER_BATCH", "true")
        env.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "2")
        with serving(transform.place, tmp_path / "transform.log", *settings) as server:
            assert httpx.get(server.url + "/execution-parameters").json()["MaxPayloadInMB"] == 2
            waiting = Held(server, held)
            beside = server.post("/invocations", small, JSONLINES)  # 1.2 + 0.5 MiB: room for it
            assert beside.status_code == 200, beside.text
            assert [json.loads(line)["prediction"] for line in beside.text.splitlines()] == expected[:small_rows]
            over = server.post("/invocations", large, JSONLINES)  # 1.2 + 1.5 MiB: none
            assert over.status_code == 429 and over.headers["retry-after"] == "1"
            assert "serve.max_queue x serve.max_body_mb" in over.json()["error"]
            status, content = waiting.finish()
            assert status == 200
            assert [json.loads(line)["prediction"] for line in content.decode().splitlines()] == expected[:held_rows]
            alone = server.post("/invocations", large, JSONLINES)  # over serve.max_body_mb, within the job's
            assert alone.status_code == 200, alone.text
            assert server.metrics()["workbench_serve_rejected_total"] == 1


# ---- the README's example -------------------------------------------------------------------------------------


def test_the_readmes_transform_job_is_one_sagemaker_accepts(s3_server):
    """The README's boto3 calls against moto's SageMaker, which checks their names and shapes (it
    neither pulls the image nor runs it)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**Batch Transform.**") :]
    code = re.search(r"```python\n(.+?)```", section, re.DOTALL).group(1)
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)
    job = scope["sagemaker"].describe_transform_job(TransformJobName="workbench-RUN_ID-20261205")
    assert job["TransformInput"]["SplitType"] == "Line" and job["TransformOutput"]["AssembleWith"] == "Line"
    assert job["TransformJobStatus"] == "Completed"
