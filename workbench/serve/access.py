"""The access log: one line per answered request, off unless ``serve.access_log`` asks for it.

Errors are always logged; a line for every success costs about as much as answering a small
request, so it is a choice: ``common`` (Common Log Format, what log tools parse) or ``json`` (one
object a line, for CloudWatch Logs Insights or a log shipper).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("workbench.serve.access")


class AccessLog:
    """Wraps the app: the status and body size of each answer, logged once it is sent."""

    def __init__(self, app: ASGIApp, fmt: str) -> None:
        self.app, self.fmt = app, fmt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, stamp = time.perf_counter(), datetime.now(UTC)
        status, size = 500, 0

        async def sent(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            log.info(self.line(scope, status, size, stamp, time.perf_counter() - started))

    def line(self, scope: Scope, status: int, size: int, stamp: datetime, seconds: float) -> str:
        client = (scope.get("client") or ("-",))[0]
        path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        target = f"{path}?{query}" if query else path
        if self.fmt == "json":
            return orjson.dumps(
                {
                    "time": stamp.isoformat(timespec="milliseconds"),
                    "client": client,
                    "method": scope["method"],
                    "path": target,
                    "status": status,
                    "bytes": size,
                    "ms": round(seconds * 1000, 3),
                }
            ).decode()
        request = f"{scope['method']} {target} HTTP/{scope.get('http_version', '1.1')}"
        return f'{client} - - [{stamp.strftime("%d/%b/%Y:%H:%M:%S %z")}] "{request}" {status} {size or "-"}'
