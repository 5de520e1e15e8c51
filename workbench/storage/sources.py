"""Input tables: bundled data, local files, S3 objects, Parquet datasets and SQL queries, as Arrow chunks.

A source is a path or URI string (a file; or a dataset of Parquet files: a folder, an S3 prefix
ending in ``/`` or a glob, see ``workbench.storage.datasets``), or a mapping ``{url, query}`` /
``{url, table}`` naming a SQL source, so a heavy aggregation runs inside PostgreSQL or Redshift and only its result crosses the
network. Every kind is read in chunks (Parquet row groups, CSV blocks, a server-side cursor), so
memory follows the chunk size, not the size of the source.
"""

from __future__ import annotations

import csv
import functools
import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from workbench.config.parameters import project_root
from workbench.config.schema import source_problem
from workbench.config.secrets import mask
from workbench.errors import DataError, StoreError
from workbench.storage import scratch
from workbench.storage.catalog import suffix
from workbench.storage.datasets import is_dataset, open_dataset

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sqlalchemy.engine import Engine

Source = str | Mapping[str, str]
BUNDLED = {"digits": "digits.csv.gz"}
CHUNK_ROWS = 65_536  # rows per Arrow chunk where the caller does not choose
# pyarrow's default CSV block (1 MiB): larger blocks made the reader's peak memory grow with the
# file (16 MiB blocks: 400 MiB at 500k rows, 1 GiB at 5M); column types come from the first block
CSV_BLOCK = 1 << 20
# A header is read first to choose the delimiter: comma wins ties, so a one-column CSV stays a CSV
DELIMITERS = (",", ";", "\t", "|")
HEAD_LIMIT = 1 << 24  # bytes read at most looking for the header and first row
DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")


def describe(source: Source) -> str:
    """The source as messages and reports show it, with any password masked."""
    if isinstance(source, str):
        return source
    what = f"table {source['table']}" if "table" in source else f"query {_short(source.get('query', ''))}"
    return f"{mask(str(source.get('url', '')))} {what}"


def _short(text: str, width: int = 60) -> str:
    flat = " ".join(str(text).split())
    return repr(flat if len(flat) <= width else flat[: width - 3] + "...")


def _format(source: str) -> str | None:
    name = source.lower()
    return (
        "parquet"
        if name.endswith((suffix("parquet"), ".pq"))
        else "csv"
        if name.endswith((".csv", ".csv.gz"))
        else None
    )


def _locate(source: str, key: str) -> tuple[Path, str]:
    """The file behind a source string and its format (``csv`` or ``parquet``)."""
    if source.startswith("bundled:"):
        name = source.split(":", 1)[1]
        if name not in BUNDLED:
            raise DataError(f"{key} {source!r}: no bundled dataset {name!r}; bundled: {', '.join(BUNDLED)}")
        return Path(__file__).parents[1] / "data" / BUNDLED[name], "csv"
    fmt = _format(source)
    if "://" in source:
        scheme = source.split("://", 1)[0]
        if scheme != "s3":
            raise DataError(
                f"{key} {mask(source)!r}: {scheme}:// sources are not supported; use s3://, a local path, "
                "or {url: ..., query: ...} for a database"
            )
        if fmt is None:
            raise DataError(
                f"{key} {source}: unknown format; use .csv, .csv.gz or .parquet, or end a prefix of Parquet files with /"
            )
        return _download(source, key), fmt
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = project_root() / path
    if not path.is_file():
        raise DataError(f"{key}: no file at {path}; check the path or use bundled:digits")
    if fmt is None:
        raise DataError(f"{key} {path}: unknown format; use .csv, .csv.gz or .parquet")
    return path, fmt


@functools.lru_cache(maxsize=8)
def _download(uri: str, key: str = "data.source") -> Path:
    """An S3 object streamed to a local file in this process's scratch (disk, not memory, holds it), once
    per process."""
    from workbench.storage.s3 import S3Store

    bucket, _, name = uri.removeprefix("s3://").partition("/")
    try:
        store = S3Store(f"s3://{bucket}", role=key)
    except StoreError as exc:
        raise DataError(f"{key} {uri!r} is not a valid S3 URI; use s3://bucket/path/file.parquet") from exc
    target = scratch.make("source") / Path(name).name
    try:
        with store.errors(name, missing=f"check {key}"):
            store.client.download_file(bucket, name, str(target))
    except StoreError as exc:
        said = str(exc)
        raise DataError(said if said.startswith(key) else f"{key}: {said}") from exc
    _DOWNLOADED[target] = uri
    return target


