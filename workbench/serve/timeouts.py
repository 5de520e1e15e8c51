"""A read timeout for each request, which uvicorn does not have.

uvicorn times out an idle kept-alive connection, but not one that is in the middle of sending a
request: a client that sends its headers a byte at a time, or stops halfway through its body, holds
a connection (a file descriptor, a parser, a slot of the kernel's backlog) for as long as it likes;
300 such connections stayed open for a minute and more. Here a request's headers must arrive within
``serve.read_timeout_s`` of its first byte, and each part of its body within that long of the last;
a connection that is slower is answered 408 and closed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _answer_408(seconds: float) -> bytes:
    body = json.dumps({"error": f"the request was not sent within serve.read_timeout_s ({seconds:g} s)"}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def read_timeout_protocol(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol (httptools) with a read timeout of ``seconds`` for every request."""
    answer = _answer_408(seconds)

    class ReadTimeoutProtocol(HttpToolsProtocol):
        _read_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()  # a connection that never sends a request is no kept-alive one yet

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # the headers, all of them, within the timeout of the first byte

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._arm()

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            self._arm()  # each part of the body within the timeout of the last one

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()  # read whole: answering takes what it takes, idling is keep-alive's

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._read_timer = self.loop.call_later(seconds, self._timed_out)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _timed_out(self) -> None:
            self._read_timer = None
            if self.transport.is_closing():
                return
            cycle: Any = self.cycle
            if cycle is None or cycle.response_complete or not cycle.response_started:  # no answer begun for it
                self.transport.write(answer)
            self.transport.close()

    return ReadTimeoutProtocol
