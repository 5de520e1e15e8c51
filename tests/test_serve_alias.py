"""workbench serve with serve.model=@NAME: a real server follows the alias as it moves, with requests
streaming in, and keeps its model when the new one cannot load."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.cli import ROOT, SMALL, Place, Run, copy_run, run_id_of, workbench
from support.server import serving

from workbench.serve.batching import Batcher
from workbench.serve.model import load_model
from workbench.storage.sources import read_source
from workbench.tracking.aliases import set_alias
from workbench.tracking.tracker import Tracker

RELOAD_S = 0.2
WAIT_S = 120  # the most any expected change may take before the test gives up
ROWS = 8  # per request


@dataclass
class Runs:
    """Two digits runs in one store and db whose models answer differently, and their answers."""

    run: Run  # the shared small run's copy; ``run.place`` holds both
    other: str  # a run trained at another learning rate
    table: np.ndarray  # raw pixels, every row of the bundled digits
    probabilities: dict[str, np.ndarray]  # each run's answer for every row of ``table``

    @property
    def first(self) -> str:
        return self.run.run_id


@pytest.fixture(scope="module")
def runs(small_run, tmp_path_factory) -> Runs:
    run = copy_run(small_run, tmp_path_factory.mktemp("alias"))
    result = workbench("run", *run.place.sets(*SMALL, "train.lr=0.02"))
    assert result.code == 0, result.stderr[-3000:]
    other = run_id_of(result.stdout)
    digits = read_source("bundled:digits")
    probabilities = {}
    for run_id in (run.run_id, other):
        model = load_model(run_id, "onnxruntime", str(run.place.store), run.place.db)
        columns = model.encoding.inputs
        logits = np.asarray(model.predict(model.encoding.apply(digits[columns])), dtype=np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities[run_id] = shifted / shifted.sum(axis=1, keepdims=True)
    table = digits[columns].to_numpy(np.float32)
    # the two models must be told apart by their answers, or the test could not see a swap
    assert np.abs(probabilities[run.run_id] - probabilities[other]).max() > 0.05
    return Runs(run, other, table, probabilities)


def _private(runs: Runs, tmp: Path) -> Place:
    """A copy of the store and db holding both runs, for a test that moves the alias or breaks a file."""
    return copy_run(runs.run, tmp).place


def _body(table: np.ndarray, start: int) -> tuple[bytes, np.ndarray]:
    rows = np.arange(start, start + ROWS) % len(table)
    matrix = {
        "name": "pixels",
        "datatype": "FP32",
        "shape": [ROWS, table.shape[1]],
        "data": table[rows].ravel().tolist(),
    }
    return json.dumps({"inputs": [matrix], "outputs": [{"name": "probabilities"}]}).encode(), rows


@dataclass
class Answer:
    status: int
    version: str
    probabilities: np.ndarray | None
    rows: np.ndarray


class Stream:
    """Requests from four clients at once (v2 infer, with and without a version in the path) and
    /ping, until :meth:`stop`, ``limit`` answers or ``WAIT_S`` seconds, whichever comes first."""

    def __init__(self, url: str, table: np.ndarray, limit: int = 20_000) -> None:
        self.url, self.table, self.limit = url, table, limit
        self.answers: list[Answer] = []
        self.failures: list[str] = []  # transport errors and statuses other than 200
        self.pings: list[int] = []
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def _going(self, deadline: float) -> bool:
        return not self._stop.is_set() and len(self.answers) < self.limit and time.monotonic() < deadline

    async def run(self) -> None:
        deadline = time.monotonic() + 4 * WAIT_S
        async with httpx.AsyncClient(timeout=60) as client:

            async def infer(k: int) -> None:
                paths = ["/v2/models/workbench/infer", "/v2/models/workbench/versions/1/infer"]
                i = 0
                while self._going(deadline):
                    body, rows = _body(self.table, (k * 1000 + i * ROWS) % len(self.table))
                    i += 1
                    try:
                        answer = await client.post(
                            self.url + paths[i % 2], content=body, headers={"content-type": "application/json"}
                        )
                    except httpx.TransportError as exc:
                        self.failures.append(repr(exc))
                        continue
                    if answer.status_code != 200:
                        self.failures.append(f"{answer.status_code} {answer.text}")
                        continue
                    got = answer.json()
                    probabilities = np.asarray(got["outputs"][0]["data"], dtype=np.float64).reshape(ROWS, -1)
                    self.answers.append(Answer(200, got["model_version"], probabilities, rows))

            async def ping() -> None:
                while self._going(deadline):
                    try:
                        self.pings.append((await client.get(self.url + "/ping")).status_code)
                    except httpx.TransportError as exc:
                        self.failures.append(f"/ping: {exc!r}")
                    await asyncio.sleep(0.01)

            await asyncio.gather(*(infer(k) for k in range(4)), ping())

    async def answered_by(self, run_id: str, after: int, count: int = 20) -> int:
        """Wait for ``count`` answers by ``run_id`` among those after the first ``after``; how many there are now."""
        deadline = time.monotonic() + WAIT_S
        while sum(a.version == run_id for a in self.answers[after:]) < count:
            assert time.monotonic() < deadline, f"no answer from run {run_id} within {WAIT_S} s"
            assert not self.failures, self.failures[:3]
            await asyncio.sleep(0.05)
        return len(self.answers)


async def _until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT_S
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT_S} s"
        await asyncio.sleep(0.1)


@pytest.mark.e2e
def test_the_server_follows_the_alias_with_no_failed_request_and_keeps_its_model_when_the_new_one_is_broken(
    runs, tmp_path
):
    place = _private(runs, tmp_path)
    tracker = Tracker(place.db)
    first, other = runs.first, runs.other
    set_alias(tracker, "champion", first, "the first model")
    log = tmp_path / "serve.log"
    with serving(place, log, "serve.model=@champion", f"serve.reload_s={RELOAD_S}") as server:
        assert f"serving run {first} " in server.line and f"following @champion every {RELOAD_S:g} s" in server.line
        assert server.metrics()[f"workbench_serve_model_info{{run={first}}}"] == 1
        stream = Stream(server.url, runs.table)

        async def scenario() -> list[int]:
            flowing = asyncio.ensure_future(stream.run())
            marks = [await stream.answered_by(first, 0)]
            await asyncio.to_thread(set_alias, tracker, "champion", other, "a better model")
            marks.append(await stream.answered_by(other, marks[-1]))
            await asyncio.to_thread(set_alias, tracker, "champion", first, "back")
            marks.append(await stream.answered_by(first, marks[-1]))
            # the other run's model.onnx cut short on disk (a new file: the first run's is not touched)
            onnx = place.store / "runs" / other / "export" / "model.onnx"
            broken = onnx.read_bytes()[:1000]
            onnx.unlink()
            onnx.write_bytes(broken)
            await asyncio.to_thread(set_alias, tracker, "champion", other, "broken on disk")
            await _until(
                lambda: server.metrics()["workbench_serve_reloads_total{outcome=failed}"] == 1, "a failed reload"
            )
            marks.append(len(stream.answers))
            await stream.answered_by(first, marks[-1], 40)
            stream.stop()
            await flowing
            return marks

        marks = asyncio.run(scenario())
        assert not stream.failures, stream.failures[:5]
        assert stream.pings and set(stream.pings) == {200}
        answers = stream.answers
        # every answer is its version's model's, whole: none from a half-loaded or mixed model
        for answer in answers:
            assert answer.version in (first, other)
            assert np.allclose(answer.probabilities, runs.probabilities[answer.version][answer.rows], atol=2e-5)
        assert answers[0].version == first and any(a.version == other for a in answers[marks[0] : marks[1]])
        # once the broken model failed to load, the first model still answers, and only it
        assert {a.version for a in answers[marks[3] :]} == {first}

        samples = server.metrics()
        assert samples["workbench_serve_reloads_total{outcome=ok}"] == 2
        assert samples["workbench_serve_reloads_total{outcome=failed}"] == 1
        assert samples[f"workbench_serve_model_info{{run={first}}}"] == 1
        assert samples[f"workbench_serve_model_info{{run={other}}}"] == 0
        meta = httpx.get(server.url + "/v2/models/workbench").json()
        assert meta["versions"] == [first]
        body, _ = _body(runs.table, 0)
        assert httpx.post(server.url + f"/v2/models/workbench/versions/{first}/infer", content=body).status_code == 200
        refused = httpx.post(server.url + f"/v2/models/workbench/versions/{other}/infer", content=body)
        assert refused.status_code == 404 and refused.json()["error"] == (
            f"model 'workbench' has no version '{other}'; it has '{first}' (its run id)"
        )
        time.sleep(10 * RELOAD_S)  # checks go on: the broken move is not tried again
        assert server.metrics()["workbench_serve_reloads_total{outcome=failed}"] == 1
    failed = [line for line in log.read_text().splitlines() if "cannot serve" in line]
    assert len(failed) == 1, failed
    assert re.search(
        rf"ERROR workbench\.serve\[\d+\]: serve\.model @champion moved to run {other}, which cannot serve "
        rf"\(.*model.*\); still serving run {first}; set the alias again to retry$",
        failed[0],
    ), failed[0]


@pytest.mark.e2e
def test_each_worker_follows_the_alias(runs, tmp_path):
    place = _private(runs, tmp_path)
    tracker = Tracker(place.db)
    set_alias(tracker, "champion", runs.first)
    settings = ("serve.model=@champion", f"serve.reload_s={RELOAD_S}", "serve.workers=2")
    with serving(place, tmp_path / "serve.log", *settings) as server:
        set_alias(tracker, "champion", runs.other)

        def both_moved() -> bool:
            samples = server.metrics()
            return samples["workbench_serve_reloads_total{outcome=ok}"] == 2

        asyncio.run(_until(both_moved, "a reload in each worker"))
        samples = server.metrics()
        assert samples[f"workbench_serve_model_info{{run={runs.other}}}"] == 1
        assert samples[f"workbench_serve_model_info{{run={runs.first}}}"] == 0  # no worker serves it now
        for start in range(0, 30 * ROWS, ROWS):  # new connections: whichever worker takes each
            body, rows = _body(runs.table, start)
            answer = httpx.post(server.url + "/v2/models/workbench/infer", content=body, timeout=60).json()
            assert answer["model_version"] == runs.other
            got = np.asarray(answer["outputs"][0]["data"], dtype=np.float64).reshape(ROWS, -1)
            assert np.allclose(got, runs.probabilities[runs.other][rows], atol=2e-5)


@pytest.mark.e2e
def test_an_alias_that_does_not_exist_is_one_line_before_anything_listens(private_run):
    place = private_run.place
    set_alias(Tracker(place.db), "champion", private_run.run_id)
    cases = {
        "no such alias": (["serve.model=@nope"], 1, r"^error: serve\.model '@nope': no alias 'nope' in db .*; aliases: @champion$"),
        "bad interval": (["serve.model=@champion", "serve.reload_s=-1"], 2, r"^error: serve\.reload_s in --set serve\.reload_s=-1: must be between 0 and 86400, got -1\.0$"),
    }  # fmt: skip
    for name, (settings, code, message) in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "workbench", "serve", *place.sets("serve.port=0", *settings)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == code and len(lines) == 1 and re.search(message, lines[0]), (name, proc.stderr)
        assert "serving" not in proc.stdout


@pytest.mark.unit
def test_a_closing_batcher_answers_the_requests_still_arriving():
    """A swapped-out model's batcher closes while requests admitted to it still read their bodies:
    each of them is answered by it, then it stops."""

    async def scenario() -> tuple[np.ndarray, bool]:
        batcher = Batcher(lambda x: x * 2, max_batch=8, max_delay=0.001)
        batcher.start()
        batcher.arrived()  # admitted, its body still on its way
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.05)
        waited = not closing.done()
        answer = await batcher.predict(np.ones((3, 2), dtype=np.float32))
        await closing
        return answer, waited

    answer, waited = asyncio.run(scenario())
    assert waited and np.array_equal(answer, np.full((3, 2), 2, dtype=np.float32))
