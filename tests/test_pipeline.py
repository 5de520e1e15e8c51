"""`workbench run` end to end, through the real CLI, papermill and kernels."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest
from support.cli import FEW, ROOT, SMALL, workbench

from workbench.run.pipeline import select_steps
from workbench.tracking.tracker import Tracker

pytestmark = pytest.mark.e2e

STEPS = select_steps(None)  # what `workbench run` runs by default


def test_run_prints_id_and_report(small_run):
    lines = small_run.result.stdout.splitlines()
    assert lines[0] == f"run {small_run.run_id} finished"
    assert lines[1] == f"report {small_run.folder / 'report' / 'index.html'}"
    assert "[4/4] validate  done" in small_run.result.stderr


def test_run_folder_holds_notebooks_artifacts_and_report(small_run):
    folder = small_run.folder
    for step in STEPS:
        nb = nbformat.read(folder / step.notebook, as_version=4)
        assert nb.cells[2]["metadata"]["tags"] == ["injected-parameters"]
        assert f'run_id = "{small_run.run_id}"' in nb.cells[2]["source"]
        assert (folder / "report" / step.notebook.replace(".ipynb", ".html")).stat().st_size > 10_000
    for key in (
        "prepare/train.parquet",
        "train/model.pth",
        "train/checkpoints/last.pt",
        "export/model.onnx",
        "export/reference.npz",
        "validate/parity.json",
    ):
        assert (folder / key).is_file(), key
    index = (folder / "report" / "index.html").read_text()
    assert "parity PASS" in index and 'src="../train/curves.png"' in index and 'href="02_train.html"' in index


def test_tracking_db_has_the_whole_run(small_run):
    run = Tracker(small_run.place.db).get_run(small_run.run_id)
    assert run["status"] == "finished"
    assert [(s["name"], s["status"]) for s in run["steps"]] == [(s.name, "finished") for s in STEPS]
    assert all(s["duration_s"] > 0 for s in run["steps"])
    assert run["parameters"]["train.epochs"] == 3 and run["parameters"]["store"] == str(small_run.place.store)
    assert run["metrics"]["parity_pass"] == 1.0 and run["metrics"]["rows_total"] == 1797
    onnx = next(a for a in run["artifacts"] if a["key"].endswith("export/model.onnx"))
    assert hashlib.sha256((small_run.folder / "export/model.onnx").read_bytes()).hexdigest() == onnx["sha256"]
    assert {a["key"].rsplit("/", 1)[-1] for a in run["artifacts"]} >= {s.notebook for s in STEPS}


def test_runs_list_and_show(small_run):
    listed = workbench("runs", *small_run.place.sets())
    assert listed.code == 0 and small_run.run_id in listed.stdout and "PASS" in listed.stdout
    shown = workbench("runs", "show", small_run.run_id, "--json", *small_run.place.sets())
    data = json.loads(shown.stdout)
    assert data["status"] == "finished" and data["parameters"]["train.epochs"] == 3
    assert (
        data["metrics"]["mxnet_argmax_agreement"] == 1.0
        and data["metrics"]["onnxruntime_loaded"] == 1.0
        and data["artifacts"]
    )
    human = workbench("runs", "show", small_run.run_id, *small_run.place.sets())
    assert "validate" in human.stdout and "parity_pass" in human.stdout


def test_report_rerenders(private_run):
    index = private_run.folder / "report" / "index.html"
    index.unlink()  # a copy: the shared small_run keeps its report
    result = workbench("report", private_run.run_id, *private_run.place.sets())
    assert result.code == 0 and index.is_file() and str(index) in result.stdout


def test_unknown_run_is_one_line(small_run):
    result = workbench("runs", "show", "no-such-run", *small_run.place.sets())
    assert result.code == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: no run 'no-such-run'")


def _runs(place) -> list:
    return Tracker(place.db).list_runs()


def test_bad_parameter_fails_before_any_run(place):
    result = workbench("run", *place.sets("train.epochs=lots"))
    assert result.code == 2
    assert result.stderr == "error: train.epochs in --set train.epochs=lots: expected an integer, got 'lots'\n"
    assert not place.store.exists()
    assert _runs(place) == []


def test_bad_parameter_file_names_the_file(place, tmp_path):
    layer = tmp_path / "layer.yaml"
    layer.write_text("train:\n  devcie: cpu\n")
    result = workbench("run", "-p", "parameters/default.yaml", "-p", str(layer), *place.sets())
    assert result.code == 2
    assert result.stderr == f"error: unknown parameter 'train.devcie' in {layer}; did you mean train.device?\n"


def test_missing_data_fails_the_first_step_and_keeps_its_notebook(place, tmp_path):
    missing = tmp_path / "nowhere.csv"
    result = workbench("run", *place.sets(f"data.source={missing}"))
    assert result.code == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: step prepare failed: DataError: data.source: no file at {missing}; check the path or use bundled:digits"
    )
    [run] = _runs(place)
    detail = Tracker(place.db).get_run(run["id"])
    assert detail["status"] == "failed" and "DataError" in detail["error"]
    assert [s["status"] for s in detail["steps"]] == ["failed", "pending", "pending", "pending"]
    executed = nbformat.read(place.store / "runs" / run["id"] / "01_prepare_data.ipynb", as_version=4)
    assert any(o.get("ename") == "DataError" for c in executed.cells for o in c.get("outputs", []))
    assert (place.store / "runs" / run["id"] / "report" / "index.html").is_file()


def test_traceback_shows_the_failing_cell_behind_the_one_line(place, tmp_path):
    """For a bug report: the notebook cell's traceback (the cause), with the one line still last."""
    missing = tmp_path / "nowhere.csv"
    result = workbench("--traceback", "run", "--steps", "prepare", *place.sets(f"data.source={missing}"))
    assert result.code == 1
    assert "Traceback" in result.stderr and "PapermillExecutionError" in result.stderr
    assert f"DataError: data.source: no file at {missing}" in result.stderr.split("The above exception")[0]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [result.stderr.strip().splitlines()[-1]]
    assert errors[0].startswith("error: step prepare failed: DataError: data.source: no file at")


