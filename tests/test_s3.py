"""The S3 store against a real S3 endpoint over HTTP (moto's server)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest
from support.cli import ROOT, SMALL, sets

from workbench.config.schema import DataParams
from workbench.errors import StoreError
from workbench.storage import open_store
from workbench.storage.s3 import S3Store
from workbench.tracking.tracker import Tracker


@pytest.fixture
def bucket(s3_server) -> str:
    name = f"wb-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


def test_roundtrip_hash_size_and_content_type(bucket, s3_server, tmp_path):
    store = open_store(f"s3://{bucket}/team/project")
    info = store.write_bytes("runs/r1/report/index.html", b"<html></html>")
    assert info.uri == f"s3://{bucket}/team/project/runs/r1/report/index.html"
    assert info.sha256 == hashlib.sha256(b"<html></html>").hexdigest() and info.bytes == 13
    head = s3_server.client().head_object(Bucket=bucket, Key="team/project/runs/r1/report/index.html")
    assert head["ContentType"] == "text/html; charset=utf-8" and head["Metadata"]["sha256"] == info.sha256
    assert store.read_bytes("runs/r1/report/index.html") == b"<html></html>"
    assert store.exists("runs/r1/report/index.html") and not store.exists("runs/r1/nothing")
    (tmp_path / "m.onnx").write_bytes(b"x" * 100)
    store.put_file("runs/r1/export/model.onnx", tmp_path / "m.onnx")
    assert store.list("runs/r1") == ["runs/r1/export/model.onnx", "runs/r1/report/index.html"]


def test_large_files_go_up_in_parts(bucket, s3_server, tmp_path, monkeypatch):
    monkeypatch.setattr(S3Store, "multipart_threshold", 5 * 2**20)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 2**20))
    info = open_store(f"s3://{bucket}").put_file("big.bin", big)
    etag = s3_server.client().head_object(Bucket=bucket, Key="big.bin")["ETag"]
    assert "-" in etag  # S3 marks multipart objects' ETags with the part count
    assert info.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    assert open_store(f"s3://{bucket}").read_bytes("big.bin") == big.read_bytes()


@pytest.mark.parametrize(
    "uri, message",
    [
        ("s3://Bad_Bucket/x", "is not a valid S3 URI"),
        ("s3:///no-bucket", "is not a valid S3 URI"),
    ],
)
def test_malformed_uris(uri, message):
    with pytest.raises(StoreError, match=message):
        open_store(uri)


def test_missing_bucket_and_key(s3_server, bucket):
    with pytest.raises(StoreError, match=r"bucket 'no-such-bucket-x' does not exist; create it or fix the store URI"):
        open_store("s3://no-such-bucket-x/p").write_bytes("a.txt", b"x")
    with pytest.raises(
        StoreError, match=rf"s3://{bucket}/runs/x/train/model\.pth not found; run the step that writes it first"
    ):
        open_store(f"s3://{bucket}").read_bytes("runs/x/train/model.pth")


def test_an_upload_into_a_missing_bucket_is_one_line_and_checked_before_a_run(s3_server, tmp_path):
    """upload_file wraps S3's answer in its own exception; the check before a run asks the bucket."""
    (tmp_path / "notebook.ipynb").write_text("{}")
    store = open_store("s3://no-such-bucket-y/runs")
    with pytest.raises(
        StoreError, match=r"^store s3://no-such-bucket-y/runs: bucket 'no-such-bucket-y' does not exist"
    ):
        store.put_file("r/prepare.ipynb", tmp_path / "notebook.ipynb")
    with pytest.raises(StoreError, match=r"bucket 'no-such-bucket-y' does not exist; create it or fix the store URI$"):
        store.check()
    db = f"sqlite:///{tmp_path}/tracking.db"
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "run", *sets("store=s3://no-such-bucket-y/x", f"db={db}", *SMALL)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: store s3://no-such-bucket-y/x: bucket 'no-such-bucket-y' does not exist; create it or fix the store URI"
    ], proc.stderr
    assert Tracker(db).list_runs() == []  # nothing started, nothing recorded


