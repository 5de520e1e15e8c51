"""Faults a run must survive: signals, a second process on the same run, a full disk, a lost store."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support.cli import ROOT, copy_run, workbench

from workbench.config.parameters import load
from workbench.tracking.tracker import Tracker


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _epochs_logged(place) -> int:
    if not Path(place.db.removeprefix("sqlite:///")).exists():
        return 0
    tracker = Tracker(place.db)
    runs = tracker.list_runs()
    return len(tracker.get_run(runs[0]["id"])["history"].get("val_accuracy", [])) if runs else 0


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_marks_the_run_interrupted_and_resumable(place, sig):
    """A scheduler's SIGTERM or a closed terminal's SIGHUP is handled like Ctrl-C, not left `running`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "run", *place.sets("train.epochs=200", "train.batch_size=64")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: _epochs_logged(place) >= 1 or proc.poll() is not None, 120, "the first epoch")
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert proc.returncode == 128 + sig, err  # 143 for SIGTERM, 129 for SIGHUP, as a shell reports them
    tracker = Tracker(place.db)
    run = tracker.get_run(tracker.list_runs()[0]["id"])
    assert err.strip().splitlines()[-1] == (
        f"error: run {run['id']} interrupted by {sig.name}; continue it with `workbench run --resume {run['id']}`"
    ), err
    assert "Traceback" not in err
    assert run["status"] == "failed" and run["error"] == f"interrupted by {sig.name}"
    assert [s["status"] for s in run["steps"]] == ["finished", "failed", "pending", "pending"]
    assert (place.store / "runs" / run["id"] / "train" / "checkpoints" / "last.pt").is_file()
    tracker.claim_run(run["id"], "next-process:1:ab")  # released: a resume may take it at once


@pytest.mark.e2e
def test_a_run_held_elsewhere_is_not_resumed_twice(place):
    """A second `--resume` of a run that a live process (here: another machine) executes is refused."""
    params = load(sets=[f"store={place.store}", f"db={place.db}"])
    tracker = Tracker(place.db)
    run_id = tracker.create_run(str(place.store), params.values, params.origin, holder="gpu-node-7:4242:ab")
    tracker.plan_steps(run_id, ["prepare", "train", "export", "validate"])
    result = workbench("run", "--resume", run_id, *place.sets())
    assert result.code == 1
    assert result.stderr.strip() == (
        f"error: run {run_id} is being executed by gpu-node-7:4242 (host:pid); wait for it to end, "
        "or stop that process first"
    )
    assert [s["status"] for s in tracker.get_run(run_id)["steps"]] == ["pending"] * 4


def _copy_run(small_run, tmp_path: Path) -> tuple[Path, str]:
    """The shared small run's store and DB copied, the copy's run recorded in its own store."""
    copy = copy_run(small_run, tmp_path)
    return copy.place.store, copy.place.db


def test_report_reads_the_runs_own_store(small_run, tmp_path):
    store, db = _copy_run(small_run, tmp_path)
    index = store / "runs" / small_run.run_id / "report" / "index.html"
    index.unlink()
    default_store = ROOT / "artifacts" / "runs" / small_run.run_id
    result = workbench("report", small_run.run_id, f"--set=db={db}")
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == f"report {index}" and index.is_file()
    assert not default_store.exists()

    moved = tmp_path / "moved"
    store.rename(moved)
    gone = workbench("report", small_run.run_id, f"--set=db={db}")
    assert gone.code == 1
    assert gone.stderr.strip() == (
        f"error: run {small_run.run_id}: its store {store} holds no runs/{small_run.run_id} (moved or deleted?); "
        "if you moved it, pass the new place with --set store=..."
    )
    told = workbench("report", small_run.run_id, f"--set=db={db}", f"--set=store={moved}")
    assert told.code == 0 and str(moved) in told.stdout


