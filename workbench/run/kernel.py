"""The Jupyter kernel named ``workbench`` that every notebook and papermill run uses.

It is this environment's interpreter registered under a fixed name, so a notebook's kernelspec
means the same thing in JupyterLab, under plain papermill and under ``workbench run``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.storage.catalog import suffix
from workbench.storage.scratch import ENV as SCRATCH_ENV

if TYPE_CHECKING:
    from jupyter_client.manager import AsyncKernelManager

KERNEL_NAME = "workbench"
STARTUP_TIMEOUT = 300  # seconds for a kernel to start and import its step's modules on a loaded machine
IPC_PATH_MAX = 100  # a Unix socket's path has room for about 107 bytes


# Under JupyterLab and plain papermill the kernel talks TCP on 127.0.0.1 (`workbench run` uses Unix
# sockets), and ipykernel warns about that at every start, into the notebook's output under
# papermill; the kernel app's own log keeps its errors only. Messages are still signed with the
# connection file's key.
QUIET = "--IPKernelApp.log_level=ERROR"


def ensure_kernel() -> str:
    """Register the kernel in this environment (idempotent); returns its folder."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if spec.argv and spec.argv[0] == sys.executable and QUIET in spec.argv:
            return spec.resource_dir
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    folder = install(kernel_name=KERNEL_NAME, display_name="Python (workbench)", prefix=sys.prefix)
    spec_file = Path(folder) / f"kernel{suffix('json')}"  # Jupyter's kernelspec
    spec_json = json.loads(spec_file.read_text())
    spec_json["argv"].insert(spec_json["argv"].index("-f"), QUIET)
    spec_file.write_text(json.dumps(spec_json, indent=1))
    return folder


class KernelStartError(Exception):
    """A step's kernel never answered: it died as it started, twice, or did not answer in time."""


