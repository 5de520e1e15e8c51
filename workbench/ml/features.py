"""Numeric columns straight from Arrow: the float matrix built from them for the summaries prepare counts. Model input is the fitted encoding's job (:mod:`workbench.ml.encoding`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa


def column_matrix(table: pa.Table, columns: Sequence[str], dtype: type = np.float64) -> np.ndarray:
    """The columns as one 2-D array, built column by column straight from Arrow.

    Booleans become 0/1; a null (and a column of type null, as a CSV column empty throughout its
    first block arrives) becomes NaN, for the caller to refuse or flag.
    """
    import pyarrow as pa

    x = np.empty((table.num_rows, len(columns)), dtype=dtype)
    for i, name in enumerate(columns):
        column = table.column(name)
        if pa.types.is_null(column.type):
            x[:, i] = np.nan
        elif pa.types.is_boolean(column.type) or column.null_count:
            x[:, i] = column.cast(pa.float64()).to_numpy()  # nulls: NaN
        else:
            x[:, i] = column.to_numpy()
    return x
