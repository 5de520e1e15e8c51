"""Partitioned Parquet datasets read as one table: a folder, an S3 prefix ending in ``/``, or a glob.

Tables in a lake are many Parquet files, written by Spark, Glue or Athena under hive folders
(``s3://lake/sales/date=2026-12-01/part-0000.parquet``); a single Parquet file is a dataset of one
file. :func:`open_dataset` lists them, reads each file's footer (its schema and row count, never its
rows) and unifies the schemas; the rows are read later, one file at a time and one record batch at a
time, through ``pyarrow.dataset``.
An S3 object is read in ranged GETs through pyarrow's S3 filesystem: nothing is downloaded whole
and nothing lands on local disk. A source is only ever read: nothing here writes under it.

The order is part of the contract. Files are sorted by path, rows keep their order within a file,
so reading :attr:`Dataset.fragments` one after another with :meth:`FragmentReader.read` yields
exactly the rows ``iter_source`` yields, in the same order: an engine that reads the fragments
in parallel (one per worker) sees the same table as the local engine does. A :class:`Fragment`
and a :class:`FragmentReader` are small frozen records (paths, sizes, an Arrow schema, the
endpoint): they pickle cheaply, and a worker process opens the filesystem again from them, with
its own credentials (the environment, a profile or an instance role, as the AWS SDK finds them).

Schemas unify as a reader of the whole table expects: a column missing from some files is null
there, integers meeting floats become floats, narrower types widen; anything else (text in one
file where another holds numbers) is refused in one line naming the file and the column.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from workbench.config.parameters import project_root
from workbench.errors import DataError, StoreError
from workbench.storage.catalog import suffix

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    from workbench.storage.s3 import S3Store

PARQUET_SUFFIXES = (suffix("parquet"), ".pq")  # ".pq": what some writers name them
GLOB_CHARS = "*?["
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"  # how Spark and Hive write a null partition value
BATCH_ROWS = 65_536  # rows per record batch where the caller does not choose
FOOTER_THREADS = 16  # footers read at once (each is a small ranged read; S3's latency dominates)
SHOWN = 5  # file names listed in one message before the rest are counted
INT64 = re.compile(r"-?\d{1,18}")


# ---- what a source string names -------------------------------------------------------------------


def is_dataset(source: object) -> bool:
    """Whether a source string names a dataset (many Parquet files) rather than one file: a path or
    S3 prefix ending in ``/``, a glob, or a local folder."""
    if not isinstance(source, str) or source.startswith(("bundled:", "split:")):
        return False
    if source.endswith("/") or any(c in source for c in GLOB_CHARS):
        return True
    return "://" not in source and _local_path(source).is_dir()


def _local_path(source: str) -> Path:
    path = Path(source).expanduser()
    return path if path.is_absolute() else project_root() / path


def _hidden(name: str) -> bool:
    """Names that writers leave beside the data (``_SUCCESS``, ``_metadata``, ``.part-0.crc``,
    ``_temporary/``), skipped as Spark and pyarrow skip them."""
    return name.startswith(("_", "."))


def _glob_matches(parts: list[str], pattern: list[str]) -> bool:
    """A path's segments against a glob's: ``*``, ``?`` and ``[...]`` stay within one segment,
    ``**`` spans any number of them."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_matches(parts[1:], pattern[1:])


# ---- where the files are --------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """The filesystem a dataset lives on, as plain values a worker process can open again:
    ``local``, or ``s3`` with the endpoint and region boto3 resolved where the dataset was opened
    (``AWS_ENDPOINT_URL``, the profile's region). Credentials are not part of it."""

    scheme: str = "local"
    endpoint: str | None = None
    region: str | None = None

    def filesystem(self) -> pafs.FileSystem:
        return _filesystem(self)

    def uri(self, path: str) -> str:
        """A file as its user names it: a local path, or ``s3://bucket/key``."""
        return f"s3://{path}" if self.scheme == "s3" else path


@functools.lru_cache(maxsize=8)
def _filesystem(place: Place) -> pafs.FileSystem:
    """One filesystem per place and process (an S3 client keeps its connections)."""
    import pyarrow.fs as pafs

    if place.scheme != "s3":
        return pafs.LocalFileSystem()
    return pafs.S3FileSystem(
        endpoint_override=place.endpoint,
        region=place.region,
        connect_timeout=5,
        request_timeout=60,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=5),
    )


