"""Progress bars that read well where the stage runs: a terminal, JupyterLab or a papermill report.

In a Jupyter kernel stderr is painted as an error (a red band in JupyterLab and in the HTML
report), so there the bar goes to stdout; in a terminal it stays on stderr, out of piped output.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def in_kernel() -> bool:
    """Whether this process is a Jupyter kernel (JupyterLab, papermill, nbval)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def progress(*, total: int | None, desc: str, unit: str, enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on the stream that suits the place it runs in.

    In a kernel the bar updates at most every few seconds (each update is a stored output line).
    ``unit`` is one thing counted (``row``): the bar reads ``1797 rows`` and ``950 rows/s``, where
    tqdm would glue the word to the number (``1797row``).
    """
    kernel = in_kernel()
    return tqdm(
        total=total,
        desc=desc,
        unit=f" {unit}s",
        file=sys.stdout if kernel else sys.stderr,
        disable=not enabled,
        mininterval=5 if kernel else 2,
        **options,
    )
