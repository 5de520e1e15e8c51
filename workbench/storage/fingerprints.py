"""What stands for a table's content without reading it all: the data part of a step's reuse key.

A local file is its sha256, remembered by path, size and modification time so a large file is
hashed once, not on every run. An S3 object is its ETag with its VersionId or LastModified, from
one HEAD (nothing downloaded). A dataset (a folder, an S3 prefix or a glob of Parquet files) is
its sorted file list with each file's own fingerprint (a LIST gives the ETags; nothing is read), so
adding, removing or changing one file changes it, and the step's rerun line names that file. A SQL
source has no fingerprint of its own: its rows may change at any time, so a step reading it is
never reused, unless the user names a query whose answer stands for the data
(``fingerprint: SELECT max(updated_at), count(*) FROM sales``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from workbench.errors import DataError, StoreError
from workbench.storage.base import hash_file


class HashMemo(Protocol):
    """Where a local file's sha256 is remembered between runs (the tracking database)."""

    def remembered_hash(self, path: str, size: int, mtime_ns: int) -> str | None: ...
    def remember_hash(self, path: str, size: int, mtime_ns: int, sha256: str) -> None: ...


@dataclass(frozen=True)
class Fingerprint:
    """``value`` stands for the data; None when nothing does, and ``why`` says so."""

    value: str | None
    why: str = ""
    files: Mapping[str, str] = field(default_factory=dict)  # a dataset's files (relative path -> fingerprint)


def file_sha256(path: Path, memo: HashMemo | None = None) -> str:
    """The file's sha256, hashed only when its size or modification time differs from the last time."""
    info = path.stat()
    key = str(path.resolve())
    if memo is not None and (known := memo.remembered_hash(key, info.st_size, info.st_mtime_ns)):
        return known
    digest = hash_file(path)
    if memo is not None:
        memo.remember_hash(key, info.st_size, info.st_mtime_ns, digest)
    return digest


def _s3(uri: str, key: str) -> str:
    from workbench.storage.s3 import S3Store

    bucket, _, name = uri.removeprefix("s3://").partition("/")
    try:
        store = S3Store(f"s3://{bucket}", role=key)
    except StoreError as exc:
        raise DataError(f"{key} {uri!r} is not a valid S3 URI; use s3://bucket/path/file.parquet") from exc
    try:
        with store.errors(name, missing=f"check {key}"):
            head = store.client.head_object(Bucket=bucket, Key=name)
    except StoreError as exc:
        said = str(exc)
        raise DataError(said if said.startswith(key) else f"{key}: {said}") from exc
    version = head.get("VersionId") or head["LastModified"].isoformat()
    return f"etag {head['ETag'].strip(chr(34))} {version} {head['ContentLength']} bytes"


def fingerprint(
    source: str | Mapping[str, str],
    key: str,
    memo: HashMemo | None = None,
    query: Callable[[Mapping[str, str], str], str] | None = None,
) -> Fingerprint:
    """The fingerprint of a data source parameter (``key`` names it in messages).

    ``query`` answers a SQL source's fingerprint query as text (it runs read-only, like the source);
    a query that fails raises. A file or object that cannot be found or read has no fingerprint: the
    step then runs, and says what is wrong where it always has.
    """
    if isinstance(source, Mapping):
        if "fingerprint" not in source:
            return Fingerprint(
                None,
                f"{key} is a SQL source without a fingerprint query, so it is never reused "
                "(add fingerprint: SELECT ... whose answer stands for the data to reuse it)",
            )
        if query is None:
            return Fingerprint(None, f"{key}: fingerprint queries cannot be answered here")
        answer = query(source, key)
        return Fingerprint("query " + hashlib.sha256(answer.encode()).hexdigest())
    from workbench.storage.datasets import is_dataset
    from workbench.storage.sources import _locate  # the file a path names, as the step will read it

    try:
        if is_dataset(source):
            return dataset_fingerprint(source, key, memo)
        if source.startswith("s3://"):
            return Fingerprint(_s3(source, key))
        return Fingerprint("sha256 " + file_sha256(_locate(source, key)[0], memo))
    except DataError as exc:  # the step runs and fails on it as it would without reuse, in its notebook
        return Fingerprint(None, str(exc))


def dataset_fingerprint(source: str, key: str, memo: HashMemo | None = None) -> Fingerprint:
    """A dataset's fingerprint over its sorted file list: a local file's sha256 (remembered by path,
    size and mtime), an S3 object's ETag and size from the listing, by path relative to the base."""
    from workbench.storage.datasets import list_dataset

    listing = list_dataset(source, key)
    files = {}
    for item in listing.files:
        if listing.place.scheme == "s3":
            files[item.relative] = f"etag {item.stamp} {item.size} bytes"
        else:
            files[item.relative] = "sha256 " + file_sha256(Path(item.path), memo)
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return Fingerprint(f"dataset {digest} {len(files)} files", files=files)
