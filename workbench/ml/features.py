"""Feature columns as model input: which columns count as numbers, the matrix built from them, and
the normalisation fitted by prepare and applied by training, scoring and export alike.

One rule each, so what trains also scores: a boolean column is a 0/1 number everywhere.
``workbench/templates/sagemaker_inference.py`` cannot import this package and keeps its own copy of
:meth:`Normalization.apply`; ``tests/test_sagemaker.py`` keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa


def is_numeric(kind: pa.DataType) -> bool:
    """Whether a column of this Arrow type can be a feature: integers, floats and booleans (0/1)."""
    import pyarrow as pa

    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


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


@dataclass(frozen=True)
class Normalization:
    """Per-feature mean and standard deviation of the training split (``normalization.json``)."""

    features: list[str]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, features: Sequence[str], mean: np.ndarray, std: np.ndarray) -> Normalization:
        """From the training split's moments; a constant feature keeps a scale of 1, not 0."""
        std = np.asarray(std, dtype=np.float64)
        return cls(list(features), np.asarray(mean, dtype=np.float64), np.where(std > 0, std, 1.0))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Normalization:
        return cls(list(data["features"]), np.asarray(data["mean"], np.float64), np.asarray(data["std"], np.float64))

    def to_json(self) -> dict[str, Any]:
        return {"features": self.features, "mean": self.mean.tolist(), "std": self.std.tolist()}

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 model input from raw feature rows (computed in float64, as trained)."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std).astype(np.float32)
