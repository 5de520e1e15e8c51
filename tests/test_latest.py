"""What `latest` means for scoring and serving: the newest run whose export finished and whose
parity verdict passed, neither stale since. A run named by id is used whatever its verdict, with a
visible warning line when its model is not vouched for."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from support.cli import ROOT, SMALL, workbench

from workbench.storage.base import ArtifactInfo
from workbench.tracking.tracker import Tracker

MODEL = ("export/model.onnx", "prepare/encoding.json")


def _exported(tracker: Tracker, steps: dict[str, str], parity_pass: float | None = None) -> str:
    """A run with a model and its encoding, its steps in the given states, and a verdict if given."""
    run_id = tracker.create_run("/s", {}, {})
    tracker.plan_steps(run_id, list(steps))
    for name, status in steps.items():
        tracker.finish_step(run_id, name, status, 1.0)
    for key in MODEL:
        tracker.log_artifact(run_id, key.split("/")[0], ArtifactInfo(f"runs/{run_id}/{key}", "u", "0" * 64, 1))
    if parity_pass is not None:
        tracker.log_metrics(run_id, "validate", {"parity_pass": parity_pass})
    return run_id


def test_latest_is_the_newest_model_that_passed_validation(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/tracking.db")
    done = {"prepare": "finished", "train": "finished", "export": "finished"}
    passed = _exported(tracker, {**done, "validate": "finished"}, 1.0)
    failed = _exported(tracker, {**done, "validate": "failed"}, 0.0)
    unvalidated = _exported(tracker, done)
    stale = _exported(tracker, {**done, "validate": "stale"}, 1.0)
    with tracker.engine.begin() as conn:  # as a notebook that trained again records it
        conn.exec_driver_sql(
            "UPDATE steps SET error = 'train ran again after it; run this step again' WHERE status = 'stale'"
        )
    export_failed = _exported(tracker, {**done, "export": "failed"})
    assert tracker.latest_with_artifacts(*MODEL) == export_failed  # the newest model, whatever became of it
    assert tracker.latest_with_artifacts(*MODEL, validated=True) == passed
    assert tracker.model_doubts([passed, failed, unvalidated, stale, export_failed]) == {
        passed: None,
        failed: "it failed validation (parity FAIL)",
        unvalidated: "it has no parity verdict (its validate step never ran)",
        stale: "its parity verdict is stale (train ran again after it; run this step again)",
        export_failed: "its export step is failed",
    }
    tracker.log_metrics(passed, "validate", {"parity_pass": 0.0})  # validated again, and failed this time
    assert tracker.latest_with_artifacts(*MODEL, validated=True) is None


def _newest_run(db: str) -> str:
    return Tracker(db).list_runs(limit=1)[0]["id"]


@pytest.mark.e2e
def test_scoring_and_serving_skip_a_newer_run_that_failed_validation(private_run):
    """An MLP run passes, a later run fails validation: `latest` scores and serves the one that
    passed; the failed run named by id is scored and served with a warning line."""
    place, passed = private_run.place, private_run.run_id
    strict = workbench("run", *place.sets(*SMALL, "validate.atol=0", "validate.rtol=0"))
    assert strict.code == 1 and "step validate failed" in strict.stderr, strict.stderr[-2000:]
    failed = _newest_run(place.db)
    assert failed != passed

    latest = workbench("run", "--steps", "score", *place.sets())
    assert latest.code == 0, latest.stderr[-2000:]
    scoring = Tracker(place.db).get_run(_newest_run(place.db))
    info = (place.store / "runs" / scoring["id"] / "score" / "model.json").read_text()
    assert f'"model_run": "{passed}"' in info

    named = workbench("run", "--steps", "score", *place.sets(f"score.model_run={failed}"))
    assert named.code == 0, named.stderr[-2000:]
    notebook = (place.store / "runs" / _newest_run(place.db) / "05_batch_score.ipynb").read_text()
    assert f"score.model_run {failed}: it failed validation (parity FAIL); scored because it is named" in notebook

    for model, warned in (("latest", False), (failed, True)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "workbench", "serve", *place.sets("serve.port=0", f"serve.model={model}")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            line = proc.stdout.readline()
            assert line.startswith(f"serving run {failed if warned else passed} "), line
        finally:
            proc.send_signal(signal.SIGTERM)
            _, errors = proc.communicate(timeout=60)
        warning = f"warning: serve.model {failed}: it failed validation (parity FAIL); served because it is named"
        assert (warning in errors) is warned, errors


@pytest.mark.e2e
def test_a_notebook_run_without_a_model_says_whose_model_latest_scores(private_run, tmp_path):
    """Notebook 05 in a notebook run that exported nothing scores the newest vouched-for model, and a
    visible line says whose: the run id, when it started and by which launcher."""
    place = private_run.place
    out = tmp_path / "05.ipynb"
    command = [
        str(Path(sys.executable).parent / "papermill"),
        str(ROOT / "notebooks" / "05_batch_score.ipynb"),
        str(out),
        *("-p", "run_id", "elsewhere", "-p", "store", str(place.store), "-p", "db", place.db),
    ]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    started = Tracker(place.db).get_run(private_run.run_id)["started_at"].replace("T", " ")[:16]
    cells = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    said = [o.text for c in cells for o in c.outputs if o.output_type == "stream" and o.name == "stdout"]
    assert (
        f"score.model_run 'latest' is run {private_run.run_id}, started {started} UTC by `workbench run`: run "
        "elsewhere has no exported model of its own" in "".join(said)
    )
    info = (place.store / "runs" / "elsewhere" / "score" / "model.json").read_text()
    assert f'"model_run": "{private_run.run_id}"' in info
