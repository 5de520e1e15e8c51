"""Scratch (S3 copies, split files, kernel connection files) lives in one folder per process and
run, gone when it ends; the folder of a process killed outright is removed by the next command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support.cli import ROOT, workbench

from workbench.storage import scratch
from workbench.storage.sources import read_source


def _gone_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_sweep_removes_the_folders_of_ended_processes_only(tmp_path):
    me = os.getpid()
    mine = tmp_path / f"workbench-{me}-{scratch._started(me)}"
    reused = tmp_path / f"workbench-{me}-zz0"  # this pid, but another process's start: the pid was reused
    dead = tmp_path / f"workbench-{_gone_pid()}-1a2b"
    others = [tmp_path / "workbench-pg-abc", tmp_path / "workbench-source-x1y2", tmp_path / "unrelated"]
    for folder in (mine, reused, dead, *others):
        (folder / "inner").mkdir(parents=True)
        (folder / "inner" / "kernel.json").write_text("{}")
    assert sorted(scratch.sweep(tmp_path)) == sorted([reused, dead])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, *others))


def test_a_process_keeps_its_scratch_in_one_folder_gone_when_it_exits(tmp_path):
    code = (
        "from workbench.storage import scratch; a = scratch.make('source'); b = scratch.make('split');"
        "(a / 'x.csv').write_text('a'); print(scratch.root(), a.parent == b.parent == scratch.root())"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path), "WORKBENCH_SCRATCH": ""}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    folder, same = proc.stdout.split()
    assert proc.returncode == 0 and same == "True" and Path(folder).parent == tmp_path
    assert list(tmp_path.iterdir()) == []
    inside = tmp_path / "run"  # a run's kernel keeps its scratch inside the run's folder
    inside.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", "from workbench.storage import scratch; print(scratch.root())"],
        env={**env, "WORKBENCH_SCRATCH": str(inside)},
        capture_output=True,
        text=True,
    )
    assert Path(proc.stdout.strip()).parent == inside


@pytest.fixture
def temp_dir(tmp_path) -> dict[str, str]:
    """An environment whose temporary directory is a folder of the test's own."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    return {"TMPDIR": str(folder), "WORKBENCH_SCRATCH": ""}


@pytest.mark.e2e
def test_finished_and_failed_runs_leave_nothing_in_the_temp_dir(s3_server, tmp_path, temp_dir):
    """An S3 source copied down, splits streamed from an S3 store, a failing step: nothing stays."""
    bucket = f"wb-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)
    read_source("bundled:digits").to_csv(tmp_path / "digits.csv", index=False)
    client.upload_file(str(tmp_path / "digits.csv"), bucket, "in/digits.csv")
    where = [
        f"--set=store=s3://{bucket}/store",
        f"--set=db=sqlite:///{tmp_path}/tracking.db",
        f"--set=data.source=s3://{bucket}/in/digits.csv",
    ]
    small = ["--set=train.epochs=1", "--set=train.max_memory_gb=1e-6"]  # 1e-6 GiB: the splits stream
    finished = workbench("run", "--steps", "prepare,train", *where, *small, env=temp_dir)
    assert finished.code == 0, finished.stderr
    assert (
        "streamed"
        in client.get_object(Bucket=bucket, Key=_key(finished, "train/environment.json"))["Body"].read().decode()
    )
    assert _left(temp_dir) == []
    failed = workbench("run", "--steps", "prepare", *where, "--set=data.target=nosuch", env=temp_dir)
    assert failed.code == 1 and "data.target 'nosuch' is not a column" in failed.stderr
    assert _left(temp_dir) == []


def _left(temp_dir: dict[str, str]) -> list[Path]:
    """What is left in the temp dir but torch's compile cache folder (``torchinductor_<user>``), which
    torch makes on import and which holds no data."""
    return [p for p in Path(temp_dir["TMPDIR"]).iterdir() if not p.name.startswith("torchinductor_")]


def _key(result, name: str) -> str:
    return f"store/runs/{result.stdout.split()[1]}/{name}"


def _kernels_of(temp: Path, pid: int) -> list[int]:
    """A run's kernels, once one has written its connection file (the key) and is running."""
    for folder in temp.glob(f"workbench-{pid}-*"):
        if list(folder.glob("run-*/*-kernel.json")):
            return scratch.users(folder)
    return []


@pytest.mark.e2e
def test_a_killed_run_leaves_an_orphan_the_next_command_removes(tmp_path, temp_dir):
    """kill -9 leaves the run's scratch with its kernel's connection file (the kernel's HMAC key)
    and its kernels running; the next workbench command finds its process gone, stops what runs
    in its scratch and removes it."""
    db = f"sqlite:///{tmp_path}/tracking.db"
    temp = Path(temp_dir["TMPDIR"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "run", f"--set=store={tmp_path}/store", f"--set=db={db}"],
        cwd=ROOT,
        env={**os.environ, **temp_dir},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not _kernels_of(temp, proc.pid):  # a kernel with its key, running
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its kernel started"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    orphan = next(temp.glob(f"workbench-{proc.pid}-*"))
    assert list(orphan.glob("run-*/*-kernel.json"))  # the key is still on disk after kill -9
    listed = workbench("runs", f"--set=db={db}", env=temp_dir)
    assert listed.code == 0, listed.stderr
    assert not orphan.exists()
    assert not scratch.users(orphan), "processes of the killed run still running"
