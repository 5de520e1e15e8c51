"""The one exception family for mistakes a user can make.

The CLI prints ``str(error)`` as a single line and exits non-zero; anything that is not a
``WorkbenchError`` is a bug and keeps its traceback. An error raised because of another one says
so (``raise ... from exc``): ``workbench --traceback`` or ``WORKBENCH_DEBUG=1`` prints that chain
above the line, for a bug report.
"""

from __future__ import annotations

import os


class WorkbenchError(Exception):
    """A user-caused failure; the message names the culprit and what to do."""


class ParameterError(WorkbenchError):
    """A parameter file or ``--set`` override is wrong (unknown key, type, value)."""


class StoreError(WorkbenchError):
    """An artifact is missing or the artifact store cannot be used."""


class DataError(WorkbenchError):
    """The data source is missing, unreadable, or lacks what the pipeline needs."""


class ModelError(WorkbenchError):
    """A model cannot be built, loaded, exported or imported."""


class TrackingError(WorkbenchError):
    """The tracking database cannot be reached or has no such run."""


class StepFailed(WorkbenchError):
    """A pipeline step's notebook raised; carries the step name and the error line."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"step {step} failed: {message}")
        self.step = step


class ReportError(WorkbenchError):
    """A run's steps finished but its report could not be written (a full disk, a lost store)."""


class PublishError(WorkbenchError):
    """The publish database or table cannot take the rows."""


def debugging() -> bool:
    """``WORKBENCH_DEBUG=1``: a user error also shows its traceback and what caused it."""
    return os.environ.get("WORKBENCH_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
