"""Serving under load on loopback: `workbench serve` against a hand-written server and the HTTP ceiling.

Closed-loop clients (asyncio on uvloop, one light HTTP/1.1 keep-alive connection each, in this
process) keep C requests in flight for ``--seconds`` each, at C = 1, 16, 64 and 256; a 429 is
counted apart and its Retry-After honoured, as a well-behaved client does. Measured side by side:

(a) ours: ``workbench serve``, the digits CNN, one row of raw JSON per ``/invocations`` request;
(b) naive: what users write by hand, FastAPI on the same uvicorn, one ``InferenceSession.run`` per
    request, the standardisation done in numpy (the digits are all numbers);
(c) ceiling: the same server answering ``GET /ping`` (no body, no model);
(d) a 64-2048-2048-10 MLP (weights dominate a row's cost) under ours and naive, at 64 clients;
(e) 1,000-row requests (a v2 FP32 tensor, binary; JSON records; JSON lists of values) at 4 clients:
    rows/s against ``InferenceSession.run`` alone on the same encoded 1,000-row batches;
(f) every request shape the server takes (v2 JSON with one 2-D tensor, v2 JSON with one tensor per
    column, v2 binary, SageMaker JSON records, CSV) at 1, 100 and 1,000 rows, ``--bound-clients``
    clients (4): the server's CPU per request against the work no server can skip, measured in this
    process just before: parsing the body with the server's parser (orjson, ``csv.reader``), the
    encoding as whole-array numpy and one onnxruntime call on its rows with the server's settings.

Targets (ratios printed): (a)/(c) at 64 clients at least 0.9, and (a) above (b) with a lower p99;
(a) flat from 16 to 256 clients with the excess answered 429; (d) ours/naive at least 3;
(e) at least 0.8; (f) at most 1.5x the bound from 100 rows on. This machine's cores are shared by
the clients and the servers.

Each phase also shows the CPU time per answered request of the server process (all its threads)
and of the clients, and (a)/(c) comes with the most it could be on this machine: the cores divided
by what a 1-row request costs at the least (the clients' share, GET /ping's server share, and the
model's own CPU per row at (a)'s batch size).

    python benchmarks/serve_load.py [--seconds 5] [--clients 1,16,64,256] [--workers 1] [--bound-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request  # at module level: FastAPI resolves the endpoint's annotations here

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 2048


# ---- the models ------------------------------------------------------------------------------------------


def make_models(tmp: Path, runs: tuple[str, ...] = ("cnn", "mlp")) -> tuple[str, str]:
    """Runs on the digits, exported for onnxruntime: ``cnn`` and ``mlp`` (64-2048-2048-10)."""
    from workbench.config.schema import DataParams, ExportParams, TrainParams
    from workbench.run.context import step_context
    from workbench.stages.export_onnx import export_onnx
    from workbench.stages.prepare_data import prepare_data
    from workbench.stages.train import train_model

    store, db = str(tmp / "store"), f"sqlite:///{tmp}/t.db"
    for run in runs:
        model = run
        prepare_data(step_context("prepare", run, store, db), DataParams(), seed=0)
        train = TrainParams(epochs=1, batch_size=64, device="cpu", amp=False, model=model, width=HIDDEN, depth=2)
        train_model(step_context("train", run, store, db), train, seed=0)
        export_onnx(step_context("export", run, store, db), ExportParams(target="onnxruntime", opset=17))
    return store, db


# ---- the hand-written server -----------------------------------------------------------------------------


def naive_server(folder: str, port: int) -> None:
    """What a user writes by hand around the exported model: one session.run per request."""
    import onnxruntime as ort
    import uvicorn

    encoding = json.loads((Path(folder) / "prepare" / "encoding.json").read_text())
    columns = [c["name"] for c in encoding["columns"]]
    mean = np.array([c["mean"] for c in encoding["columns"]])
    scale = np.array([c["scale"] for c in encoding["columns"]])
    classes = encoding["target"]["classes"]
    session = ort.InferenceSession(str(Path(folder) / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    app = FastAPI()

    @app.post("/invocations")
    async def invocations(request: Request) -> dict:
        records = await request.json()
        x = ((np.array([[r[c] for c in columns] for r in records], dtype=np.float64) - mean) / scale).astype(np.float32)
        logits = session.run(None, {"input": x})[0].astype(np.float64)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return {"predictions": [classes[i] for i in p.argmax(axis=1)], "classes": classes, "probabilities": p.tolist()}

    @app.get("/ping")
    async def ping() -> dict:
        return {}

    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


# ---- servers as processes ----------------------------------------------------------------------------------


@dataclass
class Process:
    proc: subprocess.Popen
    port: int

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _wait_ready(port: int, proc: subprocess.Popen, path: str = "/ping") -> None:
    """Until ``GET path`` answers (another server's health route for the peers in serve_peers.py)."""
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("a server did not start")


def start_ours(store: str, db: str, run: str, *settings: str) -> Process:
    sets = [f"store={store}", f"db={db}", f"serve.model={run}", "serve.port=0", *settings]
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "serve", *[f"--set={s}" for s in sets]],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r":(\d+)(;|$)", line.strip())
    if not found:
        raise SystemExit(f"workbench serve did not start: {line!r}")
    port = int(found.group(1))
    _wait_ready(port, proc)
    return Process(proc, port)


