"""Local scratch: one folder per process for downloads and temporary files, gone when it ends.

Copies of S3 data, split files, a SQL result kept between two passes, executed notebooks and a
kernel's connection file (it holds the kernel's HMAC key) are all scratch. Each process keeps
them in one folder of the temporary directory, ``workbench-<pid>-<start>``, removed when the
process exits. A process killed outright (``kill -9``, a lost machine) cannot remove its own, so
the folder's name says whose it is: the next workbench process that looks (every command does,
and so does a process making its scratch) removes the folders of processes that are gone.

A run's step kernels (and what they start, such as training workers) are told the run's scratch
folder in ``WORKBENCH_SCRATCH`` and keep theirs inside it, so the run's whole scratch goes with it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import shutil
import signal
import string
import tempfile
import time
from pathlib import Path

ENV = "WORKBENCH_SCRATCH"
_NAME = re.compile(r"workbench-(\d+)-([0-9a-z]+)")
_DIGITS = string.digits + string.ascii_lowercase


def _base36(number: int) -> str:
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = _DIGITS[digit] + text
        if not number:
            return text


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, base 36), None when there is no such
    process; ``0`` where the system does not say (then only the pid tells processes apart)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "0"
    except OSError:
        return "0"
    # the command name, in parentheses, may hold spaces: the fields that follow start after it
    return _base36(int(stat.rsplit(")", 1)[1].split()[19]))


def _owner_gone(folder: Path) -> bool:
    match = _NAME.fullmatch(folder.name)
    return bool(match) and _started(int(match[1])) != match[2]


def users(folder: Path) -> list[int]:
    """The processes told to keep their scratch inside ``folder`` (``WORKBENCH_SCRATCH`` in their
    environment): a run's step kernels and what they start. Read from ``/proc``; empty where the
    system has none."""
    marker = f"{ENV}={folder}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if any(v == marker or v.startswith(marker + b"/") for v in environ.split(b"\0")):
            found.append(int(entry.name))
    return [pid for pid in found if pid != os.getpid() and not _zombie(pid)]


def _stop_users(folder: Path) -> None:
    """Kill what a gone process left running in its scratch. A kernel still importing when its run
    is killed outright outlives it for a while and writes into the run's scratch (its sockets, its
    timings), so the folder would come back half removed; and it holds the removed key's secret."""
    stopped = users(folder)
    for pid in stopped:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while stopped and time.monotonic() < deadline:  # killed is not yet gone: its writes may be in flight
        stopped = [pid for pid in stopped if _started(pid) is not None and not _zombie(pid)]
        time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def sweep(where: Path | None = None) -> list[Path]:
    """Remove the scratch folders of processes that are gone, and stop what they left running;
    returns what was removed."""
    where = Path(where or tempfile.gettempdir())
    try:
        found = [entry for entry in where.iterdir() if entry.name.startswith("workbench-")]
    except OSError:
        return []
    removed = []
    for folder in found:
        if folder.is_dir() and not folder.is_symlink() and _owner_gone(folder):
            _stop_users(folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@functools.cache
def root() -> Path:
    """This process's scratch folder, made on first use (inside the run's, for a run's kernels)."""
    parent = Path(os.environ.get(ENV) or tempfile.gettempdir())
    if not parent.is_dir():  # a variable left from a run that has ended
        parent = Path(tempfile.gettempdir())
    sweep()
    pid = os.getpid()
    folder = parent / f"workbench-{pid}-{_started(pid)}"
    folder.mkdir(mode=0o700, exist_ok=True)
    atexit.register(shutil.rmtree, folder, True)
    return folder


def make(prefix: str) -> Path:
    """A new, empty folder in this process's scratch (``prefix`` says what it is for)."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=root()))
