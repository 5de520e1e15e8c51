"""The nightly refresh (deploy/nightly.sh) for real: artifacts on S3 (moto's server), tracking and
published predictions in PostgreSQL, three nights in a row.

Night 1 trains, promotes @champion (nothing to beat yet) and scores with it; night 2 changes nothing:
every training step is reused and the gate leaves @champion where it was; night 3 brings new data:
the steps run again and @champion moves only if the new model beats it on the same rows.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import ROOT, project_copy

from workbench.tracking.aliases import current, history
from workbench.tracking.tracker import Tracker

pytestmark = pytest.mark.e2e


def night(project: Path, prod: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """One night, as cron runs it: the script from the project folder, `workbench` on the PATH."""
    return subprocess.run(
        ["/bin/sh", str(project / "deploy" / "nightly.sh"), "-p", str(prod)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=900,
        env={
            **os.environ,
            **env,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PYTHONPATH": str(project),
        },
    )


def test_three_nights_train_promote_and_score(s3_server, postgres, tmp_path):
    import sqlalchemy as sa

    project = project_copy(tmp_path / "project")

    client = s3_server.client()
    for bucket in ("nightly-store", "nightly-data"):
        client.create_bucket(Bucket=bucket)
    rows = gzip.decompress((ROOT / "workbench" / "data" / "digits.csv.gz").read_bytes()).decode().splitlines(True)
    client.put_object(Bucket="nightly-data", Key="digits.csv", Body="".join(rows).encode())
    db, warehouse = postgres(), postgres()
    prod = tmp_path / "prod.yaml"
    prod.write_text(
        "store: s3://nightly-store/workbench\n"
        f"db: {db}\n"
        "data: {source: s3://nightly-data/digits.csv}\n"
        "train: {epochs: 2, batch_size: 64}\n"
        "score: {source: s3://nightly-data/digits.csv}\n"
    )
    env = {**s3_server.env, "PUBLISH_URL": warehouse, "NIGHTLY_REQUIRE": "test_accuracy>=0.5"}

    first = night(project, prod, env)
    assert first.returncode == 0, first.stderr[-3000:]
    run1 = first.stdout.split()[1]
    tracker = Tracker(db)
    assert current(tracker) == {"champion": run1}
    assert "no @champion yet, so nothing to beat" in first.stdout
    published = sa.create_engine(warehouse)
    with published.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar() == len(rows) - 1

    second = night(project, prod, env)
    assert second.returncode == 0, second.stderr[-3000:]
    for step in ("prepare", "train", "export", "validate"):
        assert f"{step} reused from {run1}" in second.stderr, second.stderr
    assert "not promoted to @champion: test_accuracy " in second.stderr
    assert current(tracker) == {"champion": run1}  # the same model did not beat itself
    assert "score runs: it publishes to" in second.stderr

    client.put_object(Bucket="nightly-data", Key="digits.csv", Body="".join(rows[:1] + rows[1:-400]).encode())
    third = night(project, prod, env)
    assert third.returncode == 0, third.stderr[-3000:]
    run3 = third.stdout.split()[1]
    assert "prepare runs: data.source changed (etag " in third.stderr
    moves = history(tracker, "champion")
    if current(tracker)["champion"] == run3:
        assert moves[-1].comparison["candidate"] > moves[-1].comparison["rival"]
    else:
        assert f"run {run3} not promoted to @champion" in third.stderr and len(moves) == 1
