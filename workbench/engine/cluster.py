"""A Dask cluster for one step: ``dask.scheduler`` as ``local:N`` or ``tcp://host:port``.

``local:N`` starts a ``LocalCluster`` of N single-threaded worker processes for the step and closes
it after; ``tcp://`` connects to a cluster someone else runs (EC2, ECS or Kubernetes through
dask-cloudprovider or dask-kubernetes, Coiled). Tasks are plain functions of this package, sent by
reference, so every worker needs the same version of workbench installed.

A task whose worker dies is run again by Dask on another worker (a task that kills
``distributed.scheduler.allowed-failures`` workers in a row fails the step): every task here is
written so that running it twice leaves what running it once does (its outputs are named by its
partition and replaced whole).
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from workbench.config.schema import scheduler_problem
from workbench.errors import ParameterError, WorkbenchError
from workbench.progress import progress as progress_bar

if TYPE_CHECKING:
    from distributed import Client, Future

SCHEDULER_KEY = "dask.scheduler"
LOCAL = re.compile(r"local:([1-9][0-9]{0,3})")
CONNECT_TIMEOUT_S = 10
WORKERS_TIMEOUT_S = 120


def _dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise WorkbenchError("engine: dask needs Dask: pip install 'workbench[dask]' (or set engine: local)") from None
    return distributed


@contextlib.contextmanager
def connect(scheduler: str, workers_timeout: float = WORKERS_TIMEOUT_S) -> Iterator[Client]:
    """A client of the cluster ``scheduler`` names, for the length of the ``with``; a local cluster
    is started for it and closed after. An existing cluster without workers is waited for up to
    ``workers_timeout`` seconds (an adaptive one starts them on demand), then refused in one line."""
    problem = scheduler_problem(scheduler)
    if problem:
        raise ParameterError(f"{SCHEDULER_KEY} {scheduler!r}: {problem}")
    distributed = _dask()
    local = LOCAL.fullmatch(scheduler)
    if local:
        with (
            distributed.LocalCluster(
                n_workers=int(local.group(1)),
                processes=True,
                threads_per_worker=1,
                dashboard_address=":0",  # any free port: several clusters may run on one host
                silence_logs=logging.ERROR,
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            yield client
        return
    _check_scheduler(scheduler)
    client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    with client:
        if not client.scheduler_info().get("workers"):
            try:  # an adaptive cluster may be starting its first worker
                client.wait_for_workers(1, timeout=workers_timeout)
            except TimeoutError:
                raise WorkbenchError(
                    f"{SCHEDULER_KEY} {scheduler}: the scheduler has no workers, and none joined within "
                    f"{workers_timeout:.0f} s; start workers (dask worker {scheduler}) or scale the cluster up"
                ) from None
        yield client


def _check_scheduler(scheduler: str) -> None:
    """One line, within seconds, unless a Dask scheduler answers at ``scheduler``: a name that does
    not resolve, nothing listening (refused at once), or something else on that port (the
    dashboard's 8787, a proxy) that would leave a client waiting or reading garbage."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect as open_comm

    async def identity() -> object:
        comm = await open_comm(scheduler, timeout=CONNECT_TIMEOUT_S)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    host, _, port = scheduler.removeprefix("tcp://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        problem = f"nothing listens there ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    else:
        try:  # in a thread of its own: a notebook's kernel runs an event loop in this one
            with ThreadPoolExecutor(1) as pool:
                answer = pool.submit(lambda: asyncio.run(asyncio.wait_for(identity(), CONNECT_TIMEOUT_S))).result()
        except TimeoutError:
            problem = f"something listens there but does not answer as a Dask scheduler within {CONNECT_TIMEOUT_S} s"
        except Exception as exc:  # broad on purpose: bytes that are not Dask's protocol fail in any way
            problem = f"what listens there does not speak Dask's protocol ({type(exc).__name__})"
        else:
            if isinstance(answer, dict) and answer.get("type") == "Scheduler":
                return
            problem = "what listens there is not a Dask scheduler"
    raise WorkbenchError(
        f"{SCHEDULER_KEY} {scheduler}: {problem}; give the scheduler's address (port 8786 unless set otherwise, "
        "not the dashboard's 8787), start the cluster, or use local:N"
    )


def run_tasks(
    client: Client,
    task: Callable[..., Any],
    calls: Sequence[tuple[Any, ...]],
    *,
    desc: str,
    weights: Sequence[int] | None = None,
    progress: bool = True,
) -> list[Future]:
    """``task(*call)`` for every call on the cluster, waited for; their futures in the calls' order
    (results stay on the workers until gathered or reduced). A bar counts the partitions' rows
    (``weights``) as their tasks finish; the first task that fails for good raises its error here
    (a DataError keeps its one line)."""
    distributed = _dask()
    futures = [client.submit(task, *call, pure=False) for call in calls]
    order = {future.key: i for i, future in enumerate(futures)}
    total = sum(weights) if weights is not None else len(calls)
    unit = "row" if weights is not None else "partition"
    with progress_bar(total=total, desc=desc, unit=unit, enabled=progress) as bar:
        for future in distributed.as_completed(futures):
            if future.status == "error":
                future.result()  # raises the task's own error
            bar.update(weights[order[future.key]] if weights is not None else 1)
    return futures


def merged(earlier: Any, later: Any) -> Any:
    """``earlier.merge(later)`` on a copy: a worker's stored result is never changed in place, so a
    merge that runs again (its worker died) starts from the same state."""
    import copy

    return copy.deepcopy(earlier).merge(later)


def tree_reduce(client: Client, parts: Sequence[Future], merge: Callable[[Any, Any], Any] = merged) -> Any:
    """``merge(merge(p0, p1), merge(p2, p3)) ...`` on the workers, neighbours paired at each level,
    so each merge takes an earlier part and the one after it (partial states merge in order)."""
    level = list(parts)
    while len(level) > 1:
        paired = [client.submit(merge, a, b, pure=False) for a, b in zip(level[::2], level[1::2], strict=False)]
        level = paired + ([level[-1]] if len(level) % 2 else [])
    return level[0].result()


def pick(client: Client, futures: Sequence[Future], index: int) -> list[Future]:
    """The ``index``-th item of each task's result, as futures on the workers (nothing moves here)."""
    import operator

    return [client.submit(operator.itemgetter(index), f, pure=False) for f in futures]