class WarmKernel:
    """A step's kernel, started while the previous step still runs, its heavy imports done.

    Kernel start (about 2.5 s) and importing torch or mxnet then overlap earlier work instead of
    adding to the run's wall time. Only modules are imported: the notebook's namespace is empty.
    The kernel's own stderr (library banners, a failed start) goes to ``log_path``.

    The kernel talks over Unix sockets in the run's scratch folder, not TCP ports: a port picked
    free when the kernel is launched can be taken by another process before the kernel binds it,
    and the kernel then dies before it answers. That happens when runs, servers and clients share
    a machine.
    """

    def __init__(self, name: str, preload: tuple[str, ...], cwd: Path, log_path: Path) -> None:
        self.name = name
        self.cwd = cwd
        self.log_path = log_path
        # when the imports began and ended, by the kernel's clock: what a profile shows of them
        self.times_path = log_path.parent / f"{name}-kernel.times"
        self.preload = (
            "import importlib as _i, time as _t\n_s = _t.time()\ntry:\n"
            f"    for _m in {list(preload)!r}: _i.import_module(_m)\nfinally:\n"
            f"    with open({str(self.times_path)!r}, 'w') as _f: _f.write(f'{{_s}} {{_t.time()}}')\n"
            "del _i, _m, _t, _s, _f"
        )
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in shutdown()
        self.km = self._start()

    def _start(self) -> AsyncKernelManager:
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        ipc = str(self.log_path.parent / f"{self.name}-kernel")
        transport = {"transport": "ipc", "ip": ipc} if sys.platform != "win32" and len(ipc) + 6 <= IPC_PATH_MAX else {}
        # The async manager, as nbclient would make: with a blocking one, nbclient blocks its
        # event loop waiting for replies and never notices a kernel that died.
        # the connection file holds the kernel's HMAC key: in the run's scratch, gone with it
        connection = str(self.log_path.parent / f"{self.name}-kernel{suffix('json')}")
        km = AsyncKernelManager(kernel_name=KERNEL_NAME, connection_file=connection, **transport)
        self.launched = time.time()
        run_sync(km.start_kernel)(
            cwd=str(self.cwd),
            env={**os.environ, SCRATCH_ENV: str(self.log_path.parent)},  # the kernel's scratch goes with the run's
            stderr=self.log,
            extra_arguments=[f"--IPKernelApp.exec_lines={self.preload}"],
        )
        return km

    def ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until the kernel answers; one that died as it started is started once more, since
        no cell has run in it yet. Raises :class:`KernelStartError` naming the kernel's last words."""
        from jupyter_core.utils import run_sync

        for attempt in (1, 2):
            try:
                run_sync(self._answer)(timeout)
                return
            except RuntimeError as exc:  # jupyter_client's word for both: the kernel died, or is silent
                died = not run_sync(self.km.is_alive)()
                run_sync(self.km.shutdown_kernel)(now=True)
                if not died or attempt == 2:
                    what = "died as it started, twice" if died else f"did not answer within {timeout:g} s"
                    raise KernelStartError(f"the {self.name} kernel {what}{self._last_words()}") from exc
                self.log.write(b"\n[workbench] the kernel died as it started; starting it once more\n")
                self.log.flush()
                self.km = self._start()

    async def _answer(self, timeout: float) -> None:
        client = self.km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=timeout)
        finally:
            client.stop_channels()

    def imported(self, stop: threading.Event, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until the kernel has imported its step's modules (or failed to), died, or
        ``timeout`` passed, or ``stop`` is set."""
        from jupyter_core.utils import run_sync

        deadline = time.monotonic() + timeout
        while not stop.wait(0.05):
            if self.times_path.exists() or time.monotonic() > deadline:
                return
            try:
                if not run_sync(self.km.is_alive)():
                    return
            except Exception:  # shut down meanwhile by the step that ran in it
                return

    def _last_words(self) -> str:
        self.log.flush()
        said = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        said = [line for line in said if not line.startswith("[workbench]")]
        return f" (it said: {said[-1][:200]})" if said else ""

    def times(self) -> dict[str, float]:
        """When the kernel was launched and, once it has imported its step's modules, when those
        imports began and ended (epoch seconds)."""
        found = {"launched": self.launched}
        try:
            start, end = (float(v) for v in self.times_path.read_text().split())
        except (OSError, ValueError):
            return found
        return found | {"imports_start": start, "imports_end": end}

    def shutdown(self) -> None:
        from jupyter_core.utils import run_sync

        if self.km.has_kernel:
            run_sync(self.km.shutdown_kernel)(now=True)
        self.log.close()


class KernelsAhead:
    """The kernels of a run's steps, booted ahead of their steps in step order.

    The first two start at once (the first step is often short, and the second's imports are
    the heaviest); each later one when the kernel before it has imported its modules. So by the
    time a short step ends, the kernel of the one after it is usually warm too, whereas booting
    only the next step's kernel left a step that follows a short one waiting for its imports,
    and at most two kernels boot at once: on a small machine, booting kernels compete with the
    running step for its cores. A step that turns out to be reused gives its kernel up
    (:meth:`drop`); the others are booted all the same.
    """

    def __init__(self, steps: Sequence[tuple[str, tuple[str, ...], Path]], cwd: Path) -> None:
        """``steps``: each step's name, the modules its kernel imports and its kernel log."""
        self._steps = list(steps)
        self._cwd = cwd
        self._kernels: dict[str, WarmKernel] = {}
        self._failed: dict[str, BaseException] = {}
        self._dropped: set[str] = set()
        self._launched = {name: threading.Event() for name, _, _ in self._steps}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._boot, name="kernels ahead", daemon=True)
        self._thread.start()

    def _boot(self) -> None:
        try:
            before: WarmKernel | None = None  # the kernel launched last
            for index, (name, preload, log_path) in enumerate(self._steps):
                if index >= 2 and before is not None:  # the second starts beside the first
                    before.imported(self._stop)
                if self._stop.is_set() or name in self._dropped:
                    continue
                try:
                    kernel = WarmKernel(name, preload, self._cwd, log_path)
                except Exception as exc:  # raised where the step asks for its kernel
                    self._failed[name] = exc
                    self._launched[name].set()
                    continue
                with self._lock:
                    dropped = name in self._dropped
                    if not dropped:
                        self._kernels[name] = kernel
                self._launched[name].set()
                if dropped:
                    kernel.shutdown()
                else:
                    before = kernel
        finally:  # nobody waits forever for a kernel this thread will not launch
            for launched in self._launched.values():
                launched.set()

    def take(self, name: str) -> WarmKernel:
        """The step's kernel, launched (waits until it is); it may still be importing."""
        self._launched[name].wait()
        if name in self._failed:
            raise self._failed[name]
        with self._lock:
            kernel = self._kernels.get(name)
        if kernel is None:
            raise KernelStartError(f"the {name} kernel was not started (the run is stopping)")
        return kernel

    def drop(self, name: str) -> None:
        """The step will not run (it is reused): shut its kernel down, or never start it."""
        with self._lock:
            self._dropped.add(name)
            kernel = self._kernels.pop(name, None)
        if kernel:
            kernel.shutdown()

    def close(self) -> None:
        """Stop booting and shut every kernel down (those that ran a step are already down)."""
        self._stop.set()
        self._thread.join()
        for kernel in self._kernels.values():
            kernel.shutdown()
