from __future__ import annotations

import pytest

from workbench.errors import TrackingError
from workbench.store import ArtifactInfo
from workbench.tracking import Tracker, display_url


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path}/t.db")


def test_run_lifecycle_is_recorded(tracker):
    run_id = tracker.create_run(
        "/store", {"train.epochs": 3, "store": "/store"}, {"train.epochs": "--set train.epochs=3"}
    )
    tracker.plan_steps(run_id, ["prepare", "train"])
    tracker.start_step(run_id, "prepare", "/store/runs/x/01.ipynb")
    tracker.log_metrics(run_id, "prepare", {"rows_total": 10})
    tracker.log_metrics(run_id, "train", {"val_accuracy": 0.5}, epoch=1)
    tracker.log_metrics(run_id, "train", {"val_accuracy": 0.9})
    tracker.log_artifact(run_id, "prepare", ArtifactInfo("runs/x/prepare/a", "/store/runs/x/prepare/a", "ab" * 32, 7))
    tracker.finish_step(run_id, "prepare", "finished", 1.5)
    tracker.finish_run(run_id, "failed", "step train failed: boom")

    run = tracker.get_run(run_id)
    assert run["status"] == "failed" and run["error"] == "step train failed: boom"
    assert [(s["name"], s["status"]) for s in run["steps"]] == [("prepare", "finished"), ("train", "pending")]
    assert run["steps"][0]["duration_s"] == 1.5
    assert run["parameters"] == {"store": "/store", "train.epochs": 3}
    assert run["metrics"] == {"rows_total": 10, "val_accuracy": 0.9}
    assert run["history"] == {"val_accuracy": [{"epoch": 1, "value": 0.5}]}
    assert run["artifacts"][0]["sha256"] == "ab" * 32 and run["artifacts"][0]["bytes"] == 7
    assert run["duration_s"] is not None

    listed = tracker.list_runs()
    assert listed[0]["id"] == run_id and listed[0]["metrics"]["val_accuracy"] == 0.9


def test_ensure_run_is_idempotent(tracker):
    tracker.ensure_run("dev", "/s")
    tracker.ensure_run("dev", "/s")
    assert tracker.get_run("dev")["status"] == "interactive"


def test_sqlite_uses_wal(tracker):
    with tracker.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_unknown_run(tracker):
    with pytest.raises(TrackingError, match=r"no run 'nope' in db .*; `workbench runs` lists the runs"):
        tracker.get_run("nope")


def test_bad_url():
    with pytest.raises(TrackingError, match="not a valid SQLAlchemy URL"):
        Tracker("not a url://")


def test_unreachable_server_masks_password():
    with pytest.raises(TrackingError) as err:
        Tracker("postgresql+psycopg://alice:s3cret@127.0.0.1:1/db?connect_timeout=2")
    message = str(err.value)
    assert "unreachable" in message and "s3cret" not in message and "***" in message


def test_display_url_masks_password():
    assert display_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
