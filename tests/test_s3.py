"""The S3 store against a real S3 endpoint over HTTP (moto's server)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid

import pytest
from conftest import ROOT, SMALL

from workbench.errors import StoreError
from workbench.s3 import S3Store
from workbench.store import open_store
from workbench.tracking import Tracker


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
    with pytest.raises(StoreError, match=rf"artifact s3://{bucket}/runs/x/train/model\.pth not found"):
        open_store(f"s3://{bucket}").read_bytes("runs/x/train/model.pth")


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


def test_a_whole_run_into_s3(s3_server, bucket, place):
    """`workbench run` with an s3:// store: notebooks, artifacts and report all land in the bucket."""
    env = {**os.environ, **s3_server.env}
    sets = [f"--set={s}" for s in (f"store=s3://{bucket}/prod", f"db={place.db}", *SMALL)]
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "run", *sets],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
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
    run = Tracker(place.db).get_run(run_id)
    assert run["status"] == "finished" and run["store"] == f"s3://{bucket}/prod"
    onnx = next(a for a in run["artifacts"] if a["key"].endswith("export/model.onnx"))
    body = open_store(f"s3://{bucket}/prod").read_bytes(f"runs/{run_id}/export/model.onnx")
    assert hashlib.sha256(body).hexdigest() == onnx["sha256"] and onnx["uri"].startswith("s3://")