@dataclass(frozen=True)
class Listed:
    """One data file as listed: its path on the filesystem, relative to the dataset's base folder,
    its size, and what changes when its content does (an S3 ETag; a local file's mtime)."""

    path: str
    relative: str
    size: int
    stamp: str


@dataclass(frozen=True)
class Listing:
    """The files a dataset source names, sorted by path; no file has been opened."""

    source: str
    key: str
    place: Place
    base: str
    files: tuple[Listed, ...]

    def uri(self, item: Listed) -> str:
        return self.place.uri(item.path)


def list_dataset(source: str, key: str = "data.source") -> Listing:
    """The Parquet files a folder, an S3 prefix ending in ``/`` or a glob names, sorted by path.

    Names starting with ``_`` or ``.`` are skipped (``_SUCCESS``, ``.crc`` files). A folder must
    hold Parquet files only (``.parquet`` or ``.pq``): any other is refused by name; a glob reads
    what it matches. An empty match is refused in one line naming the pattern. A single Parquet
    file is a dataset of one fragment, so an engine that reads fragments takes it too.
    """
    if not is_dataset(source):
        return _one_file(source, key)
    pattern = None
    glob_at = next((i for i, c in enumerate(source) if c in GLOB_CHARS), None)
    if glob_at is not None:
        cut = source.rfind("/", 0, glob_at)
        folder, pattern = (source[:cut], source[cut + 1 :]) if cut >= 0 else ("", source)
    else:
        folder = source.rstrip("/")
    if source.startswith("s3://"):
        place, base, found = _s3_files(source, folder, pattern, key)
    elif "://" in source:
        raise DataError(
            f"{key} {source!r}: {source.split('://', 1)[0]}:// datasets are not supported; use s3:// or a folder"
        )
    else:
        place, base, found = _local_files(source, folder, key, pattern is not None)
    found = [f for f in found if not any(_hidden(part) for part in f.relative.split("/"))]
    if pattern is not None:
        wanted = pattern.split("/")
        found = [f for f in found if _glob_matches(f.relative.split("/"), wanted)]
    else:
        other = [f.relative for f in found if not f.relative.lower().endswith(PARQUET_SUFFIXES)]
        if other:
            more = f" and {len(other) - SHOWN} more" if len(other) > SHOWN else ""
            raise DataError(
                f"{key} {source}: not Parquet: {', '.join(sorted(other)[:SHOWN])}{more}; a dataset folder holds "
                "only .parquet files (names starting with _ or . are skipped); move the others out or name the "
                "files with a glob (folder/*.parquet)"
            )
    if not found:
        what = "no file matches the pattern" if pattern is not None else "no Parquet files in it"
        raise DataError(f"{key} {source}: {what}; check the path (a dataset is read from Parquet files)")
    return Listing(source, key, place, base, tuple(sorted(found, key=lambda f: f.path)))


def _one_file(source: str, key: str) -> Listing:
    if source.startswith("s3://"):
        from workbench.storage.s3 import S3Store

        bucket, _, name = source.removeprefix("s3://").partition("/")
        try:
            store = S3Store(f"s3://{bucket}", role=key)
        except StoreError as exc:
            raise DataError(f"{key} {source!r} is not a valid S3 URI; use s3://bucket/path/file.parquet") from exc
        try:
            with store.errors(name, missing=f"check {key}"):
                head = store.client.head_object(Bucket=bucket, Key=name)
        except StoreError as exc:
            try:  # a prefix named without its slash?
                listed = store.client.list_objects_v2(Bucket=bucket, Prefix=name.rstrip("/") + "/", MaxKeys=1)
            except Exception:  # broad on purpose: no bucket, no right to list: the first answer stands
                listed = {}
            if name and "not found" in str(exc) and listed.get("KeyCount"):
                raise DataError(
                    f"{key} {source}: no object of that name, but a prefix with objects under it; end it with / "
                    f"({source.rstrip('/')}/) to read them as one dataset"
                ) from exc
            said = str(exc)
            raise DataError(said if said.startswith(key) else f"{key}: {said}") from exc
        found = Listed(f"{bucket}/{name}", name.rpartition("/")[2], int(head["ContentLength"]), head["ETag"].strip('"'))
        return Listing(source, key, _s3_place(store, bucket), f"{bucket}/{name}".rpartition("/")[0], (found,))
    path = _local_path(source)
    if not path.is_file():
        raise DataError(f"{key}: no file at {path}; check the path")
    info = path.stat()
    found = Listed(str(path), path.name, info.st_size, str(info.st_mtime_ns))
    return Listing(source, key, Place(), str(path.parent), (found,))


