from __future__ import annotations

import pytest

from workbench.errors import TrackingError
from workbench.storage.base import ArtifactInfo
from workbench.tracking.tracker import Tracker, display_url


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
    assert tracker.ensure_run("dev", "/s") is True
    assert tracker.ensure_run("dev", "/s") is True
    run = tracker.get_run("dev")
    assert run["launcher"] == "notebook" and run["status"] == "running"
    pipeline_run = tracker.create_run("/s", {}, {})
    assert tracker.ensure_run(pipeline_run, "/s") is False


def test_notebook_runs_get_step_status_and_durations(tracker):
    """Runs started by plain papermill or JupyterLab are listed like `workbench run`'s."""
    tracker.ensure_run("plain", "/s")
    tracker.notebook_step("plain", "prepare", "running")
    assert tracker.get_run("plain")["status"] == "running"
    tracker.notebook_step("plain", "prepare", "finished")
    tracker.notebook_step("plain", "train", "running")
    tracker.notebook_step("plain", "train", "failed", "ModelError: boom")
    run = tracker.get_run("plain")
    assert [(s["name"], s["status"]) for s in run["steps"]] == [("prepare", "finished"), ("train", "failed")]
    assert run["status"] == "failed" and run["error"] == "ModelError: boom" and run["duration_s"] is not None
    assert all(s["duration_s"] is not None and s["duration_s"] >= 0 for s in run["steps"])
    tracker.notebook_step("plain", "train", "running")  # the user fixes the cell and runs it again
    tracker.notebook_step("plain", "train", "finished")
    run = tracker.get_run("plain")
    assert run["status"] == "finished" and run["error"] is None
    assert tracker.list_runs()[0]["duration_s"] is not None


def test_only_new_outputs_make_later_steps_of_a_notebook_run_stale(tracker):
    """Opening a step again (a second Run All, a scheduler's retry) leaves later steps current; new
    outputs mark the later finished steps stale, saying which files, and the run with them."""
    tracker.ensure_run("nb", "/s")
    for step in ("prepare", "train", "export", "validate"):
        tracker.notebook_step("nb", step, "running")
        tracker.notebook_step("nb", step, "finished")
    tracker.notebook_step("nb", "score", "running")
    tracker.notebook_step("nb", "score", "failed", "DataError: no rows")
    tracker.notebook_step("nb", "train", "running")
    tracker.notebook_step("nb", "train", "finished")
    assert {s["name"]: s["status"] for s in tracker.get_run("nb")["steps"]}["export"] == "finished"
    assert tracker.outputs_changed("nb", "train", []) == []

    assert tracker.outputs_changed("nb", "train", ["model.pth", "metrics.json", "history.csv", "fit.png"]) == [
        "export",
        "validate",
    ]
    run = tracker.get_run("nb")
    steps = {s["name"]: (s["status"], s["error"]) for s in run["steps"]}
    assert steps["prepare"] == ("finished", None) and steps["train"] == ("finished", None)
    assert steps["export"] == (
        "stale",
        "train wrote a new model.pth, metrics.json, history.csv and 1 more after it ran; run this step again",
    )
    assert steps["validate"][0] == "stale" and steps["score"][0] == "failed"
    assert run["status"] == "failed"
    assert tracker.outputs_changed("nb", "train", ["model.pth"]) == []  # marked once


