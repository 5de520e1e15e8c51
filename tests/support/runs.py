"""Runs recorded through the real tracker in states that take minutes to reach with notebooks."""

from __future__ import annotations

from workbench.tracking.tracker import Tracker


def stale_notebook_run(tracker: Tracker, run_id: str) -> None:
    """A notebook run whose training ran again with new outputs after export and validate: their
    parity PASS and MXNet accuracy were measured on the earlier weights."""
    tracker.ensure_run(run_id, "/store")
    for step in ("prepare", "train", "export", "validate"):
        tracker.notebook_step(run_id, step, "running")
        tracker.notebook_step(run_id, step, "finished")
    tracker.log_metrics(run_id, "train", {"val_accuracy": 0.93, "train_seconds": 4.0})
    tracker.log_metrics(run_id, "validate", {"parity_pass": 1.0, "mxnet_accuracy": 0.91, "test_accuracy": 0.9})
    tracker.notebook_step(run_id, "train", "running")
    tracker.log_metrics(run_id, "train", {"val_accuracy": 0.96, "train_seconds": 6.0})
    assert tracker.outputs_changed(run_id, "train", ["model.pth", "metrics.json"]) == ["export", "validate"]
    tracker.notebook_step(run_id, "train", "finished")
