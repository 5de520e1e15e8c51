"""Reusing unchanged steps across runs (workbench/run/reuse.py): each ingredient of a step's key,
and `workbench run` reusing, or saying why not, on a local store with SQLite and on S3 with PostgreSQL.

The end-to-end tests run a private copy of the project (package, notebooks, parameters) on
PYTHONPATH, so a test can change a file of the package honestly and see every step run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from support.cli import FEW, ROOT, CLIResult, Place, project_copy, workbench

from workbench.config.parameters import load
from workbench.run.pipeline import STEPS
from workbench.run.reuse import Reuse, describe_changes, device_kind, package_sources, step_key
from workbench.storage import open_store
from workbench.storage.base import ArtifactInfo
from workbench.storage.fingerprints import fingerprint
from workbench.tracking.tracker import Tracker

STEP = {s.name: s for s in STEPS}


# ---- the key's ingredients, one at a time ---------------------------------------------------------


@pytest.fixture
def reuser(tmp_path: Path) -> Reuse:
    notebooks = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks)
    tracker = Tracker(f"sqlite:///{tmp_path}/tracking.db")
    store = open_store(str(tmp_path / "store"))
    run_id = tracker.create_run(store.root, {}, {})
    tracker.plan_steps(run_id, [s.name for s in STEPS[:4]])
    return Reuse(tracker, store, run_id, notebooks)


def key_of(reuser: Reuse, step: str, *sets: str) -> str:
    spec = STEP[step]
    return step_key(reuser.ingredients(step, spec.notebook, spec.keyed(load(sets=sets))))


def test_parameters_the_step_reads_change_its_key_and_where_things_live_does_not(reuser):
    base = key_of(reuser, "train")
    assert key_of(reuser, "train", "train.lr=0.01") != base
    assert key_of(reuser, "train", "seed=7") != base  # a shared key the step reads
    assert key_of(reuser, "train", "store=/elsewhere", "db=sqlite:////tmp/other.db") == base
    assert key_of(reuser, "train", "data.val_fraction=0.2") == base  # prepare's, reaching train as artifacts
    assert key_of(reuser, "validate", "publish.table=other") != key_of(reuser, "validate")


def test_the_notebooks_cells_change_the_key_but_not_their_outputs(reuser):
    path = reuser.notebooks / STEP["export"].notebook
    base = key_of(reuser, "export")
    book = json.loads(path.read_text())
    book["cells"][-1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["seen\n"]}]
    book["metadata"]["touched"] = True
    path.write_text(json.dumps(book))
    assert key_of(reuser, "export") == base
    book["cells"][-1]["source"] = ["print('changed')\n"]
    path.write_text(json.dumps(book))
    assert key_of(reuser, "export") != base


def test_a_changed_file_of_the_package_changes_its_sources(tmp_path):
    copy = tmp_path / "workbench"
    shutil.copytree(ROOT / "workbench", copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = package_sources(copy)
    assert "workbench/ml/encoding.py" in before and "workbench/templates/index.html.j2" in before
    with open(copy / "ml" / "encoding.py", "a") as fh:
        fh.write("# a comment changes the code as Python reads it: the key says so\n")
    after = package_sources(copy)
    assert [name for name in after if after[name] != before[name]] == ["workbench/ml/encoding.py"]
    assert describe_changes(
        {f"code:{k}": v for k, v in before.items()}, {f"code:{k}": v for k, v in after.items()}
    ) == ("workbench/ml/encoding.py changed")


def test_the_user_model_package_is_part_of_trains_key(reuser, tmp_path):
    package = reuser.notebooks / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text("WIDTH = 8\n")
    base = key_of(reuser, "train", "train.model=mynets.nets:Net")
    (package / "nets.py").write_text("WIDTH = 16\n")
    assert key_of(reuser, "train", "train.model=mynets.nets:Net") != base
    found = reuser.ingredients(
        "train", STEP["train"].notebook, STEP["train"].keyed(load(sets=["train.model=mynets.nets:Net"]))
    )
    assert "model code:mynets/nets.py" in found


def test_upstream_artifacts_sha256_change_the_key(reuser):
    run = reuser.run_id
    info = ArtifactInfo(f"runs/{run}/prepare/train.parquet", "x", "a" * 64, 10)
    reuser.tracker.log_artifact(run, "prepare", info)
    base = key_of(reuser, "train")
    reuser.tracker.log_artifact(run, "prepare", ArtifactInfo(info.key, "x", "b" * 64, 10))  # rewritten
    assert key_of(reuser, "train") != base
    # the step's executed notebook and kernel log are not inputs of the next step
    changed = key_of(reuser, "train")
    reuser.tracker.log_artifact(run, "prepare", ArtifactInfo(f"runs/{run}/01_prepare_data.ipynb", "x", "c" * 64, 1))
    reuser.tracker.log_artifact(run, "prepare", ArtifactInfo(f"runs/{run}/logs/prepare.kernel.log", "x", "d" * 64, 1))
    assert key_of(reuser, "train") == changed


def test_library_versions_change_the_key(reuser, tmp_path, monkeypatch):
    base = key_of(reuser, "export")
    # an installed distribution that says numpy is another version, found first on the path
    dist = tmp_path / "site" / "numpy-9.9.9.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 9.9.9\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    found = reuser.ingredients("export", STEP["export"].notebook, STEP["export"].keyed(load()))
    assert found["lib:numpy"] == "9.9.9"
    assert key_of(reuser, "export") != base


def test_the_device_kind_is_part_of_trains_key(reuser):
    assert device_kind("cpu") == "cpu" and device_kind("cuda:1") == "cuda"
    assert device_kind("auto") == ("cuda" if Path("/proc/driver/nvidia/version").exists() else "cpu")
    found = reuser.ingredients("train", STEP["train"].notebook, STEP["train"].keyed(load()))
    assert found["device"] == device_kind("auto")
    assert "device" not in reuser.ingredients("export", STEP["export"].notebook, {})


def test_a_local_data_file_is_hashed_once_per_size_and_mtime(reuser, tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("x,label\n1,a\n2,b\n")
    first = key_of(reuser, "prepare", f"data.source={table}")
    assert key_of(reuser, "prepare", f"data.source={table}") == first
    stat = table.stat()
    table.write_text("x,label\n1,a\n3,b\n")  # same size; the remembered hash is keyed by the mtime too
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert key_of(reuser, "prepare", f"data.source={table}") == first  # remembered, not hashed again
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = key_of(reuser, "prepare", f"data.source={table}")
    assert changed != first
    digest = hashlib.sha256(table.read_bytes()).hexdigest()
    assert fingerprint(str(table), "data.source", reuser.memo).value == f"sha256 {digest}"


def test_a_sql_source_has_no_fingerprint_unless_a_query_gives_one(reuser, tmp_path):
    import sqlite3

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE sales (x REAL, label TEXT, updated_at TEXT)")
        conn.execute("INSERT INTO sales VALUES (1, 'a', '2026-12-01')")
    plain = {"url": f"sqlite:///{db}", "table": "sales"}
    assert fingerprint(plain, "data.source").value is None
    decision = reuser.decide("prepare", STEP["prepare"].notebook, {"data.source": plain})
    assert decision.source is None and "never reused" in decision.line
    from workbench.storage.sources import fingerprint_answer

    keyed = {**plain, "fingerprint": "SELECT max(updated_at), count(*) FROM sales"}
    first = fingerprint(keyed, "data.source", query=fingerprint_answer).value
    assert first == fingerprint(keyed, "data.source", query=fingerprint_answer).value
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO sales VALUES (2, 'b', '2026-12-02')")
    assert fingerprint(keyed, "data.source", query=fingerprint_answer).value != first
    from workbench.errors import DataError

    with pytest.raises(DataError, match=r"^data.source.fingerprint 'SELECT nothing FROM nowhere' failed"):
        fingerprint({**plain, "fingerprint": "SELECT nothing FROM nowhere"}, "data.source", query=fingerprint_answer)


def test_an_s3_object_is_fingerprinted_by_a_head(s3_server):
    client = s3_server.client()
    client.create_bucket(Bucket="reuse-data")
    client.put_object(Bucket="reuse-data", Key="t.csv", Body=b"x,label\n1,a\n")
    first = fingerprint("s3://reuse-data/t.csv", "data.source").value
    assert first.startswith("etag ") and first == fingerprint("s3://reuse-data/t.csv", "data.source").value
    client.put_object(Bucket="reuse-data", Key="t.csv", Body=b"x,label\n2,b\n")
    assert fingerprint("s3://reuse-data/t.csv", "data.source").value != first


def test_changes_are_said_by_name():
    before = {"param:train.lr": "0.002", "data:data.source": "sha256 " + "1" * 64, "lib:torch": "2.13.0"}
    after = {"param:train.lr": "0.01", "data:data.source": "sha256 " + "9" * 64, "lib:torch": "2.14.0"}
    assert describe_changes(before, after) == (
        "train.lr 0.002 -> 0.01; data.source changed (sha256 11111111... -> 99999999...); torch 2.13.0 -> 2.14.0"
    )
    files = {f"input:train/f{i}": "a" for i in range(5)}
    assert describe_changes(files, {k: "b" for k in files}) == "train/f0, train/f1, train/f2 and 2 more changed"


# ---- end to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the project, its package first on PYTHONPATH (the runs import it)."""
    return project_copy(tmp_path_factory.mktemp("project"))


