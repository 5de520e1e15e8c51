"""A step's kernel: its transport, a kernel that dies as it starts, and the run that cannot get one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_core.utils import run_sync
from support.cli import ROOT, SMALL

from workbench.run.kernel import KernelsAhead, KernelStartError, WarmKernel
from workbench.tracking.tracker import Tracker

DIES_ONCE = """\
import os, pathlib
mark = pathlib.Path(__file__).with_suffix(".died")
if not mark.exists():
    mark.touch()
    os._exit(3)
"""
DIES_ALWAYS = "import os\nos._exit(3)\n"
HANGS = "import time\ntime.sleep(600)\n"


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    (tmp_path / "dies_once.py").write_text(DIES_ONCE)
    (tmp_path / "dies_always.py").write_text(DIES_ALWAYS)
    (tmp_path / "hangs.py").write_text(HANGS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    (tmp_path / "scratch").mkdir()
    return tmp_path


def test_a_kernel_listens_on_unix_sockets_in_the_scratch_folder(scratch):
    """No TCP ports: a port picked free can be taken by another process before the kernel binds it."""
    kernel = WarmKernel("prepare", ("json",), scratch, scratch / "scratch" / "prepare.kernel.log")
    try:
        kernel.ready()
        info = kernel.km.get_connection_info()
        assert info["transport"] == "ipc"
        assert info["ip"].startswith(str(scratch / "scratch"))
        assert os.path.exists(f"{info['ip']}-{info['shell_port']}")
    finally:
        kernel.shutdown()
    assert "over TCP" not in (scratch / "scratch" / "prepare.kernel.log").read_text()


def test_a_kernel_that_dies_as_it_starts_is_started_once_more(scratch):
    log = scratch / "scratch" / "train.kernel.log"
    kernel = WarmKernel("train", ("dies_once",), scratch, log)
    try:
        kernel.ready()
        assert run_sync(kernel.km.is_alive)()
    finally:
        kernel.shutdown()
    assert (scratch / "dies_once.died").exists()
    assert "[workbench] the kernel died as it started; starting it once more" in log.read_text()


def test_a_kernel_that_dies_at_every_start_is_a_kernel_start_error(scratch):
    kernel = WarmKernel("train", ("dies_always",), scratch, scratch / "scratch" / "train.kernel.log")
    try:
        with pytest.raises(KernelStartError) as caught:
            kernel.ready()
    finally:
        kernel.shutdown()
    assert str(caught.value) == "the train kernel died as it started, twice"


def test_a_kernel_that_never_answers_is_not_waited_for_forever(scratch):
    kernel = WarmKernel("export", ("hangs",), scratch, scratch / "scratch" / "export.kernel.log")
    try:
        with pytest.raises(KernelStartError) as caught:
            kernel.ready(timeout=3)
    finally:
        kernel.shutdown()
    assert str(caught.value) == "the export kernel did not answer within 3 s"
    assert "starting it once more" not in (scratch / "scratch" / "export.kernel.log").read_text()


def test_kernels_boot_ahead_in_step_order_and_a_reused_step_never_gets_one(scratch):
    logs = {name: scratch / "scratch" / f"{name}.kernel.log" for name in ("prepare", "train", "export")}
    ahead = KernelsAhead([(name, ("json",), log) for name, log in logs.items()], scratch)
    try:
        ahead.drop("export")  # the third waits for the second's imports: dropped before it starts
        prepare, train = ahead.take("prepare"), ahead.take("train")
        for kernel in (prepare, train):
            kernel.ready()
            assert run_sync(kernel.km.is_alive)()
            assert set(kernel.times()) == {"launched", "imports_start", "imports_end"}
        with pytest.raises(KernelStartError):
            ahead.take("export")
    finally:
        ahead.close()
    assert not logs["export"].exists()  # never launched
    assert not prepare.km.has_kernel and not train.km.has_kernel


@pytest.mark.e2e
def test_a_run_that_gets_no_kernel_fails_its_step_in_one_line_and_keeps_the_kernel_log(place, tmp_path):
    """Every kernel of this run exits as its interpreter starts (a broken environment, say)."""
    (tmp_path / "sitecustomize.py").write_text(
        'import os, sys\nif "JPY_PARENT_PID" in os.environ:\n'
        '    print("no kernel here: broken site", file=sys.stderr, flush=True)\n    os._exit(7)\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "JPY_PARENT_PID"}
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "run", *place.sets(*SMALL)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: step prepare failed: KernelStartError: the prepare kernel died as it started, twice "
        "(it said: no kernel here: broken site); see logs/prepare.kernel.log in the run folder"
    )
    [run] = Tracker(place.db).list_runs()
    steps = Tracker(place.db).get_run(run["id"])["steps"]
    assert [s["status"] for s in steps] == ["failed", "pending", "pending", "pending"]
    kept = (place.store / "runs" / run["id"] / "logs" / "prepare.kernel.log").read_text()
    assert kept.count("no kernel here: broken site") == 2


@pytest.mark.e2e
def test_plain_papermill_shows_no_kernel_warnings(tmp_path):
    """Under plain papermill (as Airflow runs a notebook) the kernel talks TCP on 127.0.0.1; its
    start warns of that on stderr at every run unless the kernelspec quiets the kernel app's log."""
    import nbformat

    from workbench.run.kernel import QUIET, ensure_kernel

    folder = ensure_kernel()
    assert QUIET in json.loads((Path(folder) / "kernel.json").read_text())["argv"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    notebook.metadata.kernelspec = {"name": "workbench", "display_name": "Python (workbench)", "language": "python"}
    nbformat.write(notebook, tmp_path / "in.ipynb")
    papermill = Path(sys.executable).parent / "papermill"
    proc = subprocess.run(
        [str(papermill), str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "without encryption" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
    assert nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs[0].text == "42\n"
