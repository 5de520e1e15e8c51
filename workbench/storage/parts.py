"""A Parquet artifact read whole whether it is one file or a dataset of parts (``engine: dask``).

prepare with engine dask writes each split as parts, one per source partition, beside where the
local engine writes one file; the readers of a split (training, validation's test split, the gate)
read either through :func:`part_keys` and :func:`read_table`. The parts' name order is the rows' order.
A step that writes such an artifact first removes it in both forms (:func:`remove_forms`), so an
earlier attempt with the other engine, or with more partitions, never shadows what it writes.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from workbench.storage.catalog import parts_prefix, suffix

if TYPE_CHECKING:
    import pyarrow as pa

    from workbench.storage.base import Store


def part_keys(store: Store, key: str) -> list[str]:
    """The keys that hold the artifact at ``key``: its parts in order where it has parts, else
    ``key`` itself (whose absence the store's reader then names)."""
    parts = [k for k in store.list(parts_prefix(key)) if k.endswith(suffix("parquet"))]
    return sorted(parts) or [key]


def read_table(store: Store, key: str, columns: list[str] | None = None) -> pa.Table:
    """The whole artifact as one Arrow table, its parts concatenated in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(io.BytesIO(store.read_bytes(k)), columns=columns) for k in part_keys(store, key)]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")


def remove_forms(store: Store, key: str) -> list[str]:
    """Remove the artifact at ``key`` as one file and as parts; returns the keys that were there."""
    found = store.list(parts_prefix(key)) + ([key] if store.exists(key) else [])
    for k in found:
        store.remove(k)
    return found