def run_in(project: Path, place: Place, *args: str) -> CLIResult:
    return workbench("run", *args, *place.sets(*FEW), cwd=project, env={"PYTHONPATH": str(project)})


def steps_of(project: Path, place: Place, run_id: str) -> dict[str, dict]:
    shown = workbench("runs", "show", run_id, "--json", *place.sets(), cwd=project, env={"PYTHONPATH": str(project)})
    assert shown.code == 0, shown.stderr
    return {s["name"]: s for s in json.loads(shown.stdout)["steps"]}


def files_of(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and "report" not in p.parts
    }


@pytest.fixture(scope="module")
def first(project: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Place, str]:
    tmp = tmp_path_factory.mktemp("reuse")
    place = Place(tmp / "store", f"sqlite:///{tmp}/tracking.db")
    result = run_in(project, place)
    assert result.code == 0, result.stderr
    assert "prepare runs: no earlier run of it to reuse" in result.stderr
    return place, result.stdout.split()[1]


@pytest.mark.e2e
def test_a_rerun_with_nothing_changed_reuses_every_step_without_a_kernel(project, first):
    place, earlier = first
    result = run_in(project, place)
    assert result.code == 0, result.stderr
    run_id = result.stdout.split()[1]
    for step in ("prepare", "train", "export", "validate"):
        assert f"{step} reused from {earlier} (same data, parameters and code)" in result.stderr
    assert ".ipynb ..." not in result.stderr  # no step executed, so no kernel started
    steps = steps_of(project, place, run_id)
    assert {s["status"] for s in steps.values()} == {"finished"}
    assert {s["reused_from"] for s in steps.values()} == {earlier}
    assert files_of(place.store / "runs" / run_id) == files_of(place.store / "runs" / earlier)
    report = (place.store / "runs" / run_id / "report" / "index.html").read_text()
    assert f"reused from {earlier}" in report
    shown = json.loads(workbench("runs", "show", run_id, "--json", *place.sets()).stdout)
    assert shown["metrics"]["val_accuracy"] > 0.5 and shown["history"]  # metrics and history came along


