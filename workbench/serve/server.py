"""``workbench serve``: check everything, bind the port, then serve with uvicorn until stopped.

The model is loaded and the port bound before anything listens, so a missing model, a port in
use or a bad value ends the command with one line and a non-zero exit, never a half-started server.
SIGTERM (how SageMaker, ECS and Kubernetes stop a container) and Ctrl-C make readiness false,
refuse new requests with 503, answer every admitted request, and exit 0. With ``serve.workers`` > 1
the port is shared by that many processes, each with its own model and batcher. With
``serve.model=@NAME`` each of them follows the alias (see :mod:`workbench.serve.follow`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from workbench.errors import ParameterError
from workbench.serve.metrics import MULTIPROCESS_DIR

if TYPE_CHECKING:
    from workbench.config.schema import ServeParams
    from workbench.serve.app import Service
    from workbench.serve.model import ServedModel

log = logging.getLogger("workbench.serve")

BACKLOG = 2048
STARTING = 30.0  # seconds: a worker dying sooner after its start is not restarted (it would die again)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to load the same model (picklable: spawned processes get a copy)."""

    model: str  # resolved: a run id for ``latest`` or ``@NAME``, so every worker starts with the same run
    backend: str
    store: str
    db: str
    name: str
    max_batch: int
    max_delay_ms: float
    max_queue: int
    max_body_mb: float
    threads: int
    read_timeout_s: float = 30.0
    access_log: str = "off"
    follow: str = ""  # the alias in serve.model (``@NAME``), followed by each worker; "" for any other model
    reload_s: float = 0.0
    workers: int = 1
    batch: bool = False  # SageMaker Batch Transform (SAGEMAKER_BATCH=true): admission by payload bytes


def bind(host: str, port: int, section: str = "serve") -> socket.socket:
    """The listening socket, bound here so a port in use is one line before anything starts;
    ``section`` names the parameters the address came from (``serve``, ``ui``)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ParameterError(f"{section}.host {host!r} is not an address of this machine ({exc.strerror})") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse a port in TIME_WAIT
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48):  # EADDRINUSE on Linux, macOS
            raise ParameterError(
                f"{section}.port {port} on {host} is in use by another program; stop it or choose another {section}.port"
            ) from exc
        raise ParameterError(
            f"{section}.host {host!r} / {section}.port {port}: cannot listen there ({exc.strerror})"
        ) from exc
    sock.set_inheritable(True)
    return sock


def _logging() -> None:
    """The server's own lines and uvicorn's at INFO, one format; libraries' chatter (alembic) only from WARNING."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    for name in ("workbench.serve", "workbench.serve.access", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.INFO)


def _service(spec: WorkerSpec, model: object | None = None) -> Service:
    from workbench.serve.app import Service
    from workbench.serve.model import ServedModel, load_model

    if not isinstance(model, ServedModel):
        model = load_model(spec.model, spec.backend, spec.store, spec.db, spec.threads)
    return Service(
        model,
        name=spec.name,
        max_batch=spec.max_batch,
        max_delay_ms=spec.max_delay_ms,
        max_queue=spec.max_queue,
        max_body_mb=spec.max_body_mb,
        workers=spec.workers,
        batch=spec.batch,
    )


def _background(service: Service, spec: WorkerSpec) -> list[Callable[[], Awaitable[None]]]:
    """What runs beside the routes: following the alias, when serve.model names one and reload_s is set."""
    if not spec.follow or not spec.reload_s:
        return []
    from workbench.serve.follow import Follower
    from workbench.serve.model import load_model

    def load(run_id: str) -> ServedModel:
        return load_model(run_id, spec.backend, spec.store, spec.db, spec.threads)

    return [Follower(service, spec.follow, spec.reload_s, spec.db, load).run]


def _run(service: Service, sock: socket.socket, spec: WorkerSpec) -> bool:
    """Serve on ``sock`` until a signal, then drain; whether the server started at all."""
    import uvicorn

    from workbench.serve.access import AccessLog
    from workbench.serve.app import create_app
    from workbench.serve.timeouts import read_timeout_protocol

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            service.drain()
            super().handle_exit(sig, frame)

    app = create_app(service, _background(service, spec))
    if spec.access_log != "off":
        app = AccessLog(app, spec.access_log)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,  # serve.access_log writes its own lines (off by default); errors are logged
        lifespan="on",
        proxy_headers=False,  # nothing here reads the client's address
        backlog=BACKLOG,
        timeout_keep_alive=65,  # above the 60 s idle timeout of AWS load balancers, which reuse connections
        http=read_timeout_protocol(spec.read_timeout_s),  # uvicorn's own waits forever for a request's bytes
    )
    # uvicorn raises the signal it caught again after its graceful shutdown, to the handler it found;
    # the default one would make a drained server look killed (exit 143) to SageMaker, ECS or Kubernetes
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server = Server(config)
    server.run(sockets=[sock])
    return server.started