def _local_files(source: str, folder: str, key: str, glob: bool) -> tuple[Place, str, list[Listed]]:
    root = _local_path(folder) if folder else project_root()
    if glob and not root.exists():  # said as a pattern that matches nothing
        return Place(), str(root), []
    if not root.is_dir():
        what = "no folder" if not root.exists() else "not a folder"
        raise DataError(f"{key} {source}: {what} at {root}; check the path")
    found = []
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not _hidden(d)]
        for name in files:
            path = Path(top) / name
            try:
                info = path.stat()
            except OSError:  # gone since the walk saw it
                continue
            found.append(Listed(str(path), path.relative_to(root).as_posix(), info.st_size, str(info.st_mtime_ns)))
    return Place(), str(root), found


def _s3_files(source: str, folder: str, pattern: str | None, key: str) -> tuple[Place, str, list[Listed]]:
    """The objects under an S3 prefix, listed by boto3 (one LIST per 1,000 keys: size and ETag
    come with it). A glob lists only under its literal start (``date=2026-12-`` of ``date=2026-12-*``)."""
    from workbench.storage.s3 import S3Store

    bucket, _, prefix = folder.removeprefix("s3://").partition("/")
    try:
        store = S3Store(f"s3://{bucket}", role=key)
    except StoreError as exc:
        raise DataError(f"{key} {source!r} is not a valid S3 URI; use s3://bucket/prefix/ or a glob") from exc
    base = f"{prefix}/" if prefix else ""
    literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0] if pattern else ""
    found = []
    try:
        with store.errors(base, missing=f"check {key}"):
            pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base + literal)
            for page in pages:
                for item in page.get("Contents", []):
                    if item["Key"].endswith("/"):  # a folder marker some consoles create
                        continue
                    found.append(
                        Listed(
                            f"{bucket}/{item['Key']}",
                            item["Key"][len(base) :],
                            int(item["Size"]),
                            item["ETag"].strip('"'),
                        )
                    )
    except StoreError as exc:
        said = str(exc)
        raise DataError(said if said.startswith(key) else f"{key}: {said}") from exc
    return _s3_place(store, bucket), f"{bucket}/{prefix}".rstrip("/"), found


def _s3_place(store: S3Store, bucket: str) -> Place:
    """The endpoint and region boto3 would use, for pyarrow's S3 client: a custom endpoint
    (``AWS_ENDPOINT_URL``, a MinIO or a local server) is passed on, AWS's own is left to pyarrow
    with the bucket's region."""
    import pyarrow.fs as pafs

    meta = store.client.meta
    endpoint = meta.endpoint_url
    if "amazonaws.com" not in endpoint:
        return Place("s3", endpoint, meta.region_name)
    try:
        region = pafs.resolve_s3_region(bucket)
    except OSError:
        region = meta.region_name
    return Place("s3", None, region)


# ---- fragments and their schema -------------------------------------------------------------------