_DOWNLOADED: dict[Path, str] = {}  # the local copy of an S3 object -> its URI


def _named(path: Path) -> str:
    """A source file as its user named it: an S3 object by its ``s3://`` URI, never by the scratch
    copy it was read from (a path that is gone once the run ends)."""
    return _DOWNLOADED.get(path, str(path))


def _unreadable(key: str, path: Path, exc: Exception, fmt: str = "csv") -> DataError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if fmt == "parquet":
        return DataError(
            f"{key} {_named(path)}: cannot be read as Parquet ({reason}); is the file complete? write or download it again"
        )
    return DataError(f"{key} {_named(path)}: cannot be read ({reason}); is it a valid table?")


def _duplicates(names: list[str]) -> list[str]:
    return sorted(name for name, n in Counter(names).items() if n > 1)


@dataclass(frozen=True)
class CsvLayout:
    """How a CSV file is written: what separates fields and what marks decimals.

    Spreadsheets in many locales save ``;``-separated files with decimal commas; reading those
    with commas made the whole header one column, so the layout is read off the file itself.
    """

    delimiter: str = ","
    decimal: str = "."


def _head_lines(path: Path, count: int = 2) -> list[bytes]:
    """The first ``count`` lines of a (possibly compressed) file, without reading all of it."""
    import pyarrow as pa

    head = b""
    with pa.input_stream(str(path), compression="detect") as stream:
        while head.count(b"\n") < count and len(head) < HEAD_LIMIT:
            block = stream.read(1 << 16)
            if not block:
                break
            head += block
    return head.splitlines()[:count]