def test_report_survives_a_corrupt_executed_notebook(small_run, tmp_path):
    store, db = _copy_run(small_run, tmp_path)
    folder = store / "runs" / small_run.run_id
    (folder / "02_train.ipynb").write_bytes((folder / "02_train.ipynb").read_bytes()[:500])
    (folder / "report" / "02_train.html").unlink()
    result = workbench("report", small_run.run_id, f"--set=db={db}")
    assert result.code == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"warning: executed notebook {folder / '02_train.ipynb'} is unreadable (")
    index = (folder / "report" / "index.html").read_text()
    assert "is unreadable" in index and 'href="../02_train.ipynb"' in index
    assert not (folder / "report" / "02_train.html").exists() and (folder / "report" / "01_prepare_data.html").is_file()


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of a few hundred KiB (tmpfs), to fill up for real."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(mount)]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_reporting_leaves_the_run_incomplete_and_says_so(small_run, small_disk, tmp_path):
    """Scoring fits on the disk, its report does not: one line with the path, the run recorded as
    incomplete, the predictions kept; once there is room, `workbench report` completes the run."""
    model = small_disk / "runs" / small_run.run_id
    for name in ("prepare/schema.json", "prepare/encoding.json", "export/model.onnx"):
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(small_run.folder / name, model / name)
    db = f"sqlite:///{tmp_path}/tracking.db"
    args = [f"--set=store={small_disk}", f"--set=db={db}", f"--set=score.model_run={small_run.run_id}"]
    result = workbench("run", "--steps", "score", *args, "--set=score.source=bundled:digits")
    assert result.code == 1, result.stderr
    tracker = Tracker(db)
    run = tracker.get_run(tracker.list_runs()[0]["id"])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: run {run['id']}: report not written (cannot write {small_disk}/runs/{run['id']}/")
    assert "No space left on device" in last and f"`workbench report {run['id']}`" in last
    assert "Traceback" not in result.stderr
    assert run["status"] == "incomplete" and run["error"].startswith("report not written")
    assert [s["status"] for s in run["steps"]] == ["finished"]
    assert (small_disk / "runs" / run["id"] / "score" / "predictions.parquet").is_file()
    assert not list(small_disk.rglob("*.part"))

    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    again = workbench("report", run["id"], *args[:2])
    assert again.code == 0, again.stderr
    assert tracker.get_run(run["id"])["status"] == "finished"


@pytest.mark.e2e
def test_make_lab_starts_jupyterlab(tmp_path):
    """`make lab` serves JupyterLab, as root too (JupyterLab refuses root unless told)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token=t --ServerApp.root_dir={ROOT}"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        ["make", "-s", "lab", f"LAB_ARGS={options}", f"VENV={Path(sys.executable).parent.parent}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )

    def answers() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token=t", timeout=2) as page:
                return page.status == 200 and b"JupyterLab" in page.read()
        except OSError:
            return False

    try:
        _wait_for(answers, 90, "JupyterLab to answer")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.e2e
def test_plain_papermill_runs_are_tracked_like_workbench_runs(tmp_path):
    """A scheduler running a notebook with plain papermill leaves a run with status and duration."""
    from workbench.run.kernel import ensure_kernel

    ensure_kernel()
    db = f"sqlite:///{tmp_path}/t.db"
    common = ["-p", "store", str(tmp_path / "store"), "-p", "db", db]
    papermill = str(Path(sys.executable).parent / "papermill")
    notebook = str(ROOT / "notebooks" / "01_prepare_data.ipynb")
    ok = subprocess.run(
        [papermill, notebook, str(tmp_path / "ok.ipynb"), "-p", "run_id", "nightly", "-p", "seed", "5", *common]
    )
    assert ok.returncode == 0
    bad = subprocess.run(
        [
            papermill,
            notebook,
            str(tmp_path / "bad.ipynb"),
            "-p",
            "run_id",
            "broken",
            "-p",
            "source",
            "nowhere.csv",
            *common,
        ],
        capture_output=True,
    )
    assert bad.returncode == 1
    tracker = Tracker(db)
    nightly, broken = tracker.get_run("nightly"), tracker.get_run("broken")
    assert nightly["status"] == "finished" and nightly["launcher"] == "notebook"
    assert nightly["duration_s"] is not None and nightly["steps"][0]["name"] == "prepare"
    assert nightly["steps"][0]["status"] == "finished" and nightly["steps"][0]["duration_s"] > 0
    assert broken["status"] == "failed" and broken["error"].startswith("DataError: data.source: no file at")
    listed = workbench("runs", f"--set=db={db}")
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("nightly"))
    assert row[1] == "finished" and float(row[3]) > 0  # status and seconds, as for `workbench run`
    # its parameters, as the notebook validated them: injected by papermill, or the parameters cell's
    shown = json.loads(workbench("runs", "show", "nightly", "--json", f"--set=db={db}").stdout)
    assert shown["parameters"]["seed"] == 5 and shown["origins"]["seed"] == "papermill"
    assert shown["parameters"]["data.val_fraction"] == 0.15 and shown["origins"]["data.val_fraction"] == "notebook"
    assert shown["parameters"]["store"] == str(tmp_path / "store") and shown["origins"]["store"] == "papermill"
    text = workbench("runs", "show", "nightly", f"--set=db={db}").stdout
    assert ["*", "seed", "5", "papermill"] in [line.split() for line in text.splitlines()]


def test_a_corrupt_tracking_database_is_one_line(tmp_path):
    bad = tmp_path / "tracking.db"
    bad.write_bytes(b"\x00not sqlite\x00" * 500)
    result = workbench("runs", f"--set=db=sqlite:///{bad}")
    assert result.code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: db 'sqlite:///{bad}' is not a usable tracking database (file is not a database); "
        "point db at another file, or move this one aside"
    )
    assert bad.read_bytes() == b"\x00not sqlite\x00" * 500  # nothing written over it


def test_the_report_warns_of_a_model_at_chance(tmp_path):
    from workbench.run.report import render_report
    from workbench.storage import open_store

    tracker = Tracker(f"sqlite:///{tmp_path}/t.db")
    store = open_store(str(tmp_path / "store"))
    run_id = tracker.create_run(store.root, {}, {})
    tracker.log_metrics(run_id, "train", {"val_accuracy": 0.1, "chance_accuracy": 0.102, "near_chance": 1.0})
    index = Path(render_report(run_id, tracker, store)).read_text()
    assert "Warnings" in index and "validation accuracy 0.100 is near chance: always predicting the most" in index
    tracker.log_metrics(run_id, "train", {"val_r2": 0.05, "near_chance": 1.0})
    assert "validation R² 0.050 is near zero" in Path(render_report(run_id, tracker, store)).read_text()
    tracker.log_metrics(run_id, "train", {"val_accuracy": 0.97, "near_chance": 0.0})
    assert "Warnings" not in Path(render_report(run_id, tracker, store)).read_text()