@pytest.mark.e2e
def test_a_changed_learning_rate_reuses_prepare_only(project, first):
    place, _ = first
    result = run_in(project, place, "--set=train.lr=0.01")
    assert result.code == 0, result.stderr
    assert "prepare reused from" in result.stderr
    assert "train runs: train.lr 0.002 -> 0.01 since" in result.stderr
    assert "export runs: train/" in result.stderr and "validate runs: " in result.stderr
    run_id = result.stdout.split()[1]
    shown = workbench("runs", "show", run_id, *place.sets(), cwd=project, env={"PYTHONPATH": str(project)})
    train = next(line for line in shown.stdout.splitlines() if line.strip().startswith("train "))
    assert "runs: train.lr 0.002 -> 0.01 since" in train
    assert "reused from" in next(line for line in shown.stdout.splitlines() if line.strip().startswith("prepare "))
    report = (place.store / "runs" / run_id / "report" / "index.html").read_text()
    assert "train runs: train.lr 0.002 -&gt; 0.01 since" in report


@pytest.mark.e2e
def test_no_reuse_and_rerun_do_what_they_say(project, first):
    place, _ = first
    result = run_in(project, place, "--rerun=train")
    assert result.code == 0, result.stderr
    assert "prepare reused from" in result.stderr
    for step in ("train", "export", "validate"):
        assert f"{step} runs: --rerun train" in result.stderr
    forced = run_in(project, place, "--no-reuse", "--steps=prepare")
    assert forced.code == 0, forced.stderr
    assert "prepare runs: --no-reuse" in forced.stderr
    wrong = run_in(project, place, "--rerun=scoring")
    assert wrong.code == 2
    assert wrong.stderr.strip() == (
        "error: --rerun 'scoring': unknown step scoring; this run's steps are prepare, train, export, validate"
    )