def _fields(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def csv_layout(path: Path, key: str = "data.source") -> CsvLayout:
    """The delimiter and decimal mark of a CSV file, read from its header and first row.

    The header is also checked here, where the file is still named: it must be UTF-8 and name
    each column once (Arrow would otherwise fail later with a message naming neither).
    """
    lines = _head_lines(path)
    if not lines:
        return CsvLayout()
    try:
        header = lines[0].decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{key} {_named(path)}: the header is not UTF-8 (byte {lines[0][exc.start]:#04x} at offset {exc.start}); "
            "re-save the file as UTF-8"
        ) from exc
    layout = text_layout(header, lines[1].decode("utf-8", "replace") if len(lines) > 1 else "")
    repeated = _duplicates(_fields(header, layout.delimiter))
    if repeated:
        raise DataError(
            f"{key} {_named(path)}: duplicate column names {repeated[:5]} in the header; rename them so each column is unique"
        )
    return layout


def text_layout(header: str, row: str) -> CsvLayout:
    """The layout of CSV text from its first two lines: the delimiter that splits the first line into
    the most fields (comma wins ties), and a decimal comma where another delimiter leaves a value such
    as ``1,5`` in the second. The server reads a CSV request's layout by the same rule."""
    delimiter = max(DELIMITERS, key=lambda d: len(_fields(header, d)))
    values = _fields(row, delimiter) if row else []
    comma = delimiter != "," and any(DECIMAL_COMMA.fullmatch(value.strip()) for value in values)
    return CsvLayout(delimiter, "," if comma else ".")


def _checked(source: Source, key: str) -> Source:
    if isinstance(source, Mapping):
        source = dict(source)
    problem = source_problem(source)
    if problem:
        raise DataError(f"{key}: {problem}, got {describe(source) if isinstance(source, dict) else source!r}")
    return source


def read_source(source: Source, key: str = "data.source") -> pd.DataFrame:
    """A whole (small) table as a DataFrame, for exploring in a notebook."""
    import pandas as pd
    import pyarrow as pa

    source = _checked(source, key)
    if isinstance(source, dict):
        return pa.concat_tables(iter_source(source, CHUNK_ROWS, key)).to_pandas()
    if is_dataset(source):
        dataset = open_dataset(source, key)
        return pa.Table.from_batches(list(dataset.batches(CHUNK_ROWS)), dataset.schema).to_pandas()
    path, fmt = _locate(source, key)
    try:
        if fmt == "parquet":
            _unique_parquet_columns(path, key)
            return pd.read_parquet(path)
        layout = csv_layout(path, key)
        return pd.read_csv(path, sep=layout.delimiter, decimal=layout.decimal)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise _unreadable(key, path, exc, fmt) from exc


def iter_source(source: Source, rows: int, key: str = "data.source") -> Iterator[pa.Table]:
    """The table as Arrow tables of ``rows`` rows (the last may be shorter), all of one schema."""
    source = _checked(source, key)
    if isinstance(source, dict):
        yield from _rechunk(_sql_tables(source, rows, key), rows)
        return
    yield from _rechunk(_file_batches(source, key), rows)


def _file_batches(source: str, key: str) -> Iterator[pa.RecordBatch]:
    """Parquet by row groups, CSV (also gzipped) by blocks, a dataset file by file in path order,
    with no pandas in between."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    if is_dataset(source):
        yield from open_dataset(source, key).batches(CHUNK_ROWS)
        return
    path, fmt = _locate(source, key)
    try:
        if fmt == "parquet":
            # pre_buffer reads ahead across row groups: peak memory then grew with the file
            parquet = _unique_parquet_columns(path, key, pre_buffer=False)
            yield from parquet.iter_batches(batch_size=CHUNK_ROWS)
        else:
            layout = csv_layout(path, key)
            stream = pa.input_stream(str(path), compression="detect")
            reader = pa_csv.open_csv(
                stream,
                read_options=pa_csv.ReadOptions(block_size=CSV_BLOCK),
                parse_options=pa_csv.ParseOptions(delimiter=layout.delimiter),
                convert_options=pa_csv.ConvertOptions(decimal_point=layout.decimal),
            )
            for batch in reader:
                _utf8(batch, key, path)
                yield batch
    except (pa.ArrowInvalid, OSError) as exc:
        raise _unreadable(key, path, exc, fmt) from exc


def _utf8(batch: pa.RecordBatch, key: str, path: Path) -> None:
    """Arrow reads a CSV column holding bytes that are not UTF-8 as binary; say what the file needs
    (saved as UTF-8), not what the column would need as a feature."""
    import pyarrow as pa

    for field in batch.schema:
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            for value in filter(None, batch.column(field.name).to_pylist()):
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{key} {_named(path)}: column {field.name!r} holds text that is not UTF-8 "
                        f"({value[:40]!r}, byte {value[exc.start]:#04x}); re-save the file as UTF-8"
                    ) from None


def _unique_parquet_columns(path: Path, key: str, **options: bool) -> pq.ParquetFile:
    """The opened Parquet file, refused when a column name repeats (Arrow allows it; the pipeline cannot)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path, **options)
    repeated = _duplicates(parquet.schema_arrow.names)
    if repeated:
        raise DataError(
            f"{key} {_named(path)}: duplicate column names {repeated[:5]}; rename them so each column is unique"
        )
    return parquet


def _rechunk(blocks: Iterator[pa.RecordBatch | pa.Table], rows: int) -> Iterator[pa.Table]:
    """Blocks of any size as tables of exactly ``rows`` rows, the last one shorter."""
    import pyarrow as pa

    pending: list = []
    count = 0
    for block in blocks:
        pending.extend(block.to_batches() if isinstance(block, pa.Table) else [block])
        count += block.num_rows
        while count >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


def is_parquet(source: Source) -> bool:
    """Whether the source is a Parquet file or dataset (cheap to read twice and to count)."""
    return isinstance(source, str) and (_format(source) == "parquet" or is_dataset(source))


def count_rows(source: Source, key: str = "data.source") -> int | None:
    """Rows in the source when that is cheap to know (Parquet metadata), else None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not is_parquet(source):
        return None
    if is_dataset(source):
        return open_dataset(str(source), key).rows
    path = _locate(source, key)[0]
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise _unreadable(key, path, exc, "parquet") from exc


def _sql_statement(source: Mapping[str, str]) -> Any:
    from sqlalchemy import literal_column, select, table, text

    if "query" in source:
        return text(source["query"])
    schema, _, name = source["table"].rpartition(".")
    return select(literal_column("*")).select_from(table(name, schema=schema or None))


def _read_only_engine(url: str, key: str) -> Engine:
    """An engine on a source database that cannot write through it, whatever reaches it.

    The query was checked to be one SELECT (``workbench.config.sql``); this is the second guard.
    A SQLite file opens with ``mode=ro`` (and a missing one is named instead of created empty);
    PostgreSQL runs the query in a ``READ ONLY`` transaction (see :func:`_sql_tables`).
    """
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if parsed.query.get("uri") != "true":  # a plain path: name a missing file, then open it as a URI
            path = Path(parsed.database).expanduser().absolute()
            if not path.is_file():
                raise DataError(f"{key} url {mask(url)!r}: no SQLite database at {path}; check the path")
            parsed = parsed.set(database=f"file:{quote(str(path))}")
        parsed = parsed.update_query_dict({"mode": "ro", "uri": "true"})
    return create_engine(parsed)


def _sql_tables(source: Mapping[str, str], rows: int, key: str) -> Iterator[pa.Table]:
    """Rows of a query through a server-side cursor, ``rows`` at a time, as Arrow tables.

    ``stream_results`` makes PostgreSQL (psycopg) use a named cursor, so the server keeps the
    result and the client holds one partition; NUMERIC values arrive as floats.
    """
    import pandas as pd
    import pyarrow as pa
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    url = source["url"]
    shown = mask(url)
    what = f"{key}.table" if "table" in source else f"the {key} query"
    try:
        engine = _read_only_engine(url, key)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise DataError(f"{key} url {shown!r} is not a usable SQLAlchemy URL ({exc})") from exc
    try:
        conn = engine.connect()
    except SQLAlchemyError as exc:
        raise DataError(
            f"{key}: cannot connect to {shown} ({_first_line(exc)}); check host, port, database and credentials"
        ) from exc
    schema = None
    try:
        with conn:
            try:
                if engine.dialect.name == "postgresql":  # the transaction's first statement: nothing in it writes
                    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                result = conn.execution_options(stream_results=True, max_row_buffer=rows).execute(
                    _sql_statement(source)
                )
                if not result.returns_rows:
                    raise DataError(f"{key}: {describe(source)} returns no rows; it must be a SELECT")
                columns = list(result.keys())
                repeated = _duplicates(columns)
                if repeated:
                    raise DataError(
                        f"{key}: {describe(source)} returns duplicate column names {repeated[:5]}; "
                        f"give each column its own name (AS ...) in {what}"
                    )
                for part in result.partitions(rows):
                    frame = pd.DataFrame.from_records(part, columns=columns, coerce_float=True)
                    chunk = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
                    if schema is None:
                        schema = chunk.schema
                    elif chunk.schema != schema:
                        chunk = _conform(chunk, schema, key)
                    yield chunk
            except SQLAlchemyError as exc:
                raise DataError(f"{key}: {describe(source)} failed ({_first_line(exc)}); check {what}") from exc
    finally:
        engine.dispose()
    if schema is None:
        raise DataError(f"{key}: {describe(source)} returned no rows")


def fingerprint_answer(source: Mapping[str, str], key: str = "data.source") -> str:
    """The answer of a SQL source's ``fingerprint`` query as text (``max(updated_at), count(*)``):
    it stands for the data when deciding whether a step that reads it can be reused. It runs
    read-only, like the source's own query."""
    from sqlalchemy import text
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    where = f"{key}.fingerprint"
    try:
        engine = _read_only_engine(source["url"], key)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise DataError(f"{key} url {mask(source['url'])!r} is not a usable SQLAlchemy URL ({exc})") from exc
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            rows = conn.execute(text(source["fingerprint"])).all()
    except SQLAlchemyError as exc:
        raise DataError(f"{where} {_short(source['fingerprint'])} failed ({_first_line(exc)}); fix the query") from exc
    finally:
        engine.dispose()
    return json.dumps([[str(value) for value in row] for row in rows])


def _conform(chunk: pa.Table, schema: pa.Schema, key: str) -> pa.Table:
    """A later chunk in the types of the first (a column that was all NULL, ints among floats)."""
    import pyarrow as pa

    try:
        return chunk.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        changed = [f.name for f in chunk.schema if schema.field(f.name).type != f.type]
        raise DataError(
            f"{key}: columns {changed[:5]} change type partway through the result; CAST them in the query"
        ) from exc


def _first_line(exc: Exception) -> str:
    inner = getattr(exc, "orig", None) or exc
    return mask(str(inner).strip().splitlines()[0]) if str(inner).strip() else type(inner).__name__
