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
    rows/s against ``InferenceSession.run`` alone on the same encoded 1,000-row batches.

Targets (ratios printed): (a)/(c) at 64 clients at least 0.9, and (a) above (b) with a lower p99;
(a) flat from 16 to 256 clients with the excess answered 429; (d) ours/naive at least 3;
(e) at least 0.8. This machine's cores are shared by the clients and the servers.

Each phase also shows the CPU time per answered request of the server process (all its threads)
and of the clients, and (a)/(c) comes with the most it could be on this machine: the cores divided
by what a 1-row request costs at the least (the clients' share, GET /ping's server share, and the
model's own CPU per row at (a)'s batch size).

    python benchmarks/serve_load.py [--seconds 5] [--clients 1,16,64,256] [--workers 1]
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request  # at module level: FastAPI resolves the endpoint's annotations here

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 2048


# ---- the models ------------------------------------------------------------------------------------------


def make_models(tmp: Path) -> tuple[str, str]:
    """Two runs on the digits, exported for onnxruntime: ``cnn`` and ``mlp`` (64-2048-2048-10)."""
    from workbench.config.schema import DataParams, ExportParams, TrainParams
    from workbench.run.context import step_context
    from workbench.stages.export_onnx import export_onnx
    from workbench.stages.prepare_data import prepare_data
    from workbench.stages.train import train_model

    store, db = str(tmp / "store"), f"sqlite:///{tmp}/t.db"
    for run, model in (("cnn", "cnn"), ("mlp", "mlp")):
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


def _wait_ready(port: int, proc: subprocess.Popen) -> None:
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="1,16,64,256")
    parser.add_argument("--workers", type=int, default=1, help="serve.workers of our server")
    parser.add_argument("--naive", nargs=2, metavar=("RUN_FOLDER", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive:
        naive_server(args.naive[0], int(args.naive[1]))
        return
    ladder = [int(c) for c in args.clients.split(",")]
    seconds = args.seconds

    from workbench.ml.encoding import Encoding
    from workbench.storage.sources import read_source

    with tempfile.TemporaryDirectory() as tmp_name:
        print("training the digits CNN and the 64-2048-2048-10 MLP ...", flush=True)
        store, db = make_models(Path(tmp_name))
        runs = Path(store) / "runs"
        digits = read_source("bundled:digits").drop(columns="label")
        encoding = Encoding.from_json(json.loads((runs / "cnn" / "prepare" / "encoding.json").read_text()))
        one_row = json.dumps(json.loads(digits.iloc[[5]].to_json(orient="records"))).encode()
        single = request_bytes("POST", "/invocations", one_row, {"content-type": "application/json"})
        ping = request_bytes("GET", "/ping")

        workers = [f"serve.workers={args.workers}"]
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
    print(f"cpus: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
