"""The HTTP app: SageMaker's hosting routes, the Open Inference Protocol v2 and Prometheus metrics.

Every prediction request goes the same way: refused at once when the server is stopping (503) or
holds ``serve.max_queue`` requests already (429 with ``Retry-After``; for a SageMaker Batch Transform,
when the bodies inside and its own would pass ``serve.max_queue`` full ones); its body read up to
``serve.max_body_mb`` (413); its rows parsed and encoded in its own task, so a bad row fails only
its request (4xx with ``{"error": "..."}``, logged once); the encoded rows handed to the
:class:`~workbench.serve.batching.Batcher`, which merges them with other requests' rows into
backend calls. The two prediction routes and ``/ping`` are dispatched before Starlette and speak
ASGI directly: its middleware, router and request and response objects cost more per request than
the rest of the answer. Starlette serves the other routes, and wrong methods on these (405).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workbench.serve.batching import BackendFailed, Batcher
from workbench.serve.encoder import RowEncoder
from workbench.serve.jsonlines import LINES, jsonlines_answer, jsonlines_input, lines_request, negotiate_lines
from workbench.serve.media import RequestError, negotiate, shown
from workbench.serve.metrics import Metrics
from workbench.serve.model import ServedModel
from workbench.serve.open_inference import (
    HEADER_LENGTH,
    VERSION,
    check_outputs,
    infer_answer,
    infer_input,
    model_metadata,
    parse_infer,
)
from workbench.serve.outputs import Scored, scorer
from workbench.serve.sagemaker import invocation_answer, invocation_input
from workbench.serve.transform import execution_parameters

log = logging.getLogger("workbench.serve")

# While the server stops, a kept-alive connection is closed under the client: the 503 tells it not
# to send the next request on this one (uvicorn closes the connection after the answer).
CLOSE = {"Connection": "close"}
STOPPING = RequestError(503, "the server is stopping; send the request to another instance", CLOSE)
RETRY_AFTER = "1"  # seconds; HTTP takes whole seconds, and a full queue drains in well under one
JSON_TYPE = b"application/json"

_negotiate = functools.lru_cache(maxsize=256)(negotiate)  # clients send the same few Accept headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status, headers, media_type="application/json")


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """Send a whole answer; its status, for the metrics."""
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status


async def _send_error(send: Send, exc: RequestError) -> int:
    headers = [(b"content-type", JSON_TYPE)]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    return await _send(send, exc.status, orjson.dumps({"error": exc.message}), headers)


CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}  # RFC 9110: x-gzip is gzip


def inflate(body: bytes, coding: str, limit: int) -> bytes:
    """A gzip or deflate body inflated, refused once it passes ``limit`` bytes (a small body may
    inflate a thousandfold). Every gzip member is read, as ``cat a.gz b.gz`` makes them; a stream
    cut short, or bytes after it, are the client's mistake, not rows to guess at."""
    parts, size, rest = [], 0, body
    while True:
        inflater = zlib.decompressobj(wbits=31 if coding == "gzip" else 15)
        try:
            part = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise RequestError(400, f"the body is not valid {coding} ({exc})") from None
        size += len(part)
        if size > limit or inflater.unconsumed_tail:
            raise RequestError(
                413,
                f"the body inflates to more than serve.max_body_mb ({limit / 2**20:g} MiB); send fewer rows per request",
            )
        if not inflater.eof:
            raise RequestError(400, f"the body's {coding} stream is cut short; send it whole")
        parts.append(part)
        rest = inflater.unused_data
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if coding != "gzip" or not rest.startswith(b"\x1f\x8b"):
            raise RequestError(
                400, f"the body has {len(rest):,} bytes after its {coding} stream; send the stream alone"
            )


class ClientGone(Exception):
    """The client closed the connection before its body arrived: nobody to answer."""


class Loaded:
    """A model ready to answer: its encoder, its batcher and its v2 metadata.

    A request takes the one serving when it is admitted and keeps it to its answer, so a model
    swapped in meanwhile (see :meth:`Service.swap`) never meets rows encoded for another."""

    def __init__(self, model: ServedModel, name: str, batcher: Batcher) -> None:
        self.model = model
        self.target = model.target
        self.encoder = RowEncoder(model.encoding)
        self.batcher = batcher
        self.metadata = orjson.dumps(model_metadata(name, model.encoding, model.backend, model.version))