def test_one_process_at_a_time_holds_a_run(tracker, monkeypatch):
    import subprocess
    from datetime import timedelta

    from sqlalchemy import update

    from workbench.tracking import tables
    from workbench.tracking import tracker as tracking

    run_id = tracker.create_run("/s", {}, {}, holder=tracking.new_holder())  # this process, alive
    with pytest.raises(TrackingError, match=rf"run {run_id} is being executed by .*; wait for it to end"):
        tracker.claim_run(run_id, tracking.new_holder())

    dead = subprocess.Popen(["true"])
    dead.wait()
    with tracker.engine.begin() as conn:  # a holder on this host whose process is gone (kill -9)
        conn.execute(update(tables.runs).values(holder=f"{tracking.socket.gethostname()}:{dead.pid}:ab"))
    mine = tracking.new_holder()
    tracker.claim_run(run_id, mine)

    elsewhere = "other-host:123:cd"
    with tracker.engine.begin() as conn:  # another machine that keeps its heartbeat fresh
        conn.execute(update(tables.runs).values(holder=elsewhere, heartbeat_at=tracking.now()))
    with pytest.raises(TrackingError, match="is being executed by other-host:123"):
        tracker.claim_run(run_id, mine)
    with tracker.engine.begin() as conn:  # ... until it falls silent
        silent = tracking.now() - tracking.STALE_AFTER - timedelta(seconds=1)
        conn.execute(update(tables.runs).values(heartbeat_at=silent))
    tracker.claim_run(run_id, mine)
    tracker.release_run(run_id, mine)
    tracker.claim_run(run_id, tracking.new_holder())


def test_a_corrupt_database_file_is_one_line(tmp_path):
    bad = tmp_path / "not.db"
    bad.write_bytes(b"this is no SQLite database" * 100)
    with pytest.raises(TrackingError, match=r"is not a usable tracking database \(file is not a database\)"):
        Tracker(f"sqlite:///{bad}")


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


def test_one_url_masking_for_messages_parameters_and_tracking():
    from workbench.config import schema
    from workbench.config.secrets import mask
    from workbench.storage import publish, sources

    assert display_url is mask and schema.mask is mask and sources.mask is mask and publish.display_url is mask
    message = "cannot reach postgresql+psycopg://etl:hunter2@db:5432/x; mysql://a:b@h/y too"
    assert mask(message) == "cannot reach postgresql+psycopg://etl:***@db:5432/x; mysql://a:***@h/y too"
    assert mask("sqlite:///artifacts/workbench.db") == "sqlite:///artifacts/workbench.db"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
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


def _first_schema(url: str, versioned: bool) -> None:
    """The database as the first release left it: schema 0001, with or without its version row."""
    from alembic import command
    from sqlalchemy import create_engine

    from workbench.tracking.tracker import _alembic_config

    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0001")
        conn.exec_driver_sql(
            "INSERT INTO runs (id, status, started_at, store) VALUES ('dev', 'interactive', '2026-01-01', '/s')"
        )
        if not versioned:  # tables made before migrations existed
            conn.exec_driver_sql("DROP TABLE alembic_version")
    engine.dispose()


@pytest.mark.parametrize("versioned", [False, True], ids=["unversioned", "0001"])
def test_an_older_schema_is_not_upgraded_behind_the_users_back(fresh_url, versioned):
    from workbench.tracking.tracker import schema_head

    _first_schema(fresh_url, versioned)
    was = "0001" if versioned else "unversioned"
    with pytest.raises(
        TrackingError,
        match=rf"is at schema {was}, this workbench needs {schema_head()}; back it up, then run `workbench db upgrade`",
    ):
        Tracker(fresh_url)
    assert Tracker(fresh_url, check=False).upgrade() == schema_head() == "0005"
    assert Tracker(fresh_url, check=False).upgrade() == "0005"  # idempotent
    assert Tracker(fresh_url).ensure_run("dev", "/s") is True  # an old hand-started run stays one
    assert Tracker(fresh_url).get_run("dev")["launcher"] == "notebook"


def test_postgres_is_a_full_tracking_db(postgres):
    url = postgres()
    run_id = _record(url, 7)
    run = Tracker(url).get_run(run_id)
    assert run["artifacts"][0]["bytes"] == 7 and run["steps"][0]["duration_s"] == 1.0
    assert Tracker(url).latest_with_artifacts("train/model.pth") == run_id
    assert Tracker(url).latest_with_artifacts("train/model.pth", "export/model.onnx") is None


