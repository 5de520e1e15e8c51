"""Dynamic batching: concurrent requests share backend calls.

A model called once per request pays its fixed cost (reading every weight, launching every
kernel) per request; called once for many rows it pays it once. Requests encode their own rows (a
bad row fails only its request) and hand the float32 matrix to :class:`Batcher`, whose one loop
concatenates what is waiting into calls of at most ``max_batch`` rows, splitting a larger request
across calls. While the backend runs (in a thread, so the event loop keeps reading requests) the
next batch forms by itself and starts as soon as the call returns, before its results are handed
out; when the backend is idle, a batch short of ``max_batch`` waits at most
``max_delay`` seconds for requests still being read, and not at all when none is on its way, so a
lone client never waits for company that cannot come. A call expected to take less than handing it
to the thread and back (a few rows of a small model) runs on the event loop itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.serve.metrics import Metrics

log = logging.getLogger("workbench.serve")

INLINE_BELOW = 100e-6  # seconds: about what a round trip through the backend thread costs


def _concatenate(parts: Sequence[Any]) -> Any:
    return np.concatenate(parts)


@dataclass(eq=False)
class _Pending:
    """One request's rows, the part already sent to the backend, and where its answer goes."""

    x: np.ndarray
    future: asyncio.Future[Any]
    taken: int = 0
    parts: list[Any] = field(default_factory=list)


@dataclass(eq=False)
class _Call:
    """A batch handed to the backend: its requests' parts, its rows, and its outputs to come."""

    batch: list[tuple[_Pending, np.ndarray]]
    rows: int
    outputs: asyncio.Future[Any]


class BackendFailed(Exception):
    """The backend raised on a batch: a fault of the server or the model, answered 500."""


class Batcher:
    """Merges concurrent :meth:`predict` calls into backend calls of at most ``max_batch`` rows.

    ``predict`` maps a float32 matrix to per-row results that slice like an array; ``join`` puts the
    results of a request split across calls back together.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], Any],
        max_batch: int,
        max_delay: float,
        metrics: Metrics | None = None,
        join: Callable[[Sequence[Any]], Any] = _concatenate,
        on_batch: Callable[[], None] | None = None,
    ) -> None:
        self._predict = predict
        self._join = join
        self._on_batch = on_batch  # per backend call rather than per request: gauges of the whole server
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.metrics = metrics
        self.arriving = 0  # requests admitted and still being read or encoded: worth waiting for
        self.queued_rows = 0
        self._per_row: float | None = None  # seconds per row of recent calls; None until measured
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._room: int | None = None  # while a batch waits for more: rows it still takes, else None
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def close(self) -> None:
        """Answer everything queued and every request still arriving (admitted, its body being read),
        then stop: a request admitted before shutdown, or before its model was swapped out, gets its
        answer."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    def arrived(self) -> None:
        self.arriving += 1

    def gave_up(self) -> None:
        """A request admitted with :meth:`arrived` ends without rows for the model (it was refused)."""
        self.arriving -= 1
        self._nudge()

    def _nudge(self) -> None:
        """Wake the loop when it has something to do: work while idle, or a waiting batch that is full
        or has no one left to wait for (waking it per request would cost more than the batching saves)."""
        if self._room is None or self.arriving == 0 or self.queued_rows >= self._room:
            self._wake.set()

    async def predict(self, x: np.ndarray) -> Any:
        """The results for ``x``, computed in whichever backend calls its rows fall into.

        The caller announced itself with :meth:`arrived`; this ends its arrival."""
        self.arriving -= 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(x, future))
        self.queued_rows += len(x)
        self._nudge()
        return await future

    def _take(self, room: int, batch: list[tuple[_Pending, np.ndarray]]) -> int:
        """Move up to ``room`` queued rows into ``batch``; the rows moved."""
        moved = 0
        while self._queue and moved < room:
            item = self._queue[0]
            if item.future.done():  # its client went away before the model saw it
                self._queue.popleft()
                self.queued_rows -= len(item.x) - item.taken
                continue
            rows = min(room - moved, len(item.x) - item.taken)
            part = item.x if item.taken == 0 and rows == len(item.x) else item.x[item.taken : item.taken + rows]
            item.taken += rows
            batch.append((item, part))
            moved += rows
            if item.taken == len(item.x):
                self._queue.popleft()
        self.queued_rows -= moved
        return moved

    async def _gather(self) -> list[tuple[_Pending, np.ndarray]]:
        batch: list[tuple[_Pending, np.ndarray]] = []
        rows = self._take(self.max_batch, batch)
        if rows < self.max_batch and self.arriving > 0 and self.max_delay > 0 and not self._closing:
            self._room = self.max_batch - rows
            self._wake.clear()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.max_delay)
            finally:
                self._room = None
            rows += self._take(self.max_batch - rows, batch)
        return batch

    def _timed(self, x: np.ndarray) -> Any:
        started = time.perf_counter()
        outputs = self._predict(x)
        per_row = (time.perf_counter() - started) / len(x)
        self._per_row = per_row if self._per_row is None else 0.9 * self._per_row + 0.1 * per_row
        return outputs

    def _submit(self, batch: list[tuple[_Pending, np.ndarray]]) -> _Call:
        """Start the backend on ``batch``: in its thread, or here when that costs less than the trip."""
        x = batch[0][1] if len(batch) == 1 else np.concatenate([part for _, part in batch])
        if self.metrics:
            self.metrics.batch_rows.observe(len(x))
            self.metrics.batch_requests.observe(len(batch))
        if self._on_batch is not None:
            self._on_batch()
        loop = asyncio.get_running_loop()
        if self._per_row is not None and self._per_row * len(x) < INLINE_BELOW:
            outputs: asyncio.Future[Any] = loop.create_future()
            try:
                outputs.set_result(self._timed(x))
            except Exception as exc:  # broad on purpose: raised again where the call is awaited
                outputs.set_exception(exc)
        else:
            outputs = loop.run_in_executor(self._executor, self._timed, x)
        return _Call(batch, len(x), outputs)

    async def _run(self) -> None:
        call: _Call | None = None
        while True:
            if call is None:
                if not self._queue:
                    if self._closing and not self.arriving:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                batch = await self._gather()  # the backend is idle: a short batch may wait for company
                if not batch:
                    continue
                call = self._submit(batch)
            try:
                outputs = await call.outputs
            except Exception as exc:  # broad on purpose: a failing backend fails its batch's requests, not the server
                log.exception("the backend failed on a batch of %d rows", call.rows)
                failure = BackendFailed(f"the model failed on this batch ({type(exc).__name__}: {exc})")
                for item, _ in call.batch:
                    if not item.future.done():
                        item.future.set_exception(failure)
                call = None
                continue
            # what queued while the backend ran goes to it before this batch is answered, so the
            # backend does not sit idle while the event loop hands out results
            done, following = call, []
            call = self._submit(following) if self._take(self.max_batch, following) else None
            self._answer(done, outputs)

    def _answer(self, call: _Call, outputs: Any) -> None:
        if self.metrics:
            self.metrics.rows.inc(call.rows)
        at = 0
        for item, part in call.batch:
            piece = outputs[at : at + len(part)]
            at += len(part)
            if item.future.done():  # its client went away
                continue
            if len(part) == len(item.x):
                item.future.set_result(piece)
                continue
            item.parts.append(piece)  # a request split across calls: answered with its last part
            if sum(len(p) for p in item.parts) == len(item.x):
                item.future.set_result(self._join(item.parts))
