"""Following an alias: with ``serve.model=@NAME`` the server serves whichever run the alias names.

Every ``serve.reload_s`` seconds the alias is read from the tracking database. When it names
another run, that run's model is loaded beside the one serving, in a thread, so the event loop goes
on answering meanwhile, and checked as at start (its encoding read, one prediction on a row of
zeros, outputs that fit its target: see :func:`~workbench.serve.model.load_model`). Only then is it
swapped in (:meth:`~workbench.serve.app.Service.swap`): requests admitted before are answered by the
old model, those after by the new one. A model that cannot load is one line in the log and the old
one keeps serving; it is tried again only when the alias is set again (to it, once repaired, or to
another run), not at every check. With several workers, each follows the alias on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from workbench.errors import WorkbenchError
from workbench.ml.runtimes import one_line
from workbench.serve.model import KEY, ServedModel

if TYPE_CHECKING:
    from workbench.serve.app import Service
    from workbench.tracking.tracker import Tracker

log = logging.getLogger("workbench.serve")


class Follower:
    """Moves ``service`` to the run ``alias`` names, checking every ``every`` seconds."""

    def __init__(self, service: Service, alias: str, every: float, db: str, load: Callable[[str], ServedModel]) -> None:
        self.service = service
        self.alias = alias
        self.every = every
        self.db = db
        self.load = load  # a run id to its model, loaded and checked
        self._tracker: Tracker | None = None
        self._failed: tuple[str, str | None] | None = None  # the move whose model failed to load
        self._problem = ""  # why the alias could not be read at the last check, logged once

    async def run(self) -> None:
        """Check every ``every`` seconds until cancelled (the server stopping)."""
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.check()
            except Exception:  # a bug: its traceback in the log, and the model serving goes on
                log.exception("following %s failed; still serving run %s", self.alias, self.service.model.resolved)

    def _pointing(self) -> tuple[str, str | None]:
        from workbench.tracking.aliases import pointing
        from workbench.tracking.tracker import Tracker

        if self._tracker is None:
            self._tracker = Tracker(self.db, create=False)
        return pointing(self._tracker, self.alias, key=KEY)

    async def check(self) -> None:
        """Read the alias; load and swap in the run it names when that is not the one serving."""
        serving = self.service.model.resolved
        try:
            move = await asyncio.to_thread(self._pointing)
        except Exception as exc:  # broad on purpose: a database away or the alias removed keeps the model serving
            problem = _reason(exc)
            if problem != self._problem:
                log.warning("%s; still serving run %s", problem, serving)
            self._problem = problem
            return
        self._problem = ""
        run_id = move[0]
        if run_id == serving or move == self._failed:
            return
        try:
            model = await asyncio.to_thread(self.load, run_id)
        except Exception as exc:  # broad on purpose: whatever stops the new model, the old one goes on
            self._failed = move
            self.service.metrics.reloads.labels("failed").inc()
            log.error(
                "%s %s moved to run %s, which cannot serve (%s); still serving run %s; set the alias again to retry",
                KEY,
                self.alias,
                run_id,
                _reason(exc),
                serving,
            )
            return
        self._failed = None
        old = self.service.model
        self.service.swap(model)
        self.service.metrics.reloads.labels("ok").inc()
        log.info("%s %s moved: serving run %s in place of run %s", KEY, self.alias, run_id, old.resolved)
        if model.warning:
            log.warning("%s", model.warning)
        if model.encoding.inputs != old.encoding.inputs:
            log.warning(
                "run %s takes other columns than run %s did (%s); clients must send those",
                run_id,
                old.resolved,
                ", ".join(model.encoding.inputs[:8]) + (" ..." if len(model.encoding.inputs) > 8 else ""),
            )


def _reason(exc: Exception) -> str:
    """One line: the package's own message, else the exception's type and first line."""
    return str(exc) if isinstance(exc, WorkbenchError) else one_line(exc)
