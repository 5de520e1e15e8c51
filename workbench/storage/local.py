"""A folder on this machine: the embedded default store."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from workbench.config.parameters import project_root
from workbench.errors import StoreError
from workbench.storage.base import ArtifactInfo, ObjectStat, hash_file


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; artifacts get the usual permissions.
_FILE_MODE = 0o666 & ~_current_umask()


# What to do about a failed write, by its OS reason; anything else points at the disk itself.
_WRITE_ADVICE = {
    errno.ENOSPC: "free space or point store elsewhere",
    errno.EDQUOT: "free space or point store elsewhere",
    errno.EFBIG: "point store at a file system that takes larger files",
    errno.EROFS: "point store at a writable folder",
    errno.EACCES: "check the 'store' path and its permissions",
    errno.EPERM: "check the 'store' path and its permissions",
}


def _write_failed(exc: OSError, ours: tuple[str, ...]) -> bool:
    """Whether ``exc`` is about writing the artifact rather than about the file being copied in.

    A write error carries no file name (``write``) or our temporary file's (``sendfile`` names the
    source first and the destination second); a missing source file is the caller's bug.
    """
    return exc.filename is None or str(exc.filename) in ours or str(exc.filename2) in ours


class LocalStore:
    """A folder on this machine; the embedded default."""

    def __init__(self, root: str | Path) -> None:
        path = Path(root).expanduser()
        if not path.is_absolute():
            path = project_root() / path
        self.path = path.resolve()
        self.root = str(self.path)

    def check(self) -> None:
        """The folder exists or can be made, and takes files: asked before a run starts."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as exc:
            what = "it is a file, not a folder" if self.path.is_file() else exc.strerror
            raise StoreError(
                f"cannot write to store {self.root}: {what}; check the 'store' path and its permissions"
            ) from exc

    def _file(self, key: str) -> Path:
        target = (self.path / key).resolve()
        if self.path not in target.parents:
            raise StoreError(f"artifact key {key!r} leaves the store {self.root}; use a relative key")
        return target

    def uri(self, key: str) -> str:
        return str(self._file(key))

    def local_path(self, key: str) -> Path:
        """Direct path for libraries that want a file name (the file need not exist yet)."""
        return self._file(key)

    def _commit(self, key: str, fill: Callable[[Path], None]) -> ArtifactInfo:
        target = self._file(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            os.close(fd)
        except OSError as exc:
            raise StoreError(
                f"cannot write to store {self.root}: {exc.strerror}; check the 'store' path and its permissions"
            ) from exc
        try:
            fill(Path(tmp))
            os.chmod(tmp, _FILE_MODE)
            info = ArtifactInfo(key, str(target), hash_file(Path(tmp)), os.path.getsize(tmp))
            os.replace(tmp, target)
        except OSError as exc:
            if not _write_failed(exc, (tmp, str(target))):
                raise
            advice = _WRITE_ADVICE.get(exc.errno, "check the disk behind the 'store' folder")
            raise StoreError(f"cannot write {target}: {exc.strerror or exc}; {advice}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return info

    def write_bytes(self, key: str, data: bytes) -> ArtifactInfo:
        return self._commit(key, lambda tmp: tmp.write_bytes(data))

    def put_file(self, key: str, path: Path) -> ArtifactInfo:
        return self._commit(key, lambda tmp: shutil.copyfile(path, tmp))

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._file(key).read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(f"artifact {self.uri(key)} not found; run the step that writes it first") from exc

    def stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The file's bytes a chunk at a time (a download never holds a whole artifact in memory);
        a missing file raises here, before the first chunk."""
        try:
            fh = open(self._file(key), "rb")  # noqa: SIM115 -- closed by the generator below
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise StoreError(f"artifact {self.uri(key)} not found; run the step that writes it first") from exc

        def chunks() -> Iterator[bytes]:
            with fh:
                yield from iter(lambda: fh.read(chunk_size), b"")

        return chunks()

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()

    def remove(self, key: str) -> None:
        """Unlink this key's file (a hard link another run shares keeps that run's file)."""
        target = self._file(key)
        try:
            target.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot remove {target}: {exc.strerror or exc}; check the 'store' folder's permissions"
            ) from exc

    def list(self, prefix: str) -> list[str]:
        base = self._file(prefix) if prefix else self.path
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.path).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.endswith(".part")
        )

    def stat(self, key: str) -> ObjectStat | None:
        path = self._file(key)
        try:
            info = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectStat(info.st_size, None, info.st_mtime_ns, path) if path.is_file() else None

    def copy(self, source: str, key: str, sha256: str) -> ArtifactInfo:
        """A hard link where the file system allows it (artifacts are never changed in place: a
        rewrite replaces the file), else a copy; either appears under ``key`` at once and whole."""
        origin = self._file(source)

        def fill(tmp: Path) -> None:
            tmp.unlink()
            try:
                os.link(origin, tmp)
            except OSError:  # another file system, or one without hard links
                shutil.copyfile(origin, tmp)

        target = self._file(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            os.close(fd)
            try:
                fill(Path(tmp))
                size = os.path.getsize(tmp)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as exc:
            advice = _WRITE_ADVICE.get(exc.errno, "check the disk behind the 'store' folder")
            raise StoreError(f"cannot copy {origin} to {target}: {exc.strerror or exc}; {advice}") from exc
        return ArtifactInfo(key, str(target), sha256, size)
