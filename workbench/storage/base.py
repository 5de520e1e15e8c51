"""What every artifact store is: one small interface, atomic writes, sha256 and size recorded.

Every write is atomic (temporary name, then rename, or one PUT) and returns the object's sha256
and size, so the tracking DB can prove later what a run produced. A reader never sees half an
artifact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from workbench.errors import StoreError


@dataclass(frozen=True)
class ArtifactInfo:
    key: str
    uri: str
    sha256: str
    bytes: int


def verified(data: bytes, recorded: str | None, uri: str) -> bytes:
    """``data`` as read back, refused unless its sha256 is the one recorded when it was written: a
    model file changed or replaced after its run (by hand, by another tool) is never scored or
    served as the run's. ``recorded`` None (nothing recorded) lets it pass."""
    if recorded is not None:
        found = hashlib.sha256(data).hexdigest()
        if found != recorded:
            raise StoreError(
                f"{uri}: its sha256 {found[:12]}... is not the {recorded[:12]}... recorded when the run wrote it, "
                "so it was changed or replaced since; run that step again, or restore the file"
            )
    return data


@dataclass(frozen=True)
class ObjectStat:
    """What a store says of a stored object without reading it: its size, the sha256 it declares
    (S3 objects carry the digest written with them; a local file declares none and is hashed),
    and a local file's modification time, which keys a remembered hash."""

    bytes: int
    sha256: str | None = None
    mtime_ns: int | None = None
    path: Path | None = None  # a local file's path


class Store(Protocol):
    """What a pipeline step needs from wherever artifacts live. Keys use ``/`` separators."""

    root: str

    def check(self) -> None: ...  # raise StoreError when artifacts cannot be written here
    def uri(self, key: str) -> str: ...
    def write_bytes(self, key: str, data: bytes) -> ArtifactInfo: ...
    def put_file(self, key: str, path: Path) -> ArtifactInfo: ...
    def read_bytes(self, key: str) -> bytes: ...
    def stream(self, key: str, chunk_size: int = ...) -> Iterator[bytes]: ...  # opened at once, read lazily
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def stat(self, key: str) -> ObjectStat | None: ...  # None: no such object
    # a copy inside the store without moving the bytes through this process where the store
    # allows (a hard link, a server-side copy); ``sha256`` is the source's verified digest
    def copy(self, source: str, key: str, sha256: str) -> ArtifactInfo: ...
    def remove(self, key: str) -> None: ...  # gone afterwards; no error when it was not there


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
