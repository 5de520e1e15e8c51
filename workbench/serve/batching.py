"""Dynamic batching: concurrent requests share backend calls.

A model called once per request pays its fixed cost (reading every weight, launching every
kernel) per request; called once for many rows it pays it once. Requests encode their own rows (a
bad row fails only its request) and hand the float32 matrix to :class:`Batcher`, whose one loop
merges what is waiting into one call while it stays within ``merge_rows`` rows: the size past which
a bigger call no longer costs less per row (:func:`merge_rows` measures it when a model loads). A
request that size or larger gets a call of its own (split across calls of ``max_batch`` rows only
when larger than that): merged with others it would only wait for their rows and make the call, and
every request queued behind it, longer. While the backend runs (in a thread, so the event loop keeps
reading requests) the next batch forms by itself and starts as soon as the call returns, before its
results are handed out; when the backend is idle, a batch short of ``merge_rows`` with nothing else
queued waits at most ``max_delay`` seconds for requests still being read, and not at all when none
is on its way, so a lone client never waits for company that cannot come. A call expected to take less than handing it
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
MERGE_GAIN = 0.9  # a call twice as large is worth merging for when it costs at most this much per row
MEASURE_UP_TO = 4096  # rows: the largest call merge_rows tries
MEASURE_CALL_S = 0.02  # seconds: nor a call longer than this (a large model gains nothing by then)


def merge_rows(predict: Callable[[np.ndarray], Any], width: int) -> int:
    """The most rows worth merging into one backend call for ``predict`` (rows of ``width`` floats).

    Calls of 1, 2, 4, ... rows are timed in CPU seconds (every thread of the process: a backend's
    own threads count), with the hand-off to the backend thread added to each, until doubling a
    call's rows no longer cuts its cost per row by a tenth. Past that size merging more requests
    saves nothing and only makes each of them, and the ones queued behind, wait longer: for the
    digits CNN in onnxruntime on two cores the cost per row stops falling at a few dozen rows; a
    model whose cost is mostly per call (a tiny one) is merged much further."""
    x = np.random.default_rng(0).standard_normal((MEASURE_UP_TO, width)).astype(np.float32)

    def per_row(rows: int) -> tuple[float, float]:
        predict(x[:rows])  # a first call of a size may prepare (MXNet binds per shape)
        best = wall = float("inf")
        for _ in range(3):
            started, cpu = time.perf_counter(), time.process_time()
            predict(x[:rows])
            best = min(best, time.process_time() - cpu)
            wall = min(wall, time.perf_counter() - started)
        return (INLINE_BELOW + best) / rows, wall

    rows, (cost, wall) = 1, per_row(1)
    while rows < MEASURE_UP_TO and wall < MEASURE_CALL_S:
        (larger, wall) = per_row(2 * rows)
        if larger > MERGE_GAIN * cost:
            break
        rows, cost = 2 * rows, larger
    return rows


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
    """Merges concurrent :meth:`predict` calls into backend calls of at most ``merge_rows`` rows
    (``max_batch`` when not given); a request of more gets calls of its own, ``max_batch`` rows at most.

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
        merge_rows: int | None = None,
    ) -> None:
        self._predict = predict
        self._join = join
        self._on_batch = on_batch  # per backend call rather than per request: gauges of the whole server
        self.max_batch = max_batch
        self.merge_rows = max_batch if merge_rows is None else max(1, min(merge_rows, max_batch))
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

    def _take(self, batch: list[tuple[_Pending, np.ndarray]], rows: int = 0) -> int:
        """Move queued requests into ``batch``, which holds ``rows`` rows already: whole requests while
        it stays within ``merge_rows``, or, into an empty batch, one larger request (up to
        ``max_batch`` of its rows). The rows ``batch`` holds then."""
        moved = 0
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # its client went away before the model saw it
                self._queue.popleft()
                self.queued_rows -= len(item.x) - item.taken
                continue
            left = len(item.x) - item.taken
            if rows + moved + left <= self.merge_rows:
                taking = left
            elif rows + moved == 0:
                taking = min(left, self.max_batch)
            else:
                break
            part = item.x if taking == len(item.x) else item.x[item.taken : item.taken + taking]
            item.taken += taking
            batch.append((item, part))
            moved += taking
            if item.taken < len(item.x):  # split: the rest goes to the next call
                break
            self._queue.popleft()
        self.queued_rows -= moved
        return rows + moved

    async def _gather(self) -> list[tuple[_Pending, np.ndarray]]:
        batch: list[tuple[_Pending, np.ndarray]] = []
        rows = self._take(batch)
        # a request left queued did not fit: waiting could only add to a call it cannot join
        if (
            rows < self.merge_rows
            and not self._queue
            and self.arriving > 0
            and self.max_delay > 0
            and not self._closing
        ):
            self._room = self.merge_rows - rows
            self._wake.clear()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.max_delay)
            finally:
                self._room = None
            self._take(batch, rows)
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
            call = self._submit(following) if self._take(following) else None
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
