from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from workbench.errors import StoreError
from workbench.storage import open_store
from workbench.storage.local import LocalStore

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


def test_a_store_that_cannot_take_files_is_named_before_a_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match=r"^cannot write to store .*/file: it is a file, not a folder; check"):
        LocalStore(blocker).check()
    with pytest.raises(StoreError, match=r"^cannot write to store /proc/nope: No such file or directory; check"):
        LocalStore("/proc/nope").check()
    LocalStore(tmp_path / "new" / "store").check()
    assert (tmp_path / "new" / "store").is_dir()


def test_scheme_registry(tmp_path):
    assert open_store(f"file://{tmp_path}").root == str(tmp_path)
    with pytest.raises(StoreError, match=r"store 'gs://bucket/x': unsupported scheme 'gs'"):
        open_store("gs://bucket/x")


def test_relative_roots_start_at_the_project(monkeypatch):
    monkeypatch.chdir(ROOT / "notebooks")
    assert LocalStore("artifacts").root == str(ROOT / "artifacts")


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB file system (tmpfs), so a write runs out of space as on a full disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("how", ["write_bytes", "put_file"])
def test_a_full_disk_is_one_line_naming_the_artifact(tiny_disk, tmp_path, how):
    store = LocalStore(tiny_disk / "store")
    key = "runs/r1/prepare/train.parquet"
    data = os.urandom(1 << 20)
    with pytest.raises(StoreError) as caught:
        if how == "write_bytes":
            store.write_bytes(key, data)
        else:
            (tmp_path / "big.bin").write_bytes(data)
            store.put_file(key, tmp_path / "big.bin")
    final = tiny_disk / "store" / key
    assert str(caught.value) == f"cannot write {final}: No space left on device; free space or point store elsewhere"
    assert list((tiny_disk / "store").rglob("*.*")) == []  # no .part file, nothing under the final name
    assert store.write_bytes("runs/r1/prepare/small.json", b"{}").bytes == 2  # the space came back