@dataclass(frozen=True)
class Fragment:
    """One file of a dataset: its place in the dataset's order (``index``; ``offset`` is the table's
    row number of its first row), where it is, its size and rows (from its footer), and the hive
    folder it sits in relative to the dataset's base (``date=2026-12-01/region=eu``), whose values
    become columns. ``columns`` are those the file itself holds (its footer's and its folder's):
    the dataset's other columns read as null in it."""

    index: int
    offset: int
    path: str
    uri: str
    size: int
    rows: int
    folder: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class FragmentReader:
    """Reads a fragment's rows in the dataset's unified schema, one record batch at a time.

    Cheap to pickle (an Arrow schema and plain values): a worker process reads any fragment with
    it, opening the filesystem itself on first use.
    """

    place: Place
    schema: pa.Schema
    partitioning: pa.Schema
    key: str = "data.source"

    def read(
        self, fragment: Fragment, batch_size: int = BATCH_ROWS, columns: list[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The fragment's rows in file order, columns in :attr:`schema` (a missing column null, an
        integer column of a float one as floats, the hive folder's values as columns), or only
        ``columns``, in that order."""
        import pyarrow as pa
        import pyarrow.dataset as ds

        # pre_buffer reads a whole file's column chunks ahead: memory then grew with the file
        options = ds.ParquetFragmentScanOptions(pre_buffer=False)
        try:
            piece = _parquet_format().make_fragment(
                fragment.path,
                self.place.filesystem(),
                partition_expression=self._partition(fragment),
                file_size=fragment.size,
            )
            yield from piece.to_batches(
                schema=self.schema,
                columns=columns,
                batch_size=batch_size,
                batch_readahead=1,
                fragment_scan_options=options,
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise DataError(
                f"{self.key} {fragment.uri}: cannot be read as Parquet ({_reason(exc)}); is the file complete?"
            ) from exc

    def _partition(self, fragment: Fragment) -> ds.Expression:
        import pyarrow.dataset as ds

        if not len(self.partitioning) or not fragment.folder:
            return ds.scalar(True)
        return ds.HivePartitioning(self.partitioning).parse(fragment.folder + "/")


@functools.cache
def _parquet_format() -> ds.ParquetFileFormat:
    import pyarrow.dataset as ds

    return ds.ParquetFileFormat()


@dataclass(frozen=True)
class Dataset:
    """A dataset source resolved: its fragments in path order, their unified schema, and a reader.

    ``for f in dataset.fragments: yield from dataset.reader.read(f)`` is the table, row for row in
    the order ``iter_source`` gives it; :attr:`rows` is known from the footers without reading rows.
    """

    source: str
    fragments: tuple[Fragment, ...]
    reader: FragmentReader

    @property
    def schema(self) -> pa.Schema:
        return self.reader.schema

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.fragments)

    def batches(self, batch_size: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Every fragment's record batches, one fragment after another."""
        for fragment in self.fragments:
            yield from self.reader.read(fragment, batch_size)


def open_dataset(source: str, key: str = "data.source") -> Dataset:
    """List a dataset source, read each file's footer and unify the schemas (see the module's
    docstring); refused in one line naming the file and column that cannot be unified."""
    listing = list_dataset(source, key)
    read = functools.partial(_footer, listing.place, key=key)
    with ThreadPoolExecutor(max_workers=min(FOOTER_THREADS, len(listing.files))) as pool:
        footers = list(pool.map(lambda item: read(item.path, item.size, item.stamp), listing.files))
    folders = [item.relative.rpartition("/")[0] for item in listing.files]
    partitioning = _partition_schema(folders)
    schema = _unify(listing, [schema for schema, _ in footers], partitioning)
    counts = [rows for _, rows in footers]
    offsets = list(itertools.accumulate(counts, initial=0))[:-1]
    fragments = tuple(
        Fragment(index, offset, item.path, listing.uri(item), item.size, rows, folder, (*own.names, *_keys(folder)))
        for index, (item, (own, rows), folder, offset) in enumerate(
            zip(listing.files, footers, folders, offsets, strict=True)
        )
    )
    return Dataset(source, fragments, FragmentReader(listing.place, schema, partitioning, key))


def first_lacking(fragments: Iterable[Fragment], columns: Iterable[str]) -> tuple[Fragment, list[str]] | None:
    """The first file, in the dataset's order, that lacks some of ``columns`` (they would read as null
    in all its rows), and those it lacks; None when every file holds them all. For a reader that
    needs each file to hold a column (a model's inputs), not merely the unified schema."""
    wanted = list(columns)
    for fragment in fragments:
        held = set(fragment.columns)
        missing = [c for c in wanted if c not in held]
        if missing:
            return fragment, missing
    return None


def check_dataset(source: str, key: str = "data.source") -> Listing:
    """The dataset is there and can be read: listed (no match, a missing folder or bucket, files
    that are not Parquet are refused) and its first file's footer read. Cheap enough to ask before
    a run starts."""
    listing = list_dataset(source, key)
    first = listing.files[0]
    _footer(listing.place, first.path, first.size, first.stamp, key)
    return listing


@functools.lru_cache(maxsize=4096)
def _footer(place: Place, path: str, size: int, stamp: str, key: str) -> tuple[pa.Schema, int]:
    """A file's Arrow schema and row count from its footer (one ranged read), remembered by path,
    size and ETag or mtime, so the second pass of a step lists and does not read again."""
    import pyarrow as pa

    try:
        piece = _parquet_format().make_fragment(path, place.filesystem(), file_size=size)
        return piece.physical_schema, piece.metadata.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        named = str(path).lower().endswith(PARQUET_SUFFIXES)  # named Parquet: a file cut short, not another kind
        if "magic bytes not found" in str(exc) and not named:  # no Parquet footer at all: another kind of file
            raise DataError(
                f"{key} {place.uri(path)}: not a Parquet file (no Parquet footer); a dataset reads Parquet only: "
                "narrow the pattern to the Parquet files (e.g. *.parquet), or convert or move this file"
            ) from exc
        raise DataError(
            f"{key} {place.uri(path)}: cannot be read as Parquet ({_reason(exc)}); is the file complete?"
        ) from exc


def _reason(exc: Exception) -> str:
    said = str(exc).strip()
    first = said.splitlines()[0] if said else type(exc).__name__
    return re.sub(r"\s*\(Request ID: [^)]*\)", "", first)


def _keys(folder: str) -> list[str]:
    """The hive keys of a file's folder (``date`` and ``region`` of ``date=2026-12-01/region=eu``)."""
    return [unquote(name) for name, eq, _ in (p.partition("=") for p in folder.split("/") if folder) if eq and name]


def _partition_schema(folders: list[str]) -> pa.Schema:
    """The hive keys of the files' folders (``date=2026-12-01``) in the order met, as int64 where
    every value is a whole number, else text (a date stays the text it is in the path)."""
    import pyarrow as pa

    values: dict[str, set[str]] = {}
    for folder in folders:
        for part in folder.split("/") if folder else ():
            name, eq, value = part.partition("=")
            if eq and name:
                values.setdefault(unquote(name), set()).add(unquote(value))
    fields = []
    for name, seen in values.items():
        known = seen - {HIVE_NULL}
        fields.append((name, pa.int64() if known and all(INT64.fullmatch(v) for v in known) else pa.string()))
    return pa.schema(fields)


def _unify(listing: Listing, schemas: list[pa.Schema], partitioning: pa.Schema) -> pa.Schema:
    """One schema for every file: columns in the order first met, then the hive keys; each column's
    type the one its files' types widen to, or one line naming the first file that disagrees."""
    import pyarrow as pa

    fields: dict[str, pa.Field] = {}
    first: dict[str, tuple[str, pa.DataType]] = {}  # column -> the first file with it, and its type there
    previous = None
    for item, schema in zip(listing.files, schemas, strict=True):
        if schema == previous:
            continue
        previous = schema
        uri = listing.uri(item)
        names = schema.names
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise DataError(
                f"{listing.key} {uri}: duplicate column names {repeated[:SHOWN]}; rename them so each column is unique"
            )
        for field in schema:
            if field.name in partitioning.names:
                raise DataError(
                    f"{listing.key} {uri}: column {field.name!r} is also a partition folder ({field.name}=...); "
                    "rename the column or the folders"
                )
            known = fields.get(field.name)
            if known is None:
                fields[field.name], first[field.name] = field.with_nullable(True), (uri, field.type)
            elif known.type != field.type:
                fields[field.name] = _widen(known, field, listing.key, uri, first[field.name])
    return pa.schema([*fields.values(), *partitioning])


def _widen(known: pa.Field, field: pa.Field, key: str, uri: str, before: tuple[str, pa.DataType]) -> pa.Field:
    import pyarrow as pa

    refusal = DataError(
        f"{key} {uri}: column {field.name!r} is {field.type} here but {before[1]} in {before[0]}; "
        "write it with one type in every file"
    )
    if not _unifiable(known.type, field.type):
        raise refusal
    try:
        merged = pa.unify_schemas([pa.schema([known]), pa.schema([field])], promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        raise refusal from exc
    return merged.field(field.name).with_nullable(True)


def _unifiable(a: pa.DataType, b: pa.DataType) -> bool:
    """Types a column may take in different files: the same kind (numbers, text, times), or null
    (a column all null in one file). Arrow would also turn numbers into decimals or text; a table
    whose files disagree that much is more likely wrong than meant."""
    import pyarrow.types as t

    kinds: tuple[Callable[[pa.DataType], bool], ...] = (
        lambda x: t.is_integer(x) or t.is_floating(x),
        lambda x: t.is_string(x) or t.is_large_string(x),
        lambda x: t.is_binary(x) or t.is_large_binary(x),
        t.is_timestamp,
        t.is_date,
        t.is_decimal,
        t.is_boolean,
    )
    if t.is_null(a) or t.is_null(b):
        return True
    return any(kind(a) and kind(b) for kind in kinds)