@pytest.mark.e2e
def test_changed_data_and_deleted_or_altered_artifacts_run_the_step(project, tmp_path):
    place = Place(tmp_path / "store", f"sqlite:///{tmp_path}/tracking.db")
    table = tmp_path / "digits.csv"
    import gzip

    table.write_bytes(gzip.decompress((ROOT / "workbench" / "data" / "digits.csv.gz").read_bytes()))
    source = f"--set=data.source={table}"
    assert run_in(project, place, source, "--steps=prepare").code == 0
    again = run_in(project, place, source, "--steps=prepare")
    assert "prepare reused from" in again.stderr, again.stderr
    reused = again.stdout.split()[1]

    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(lines[:-1]))  # one row fewer
    changed = run_in(project, place, source, "--steps=prepare")
    assert changed.code == 0, changed.stderr
    assert "prepare runs: data.source changed (sha256 " in changed.stderr

    latest = changed.stdout.split()[1]
    (place.store / "runs" / latest / "prepare" / "train.parquet").unlink()
    # the older runs read the longer table: only the latest run is a source for this key
    gone = run_in(project, place, source, "--steps=prepare")
    assert f"prepare runs: run {latest}'s prepare/train.parquet is gone from the store" in gone.stderr
    assert gone.code == 0

    newest = gone.stdout.split()[1]
    split = place.store / "runs" / newest / "prepare" / "val.parquet"
    data = bytearray(split.read_bytes())
    data[100] ^= 0xFF  # same size, other bytes
    split.write_bytes(bytes(data))
    altered = run_in(project, place, source, "--steps=prepare")
    assert f"prepare runs: run {newest}'s prepare/val.parquet was altered (sha256 " in altered.stderr
    assert reused != newest


@pytest.mark.e2e
def test_a_changed_file_of_the_installed_package_runs_the_steps_again(tmp_path):
    project = project_copy(tmp_path / "project")
    place = Place(tmp_path / "store", f"sqlite:///{tmp_path}/tracking.db")
    assert run_in(project, place, "--steps=prepare").code == 0
    with open(project / "workbench" / "ml" / "encoding.py", "a") as fh:
        fh.write("\n# a change to the code the notebook calls\n")
    result = run_in(project, place, "--steps=prepare")
    assert result.code == 0, result.stderr
    assert "prepare runs: workbench/ml/encoding.py changed since" in result.stderr