def test_no_credentials(s3_server, bucket, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(StoreError, match="no AWS credentials found; set AWS_PROFILE"):
        open_store(f"s3://{bucket}").write_bytes("a.txt", b"x")


def test_unreachable_endpoint(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(StoreError, match=r"cannot reach the S3 endpoint http://127\.0\.0\.1:9"):
        open_store("s3://some-bucket").read_bytes("a.txt")


@contextlib.contextmanager
def _locked_bucket(monkeypatch, statements: list[dict]) -> Iterator[tuple[dict, object, Callable[[bytes], None]]]:
    """moto with IAM enforced: bucket ``locked`` holding ``in/d.csv``, and this process using the
    keys of an analyst whose policy is ``statements``. Yields the analyst's environment, an admin
    S3 client and ``iam_after(b"inf")`` to stop the checks again."""
    import json
    import urllib.request

    import boto3
    from support.locals3 import moto_endpoint, s3_environment

    with moto_endpoint() as endpoint:
        env = s3_environment(endpoint)
        admin = {
            "endpoint_url": endpoint,
            "region_name": env["AWS_DEFAULT_REGION"],
            "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        }
        s3 = boto3.client("s3", **admin)
        s3.create_bucket(Bucket="locked")
        s3.put_object(Bucket="locked", Key="in/d.csv", Body=b"a,label\n1,0\n")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="analyst")
        policy = {"Version": "2012-10-17", "Statement": statements}
        iam.put_user_policy(UserName="analyst", PolicyName="analyst", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="analyst")["AccessKey"]

        def iam_after(requests: bytes) -> None:
            url = f"{endpoint}/moto-api/reset-auth"
            urllib.request.urlopen(
                urllib.request.Request(url, data=requests, method="POST", headers={"Content-Type": "text/plain"})
            )

        iam_after(b"0")  # every request from now on is checked against IAM
        env |= {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield env, s3, iam_after


@pytest.mark.services
def test_a_bucket_check_that_is_denied_says_access_denied_not_missing(monkeypatch):
    """Objects may be read but the bucket not listed: a missing key's 404 leads to a bucket check
    that S3 answers 403, which says nothing about whether the bucket exists."""
    from workbench.errors import DataError
    from workbench.storage.sources import read_source

    objects_only = [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::locked/*"}]
    with _locked_bucket(monkeypatch, objects_only), pytest.raises(DataError) as caught:
        read_source("s3://locked/in/missing.csv")
    message = str(caught.value)
    assert "access denied to bucket 'locked'" in message and "does not exist" not in message, message
    assert "s3://locked/in/missing.csv not found" in message


@pytest.mark.services
def test_access_denied_names_the_object_and_loses_nothing(tmp_path, monkeypatch):
    """moto with IAM enforced: an analyst whose policy grants no access to the bucket."""
    from workbench.errors import DataError
    from workbench.storage.sources import read_source

    nothing = [{"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}]
    with _locked_bucket(monkeypatch, nothing) as (env, s3, iam_after):
        with pytest.raises(
            StoreError, match=r"access denied to s3://locked/runs/a\.txt \(AccessDenied\); check the credentials"
        ):
            open_store("s3://locked").write_bytes("runs/a.txt", b"x")
        with pytest.raises(DataError, match=r"^data.source s3://locked: access denied to s3://locked/in/d.csv"):
            read_source("s3://locked/in/d.csv")

        db = tmp_path / "tracking.db"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "workbench",
                "run",
                "--steps",
                "prepare",
                "--set=store=s3://locked/prod",
                f"--set=db=sqlite:///{db}",
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "access denied" in errors[0] and "s3://locked" in errors[0], proc.stderr
        iam_after(b"inf")  # no checks again: the object is still there
        assert s3.get_object(Bucket="locked", Key="in/d.csv")["Body"].read() == b"a,label\n1,0\n"


@pytest.mark.e2e
def test_a_production_run_s3_store_s3_source_postgres_tracking_and_publish(s3_server, bucket, postgres, tmp_path):
    """`workbench run` with an s3:// store, an S3 data source and a PostgreSQL tracking DB, then a
    scoring run that publishes to PostgreSQL: everything lands where production would look."""
    from sqlalchemy import create_engine, text

    from workbench.storage.sources import read_source

    read_source("bundled:digits").to_csv(tmp_path / "digits.csv.gz", index=False)
    s3_server.client().upload_file(str(tmp_path / "digits.csv.gz"), bucket, "input/digits.csv.gz")
    db, warehouse = postgres(), postgres()
    env = {**os.environ, **s3_server.env}

    def run(*items: str, steps: str = "prepare,train,export,validate") -> subprocess.CompletedProcess:
        sets = [f"--set={s}" for s in (f"store=s3://{bucket}/prod", f"db={db}", *items)]
        return subprocess.run(
            [sys.executable, "-m", "workbench", "run", "--steps", steps, *sets],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    proc = run(f"data.source=s3://{bucket}/input/digits.csv.gz", f"publish.url={warehouse}", *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = proc.stdout.split()[1]
    assert proc.stdout.splitlines()[1] == f"report s3://{bucket}/prod/runs/{run_id}/report/index.html"
    keys = open_store(f"s3://{bucket}/prod").list(f"runs/{run_id}")
    for key in (
        "01_prepare_data.ipynb",
        "04_validate_mxnet.ipynb",
        "export/model.onnx",
        "report/index.html",
        "report/02_train.html",
    ):
        assert f"runs/{run_id}/{key}" in keys, key
    run_row = Tracker(db).get_run(run_id)
    assert run_row["status"] == "finished" and run_row["store"] == f"s3://{bucket}/prod"
    assert run_row["metrics"]["rows_total"] == 1797
    onnx = next(a for a in run_row["artifacts"] if a["key"].endswith("export/model.onnx"))
    body = open_store(f"s3://{bucket}/prod").read_bytes(f"runs/{run_id}/export/model.onnx")
    assert hashlib.sha256(body).hexdigest() == onnx["sha256"] and onnx["uri"].startswith("s3://")

    score = run(
        f"score.model_run={run_id}",
        f"score.source=s3://{bucket}/input/digits.csv.gz",
        f"publish.url={warehouse}",
        "publish.table=predictions",
        steps="score",
    )
    assert score.returncode == 0, score.stderr[-3000:]
    score_id = score.stdout.split()[1]
    with create_engine(warehouse).connect() as conn:
        published = dict(
            conn.execute(
                text("select step || ' ' || backend, count(*) from predictions where run_id in (:a, :b) group by 1"),
                {"a": run_id, "b": score_id},
            ).all()
        )
        parity = conn.execute(
            text("select value from predictions_metrics where run_id = :r and name = 'parity_pass'"), {"r": run_id}
        ).scalar()
    assert published == {
        "validate pytorch": 269,
        "validate onnxruntime": 269,
        "validate mxnet": 269,
        "score onnxruntime": 1797,
    }
    assert parity == 1.0


def test_data_sources_on_s3(s3_server, bucket, tmp_path, stage_ctx_factory):
    from workbench.errors import DataError
    from workbench.stages.prepare_data import prepare_data
    from workbench.storage.sources import iter_source, read_source

    digits = read_source("bundled:digits")
    client = s3_server.client()
    digits.to_parquet(tmp_path / "d.parquet")
    digits.to_csv(tmp_path / "d.csv.gz", index=False)
    client.upload_file(str(tmp_path / "d.parquet"), bucket, "in/d.parquet")
    client.upload_file(str(tmp_path / "d.csv.gz"), bucket, "in/d.csv.gz")
    assert read_source(f"s3://{bucket}/in/d.parquet").equals(digits)
    assert sum(t.num_rows for t in iter_source(f"s3://{bucket}/in/d.csv.gz", 500)) == 1797
    with pytest.raises(DataError, match=rf"^data\.source: s3://{bucket}/in/nope\.csv not found; check data\.source$"):
        read_source(f"s3://{bucket}/in/nope.csv")
    with pytest.raises(
        DataError,
        match=r"^data\.source s3://no-such-bucket-y: bucket 'no-such-bucket-y' does not exist; create it or fix the "
        r"data\.source URI$",
    ):
        read_source("s3://no-such-bucket-y/x.csv")
    ctx = stage_ctx_factory("prepare", run_id="s3-no-target")
    with pytest.raises(
        DataError, match=rf"data.source s3://{bucket}/in/d.parquet: data.target 'digit' is not a column"
    ):
        prepare_data(ctx, DataParams(source=f"s3://{bucket}/in/d.parquet", target="digit"), seed=0, progress=False)
    assert not ctx.store.exists(ctx.key("train.parquet"))


def test_a_truncated_parquet_on_s3_is_named_by_its_uri(bucket, s3_server, tmp_path):
    """The error names the s3:// URI the user gave, not the scratch copy it was read from."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workbench.errors import DataError
    from workbench.storage.sources import count_rows, iter_source

    whole = tmp_path / "table.parquet"
    pq.write_table(pa.table({"x": list(range(1000)), "label": [0, 1] * 500}), whole)
    data = whole.read_bytes()
    s3_server.client().put_object(Bucket=bucket, Key="lake/cut.parquet", Body=data[: len(data) // 2])
    uri = f"s3://{bucket}/lake/cut.parquet"
    for read in (count_rows, lambda source: list(iter_source(source, 100))):
        with pytest.raises(DataError) as caught:
            read(uri)
        assert str(caught.value).startswith(f"data.source {uri}: cannot be read as Parquet ("), caught.value
        assert str(tmp_path) not in str(caught.value) and "workbench-" not in str(caught.value)
