from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from workbench.errors import StoreError
from workbench.store import LocalStore, open_store

ROOT = Path(__file__).resolve().parents[1]


def test_write_read_roundtrip_records_hash_and_size(tmp_path):
    store = open_store(str(tmp_path))
    info = store.write_bytes("runs/r1/step/a.bin", b"hello")
    assert info.sha256 == hashlib.sha256(b"hello").hexdigest() and info.bytes == 5
    assert store.read_bytes("runs/r1/step/a.bin") == b"hello"
    assert Path(info.uri) == tmp_path / "runs/r1/step/a.bin"
    assert store.exists("runs/r1/step/a.bin") and not store.exists("runs/r1/step/b.bin")
    assert store.list("runs/r1") == ["runs/r1/step/a.bin"]


def test_put_file_copies_and_files_are_world_readable(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("x" * 1000)
    store = LocalStore(tmp_path / "store")
    info = store.put_file("k/src.txt", src)
    assert info.bytes == 1000
    assert (tmp_path / "store/k/src.txt").stat().st_mode & 0o044


def test_a_failed_write_leaves_neither_partial_nor_final_file(tmp_path):
    store = LocalStore(tmp_path)
    store.write_bytes("keep.txt", b"old")
    with pytest.raises(FileNotFoundError):
        store.put_file("keep.txt", tmp_path / "missing-source")
    assert store.read_bytes("keep.txt") == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_missing_artifact_names_uri(tmp_path):
    with pytest.raises(
        StoreError, match=r"artifact .*runs/x/train/model.pth not found; run the step that writes it first"
    ):
        LocalStore(tmp_path).read_bytes("runs/x/train/model.pth")


def test_keys_cannot_escape_the_store(tmp_path):
    with pytest.raises(StoreError, match="leaves the store"):
        LocalStore(tmp_path / "s").write_bytes("../outside.txt", b"x")
    assert not (tmp_path / "outside.txt").exists()


def test_unwritable_store_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot write to store"):
        LocalStore(blocker).write_bytes("a.txt", b"x")


def test_scheme_registry(tmp_path):
    assert open_store(f"file://{tmp_path}").root == str(tmp_path)
    with pytest.raises(StoreError, match=r"store 'gs://bucket/x': unsupported scheme 'gs'"):
        open_store("gs://bucket/x")


def test_relative_roots_start_at_the_project(monkeypatch):
    monkeypatch.chdir(ROOT / "notebooks")
    assert LocalStore("artifacts").root == str(ROOT / "artifacts")
