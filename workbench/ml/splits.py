"""Streaming a table into stratified splits: one pass to check and count, one to split.

The split needs only class counts, so a second pass can split a source it never holds whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.errors import DataError
from workbench.ml.features import is_numeric

if TYPE_CHECKING:
    import pyarrow as pa


SPLITS = ("train", "val", "test")


MAX_CLASSES = 10_000


MAX_HISTOGRAMS = 16  # features whose distribution prepare counts: a readable grid, not a cost


HISTOGRAM_BINS = 30


def feature_columns(schema: pa.Schema, target: str, shown: str) -> list[str]:
    """The feature columns, or why the table cannot be trained on (known from its first chunk)."""
    names = schema.names
    if target not in names:
        cols = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        raise DataError(f"data.target {target!r} is not a column of {shown} (columns: {cols}); set data.target")
    features = [c for c in names if c != target]
    if not features:
        raise DataError(f"data.source {shown}: no feature columns besides {target!r}")
    bad = [c for c in features if not is_numeric(schema.field(c).type)]
    if bad:
        raise DataError(f"data.source {shown}: non-numeric feature columns {bad[:5]}; encode or drop them first")
    return features


@dataclass
class Scan:
    """What one pass over the source learns: enough to split it exactly in a second pass."""

    schema: pa.Schema
    features: list[str]
    rows: int = 0
    class_rows: dict = field(default_factory=dict)
    missing: set = field(default_factory=set)
    infinite: set = field(default_factory=set)
    low: dict = field(default_factory=dict)
    high: dict = field(default_factory=dict)

    def add(self, table: pa.Table, target: str) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        self.rows += table.num_rows
        for name in table.column_names:
            column = table.column(name)
            floating = pa.types.is_floating(column.type)
            if column.null_count or (floating and pc.any(pc.is_nan(column)).as_py()):
                self.missing.add(name)
            if floating and pc.any(pc.is_inf(column)).as_py():
                self.infinite.add(name)
            bounds = pc.min_max(column).as_py()
            if bounds["min"] is not None:
                self.low[name] = min(self.low.get(name, bounds["min"]), bounds["min"])
                self.high[name] = max(self.high.get(name, bounds["max"]), bounds["max"])
        counts = pc.value_counts(table.column(target)).to_pylist()
        for entry in counts:
            self.class_rows[entry["values"]] = self.class_rows.get(entry["values"], 0) + entry["counts"]
        if len(self.class_rows) > MAX_CLASSES:
            raise DataError(
                f"data.target {target!r} has more than {MAX_CLASSES:,} distinct values; "
                "it must be a class label, not a measurement"
            )

    def check(self, target: str, shown: str) -> list:
        if self.missing:
            columns = [c for c in self.schema.names if c in self.missing]
            raise DataError(f"data.source {shown}: missing values in columns {columns[:5]}; fill or drop them first")
        if self.infinite:  # an inf reaches training as NaN losses, then fails far away in the metrics table
            columns = [c for c in self.schema.names if c in self.infinite]
            raise DataError(
                f"data.source {shown}: non-finite values (inf, -inf) in columns {columns[:5]}; fill or drop them first"
            )
        if len(self.class_rows) < 2:
            raise DataError(f"data.target {target!r}: needs at least 2 classes, found {len(self.class_rows)}")
        classes = sorted(self.class_rows)
        rarest = min(classes, key=self.class_rows.__getitem__)
        if self.class_rows[rarest] < 3:
            raise DataError(
                f"data.target {target!r}: class {rarest!r} has {self.class_rows[rarest]} rows; "
                "each class needs 3 or more to split"
            )
        return classes


def split_plan(class_rows: list[int], val_fraction: float, test_fraction: float, seed: int) -> list[np.ndarray]:
    """Per class, the split of each of its rows in order of appearance (0 train, 1 val, 2 test).

    It needs only the class counts, so a second pass can split a source it never holds whole.
    Each class is shuffled with ``seed`` and cut in the same shares.
    """
    rng = np.random.default_rng(seed)
    plans = []
    for n in class_rows:
        order = rng.permutation(n)
        n_val = max(1, round(n * val_fraction))
        n_test = max(1, round(n * test_fraction))
        plan = np.zeros(n, dtype=np.uint8)
        plan[order[:n_val]] = 1
        plan[order[n_val : n_val + n_test]] = 2
        plans.append(plan)
    return plans


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Row indices per split of an in-memory label array (the same cut the streamed prepare makes)."""
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    assigned = np.empty(len(labels), dtype=np.uint8)
    for code, plan in enumerate(split_plan(counts.tolist(), val_fraction, test_fraction, seed)):
        assigned[codes == code] = plan
    return {name: np.flatnonzero(assigned == i) for i, name in enumerate(SPLITS)}


class Moments:
    """Running mean, variance and range per column, merged chunk by chunk (Chan et al.)."""

    def __init__(self, width: int) -> None:
        self.n = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.low = np.full(width, np.inf)
        self.high = np.full(width, -np.inf)

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        self.low = np.minimum(self.low, x.min(axis=0))
        self.high = np.maximum(self.high, x.max(axis=0))
        mean = x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        total = self.n + len(x)
        delta = mean - self.mean
        self.mean += delta * len(x) / total
        self.m2 += m2 + delta**2 * self.n * len(x) / total
        self.n = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.n)

    def summary(self, features: list[str]) -> pd.DataFrame:
        """One row per feature: count, mean, std (population, as the normalisation uses), min, max."""
        return pd.DataFrame(
            {"count": self.n, "mean": self.mean, "std": self.std, "min": self.low, "max": self.high},
            index=pd.Index(features, name="feature"),
        )


def _bin_edges(low: float, high: float, integer: bool) -> np.ndarray:
    """Histogram bins over a column's whole range, known from the first pass.

    Integers with few values get one bin per value, so a 0..16 pixel count shows 17 bars rather
    than 30 bins that alternately catch one value and none.
    """
    if integer and high - low < HISTOGRAM_BINS:
        return np.arange(low, high + 2) - 0.5
    if high == low:
        return np.array([low - 0.5, high + 0.5])
    return np.linspace(low, high, HISTOGRAM_BINS + 1)


class Histograms:
    """Exact per-feature histograms of the training split, counted as its chunks pass by."""

    def __init__(self, scan: Scan, features: list[str]) -> None:
        import pyarrow as pa

        self.edges = []
        for name in features:
            kind = scan.schema.field(name).type
            integer = pa.types.is_integer(kind) or pa.types.is_boolean(kind)
            self.edges.append(_bin_edges(float(scan.low[name]), float(scan.high[name]), integer))
        self.counts = [np.zeros(len(e) - 1, dtype=np.int64) for e in self.edges]

    def add(self, x: np.ndarray) -> None:
        for i, edges in enumerate(self.edges):
            self.counts[i] += np.histogram(x[:, i], bins=edges)[0]