class Service:
    """The model behind the routes (swapped when the alias it came from moves), the metrics and the
    admission state."""

    def __init__(
        self,
        model: ServedModel,
        *,
        name: str,
        max_batch: int,
        max_delay_ms: float,
        max_queue: int,
        max_body_mb: float,
        workers: int = 1,
        batch: bool = False,
    ) -> None:
        self.name = name
        self.metrics = Metrics()
        self.max_batch, self.max_delay = max_batch, max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.max_body = int(max_body_mb * 2**20)
        self.execution_parameters = orjson.dumps(execution_parameters(workers, max_body_mb))
        # SageMaker Batch Transform: admitted by the bytes inside (as many as max_queue full bodies),
        # not by their number; transform payloads are few and large
        self.batch = batch
        self.room = max_queue * self.max_body
        self.held = 0
        self.draining = False
        self.inflight = 0
        self.serving = self._loaded(model)
        self._retiring: set[asyncio.Task[None]] = set()  # swapped-out batchers answering what they hold

    @property
    def model(self) -> ServedModel:
        return self.serving.model

    def _loaded(self, model: ServedModel) -> Loaded:
        score = scorer(model.predict, model.target)
        batcher = Batcher(
            score, self.max_batch, self.max_delay, self.metrics, Scored.join, self.gauges, model.merge_rows
        )
        return Loaded(model, self.name, batcher)

    def start(self) -> None:
        """Start the batcher (on the event loop the app runs on)."""
        self.serving.batcher.start()
        self.metrics.model_info.labels(self.serving.model.resolved).set(1)

    def swap(self, model: ServedModel) -> None:
        """Serve ``model`` from the next request admitted on; the requests admitted before are
        answered by the model they were admitted to, whose batcher then stops. One assignment on
        the event loop, so each request sees one model or the other, whole."""
        loaded = self._loaded(model)
        loaded.batcher.start()
        old, self.serving = self.serving, loaded
        self.metrics.model_info.labels(old.model.resolved).set(0)
        self.metrics.model_info.labels(model.resolved).set(1)
        # a task of its own: cancelling whoever swapped (a stopping server) must not cut these answers
        task = asyncio.get_running_loop().create_task(old.batcher.close(), name="retiring batcher")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Answer every request admitted, on whichever model it was admitted to, then stop the batchers."""
        self.drain()
        await self.serving.batcher.close()
        if self._retiring:
            await asyncio.gather(*self._retiring)

    def drain(self) -> None:
        """Stop taking requests (readiness false, new requests 503); admitted ones are still answered."""
        if not self.draining:
            log.info("stopping: answering the %d requests admitted, refusing new ones", self.inflight)
        self.draining = True

    # ---- plumbing shared by the prediction routes ------------------------------------------------

    async def _body(self, headers: dict[str, str], receive: Receive) -> bytes:
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            raise RequestError(413, self._too_large(int(declared)))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise RequestError(413, self._too_large(size))
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        coding = headers.get("content-encoding", "identity").strip().lower()
        if coding in ("", "identity"):
            return body
        if coding not in CODINGS:
            raise RequestError(415, f"Content-Encoding {coding!r} is not served; send gzip, deflate or identity")
        return inflate(body, CODINGS[coding], self.max_body)

    def _payload(self, scope: Scope) -> int:
        """The bytes a request will hold, for admission in batch mode: its Content-Length, or the
        most a body may hold where that is not known before it is read (chunked, or compressed)."""
        length = coded = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-encoding":
                coded = value.strip().lower() not in (b"", b"identity")
        if length is None or coded or not length.isdigit():
            return self.max_body
        return min(int(length), self.max_body)

    def _too_large(self, size: int) -> str:
        return (
            f"the body has {size:,} bytes, over serve.max_body_mb ({self.max_body / 2**20:g} MiB); "
            "send fewer rows per request"
        )

    async def _predict(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        live: Loaded,
        encode: Callable[[bytes, dict[str, str]], tuple[np.ndarray, Any]],
        answer: Callable[[Scored, Any], tuple[bytes, list[tuple[bytes, bytes]]]],
        prepare: Callable[[dict[str, str]], None] | None = None,
    ) -> int:
        """Admission, body, encoding in this request's task, the batched backend call, the answer;
        the status sent (0 when the client left before its body came)."""
        if self.draining:
            return await _send_error(send, STOPPING)
        payload = self._payload(scope) if self.batch else 0
        if self.batch and self.held + payload > self.room:
            self.metrics.rejected.inc()
            message = (
                f"{self.held:,} bytes of payloads are in the server and this one brings {payload:,}, over "
                f"serve.max_queue x serve.max_body_mb ({self.room:,} bytes); retry after {RETRY_AFTER} s"
            )
            return await _send_error(send, RequestError(429, message, {"Retry-After": RETRY_AFTER}))
        if not self.batch and self.inflight >= self.max_queue:
            self.metrics.rejected.inc()
            message = f"{self.inflight} requests are waiting (serve.max_queue); retry after {RETRY_AFTER} s"
            return await _send_error(send, RequestError(429, message, {"Retry-After": RETRY_AFTER}))
        batcher = live.batcher
        self.held += payload
        self.inflight += 1
        batcher.arrived()
        submitted = False
        try:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            if prepare is not None:
                prepare(headers)
            x, context = encode(await self._body(headers, receive), headers)
            submitted = True
            scored = await batcher.predict(x)
            body, response_headers = answer(scored, context)
            return await _send(send, 200, body, response_headers)
        except RequestError as exc:
            log.warning("%s %s %d: %s", scope["method"], scope["path"], exc.status, exc.message)
            return await _send_error(send, exc)
        except BackendFailed as exc:
            return await _send_error(send, RequestError(500, str(exc)))
        except ClientGone:
            return 0
        finally:
            if not submitted:
                batcher.gave_up()
            self.held -= payload
            self.inflight -= 1
            if not self.inflight:  # else the gauge follows backend calls and scrapes (see gauges)
                self.metrics.inflight.set(0)

    def gauges(self) -> None:
        """The gauges set to now: at every backend call and every scrape, not per request (with
        several workers each writes its own, and a scrape sums them)."""
        self.metrics.inflight.set(self.inflight)
        self.metrics.queue_rows.set(self.serving.batcher.queued_rows)

    # ---- SageMaker hosting -----------------------------------------------------------------------

    async def ping(self, scope: Scope, receive: Receive, send: Send) -> int:
        """SageMaker takes any 200; a person or a load balancer's log reads what is serving."""
        if self.draining:
            body = orjson.dumps({"status": "stopping"})
            return await _send(send, 503, body, [(b"content-type", JSON_TYPE), (b"connection", b"close")])
        body = orjson.dumps({"status": "ok", "model": self.name, "version": self.serving.model.version})
        return await _send(send, 200, body, [(b"content-type", JSON_TYPE)])

    async def invocations(self, scope: Scope, receive: Receive, send: Send) -> int:
        live = self.serving
        target = live.target

        def encode(body: bytes, headers: dict[str, str]) -> tuple[np.ndarray, Any]:
            lines = lines_request(headers.get("content-type"))
            if lines is not None:  # JSON Lines, answered in JSON Lines unless Accept asks otherwise
                offer = negotiate_lines(headers.get("accept"), lines[0])
                return jsonlines_input(body, live.encoder, lines[1]), offer
            offer = _negotiate(headers.get("accept"))  # a 406 before the rows are encoded
            return invocation_input(body, headers.get("content-type"), live.encoder), offer

        def answer(scored: Scored, offer: Any) -> tuple[bytes, list[tuple[bytes, bytes]]]:
            if offer[0] in LINES:
                return jsonlines_answer(scored, target), [(b"content-type", offer[2].encode())]
            return invocation_answer(scored, target, offer), [(b"content-type", offer[2].encode())]

        return await self._predict(scope, receive, send, live, encode, answer)

    async def execution_parameters_route(self, request: Request) -> Response:
        """What SageMaker Batch Transform's agent asks before its first ``/invocations``
        (see :mod:`workbench.serve.transform`)."""
        return Response(self.execution_parameters, media_type="application/json")

    # ---- Open Inference Protocol v2 --------------------------------------------------------------

    def _known(self, params: dict[str, str], live: Loaded) -> None:
        """The path names this server's model, and where it names a version, the one serving: its
        run id, or ``1`` as before versions were runs (a client asking for ``1`` gets whichever serves)."""
        asked, version = params["name"], params.get("version", VERSION)
        if asked != self.name:
            raise RequestError(404, f"no model {shown(asked)} here; this server serves {self.name!r}")
        if version != VERSION and version != live.model.version:
            has = f"{live.model.version!r} (its run id)" if live.model.run else repr(VERSION)
            raise RequestError(404, f"model {self.name!r} has no version {shown(version)}; it has {has}")

    async def server_metadata(self, request: Request) -> Response:
        from workbench import __version__

        body = {"name": "workbench", "version": __version__, "extensions": ["binary_tensor_data"]}
        return Response(orjson.dumps(body), media_type="application/json")

    async def live(self, request: Request) -> Response:
        return Response(b'{"live":true}', media_type="application/json")

    async def ready(self, request: Request) -> Response:
        if self.draining:
            return Response(b'{"ready":false}', 503, CLOSE, media_type="application/json")
        return Response(b'{"ready":true}', media_type="application/json")

    async def model_metadata(self, request: Request) -> Response:
        live = self.serving
        try:
            self._known(request.path_params, live)
        except RequestError as exc:
            return error_response(exc.status, exc.message)
        return Response(live.metadata, media_type="application/json")

    async def model_ready(self, request: Request) -> Response:
        try:
            self._known(request.path_params, self.serving)
        except RequestError as exc:
            return error_response(exc.status, exc.message)
        body = orjson.dumps({"name": self.name, "ready": not self.draining})
        if self.draining:
            return Response(body, 503, CLOSE, media_type="application/json")
        return Response(body, media_type="application/json")

    async def infer(self, scope: Scope, receive: Receive, send: Send) -> int:
        live = self.serving
        target = live.target

        def prepare(headers: dict[str, str]) -> None:
            self._known(scope["path_params"], live)

        def encode(body: bytes, headers: dict[str, str]) -> tuple[np.ndarray, Any]:
            request = parse_infer(body, headers.get(HEADER_LENGTH), headers.get("content-type"))
            check_outputs(request, target)
            return infer_input(request, live.encoder), request

        def answer(scored: Scored, request: Any) -> tuple[bytes, list[tuple[bytes, bytes]]]:
            body, headers = infer_answer(request, scored, target, self.name, live.model.version)
            return body, [(k.encode(), v.encode()) for k, v in headers.items()]

        return await self._predict(scope, receive, send, live, encode, answer, prepare)

    # ---- metrics -----------------------------------------------------------------------------------

    async def prometheus(self, request: Request) -> Response:
        self.gauges()
        body, kind = self.metrics.exposition()
        return Response(body, headers={"content-type": kind})


