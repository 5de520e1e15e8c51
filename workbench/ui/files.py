"""Serving a run's files: only from the store its run recorded, only from inside its folder.

The path in the URL is relative to ``runs/<run_id>/`` in the run's own store (``runs.store``), never
a store the request names. A path that climbs (``..``), starts at a root (``/etc/passwd``), holds a
backslash, an empty or ``.`` part, or a control character is refused before any store is asked;
the local store also refuses a key that resolves outside its folder through a link. Files stream a
chunk at a time from a folder or from S3. What the store holds is the run's output, not this app's
page: HTML and SVG are served sandboxed (no script, an origin of their own).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

from workbench.errors import StoreError
from workbench.storage import open_store
from workbench.storage.catalog import RunLayout

# shown in the browser rather than saved: figures, the report's pages, text
INLINE = ("text/", "image/", "application/json")


def run_key(run_id: str, path: str) -> str:
    """The store key of ``path`` inside the run's folder; StoreError for any path that could leave it."""
    parts = path.split("/")
    if (
        not path
        or any(part in ("", ".", "..") for part in parts)
        or "\\" in path
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in path)
    ):
        raise StoreError(f"run {run_id}: {path!r} is not a file of the run; take the links on the run's page")
    return f"{RunLayout(run_id).root}/{path}"


@dataclass(frozen=True)
class Download:
    """A file on its way out: its bytes a chunk at a time and the headers that describe it."""

    chunks: Iterator[bytes]
    media_type: str
    headers: dict[str, str]


def open_file(run_id: str, store_uri: str, path: str) -> Download:
    """``path`` of run ``run_id`` from ``store_uri`` (the run's recorded store), opened for streaming."""
    key = run_key(run_id, path)
    chunks = open_store(store_uri).stream(key)
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    name = path.rsplit("/", 1)[-1]
    disposition = "inline" if media_type.startswith(INLINE) else "attachment"
    headers = {
        "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(name, safe='')}",
        "Content-Security-Policy": "sandbox",  # a page of the run's may show, never script this app
        "X-Content-Type-Options": "nosniff",
    }
    if media_type.startswith("text/"):
        media_type += "; charset=utf-8"
    return Download(chunks, media_type, headers)