def _worker(spec: WorkerSpec, sock: socket.socket) -> None:
    _logging()
    for sig in (signal.SIGTERM, signal.SIGINT):  # stopped while loading the model: nothing to drain yet
        signal.signal(sig, lambda *_: sys.exit(0))
    if not _run(_service(spec), sock, spec):
        sys.exit(1)


def _supervise(spec: WorkerSpec, sock: socket.socket, workers: int) -> int:
    """Run ``workers`` processes on one socket; restart one that dies; on SIGTERM stop them all."""
    from prometheus_client import multiprocess

    folder = tempfile.mkdtemp(prefix="workbench-serve-metrics-")
    os.environ[MULTIPROCESS_DIR] = folder  # before the workers import prometheus_client
    context = multiprocessing.get_context("spawn")  # a fork would copy onnxruntime's and torch's threads' state
    stopping = False

    def stop(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    started: dict[int, float] = {}

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(spec, sock), name="workbench-serve")
        process.start()
        started[id(process)] = time.monotonic()
        return process

    processes = [start() for _ in range(workers)]
    try:
        while not stopping:
            time.sleep(0.2)
            for i, process in enumerate(processes):
                if process.is_alive() or stopping:
                    continue
                multiprocess.mark_process_dead(process.pid, folder)
                if time.monotonic() - started[id(process)] < STARTING:  # it would fail again: stop
                    log.error("worker %s exited with %s while starting; stopping", process.pid, process.exitcode)
                    stopping = True
                    break
                log.error("worker %s exited with %s; starting another", process.pid, process.exitcode)
                processes[i] = start()
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join()
            multiprocess.mark_process_dead(process.pid, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    failed = [p.exitcode for p in processes if p.exitcode]
    return 1 if failed else 0


def serve(settings: ServeParams, store: str, db: str) -> int:
    """Load the model, bind the port, serve; 0 after a requested stop with every answer sent."""
    from workbench.serve.model import backend_threads, load_model
    from workbench.serve.transform import batch_mode
    from workbench.tracking.aliases import is_alias

    _logging()
    batch = batch_mode(os.environ, settings.max_body_mb)  # a bad SAGEMAKER_MAX_PAYLOAD_IN_MB: before loading
    threads = backend_threads(settings.workers)
    model = load_model(settings.model, settings.backend, store, db, threads)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    follow = settings.model.strip() if is_alias(settings.model.strip()) else ""
    notes = [model.note] if model.note else []
    notes.append(f"requests merged into backend calls of up to {min(model.merge_rows, settings.max_batch)} rows")
    if follow:
        every = f"following {follow} every {settings.reload_s:g} s"
        notes.append(every if settings.reload_s else f"not following {follow} (serve.reload_s=0)")
    if batch.on:
        notes.append(f"SageMaker batch transform: bodies up to {batch.max_body_mb:g} MiB, admitted by size")
    if model.warning:  # before the start line: whoever waits for that line has seen it
        print(f"warning: {model.warning}", file=sys.stderr, flush=True)
    print(
        f"serving {model.source} ({model.target.task}, {len(model.encoding.inputs)} columns) with {model.backend} "
        f"on http://{shown}:{port}" + "".join(f"; {note}" for note in notes),
        flush=True,
    )
    spec = WorkerSpec(
        model=model.resolved,
        backend=settings.backend,
        store=store,
        db=db,
        name=settings.name,
        max_batch=settings.max_batch,
        max_delay_ms=settings.max_delay_ms,
        max_queue=settings.max_queue,
        max_body_mb=batch.max_body_mb,
        threads=threads,
        read_timeout_s=settings.read_timeout_s,
        access_log=settings.access_log,
        follow=follow,
        reload_s=settings.reload_s,
        workers=settings.workers,
        batch=batch.on,
    )
    if settings.workers > 1:
        del model  # each worker loads its own
        return _supervise(spec, sock, settings.workers)
    if not _run(_service(spec, model), sock, spec):
        return 1
    log.info("stopped")
    return 0