class _Counts:
    """The request counters and latency histogram per route and status, looked up once each."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._children: dict[tuple[str, int], tuple[Any, Any, Any]] = {}

    def record(self, route: str, status: int, started: float) -> None:
        children = self._children.get((route, status))
        if children is None:  # labels() takes a lock and builds a key: once per route and status
            m = self.metrics
            errors = m.errors.labels(route, str(status)) if status >= 400 else None
            children = (m.requests.labels(route, str(status)), errors, m.latency.labels(route))
            self._children[(route, status)] = children
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(time.perf_counter() - started)


class _Measured:
    """Counts every answer of the app it wraps by route and status and times it (404s included)."""

    def __init__(self, app: ASGIApp, counts: _Counts) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            route = scope.get("route")
            self.counts.record(getattr(route, "path", "unmatched"), status, started)


Handler = Callable[[Scope, Receive, Send], Awaitable[int]]

INFER_PREFIX, INFER_SUFFIX = "/v2/models/", "/infer"
MODEL_PATHS = ("{name}", "{name}/versions/{version}")  # the protocol's optional version segment
INFER_ROUTES = tuple(INFER_PREFIX + model + INFER_SUFFIX for model in MODEL_PATHS)


class _Front:
    """The busiest requests straight to their handlers, everything else to Starlette.

    A prediction or a health check through Starlette's middleware and router costs about as much
    again as answering it. A handler that raises gets the same one-line 500 as Starlette's routes;
    uvicorn logs the traceback.
    """

    def __init__(self, service: Service, app: ASGIApp, counts: _Counts) -> None:
        self.app = app
        self.counts = counts
        self.service = service

    def _route(self, scope: Scope) -> tuple[str, Handler] | None:
        """The route's name (its metrics label) and handler, for the requests answered here."""
        path, method = scope["path"], scope["method"]
        if method == "POST":
            if path == "/invocations":
                return path, self.service.invocations
            if path.startswith(INFER_PREFIX) and path.endswith(INFER_SUFFIX):
                parts = path[len(INFER_PREFIX) : -len(INFER_SUFFIX)].split("/")
                if len(parts) == 1 and parts[0]:
                    scope["path_params"] = {"name": parts[0]}
                    return INFER_ROUTES[0], self.service.infer
                if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
                    scope["path_params"] = {"name": parts[0], "version": parts[2]}
                    return INFER_ROUTES[1], self.service.infer
        elif method == "GET" and path == "/ping":
            return path, self.service.ping
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._route(scope) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path, handler = route
        status = 500
        try:
            status = await handler(scope, receive, send)
        except Exception as exc:
            body = orjson.dumps({"error": _FAULT.format(type(exc).__name__)})
            with contextlib.suppress(Exception):  # unless the answer had begun: then nothing more can go
                await _send(send, 500, body, [(b"content-type", JSON_TYPE)])
            raise
        finally:
            if status:
                self.counts.record(path, status, started)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    elif exc.status_code == 404:
        message = f"no route {request.url.path}; see /ping, /invocations, /v2/..., /metrics"
    else:
        message = exc.detail
    return error_response(exc.status_code, message, dict(exc.headers or {}))


