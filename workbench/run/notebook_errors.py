"""A user error in a notebook shows as its one line, as the CLI prints it; a bug keeps its traceback.

``open_step`` installs :func:`show_user_errors_briefly` in the IPython shell that runs the notebook
(JupyterLab, papermill, nbval, a terminal IPython): from then on a
:class:`~workbench.errors.WorkbenchError` raised by a cell shows as
``ParameterError: train.schedule in notebook parameter schedule='cosin': ...``, not as a chained
traceback through pydantic's internals with the useful line at the bottom. Any other exception is a
bug and shows its whole traceback, as always. ``WORKBENCH_DEBUG=1`` keeps the traceback of user
errors too, as it does for the CLI. The cell still fails: papermill stops there and the step is
recorded as failed with that line.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from workbench.errors import WorkbenchError, debugging

RED, PLAIN = "\x1b[31m", "\x1b[0m"  # how IPython colours an exception's name


def show_user_errors_briefly() -> None:
    """Show a user error raised by a cell of this IPython shell as its one line (no shell: nothing)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or debugging():
        return
    shell.set_custom_exc((WorkbenchError,), _show)


def one_line(error: BaseException) -> str:
    """The line a notebook shows for a user error: its class and its message."""
    return f"{RED}{type(error).__name__}{PLAIN}: {error}"


def _show(
    shell: Any, etype: type[BaseException], value: BaseException, tb: TracebackType | None, tb_offset: Any = None
) -> list[str]:
    """IPython's custom exception handler: the error shown as the one line its message is. The
    shell's own display sends it (the kernel as an ``error`` output), so the cell reads as failed."""
    shown = [one_line(value)]
    shell._showtraceback(etype, value, shown)
    return shown
