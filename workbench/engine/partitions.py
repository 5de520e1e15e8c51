"""A source as the partitions an engine hands to its workers: the files of a Parquet dataset.

The files come from :func:`workbench.storage.datasets.open_dataset` (a file, a folder, an S3 prefix
ending in ``/`` or a glob, in path order, schemas unified); each is one partition, read on a worker
by the dataset's picklable reader, so the partitions one after another are the table the local
engine reads, row for row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.errors import DataError
from workbench.storage.datasets import Fragment, FragmentReader, open_dataset
from workbench.storage.sources import describe, is_parquet

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Partition:
    """One file of the source and the reader that reads it in the dataset's schema."""

    fragment: Fragment
    reader: FragmentReader

    @property
    def index(self) -> int:
        return self.fragment.index

    @property
    def offset(self) -> int:
        """The table's row number of the partition's first row."""
        return self.fragment.offset

    @property
    def rows(self) -> int:
        return self.fragment.rows


def partitions(source: object, key: str) -> list[Partition]:
    """The Parquet files of ``source`` as partitions; a CSV, a database or the bundled table is one
    line naming ``key`` (engine dask reads Parquet)."""
    if not isinstance(source, str) or source.startswith(("bundled:", "split:")) or not is_parquet(source):
        raise DataError(
            f"{key} {describe(source)}: engine dask reads Parquet (a file, a folder, an s3:// prefix ending in / or a "
            "glob); write the table as Parquet or set engine: local"
        )
    dataset = open_dataset(source, key)
    return [Partition(fragment, dataset.reader) for fragment in dataset.fragments]


def read_partition(partition: Partition, rows: int) -> Iterator[pa.Table]:
    """The partition's rows as Arrow tables of at most ``rows`` rows, in file order."""
    import pyarrow as pa

    for batch in partition.reader.read(partition.fragment, rows):
        if batch.num_rows:
            yield pa.Table.from_batches([batch])
