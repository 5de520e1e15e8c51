"""A Parquet table as an ordered list of files (fragments), each read on its own by a worker.

A source for ``engine: dask`` is a Parquet file, a folder of them, an S3 prefix ending in ``/`` or a
glob (``s3://lake/sales/*.parquet``); its files in name order are its partitions, and their order is
the table's row order, as one pass over the whole table reads it. Workers read S3 objects in ranges
through Arrow's S3 client (``AWS_ENDPOINT_URL`` and the usual credential chain), never whole.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.errors import DataError
from workbench.storage.catalog import FORMATS

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs


@dataclass(frozen=True)
class Fragment:
    """One file of a table: its place in the table's order, its URI, its rows and the first row's number."""

    index: int
    uri: str
    rows: int
    offset: int


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    import pyarrow.fs as pafs

    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        options = {"endpoint_override": endpoint, "region": region} if endpoint else {"region": region}
        return pafs.S3FileSystem(**{k: v for k, v in options.items() if v}), uri.removeprefix("s3://")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _uri(uri: str, path: str) -> str:
    return f"s3://{path}" if uri.startswith("s3://") else path


def fragments(source: object, key: str) -> list[Fragment]:
    """The Parquet files of ``source`` in name order, with their row counts from their footers;
    anything else (CSV, SQL, no match) is one line naming ``key`` and the source."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    if not isinstance(source, str) or source.startswith(("bundled:", "split:")):
        raise DataError(
            f"{key} {source!r}: engine dask reads Parquet files (a file, a folder, an s3:// prefix ending in / "
            "or a glob); write the table as Parquet or set engine: local"
        )
    fs, path = _filesystem(source)
    pattern = any(c in path for c in "*?[")
    if pattern:
        base = path[: min(path.index(c) for c in "*?[" if c in path)].rpartition("/")[0]
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        found = [i.path for i in fs.get_file_info(selector) if i.is_file and fnmatch.fnmatchcase(i.path, path)]
    else:
        info = fs.get_file_info(path.rstrip("/"))
        if info.type == pafs.FileType.File:
            found = [info.path]
        elif info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(path.rstrip("/"), recursive=True)
            found = [i.path for i in fs.get_file_info(selector) if i.is_file]
        else:
            found = []
    found = sorted(
        p for p in found if p.endswith(FORMATS["parquet"]) and not os.path.basename(p).startswith(("_", "."))
    )
    if not found:
        raise DataError(f"{key} {source}: no Parquet files there; check the path (a glob matches file names)")
    out, offset = [], 0
    for i, file in enumerate(found):
        with fs.open_input_file(file) as handle:
            rows = pq.ParquetFile(handle).metadata.num_rows
        out.append(Fragment(i, _uri(source, file), rows, offset))
        offset += rows
    return out


def read_fragment(fragment: Fragment, rows: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The fragment's rows as Arrow tables of at most ``rows`` rows, in file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = _filesystem(fragment.uri)
    with fs.open_input_file(path) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(rows, columns=columns):
            yield pa.Table.from_batches([batch])