def test_a_later_failure_keeps_earlier_artifacts(place):
    result = workbench("run", *place.sets(*SMALL, "train.model=nowhere.models:Net"))
    assert result.code == 1
    assert (
        "error: step train failed: ModelError: train.model 'nowhere.models:Net': cannot import 'nowhere.models'"
        in result.stderr
    )
    [run] = _runs(place)
    folder = place.store / "runs" / run["id"]
    assert (folder / "prepare" / "train.parquet").is_file() and (folder / "02_train.ipynb").is_file()
    assert not (folder / "03_export_onnx.ipynb").exists()
    steps = Tracker(place.db).get_run(run["id"])["steps"]
    assert [s["status"] for s in steps] == ["finished", "failed", "pending", "pending"]


def test_a_dying_kernel_fails_the_step_in_one_line(place, tmp_path):
    """A kernel killed mid-step (as by the OOM killer) is a step failure, not a crash of the CLI."""
    (tmp_path / "killer.py").write_text(
        "import os, signal\n\n"
        "from torch import nn\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, in_features, num_classes):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "run", *place.sets(*SMALL, "train.model=killer:Net")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: step train failed: DeadKernelError"), proc.stderr
    [run] = _runs(place)
    steps = Tracker(place.db).get_run(run["id"])["steps"]
    assert [s["status"] for s in steps] == ["finished", "failed", "pending", "pending"]
    assert (place.store / "runs" / run["id"] / "02_train.ipynb").is_file()
    assert (place.store / "runs" / run["id"] / "logs" / "train.kernel.log").is_file()


def test_a_killed_run_resumes_losing_at_most_one_epoch(place):
    """SIGKILL the whole `workbench run` mid-training, then `workbench run --resume` it."""
    args = place.sets("train.epochs=40", "train.batch_size=64")
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "run", *args],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tracker, deadline = None, time.monotonic() + 120
    logged: list = []
    while len(logged) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if tracker is None and place.store.exists():
            tracker = Tracker(place.db)
        if tracker and (runs := tracker.list_runs()):
            logged = tracker.get_run(runs[0]["id"])["history"].get("val_accuracy", [])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= len(logged) < 40, "training was not caught mid-way"
    time.sleep(2)  # the orphaned kernel notices its parent is gone and exits
    run_id = tracker.list_runs()[0]["id"]
    assert tracker.get_run(run_id)["status"] == "running"

    mismatch = workbench("run", "--resume", run_id, *place.sets("train.epochs=41"))
    assert mismatch.code == 2 and "differs from run" in mismatch.stderr

    resumed = workbench("run", "--resume", run_id, *place.sets())  # no flag repeated: the run keeps its own
    assert resumed.code == 0, resumed.stderr
    assert f"run {run_id}: resuming at train" in resumed.stderr and "[1/4]" not in resumed.stderr
    run = Tracker(place.db).get_run(run_id)
    assert run["status"] == "finished" and [s["status"] for s in run["steps"]] == ["finished"] * 4
    assert run["metrics"]["resumed_from_epoch"] >= len(logged)  # at most the epoch in progress was lost
    assert run["metrics"]["epochs_run"] == 40 and run["metrics"]["val_accuracy"] >= 0.95
    epochs = sorted({p["epoch"] for p in run["history"]["val_accuracy"]})
    assert epochs == list(range(1, 41))

    again = workbench("run", "--resume", run_id, *place.sets())
    assert again.code == 1 and "already finished" in again.stderr