_FAULT = "internal error ({}); the server log has the traceback"


async def _fault(request: Request, exc: Exception) -> Response:
    # uvicorn logs the traceback: Starlette raises the exception again once this answer is sent
    return error_response(500, _FAULT.format(type(exc).__name__))


class _Asgi:
    """A bound ASGI handler that Starlette's Route takes as an app rather than as a request function."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


def create_app(service: Service, background: Sequence[Callable[[], Awaitable[None]]] = ()) -> ASGIApp:
    """The ASGI app of ``service``; its lifespan starts the batcher and the ``background`` tasks
    (following an alias) and, at shutdown, cancels those and drains the batcher."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        # what was loaded (pandas, onnxruntime, the model) lives until exit: keep it out of the
        # collector's full passes, which would otherwise walk it all every few thousand requests
        gc.collect()
        gc.freeze()
        tasks = [asyncio.get_running_loop().create_task(job()) for job in background]
        try:
            yield
        finally:
            service.drain()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await service.close()

    s = service
    get: list[tuple[str, Callable[[Request], Awaitable[Response]]]] = [
        ("/v2", s.server_metadata),
        ("/v2/health/live", s.live),
        ("/v2/health/ready", s.ready),
        *((f"/v2/models/{model}", s.model_metadata) for model in MODEL_PATHS),
        *((f"/v2/models/{model}/ready", s.model_ready) for model in MODEL_PATHS),
        ("/metrics", s.prometheus),
        ("/execution-parameters", s.execution_parameters_route),
    ]
    # the front answers these three; through Starlette they meet only a wrong method (405)
    routes = [
        Route("/invocations", _Asgi(s.invocations), methods=["POST"]),
        *(Route(route, _Asgi(s.infer), methods=["POST"]) for route in INFER_ROUTES),
        Route("/ping", _Asgi(s.ping), methods=["GET"]),
    ]
    routes += [Route(path, endpoint, methods=["GET"]) for path, endpoint in get]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _fault},
    )
    counts = _Counts(service.metrics)
    return _Front(service, _Measured(app, counts), counts)
