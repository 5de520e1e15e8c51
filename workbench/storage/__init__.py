"""Where artifacts and tables live: the artifact stores, data sources and the publish target.

The store for a URI is chosen by its scheme; only this registry imports the backends.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlparse

from workbench.errors import StoreError
from workbench.storage.base import ArtifactInfo, Store
from workbench.storage.local import LocalStore

__all__ = ["ArtifactInfo", "LocalStore", "Store", "open_store"]


def _s3(uri: str) -> Store:
    from workbench.storage.s3 import S3Store  # boto3 is imported only by runs that use S3

    return S3Store(uri)


_BACKENDS: dict[str, Callable[[str], Store]] = {
    "": LocalStore,
    "file": lambda uri: LocalStore(urlparse(uri).path),
    "s3": _s3,
}


def open_store(uri: str) -> Store:
    """The store for ``uri``: a folder path, a ``file://`` URI or ``s3://bucket/prefix``."""
    scheme = urlparse(uri).scheme if "://" in uri else ""
    try:
        backend = _BACKENDS[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in _BACKENDS if s) + " or a folder path"
        raise StoreError(f"store {uri!r}: unsupported scheme {scheme!r}; use {known}") from None
    return backend(uri)
