"""`workbench serve` beside the servers a user would pick instead: MLServer, BentoML, a hand-written FastAPI.

Every server runs the same digits CNN (exported to ONNX) in onnxruntime, one worker process each, and
is loaded by the same closed-loop clients as ``serve_load.py`` (its client, its models, its naive
FastAPI server, imported): req/s, rows/s, p50, p99, errors and 429s at 16, 64 and 256 clients, with
1- and 100-row requests. Repetitions (``--repeat``) are interleaved, the servers' order rotated each
time, so the machine's noise hits all alike; the table shows medians (errors and 429s: the sum).

- ours: ``workbench serve`` (``serve.workers=1``), raw rows as SageMaker JSON records on
  ``/invocations`` and as one v2 JSON 2-D tensor; it encodes them itself;
- naive: serve_load.py's FastAPI server, raw records, standardised in numpy;
- MLServer (pinned below): a custom ``MLModel`` (``benchmarks/peers/mlserver_model.py``), v2 JSON,
  adaptive batching off and on (``max_batch_size``/``max_batch_time``);
- BentoML (pinned below): an onnxruntime service (``benchmarks/peers/bento_service.py``),
  ``batchable`` off and on.

The peers are fed the already standardised matrix (they do less work per request than ours) and run
the model in the fast form ours runs (weights as constants), with ours' onnxruntime thread settings,
in their best set-up found here (no access log, no metrics, no gzip, MLServer's inference in its
main process). Target (printed per point): ours ahead of every peer, with a lower p99.

MLServer and BentoML each get a virtual environment under ``build/peers/<name>``, installed from PyPI
with this Python once (a stamp file names the pins; a later run reuses it); a folder that cannot be
built is one line and exit 1.

    python benchmarks/serve_peers.py [--seconds 5] [--repeat 3] [--clients 16,64,256] [--rows 1,100]
                                     [--set serve.KEY=VALUE]... [--build build/peers]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
from serve_load import (
    SHAPES,
    Process,
    Result,
    _wait_ready,
    cpu_seconds,
    load,
    make_models,
    request_bytes,
    shape_requests,
    start_naive,
    start_ours,
)

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).resolve().parent / "peers"
MLSERVER, BENTOML = "mlserver==1.7.1", "bentoml==1.4.40"
MAX_BATCH, MAX_BATCH_TIME = 32, 0.002  # MLServer's adaptive batching: requests per batch, seconds to wait


# ---- the peers' environments ------------------------------------------------------------------------------


def environment(build: Path, name: str, pins: list[str]) -> Path:
    """``build/name``, a virtual environment with ``pins`` installed, built once: its stamp file holds the
    pins, so a later run reuses it and a change of pins builds it anew. Raises SystemExit (one line)
    when it cannot be built; the half-built folder is removed, so the next run tries again."""
    folder = build / name
    stamp = folder / ".installed"
    wanted = "\n".join(pins) + "\n"
    if stamp.exists() and stamp.read_text() == wanted:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    print(f"building {folder} ({', '.join(pins)}) from PyPI ...", flush=True)
    python = str(folder / "bin" / "python")
    steps = {
        "python -m venv": [sys.executable, "-m", "venv", str(folder)],
        f"pip install {' '.join(pins)}": [python, "-m", "pip", "install", "-q", *pins],
    }
    for what, command in steps.items():
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            done = subprocess.CompletedProcess(command, 1, "", str(exc))
        if done.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("ERROR:")]
            why = errors[-1] if errors else lines[-1] if lines else f"exit status {done.returncode}"
            raise SystemExit(
                f"error: cannot build the {name} environment in {folder}: `{what}` failed ({why}); "
                "it needs PyPI once (later runs reuse the folder)"
            )
    stamp.write_text(wanted)
    return folder


# ---- the peers as processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(name: str, command: list[str], port: int, health: str, cwd: Path, env: dict[str, str], log: Path) -> Process:
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(port, proc, health)
    except SystemExit as exc:
        Process(proc, port).stop()  # terminate: BentoML's supervisor then stops its worker too
        raise SystemExit(f"error: {name} did not start ({exc}); its log: {log}") from None
    return Process(proc, port)


def start_mlserver(venv: Path, onnx: Path, folder: Path, batching: bool, log: Path) -> Process:
    """``mlserver start`` on a model repository of one model, ``digits``; batching: adaptive batching on."""
    port = free_port()
    folder.mkdir(parents=True)
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "metrics_endpoint": None,
        "parallel_workers": 0,  # inference in the server's own process: one worker, as the others
        "gzip_enabled": False,
    }
    model = {"name": "digits", "implementation": "mlserver_model.OnnxDigits", "parameters": {"uri": str(onnx)}}
    if batching:
        model |= {"max_batch_size": MAX_BATCH, "max_batch_time": MAX_BATCH_TIME}
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "digits").mkdir()
    (folder / "digits" / "model-settings.json").write_text(json.dumps(model))
    command = [str(venv / "bin" / "mlserver"), "start", str(folder)]
    return _start("MLServer", command, port, "/v2/health/ready", folder, {"PYTHONPATH": str(PEERS)}, log)


def start_bentoml(venv: Path, onnx: Path, home: Path, batchable: bool, log: Path) -> Process:
    """``bentoml serve bento_service:Digits`` (one worker); batchable: its adaptive batching on."""
    port = free_port()
    env = {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "PEER_ONNX": str(onnx),
        "PEER_BATCHABLE": "1" if batchable else "0",
        "PEER_MAX_BATCH": "1000",  # rows: a 100-row request is never split
    }
    command = [
        str(venv / "bin" / "bentoml"),
        "serve",
        "bento_service:Digits",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return _start("BentoML", command, port, "/readyz", PEERS, env, log)


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and every process under it (BentoML serves from a child process)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError):
            continue
    family, total = {pid}, 0.0
    for child in sorted(parents):  # children have higher ids than their parents, nearly always
        if parents[child] in family:
            family.add(child)
    for member in family:
        try:
            total += cpu_seconds(member)
        except OSError:
            continue
    return total


# ---- the requests --------------------------------------------------------------------------------------------


@dataclass
class Entrant:
    label: str
    server: Process
    payloads: dict[int, bytes]  # by rows per request
    ours: bool = False


def standardised(x: np.ndarray) -> list[float]:
    """The encoded matrix as JSON numbers, six decimals (shorter than float32's repr, same model output)."""
    return np.round(x.astype(np.float64), 6).reshape(-1).tolist()


def mlserver_request(x: np.ndarray) -> bytes:
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": standardised(x)}
    body = json.dumps({"inputs": [tensor]}).encode()
    return request_bytes("POST", "/v2/models/digits/infer", body, {"content-type": "application/json"})


def bentoml_request(x: np.ndarray) -> bytes:
    body = json.dumps({"x": np.asarray(standardised(x)).reshape(x.shape).tolist()}).encode()
    return request_bytes("POST", "/predict", body, {"content-type": "application/json"})


# ---- the run ---------------------------------------------------------------------------------------------------


def measure(entrant: Entrant, rows: int, clients: int, seconds: float) -> Result:
    pid = entrant.server.proc.pid
    before = tree_cpu(pid)
    result = load(entrant.label, entrant.server, entrant.payloads[rows], clients, seconds, rows=rows, ours=entrant.ours)
    result.server_cpu = tree_cpu(pid) - before
    return result


def median(results: list[Result], value) -> float:
    return statistics.median(value(r) for r in results)


def show(points: dict[tuple[int, int], dict[str, list[Result]]], labels: list[str]) -> None:
    print(
        f"{'server':<44} {'rows':>4} {'clients':>7} {'req/s':>8} {'rows/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'429':>6} {'err':>5} {'server us':>9}"
    )
    for (rows, clients), by in points.items():
        for label in labels:
            rs = by[label]
            print(
                f"{label:<44} {rows:>4} {clients:>7} {median(rs, lambda r: r.rate):>8,.0f} "
                f"{median(rs, lambda r: r.rows / r.seconds):>9,.0f} {median(rs, lambda r: r.p(0.5)):>8.2f} "
                f"{median(rs, lambda r: r.p(0.99)):>8.2f} {sum(r.refused for r in rs):>6} "
                f"{sum(r.errors for r in rs):>5} {median(rs, lambda r: r.per_request(r.server_cpu)):>9.0f}"
            )
        print()


def verdicts(points: dict[tuple[int, int], dict[str, list[Result]]], ours: list[str], peers: list[str]) -> None:
    met = 0
    for (rows, clients), by in points.items():
        rate = {label: median(by[label], lambda r: r.rate) for label in by}
        p99 = {label: median(by[label], lambda r: r.p(0.99)) for label in by}
        fastest = max(peers, key=rate.__getitem__)
        lowest = min(peers, key=p99.__getitem__)
        parts, ahead = [], True
        for label in ours:
            ahead &= rate[label] > rate[fastest] and p99[label] < p99[lowest]
            parts.append(f"{label.removeprefix('ours, ')} {rate[label] / rate[fastest]:.2f}x, p99 {p99[label]:.1f} ms")
        met += ahead
        print(
            f"{rows:>3} rows, {clients:>3} clients: {'; '.join(parts)}; fastest peer {fastest} "
            f"{rate[fastest]:,.0f} req/s, lowest peer p99 {p99[lowest]:.1f} ms ({lowest}): {'ahead' if ahead else 'MISSED'}"
        )
    print(f"target (ours ahead of every peer with a lower p99, both request shapes): {met} of {len(points)} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per point and server")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; medians are shown")
    parser.add_argument("--clients", default="16,64,256")
    parser.add_argument("--rows", default="1,100", help="rows per request")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of ours, e.g. serve.max_batch=100"
    )
    parser.add_argument("--build", type=Path, default=ROOT / "build" / "peers", help="where the peers' venvs live")
    args = parser.parse_args()
    ladder = [int(c) for c in args.clients.split(",")]
    sizes = [int(r) for r in args.rows.split(",")]

    ort = f"onnxruntime=={version('onnxruntime')}"  # ours' version: the same model cost everywhere
    mlserver_env = environment(args.build, "mlserver", [MLSERVER, ort])
    bentoml_env = environment(args.build, "bentoml", [BENTOML, ort])
    logs = args.build / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    from workbench.ml.encoding import Encoding
    from workbench.ml.runtimes import fast_form, onnx_file_check
    from workbench.storage.sources import read_source

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print("training the digits CNN ...", flush=True)
        store, db = make_models(tmp, ("cnn",))
        run = Path(store) / "runs" / "cnn"
        onnx = tmp / "digits.onnx"
        onnx.write_bytes(fast_form(onnx_file_check((run / "export" / "model.onnx").read_bytes())).SerializeToString())
        digits = read_source("bundled:digits").drop(columns="label")
        encoding = Encoding.from_json(json.loads((run / "prepare" / "encoding.json").read_text()))
        names = list(digits.columns)
        raw, encoded = {}, {}
        for n in sizes:
            batch = digits.sample(n, replace=True, random_state=n)
            raw[n] = {s.name: s.request for s in shape_requests(batch, names)}
            encoded[n] = encoding.apply(batch)

        entrants: list[Entrant] = []
        try:
            ours = start_ours(store, db, "cnn", "serve.workers=1", *args.set)
            entrants.append(Entrant(f"ours, {SHAPES[3]}", ours, {n: raw[n][SHAPES[3]] for n in sizes}, True))
            entrants.append(Entrant(f"ours, {SHAPES[0]}", ours, {n: raw[n][SHAPES[0]] for n in sizes}, True))
            naive = start_naive(str(run))
            entrants.append(Entrant("naive FastAPI, JSON records", naive, {n: raw[n][SHAPES[3]] for n in sizes}))
            for batching in (False, True):
                server = start_mlserver(
                    mlserver_env, onnx, tmp / f"mlserver-{batching}", batching, logs / f"mlserver-{batching}.log"
                )
                label = f"MLServer 1.7.1, batching {'on' if batching else 'off'}"
                entrants.append(Entrant(label, server, {n: mlserver_request(encoded[n]) for n in sizes}))
            for batchable in (False, True):
                server = start_bentoml(bentoml_env, onnx, tmp / "bentoml", batchable, logs / f"bentoml-{batchable}.log")
                label = f"BentoML 1.4.40, batchable {'on' if batchable else 'off'}"
                entrants.append(Entrant(label, server, {n: bentoml_request(encoded[n]) for n in sizes}))

            for entrant in entrants:  # warm-up, and a check that every server answers every request
                for n in sizes:
                    check = measure(entrant, n, 4, 0.5)
                    if not check.latencies:
                        raise SystemExit(f"error: {entrant.label} answered no {n}-row request ({check.errors} errors)")
            points: dict[tuple[int, int], dict[str, list[Result]]] = {
                (n, c): {e.label: [] for e in entrants} for n in sizes for c in ladder
            }
            for repetition in range(args.repeat):
                order = entrants[repetition % len(entrants) :] + entrants[: repetition % len(entrants)]
                for n, c in points:
                    for entrant in order:
                        points[n, c][entrant.label].append(measure(entrant, n, c, args.seconds))
                        time.sleep(1.0)  # let Retry-After sleepers and closing connections settle
                print(f"repetition {repetition + 1} of {args.repeat} done", flush=True)
        finally:
            for server in {id(e.server): e.server for e in entrants}.values():
                server.stop()

    labels = [e.label for e in entrants]
    print()
    print(
        f"medians of {args.repeat}, {args.seconds:g} s per point; one worker process each (ours: serve.workers=1"
        f"{''.join(', ' + s for s in args.set)}); the same digits CNN in "
        f"onnxruntime {version('onnxruntime')}. Ours is sent raw rows and encodes them; the peers (MLServer, "
        "BentoML) are fed the already standardised matrix, so they do less work per request than ours; "
        "naive gets raw rows and standardises them in numpy. 429 and err: all repetitions together; "
        "server us: server CPU per answered request."
    )
    print()
    show(points, labels)
    verdicts(points, labels[:2], labels[2:])
    print(f"cpus: {os.cpu_count()}, load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