def start_naive(folder: str) -> Process:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--naive", folder, str(port)], cwd=ROOT)
    _wait_ready(port, proc)
    return Process(proc, port)


# ---- the load: closed-loop clients on raw keep-alive connections ---------------------------------------------


@dataclass
class Result:
    label: str
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    rows: int = 0
    refused: int = 0
    errors: int = 0
    batch: float | None = None
    server_cpu: float = 0.0  # CPU seconds the server process spent during the phase, all its threads
    client_cpu: float = 0.0  # and this process, the clients

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def per_request(self, cpu: float) -> float:
        """Microseconds of CPU per answered request."""
        return cpu / max(1, len(self.latencies)) * 1e6

    def p(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        head.append(f"content-length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _client(port: int, payload: bytes, rows: int, until: float, result: Result) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            if status == 200:
                result.latencies.append(time.perf_counter() - started)
                result.rows += rows
            elif status == 429:
                result.refused += 1
                wait = re.search(rb"(?im)^retry-after: *(\d+)", head)
                await asyncio.sleep(min(float(wait.group(1)) if wait else 1.0, max(0.0, until - time.perf_counter())))
            else:
                result.errors += 1
    finally:
        writer.close()


def batch_mean(port: int) -> tuple[float, float]:
    """The batch histogram's sum and count from /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    total = float(re.search(r"^workbench_serve_batch_rows_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^workbench_serve_batch_rows_count (\S+)$", text, re.M).group(1))
    return total, count


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user and system, every thread) of process ``pid``, or of this process."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(
    label: str,
    server: Process,
    payload: bytes,
    clients: int,
    seconds: float,
    rows: int = 1,
    ours: bool = False,
) -> Result:
    import uvloop

    port = server.port
    result = Result(label, clients, seconds)
    before = batch_mean(port) if ours else None

    async def run() -> None:
        until = time.perf_counter() + seconds
        await asyncio.gather(*[_client(port, payload, rows, until, result) for _ in range(clients)])

    server_before, client_before = cpu_seconds(server.proc.pid), cpu_seconds()
    uvloop.run(run())
    result.server_cpu = cpu_seconds(server.proc.pid) - server_before
    result.client_cpu = cpu_seconds() - client_before
    if before is not None:
        after = batch_mean(port)
        calls = after[1] - before[1]
        result.batch = (after[0] - before[0]) / calls if calls else None
    return result


# ---- the run ---------------------------------------------------------------------------------------------------


def show(results: list[Result]) -> None:
    print(
        f"{'server':<34} {'clients':>7} {'req/s':>8} {'rows/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'429':>6} {'err':>4} "
        f"{'batch':>6} {'server us':>9} {'client us':>9}"
    )
    for r in results:
        batch = f"{r.batch:6.1f}" if r.batch else "     -"
        print(
            f"{r.label:<34} {r.clients:>7} {r.rate:>8,.0f} {r.rows / r.seconds:>9,.0f} {r.p(0.5):>8.2f} "
            f"{r.p(0.99):>8.2f} {r.refused:>6} {r.errors:>4} {batch} {r.per_request(r.server_cpu):>9.1f} "
            f"{r.per_request(r.client_cpu):>9.1f}"
        )


def model_cpu_per_row(model: Path, x: np.ndarray, batch: int, seconds: float) -> float:
    """Microseconds of CPU per row that onnxruntime alone spends on the model in ``batch``-row calls."""
    from workbench.ml.runtimes import load_onnxruntime

    predict = load_onnxruntime(model.read_bytes(), threads=1)
    xs = [x[i : i + batch] for i in range(0, len(x) - batch + 1, batch)]
    rows, started, cpu = 0, time.perf_counter(), cpu_seconds()
    while time.perf_counter() - started < seconds:
        for part in xs:
            predict(part)
            rows += len(part)
    return (cpu_seconds() - cpu) / rows * 1e6


def raw_rows_per_second(model: Path, batches: list[np.ndarray], seconds: float) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rows, started, i = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        x = batches[i % len(batches)]
        session.run(None, {"input": x})
        rows += len(x)
        i += 1
    return rows / (time.perf_counter() - started)


# ---- (f) every request shape against the work it cannot avoid ---------------------------------------------

SHAPES = ("v2 JSON 2-D tensor", "v2 JSON tensor per column", "v2 binary", "SageMaker JSON records", "CSV")
SHAPE_ROWS = (1, 100, 1000)


@dataclass
class Shape:
    """One request shape at one size: the HTTP request, and the least the server must do with its body
    (``parse``: the body to a float matrix of raw values in training column order, with the parser
    the server uses; then the encoding and one model call, see :func:`unavoidable_us`)."""

    name: str
    rows: int
    request: bytes
    body: bytes
    parse: Callable[[bytes], np.ndarray]


def shape_requests(batch: Any, names: list[str]) -> list[Shape]:
    """The five shapes ``workbench serve`` takes, each holding the rows of ``batch`` (a DataFrame of raw
    digits); ``parse`` is whole-array work: orjson (what the server parses JSON with), ``np.frombuffer``
    for binary tensors, ``csv.reader`` (the server's CSV reader) then one numpy conversion of the text."""
    import csv
    import io
    from operator import itemgetter

    import orjson

    n = len(batch)
    x32 = batch[names].to_numpy(np.float32)
    infer, json_type = "/v2/models/workbench/infer", {"content-type": "application/json"}
    shapes = []

    def add(name: str, path: str, body: bytes, headers: dict[str, str], parse: Callable[[bytes], np.ndarray]) -> None:
        shapes.append(Shape(name, n, request_bytes("POST", path, body, headers), body, parse))

    def tensor(body: bytes) -> np.ndarray:  # FP32 as sent, then float64 for the encoding
        spec = orjson.loads(body)["inputs"][0]
        return np.array(spec["data"], dtype=np.float32).reshape(spec["shape"])

    one = {"name": "pixels", "shape": [n, len(names)], "datatype": "FP32", "data": x32.reshape(-1).tolist()}
    add(SHAPES[0], infer, orjson.dumps({"inputs": [one]}), json_type, tensor)

    def per_column(body: bytes) -> np.ndarray:
        inputs = {spec["name"]: spec["data"] for spec in orjson.loads(body)["inputs"]}
        return np.array([inputs[name] for name in names], dtype=np.float64).T

    columns = [{"name": c, "shape": [n], "datatype": "FP64", "data": batch[c].astype(float).tolist()} for c in names]
    add(SHAPES[1], infer, orjson.dumps({"inputs": columns}), json_type, per_column)

    head = orjson.dumps({"inputs": [{**one, "data": None, "parameters": {"binary_data_size": x32.nbytes}}]})
    head = head.replace(b',"data":null', b"")
    binary_headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}

    def binary(body: bytes, split: int = len(head)) -> np.ndarray:
        spec = orjson.loads(body[:split])["inputs"][0]
        return np.frombuffer(body, dtype=np.float32, offset=split).reshape(spec["shape"])

    add(SHAPES[2], infer, head + x32.tobytes(), binary_headers, binary)

    values_of = itemgetter(*names)

    def records(body: bytes) -> np.ndarray:
        return np.array(list(map(values_of, orjson.loads(body))), dtype=np.float64)

    add(SHAPES[3], "/invocations", orjson.dumps(batch[names].to_dict("records")), json_type, records)

    def table(body: bytes) -> np.ndarray:
        return np.array(list(csv.reader(io.StringIO(body.decode()))), dtype=np.float64)

    text = batch[names].to_csv(index=False, header=False).encode()
    add(SHAPES[4], "/invocations", text, {"content-type": "text/csv"}, table)
    return shapes


def _cpu_per_call(work: Callable[[], Any], seconds: float) -> float:
    """Microseconds of this process's CPU (every thread, onnxruntime's included) per call of ``work``."""
    work()
    calls, started, cpu = 0, time.perf_counter(), cpu_seconds()
    while calls < 3 or time.perf_counter() - started < seconds:
        work()
        calls += 1
    return (cpu_seconds() - cpu) / calls * 1e6


def unavoidable_us(
    shape: Shape, layout: Any, predict: Callable[[np.ndarray], Any], seconds: float
) -> tuple[float, float]:
    """CPU per request of what no server can skip for ``shape``: parsing its body and encoding it as
    whole-array numpy work, and one model call on its rows (microseconds each)."""
    x = layout.standardise(shape.parse(shape.body).astype(np.float64))
    read = _cpu_per_call(lambda: layout.standardise(shape.parse(shape.body).astype(np.float64)), seconds)
    return read, _cpu_per_call(lambda: predict(x), seconds)


def bound_phase(
    store: str, db: str, model: Path, workers: list[str], seconds: float, clients: int
) -> list[tuple[Shape, Result, float, float]]:
    """(f): each shape at 1, 100 and 1,000 rows sent to ``workbench serve`` by ``clients`` closed-loop
    clients, its server CPU per request beside the work it cannot avoid, measured in this process
    just before (the same onnxruntime settings as the server: its threads, sleeping when idle)."""
    from workbench.ml.encoding import Encoding
    from workbench.ml.runtimes import load_onnxruntime
    from workbench.serve.model import backend_threads
    from workbench.storage.sources import read_source

    digits = read_source("bundled:digits").drop(columns="label")
    encoding = Encoding.from_json(json.loads((model.parents[1] / "prepare" / "encoding.json").read_text()))
    layout = encoding.numeric_layout
    threads = backend_threads(int(workers[0].partition("=")[2]))
    predict = load_onnxruntime(model.read_bytes(), threads=threads, sleep_when_idle=True)
    measured = []
    ours = start_ours(store, db, "cnn", *workers)
    try:
        for rows in SHAPE_ROWS:
            batch = digits.sample(rows, replace=True, random_state=rows)
            for shape in shape_requests(batch, encoding.inputs):
                load("warm-up", ours, shape.request, clients, min(1.0, seconds / 2), rows=rows, ours=True)
                read, call = unavoidable_us(shape, layout, predict, seconds / 4)
                result = load(f"(f) {shape.name}, {rows:,} rows", ours, shape.request, clients, seconds, rows, True)
                measured.append((shape, result, read, call))
    finally:
        ours.stop()
    return measured


def show_bound(measured: list[tuple[Shape, Result, float, float]], clients: int) -> None:
    """The server's CPU per request against the bound, per shape and size (target: at most 1.5x from 100 rows)."""
    print(
        f"(f) server CPU per request against the work it cannot avoid (parse + encode + one model call), {clients} clients"
    )
    print(
        f"{'shape':<28} {'rows':>5} {'req/s':>8} {'err':>4} {'batch':>6} {'server us':>10} "
        f"{'parse+enc':>10} {'model':>9} {'bound us':>9} {'x bound':>8}"
    )
    for shape, r, read, call in measured:
        batch = f"{r.batch:6.0f}" if r.batch else "     -"
        ratio = r.per_request(r.server_cpu) / (read + call)
        target = "" if shape.rows == 1 else ("  ok" if ratio <= 1.5 else "  MISS (target <= 1.5)")
        print(
            f"{shape.name:<28} {shape.rows:>5,} {r.rate:>8,.0f} {r.errors:>4} {batch} {r.per_request(r.server_cpu):>10,.0f} "
            f"{read:>10,.0f} {call:>9,.0f} {read + call:>9,.0f} {ratio:>8.2f}{target}"
        )
    many = [(r.per_request(r.server_cpu) / (read + call), shape) for shape, r, read, call in measured if shape.rows > 1]
    if many:
        ratio, shape = max(many, key=lambda pair: pair[0])
        print(
            f"(f) worst from 100 rows: {ratio:.2f}x the bound ({shape.name}, {shape.rows:,} rows; target <= 1.5); "
            f"errors: {sum(r.errors for _, r, _, _ in measured)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="1,16,64,256")
    parser.add_argument("--workers", type=int, default=1, help="serve.workers of our server")
    parser.add_argument("--bound-only", action="store_true", help="only (f): each request shape against its bound")
    parser.add_argument("--bound-clients", type=int, default=4, help="clients per shape in (f)")
    parser.add_argument("--naive", nargs=2, metavar=("RUN_FOLDER", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive:
        naive_server(args.naive[0], int(args.naive[1]))
        return
    ladder = [int(c) for c in args.clients.split(",")]
    seconds = args.seconds

    from workbench.ml.encoding import Encoding
    from workbench.storage.sources import read_source

    workers = [f"serve.workers={args.workers}"]
    if args.bound_only:
        with tempfile.TemporaryDirectory() as tmp_name:
            print("training the digits CNN ...", flush=True)
            store, db = make_models(Path(tmp_name), ("cnn",))
            model = Path(store) / "runs" / "cnn" / "export" / "model.onnx"
            measured = bound_phase(store, db, model, workers, seconds, args.bound_clients)
        print()
        show_bound(measured, args.bound_clients)
        print(f"cpus: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.1f}")
        return

    with tempfile.TemporaryDirectory() as tmp_name:
        print("training the digits CNN and the 64-2048-2048-10 MLP ...", flush=True)
        store, db = make_models(Path(tmp_name))
        runs = Path(store) / "runs"
        digits = read_source("bundled:digits").drop(columns="label")
        encoding = Encoding.from_json(json.loads((runs / "cnn" / "prepare" / "encoding.json").read_text()))
        one_row = json.dumps(json.loads(digits.iloc[[5]].to_json(orient="records"))).encode()
        single = request_bytes("POST", "/invocations", one_row, {"content-type": "application/json"})
        ping = request_bytes("GET", "/ping")

        results: list[Result] = []
        ours, naive = start_ours(store, db, "cnn", *workers), start_naive(str(runs / "cnn"))
        try:
            load("warm-up", ours, single, 16, 1.0, ours=True)
            load("warm-up", naive, single, 16, 1.0)
            by = {}
            for clients in ladder:
                for label, server, payload, mine in (
                    ("(a) ours, 1-row JSON", ours, single, True),
                    ("(b) naive FastAPI, 1-row JSON", naive, single, False),
                    ("(c) ceiling: GET /ping", ours, ping, False),
                ):
                    result = load(label, server, payload, clients, seconds, ours=mine)
                    results.append(result)
                    by[label[:3], clients] = result
                    time.sleep(1.5)  # let Retry-After sleepers and closing connections settle
        finally:
            ours.stop()
            naive.stop()

        ours, naive = start_ours(store, db, "mlp", *workers), start_naive(str(runs / "mlp"))
        try:
            load("warm-up", ours, single, 16, 1.0, ours=True)
            load("warm-up", naive, single, 16, 1.0)
            mlp_ours = load("(d) ours, MLP 2048, 1-row JSON", ours, single, 64, seconds, ours=True)
            mlp_naive = load("(d) naive FastAPI, MLP 2048", naive, single, 64, seconds)
            results += [mlp_ours, mlp_naive]
        finally:
            ours.stop()
            naive.stop()

        batch = digits.sample(1000, replace=True, random_state=0)
        records = json.dumps(json.loads(batch.to_json(orient="records"))).encode()
        x = batch.to_numpy(np.float32)
        infer = json.dumps(
            {
                "inputs": [{"name": "pixels", "shape": [1000, 64], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
                "outputs": [{"name": "predicted", "parameters": {"binary_data": True}}, {"name": "probabilities", "parameters": {"binary_data": True}}],
            }
        ).encode()  # fmt: skip
        v2 = request_bytes(
            "POST",
            "/v2/models/workbench/infer",
            infer + x.tobytes(),
            {"content-type": "application/octet-stream", "inference-header-content-length": str(len(infer))},
        )
        bulk_json = request_bytes("POST", "/invocations", records, {"content-type": "application/json"})
        values = json.dumps({"instances": batch.to_numpy().tolist()}).encode()
        bulk_values = request_bytes("POST", "/invocations", values, {"content-type": "application/json"})
        encoded = [encoding.apply(digits.sample(1000, replace=True, random_state=i)) for i in range(8)]
        model = runs / "cnn" / "export" / "model.onnx"
        mean_batch = by["(a)", 64 if 64 in ladder else ladder[-1]].batch or 1.0
        model_us = model_cpu_per_row(
            model, encoding.apply(digits.sample(4096, replace=True, random_state=9)), round(mean_batch), seconds / 2
        )
        ours = start_ours(store, db, "cnn", *workers)
        try:  # the raw runs before and after, averaged: the machine's load drifts
            load("warm-up", ours, v2, 4, 1.0, rows=1000, ours=True)
            raws = [raw_rows_per_second(model, encoded, seconds / 2)]
            bulk_v2 = load("(e) ours, 1,000-row v2 FP32 binary", ours, v2, 4, seconds, rows=1000, ours=True)
            bulk_records = load("(e) ours, 1,000-row JSON records", ours, bulk_json, 4, seconds, rows=1000, ours=True)
            bulk_lists = load(
                "(e) ours, 1,000-row JSON value lists", ours, bulk_values, 4, seconds, rows=1000, ours=True
            )
            raws.append(raw_rows_per_second(model, encoded, seconds / 2))
            results += [bulk_v2, bulk_records, bulk_lists]
        finally:
            ours.stop()
        raw = sum(raws) / len(raws)
        measured = bound_phase(store, db, model, workers, seconds, args.bound_clients)

    print()
    show(results)
    print(f"{'(e) raw InferenceSession.run, 1,000 rows':<34} {'':>7} {'':>8} {raw:>9,.0f}")
    print()
    at = 64 if 64 in ladder else ladder[-1]
    a, b, c = by["(a)", at], by["(b)", at], by["(c)", at]
    print(f"(a)/(c) at {at} clients: {a.rate / c.rate:.3f}  (target >= 0.9)")
    # what (a) could reach if a 1-row request cost the server only what GET /ping costs plus the model
    cores = len(os.sched_getaffinity(0))
    floor = a.per_request(a.client_cpu) + c.per_request(c.server_cpu) + model_us
    bound = min(c.rate, cores / floor * 1e6)
    print(
        f"    bound on this machine: {bound / c.rate:.3f}: {cores} cores / (client {a.per_request(a.client_cpu):.1f} "
        f"+ GET /ping's server {c.per_request(c.server_cpu):.1f} + model {model_us:.1f} us per request); "
        f"ours spends {a.per_request(a.server_cpu):.1f} us of server CPU per request"
    )
    print(
        f"(a)/(b) at {at} clients: {a.rate / b.rate:.3f}  (target > 1), p99 {a.p(0.99):.1f} vs {b.p(0.99):.1f} ms (target lower)"
    )
    if 16 in ladder and 256 in ladder:
        flat = by["(a)", 256].rate / by["(a)", 16].rate
        print(f"(a) 256/16 clients: {flat:.3f}  (target about 1), 429 at 256 clients: {by['(a)', 256].refused}")
    print(f"(d) ours/naive, MLP at 64 clients: {mlp_ours.rate / mlp_naive.rate:.3f}  (target >= 3)")
    print(
        f"(e) ours/raw rows/s, v2 binary: {bulk_v2.rows / seconds / raw:.3f}, JSON records: "
        f"{bulk_records.rows / seconds / raw:.3f}, JSON value lists: {bulk_lists.rows / seconds / raw:.3f}"
        "  (target >= 0.8)"
    )
    print()
    show_bound(measured, args.bound_clients)
    print(f"cpus: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