def _foreign_database(url: str, version: str | None = None) -> None:
    """Another application's database: its own `runs` table, and maybe its own Alembic version."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE runs (id INTEGER PRIMARY KEY, miles REAL)")
        conn.exec_driver_sql("INSERT INTO runs VALUES (1, 5.5)")
        if version:
            conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
            conn.exec_driver_sql(f"INSERT INTO alembic_version VALUES ('{version}')")
    engine.dispose()


def _contents(url: str) -> dict[str, list[tuple]]:
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    with engine.connect() as conn:
        found = {name: conn.exec_driver_sql(f"SELECT * FROM {name}").all() for name in inspect(conn).get_table_names()}
    engine.dispose()
    return found


@pytest.mark.parametrize("version", [None, "ae1027a6acf"], ids=["unversioned", "another-alembic"])
def test_a_database_of_another_application_is_refused_and_left_alone(fresh_url, version):
    """`workbench db upgrade` (and every other command) on a database holding tables that are not
    workbench's: one line, and the database exactly as it was (no alembic_version, no WAL)."""
    from support.cli import workbench

    _foreign_database(fresh_url, version)
    before = _contents(fresh_url)
    for command in (["db", "upgrade"], ["runs"]):
        result = workbench(*command, f"--set=db={fresh_url}")
        assert result.code == 1 and result.stderr.count("\n") == 1, result.stderr
        if version:
            assert f"is at schema '{version}', which no workbench migration knows" in result.stderr
        else:
            assert "holds tables that are not workbench's (runs); nothing was changed" in result.stderr
    assert _contents(fresh_url) == before
    if fresh_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(fresh_url.removeprefix("sqlite:///")) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_a_database_from_before_migrations_is_still_upgraded(tmp_path):
    """The first schema's tables with no version are workbench's own: stamped, then upgraded."""
    from sqlalchemy import create_engine

    from workbench.tracking.tracker import FIRST_SCHEMA, schema_head

    url = f"sqlite:///{tmp_path}/old.db"
    engine = create_engine(url)
    with engine.begin() as conn:
        for name, columns in FIRST_SCHEMA.items():
            conn.exec_driver_sql(f"CREATE TABLE {name} ({', '.join(sorted(columns))})")
    engine.dispose()
    assert Tracker(url, check=False).upgrade() == schema_head()
    assert Tracker(url).list_runs() == []


@pytest.fixture
def read_only(tmp_path):
    """Make a file and its folder read-only as this user can: chmod, or for root (whom modes do not
    stop) the immutable attribute. Undone after the test, so the folder can be removed."""
    import os
    import shutil
    import stat
    import subprocess

    frozen: list[str] = []

    def freeze(path) -> None:
        folder = path.parent
        if os.geteuid() != 0:
            path.chmod(stat.S_IRUSR | stat.S_IRGRP)
            folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
            frozen.append(str(folder))
            return
        chattr = shutil.which("chattr")
        if not chattr or subprocess.run([chattr, "+i", str(path), str(folder)], capture_output=True).returncode:
            pytest.skip("root without chattr +i cannot make a file read-only here")
        frozen.extend([str(path), str(folder)])

    yield freeze
    if os.geteuid() == 0:
        if frozen:
            subprocess.run(["chattr", "-i", *frozen], check=True)
    else:
        for folder in frozen:
            os.chmod(folder, 0o755)


def test_reading_commands_read_a_read_only_database(tmp_path, read_only):
    """`runs` and `runs show` on a database file nobody may write (a shared snapshot)."""
    from support.cli import workbench

    folder = tmp_path / "shared"
    folder.mkdir()
    db = folder / "tracking.db"
    tracker = Tracker(f"sqlite:///{db}")
    run_id = tracker.create_run("/s", {"train.epochs": 3}, {})
    tracker.engine.dispose()  # the last connection checkpoints and removes the WAL files
    assert sorted(p.name for p in folder.iterdir()) == ["tracking.db", "tracking.db.migrate.lock"]
    before = db.read_bytes()
    read_only(db)
    listed = workbench("runs", f"--set=db=sqlite:///{db}")
    assert listed.code == 0 and run_id in listed.stdout, listed.stderr
    shown = workbench("runs", "show", run_id, "--json", f"--set=db=sqlite:///{db}")
    assert shown.code == 0 and '"train.epochs": 3' in shown.stdout, shown.stderr
    assert db.read_bytes() == before