def test_scoring_runs_as_its_own_pipeline_on_an_earlier_model(small_run):
    result = workbench("run", "--steps", "score", *small_run.place.sets(f"score.model_run={small_run.run_id}"))
    assert result.code == 0, result.stderr
    run_id = result.stdout.split()[1]
    assert "[1/1] score" in result.stderr
    run = Tracker(small_run.place.db).get_run(run_id)
    # the model run's test split by default: rows it never trained on, and said to be so
    assert [s["name"] for s in run["steps"]] == ["score"] and run["metrics"]["rows_scored"] == 269
    folder = small_run.place.store / "runs" / run_id
    info = json.loads((folder / "score" / "model.json").read_text())
    assert info["source"] == f"split:test of run {small_run.run_id}" and info["measured_on"].startswith(
        "the model run's test split"
    )
    assert (folder / "score" / "predictions.parquet").is_file() and (folder / "05_batch_score.ipynb").is_file()
    assert 'src="../score/classes.png"' in (folder / "report" / "index.html").read_text()


def test_unknown_steps_are_refused(place):
    result = workbench("run", "--steps", "train,deploy", *place.sets())
    assert result.code == 2 and "unknown step deploy" in result.stderr


def test_scoring_bad_input_is_one_line(small_run, tmp_path):
    narrow = tmp_path / "narrow.csv"
    narrow.write_text("p0,p1,label\n1,2,3\n")
    result = workbench("run", "--steps", "score", *small_run.place.sets(f"score.source={narrow}"))
    assert result.code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: step score failed: DataError: score.source {narrow}: lacks the model's input columns "
        "'p2', 'p3', 'p4', 'p5', 'p6' ... (62 missing); score a table with the columns the model was trained on"
    )
    zero = workbench("run", "--steps", "score", *small_run.place.sets("score.batch_size=0"))
    assert (
        zero.code == 2
        and zero.stderr
        == "error: score.batch_size in --set score.batch_size=0: must be greater than 0 and at most 10000000, got 0\n"
    )


def test_report_pages_rendered_during_the_run_are_those_workbench_report_writes(private_run):
    """Each step's page is rendered while the next step runs; rendering the report again from the
    store gives the very same bytes."""
    pages = {step.name: private_run.folder / "report" / step.notebook.replace(".ipynb", ".html") for step in STEPS}
    during = {name: path.read_bytes() for name, path in pages.items()}
    for path in pages.values():
        path.unlink()
    result = workbench("report", private_run.run_id, *private_run.place.sets())
    assert result.code == 0, result.stderr
    assert {name: path.read_bytes() for name, path in pages.items()} == during


def test_profile_says_where_the_run_time_went(place, tmp_path):
    profile = tmp_path / "profile.json"
    result = workbench("run", f"--profile={profile}", *place.sets(*FEW))
    assert result.code == 0, result.stderr
    timeline = json.loads(profile.read_text())
    phases = {(span["phase"], span["step"]) for span in timeline["spans"]}
    for step in STEPS:
        for phase in ("reuse key", "tracking", "kernel wait", "papermill", "kernel shutdown", "store"):
            assert (phase, step.name) in phases, (phase, step.name)
        kernel = timeline["kernels"][step.name]
        assert kernel["launched"] <= kernel["imports_start"] <= kernel["imports_end"]
        cells = timeline["cells"][step.name]
        assert any("wb.open_step" in cell["source"] for cell in cells) and all(c["seconds"] >= 0 for c in cells)
    assert ("setup", None) in phases and ("report", None) in phases
    assert all(span["start"] <= span["end"] for span in timeline["spans"])
    run = Tracker(place.db).get_run(result.stdout.split()[1])  # profiling changes nothing recorded
    assert run["status"] == "finished" and [s["status"] for s in run["steps"]] == ["finished"] * len(STEPS)


def test_a_profile_with_no_folder_to_go_to_is_refused_before_any_run(place, tmp_path):
    result = workbench("run", f"--profile={tmp_path}/missing/profile.json", *place.sets(*FEW))
    assert result.code == 2
    assert (
        result.stderr
        == f"error: --profile {tmp_path}/missing/profile.json: no folder {tmp_path}/missing to write it in\n"
    )
    assert _runs(place) == []
