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


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path):
    """A database that does not have the schema yet, of each kind the tracker supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fresh.db"
    return request.getfixturevalue("postgres")()


def _record(url: str, n: int) -> str:
    """One process's run: created, stepped, measured, finished."""
    tracker = Tracker(url)
    run_id = tracker.create_run("/s", {"train.epochs": n}, {})
    tracker.plan_steps(run_id, ["prepare", "train"])
    for epoch in range(1, 21):
        tracker.log_metrics(run_id, "train", {"val_accuracy": epoch / 100, "val_loss": 1 / epoch}, epoch=epoch)
    tracker.log_artifact(run_id, "train", ArtifactInfo(f"runs/{run_id}/train/model.pth", "/x", "cd" * 32, n))
    tracker.log_metrics(run_id, "train", {"val_accuracy": 0.9 + n / 100})
    tracker.finish_step(run_id, "prepare", "finished", 1.0)
    tracker.finish_run(run_id, "finished")
    return run_id


def test_four_processes_at_once_on_a_fresh_database(fresh_url):
    """Four runs start together on a database that does not exist yet: one creates the schema,
    the others wait for it, and every row lands."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        run_ids = pool.starmap(_record, [(fresh_url, n) for n in range(4)])
    tracker = Tracker(fresh_url)
    assert len(set(run_ids)) == 4 and len(tracker.list_runs()) == 4
    for n, run_id in enumerate(run_ids):
        run = tracker.get_run(run_id)
        assert run["status"] == "finished" and run["parameters"] == {"train.epochs": n}
        assert len(run["history"]["val_accuracy"]) == 20 and run["metrics"]["val_accuracy"] == pytest.approx(
            0.9 + n / 100
        )


def test_an_older_schema_is_not_upgraded_behind_the_users_back(fresh_url):
    from sqlalchemy import create_engine

    from workbench.tracking import metadata

    engine = create_engine(fresh_url)
    metadata.create_all(engine)  # tables, but no schema version: as made before migrations
    engine.dispose()
    with pytest.raises(
        TrackingError,
        match=r"is at schema unversioned, this workbench needs 0001; back it up, then run `workbench db upgrade`",
    ):
        Tracker(fresh_url)
    assert Tracker(fresh_url, check=False).upgrade() == "0001"
    assert Tracker(fresh_url, check=False).upgrade() == "0001"  # idempotent
    Tracker(fresh_url).ensure_run("dev", "/s")


def test_postgres_is_a_full_tracking_db(postgres):
    url = postgres()
    run_id = _record(url, 7)
    run = Tracker(url).get_run(run_id)
    assert run["artifacts"][0]["bytes"] == 7 and run["steps"][0]["duration_s"] == 1.0
    assert Tracker(url).latest_with_artifact("train/model.pth") == run_id