@pytest.mark.e2e
def test_reuse_on_s3_with_postgresql_copies_server_side(project, s3_server, postgres):
    client = s3_server.client()
    client.create_bucket(Bucket="reuse-store")
    place = Place("s3://reuse-store/team", postgres())  # type: ignore[arg-type]
    env = {**s3_server.env, "PYTHONPATH": str(project)}
    first = workbench("run", *place.sets(*FEW), cwd=project, env=env)
    assert first.code == 0, first.stderr
    second = workbench("run", *place.sets(*FEW), cwd=project, env=env)
    assert second.code == 0, second.stderr
    a, b = first.stdout.split()[1], second.stdout.split()[1]
    assert all(f"{s} reused from {a}" in second.stderr for s in ("prepare", "train", "export", "validate"))

    def objects(run: str) -> dict[str, str]:
        listed = client.list_objects_v2(Bucket="reuse-store", Prefix=f"team/runs/{run}/")["Contents"]
        return {
            o["Key"].split(f"/{run}/", 1)[1]: client.head_object(Bucket="reuse-store", Key=o["Key"])["Metadata"][
                "sha256"
            ]
            for o in listed
            if "/report/" not in o["Key"]
        }

    assert objects(a) == objects(b)
    body = client.get_object(Bucket="reuse-store", Key=f"team/runs/{b}/prepare/train.parquet")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == objects(a)["prepare/train.parquet"]


@pytest.mark.e2e
def test_scoring_is_reused_for_the_same_model_and_table(project, first):
    place, _ = first
    once = run_in(project, place, "--steps=score")
    assert once.code == 0, once.stderr
    twice = run_in(project, place, "--steps=score")
    assert twice.code == 0, twice.stderr
    assert f"score reused from {once.stdout.split()[1]}" in twice.stderr


@pytest.mark.e2e
def test_two_runs_reusing_one_source_at_once_both_succeed(project, first):
    import subprocess

    place, _ = first
    command = [sys.executable, "-m", "workbench", "run", "--steps=prepare", *place.sets(*FEW)]
    env = {**os.environ, "PYTHONPATH": str(project)}
    both = [subprocess.Popen(command, cwd=project, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    said = [p.communicate(timeout=300)[1] for p in both]
    assert [p.returncode for p in both] == [0, 0], said
    assert all("prepare reused from" in s for s in said)


@pytest.mark.services
def test_an_unreachable_s3_during_the_copy_is_one_line_naming_the_key(tmp_path, monkeypatch):
    import boto3
    from support.locals3 import moto_endpoint, s3_environment

    from workbench.errors import StoreError

    tracker = Tracker(f"sqlite:///{tmp_path}/tracking.db")
    with moto_endpoint() as endpoint:  # a server of this test's own, stopped before the copy
        for key, value in s3_environment(endpoint).items():
            monkeypatch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="reuse-gone")
        store = open_store("s3://reuse-gone/team")
        source = tracker.create_run(store.root, {}, {})
        tracker.plan_steps(source, ["prepare"])
        tracker.log_artifact(source, "prepare", store.write_bytes(f"runs/{source}/prepare/train.parquet", b"rows"))
        tracker.finish_step(source, "prepare", "finished", 1.0)
        run_id = tracker.create_run(store.root, {}, {})
        tracker.plan_steps(run_id, ["prepare"])
        reuse = Reuse(tracker, store, run_id, ROOT / "notebooks")
        decision = reuse.decide("prepare", STEP["prepare"].notebook, {"data.source": "bundled:digits"})
        decision.source, decision.artifacts = source, tracker.step_artifacts(source, ["prepare"])
    with pytest.raises(StoreError) as caught:
        reuse.apply(decision)
    line = str(caught.value)
    assert "\n" not in line and "cannot reach the S3 endpoint" in line
    assert line.startswith(
        f"reusing prepare from run {source}: copying s3://reuse-gone/team/runs/{source}/prepare/train.parquet failed"
    )
    assert tracker.get_run(run_id)["steps"][0]["status"] == "pending"  # nothing half-reused
