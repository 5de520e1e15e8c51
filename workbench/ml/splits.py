"""Streaming a table into stratified splits: one pass to check and count, one to split.

The split needs only class counts, so a second pass can split a source it never holds whole; a
regression target is one group, cut in the same shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.errors import DataError
from workbench.ml.encoding import Target, category_key, combine_moments

if TYPE_CHECKING:
    import pyarrow as pa


SPLITS = ("train", "val", "test")


MAX_HISTOGRAMS = 16  # features whose distribution prepare counts: a readable grid, not a cost


HISTOGRAM_BINS = 30


MIN_CLASS_ROWS = 3  # one each for train, validation and test


@dataclass
class Ranges:
    """The finite range of each numeric column over the whole table, for histogram bins that cover it."""

    schema: pa.Schema
    columns: list[str]
    low: dict = field(default_factory=dict)
    high: dict = field(default_factory=dict)

    def add(self, table: pa.Table) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        for name in self.columns:
            column = table.column(name)
            if pa.types.is_floating(column.type):
                column = column.filter(pc.is_finite(column))
            bounds = pc.min_max(column).as_py()
            if bounds["min"] is not None:
                self.low[name] = min(self.low.get(name, bounds["min"]), bounds["min"])
                self.high[name] = max(self.high.get(name, bounds["max"]), bounds["max"])

    def merge(self, later: Ranges) -> Ranges:
        """Take in the ranges of other rows; returns ``self``, for a reduction."""
        for name, low in later.low.items():
            self.low[name] = min(self.low.get(name, low), low)
            self.high[name] = max(self.high.get(name, later.high[name]), later.high[name])
        return self


def class_counts(target: Target, counts: dict) -> list[int]:
    """Rows per class, in the target's class order, from the raw values the fit counted; refuses a
    class with too few rows to reach all three splits, naming it and its count."""
    by_key: dict[str | None, int] = {}
    for value, n in counts.items():
        key = category_key(value)
        by_key[key] = by_key.get(key, 0) + n
    rows = [by_key.get(category_key(c), 0) for c in target.classes or []]
    rarest = int(np.argmin(rows))
    if rows[rarest] < MIN_CLASS_ROWS:
        raise DataError(
            f"data.target {target.name!r}: class {target.classes[rarest]!r} has {rows[rarest]} row(s); each class "
            f"needs {MIN_CLASS_ROWS} or more to reach the train, validation and test splits (add rows, merge the "
            "class into another, or drop its rows)"
        )
    return rows


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
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0  # 0: no test split at all
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
    """Count, mean, variance and range per column over its finite values, merged chunk by chunk (Chan et al.)."""

    def __init__(self, width: int) -> None:
        self.n = np.zeros(width)
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.low = np.full(width, np.inf)
        self.high = np.full(width, -np.inf)

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        finite = np.isfinite(x)
        n = finite.sum(axis=0)
        if not n.any():
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(finite, x, 0.0).sum(axis=0) / np.maximum(n, 1)
            m2 = np.where(finite, (x - mean) ** 2, 0.0).sum(axis=0)
            self.low = np.minimum(self.low, np.where(finite, x, np.inf).min(axis=0))
            self.high = np.maximum(self.high, np.where(finite, x, -np.inf).max(axis=0))
        self.n, self.mean, self.m2 = combine_moments(self.n, self.mean, self.m2, n, mean, m2)

    def merge(self, later: Moments) -> Moments:
        """Take in the moments of other rows by the same pairwise combine as :meth:`add` (stable: no
        sum of squares); returns ``self``, for a reduction."""
        self.n, self.mean, self.m2 = combine_moments(self.n, self.mean, self.m2, later.n, later.mean, later.m2)
        self.low = np.minimum(self.low, later.low)
        self.high = np.maximum(self.high, later.high)
        return self

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.divide(self.m2, self.n, out=np.full_like(self.m2, np.nan), where=self.n > 0))

    def summary(self, features: list[str]) -> pd.DataFrame:
        """One row per column: count of values, mean, std (population, as the encoding uses), min, max."""
        seen = self.n > 0
        return pd.DataFrame(
            {
                "count": self.n.astype(np.int64),
                "mean": np.where(seen, self.mean, np.nan),
                "std": self.std,
                "min": np.where(seen, self.low, np.nan),
                "max": np.where(seen, self.high, np.nan),
            },
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

    def __init__(self, ranges: Ranges, features: list[str]) -> None:
        import pyarrow as pa

        self.edges = []
        for name in features:
            kind = ranges.schema.field(name).type
            integer = pa.types.is_integer(kind) or pa.types.is_boolean(kind)
            self.edges.append(_bin_edges(float(ranges.low[name]), float(ranges.high[name]), integer))
        self.counts = [np.zeros(len(e) - 1, dtype=np.int64) for e in self.edges]

    def add(self, x: np.ndarray) -> None:
        for i, edges in enumerate(self.edges):
            column = x[:, i]
            # the edges are evenly spaced: a count and a range take numpy's path that does not sort
            self.counts[i] += np.histogram(
                column[np.isfinite(column)], bins=len(edges) - 1, range=(edges[0], edges[-1])
            )[0]

    def merge(self, later: Histograms) -> Histograms:
        """Take in the counts of other rows (the same bins: one Ranges for the whole table)."""
        for mine, theirs in zip(self.counts, later.counts, strict=True):
            mine += theirs
        return self
