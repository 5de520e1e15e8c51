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


@dataclass(frozen=True)
class ArtifactInfo:
    key: str
    uri: str
    sha256: str
    bytes: int


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


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
