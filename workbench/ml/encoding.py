"""Any table as model input: column roles, a streamed fit on the training rows, one JSON encoding.

Fitting reads Arrow tables one at a time (:class:`EncodingFitter`, :func:`fit_encoding`): memory
follows the number of distinct categories seen, never the number of rows. Each column is typed from
the data unless ``drop`` leaves it out or ``categorical`` makes it a category:

- numbers (and booleans as 0/1): imputed with the training mean, standardised, plus a 0/1
  ``name:missing`` column where training had gaps (a non-finite number counts as a gap);
- text and categories: one-hot over the ``max_categories`` most frequent training values, a
  ``name=<missing>`` column where training had gaps and a ``name=<other>`` bucket for the rest and
  for values never seen in training;
- dates and times: year, month, day of week, day of year (and hour where training had times),
  each standardised like a number.

The fitted :class:`Encoding` is one JSON object (:meth:`Encoding.to_json`); :meth:`Encoding.apply`
turns raw rows (a pandas DataFrame, an Arrow table, a list of dict records) into the float32 model
input with numpy and pandas alone, so the SageMaker handler can carry a copy of the section below
"Applying". The target column's task and classes come from :class:`TargetFitter` /
:func:`fit_target`. Every refusal is a :class:`~workbench.errors.DataError` of one line.
"""

from __future__ import annotations

import datetime
import functools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from workbench.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT = "workbench.encoding/1"
MAX_CATEGORIES = 50  # one-hot columns kept per category column (plus missing and other)
ID_SHARE = 0.95  # a text column with more distinct values than this share of its rows is an identifier
ID_MIN_ROWS = 50  # ... judged only once it has this many values
MOSTLY_NUMBERS = 0.8  # a text column with at least this share of numbers is numbers with stray words
MAX_DISTINCT = 200_000  # distinct values counted per column at most: beyond, an identifier or free text
MAX_CLASSES = 10_000  # distinct target values counted at most
CLASSIFICATION_MAX_INTEGERS = 20  # an integer target with at most this many values is a class label
MIN_IMAGE_SIDE = 8  # 4 or 16 features are more often a table than a 2x2 or 4x4 image
DATE_PARTS = ("year", "month", "weekday", "yearday", "hour")
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?")
NUMERIC, BOOLEAN, CATEGORY, DATE = "numeric", "boolean", "category", "date"
# Text a number or boolean column holds for a gap: the words Arrow's CSV reader (batch scoring) takes
# for null, so a CSV written by R (NA), numpy (nan) or a database export (NULL) scores the same in
# every place that predicts (a test keeps this equal to pyarrow's list).
# fmt: off
GAP_WORDS = frozenset([
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null",
])
# fmt: on


def _shown(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# ---- fitting: Arrow chunks in, counts and moments kept --------------------------------------------


def combine_moments(
    n: np.ndarray, mean: np.ndarray, m2: np.ndarray, n2: np.ndarray, mean2: np.ndarray, m22: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and sum of squared deviations of two groups of rows taken together (Chan et al.'s
    pairwise combine, stable where a sum of squares is not): how chunks and partitions add up to
    the fit of their union."""
    total = n + n2
    share = np.divide(n2, total, out=np.zeros_like(np.asarray(mean, dtype=np.float64)), where=total > 0)
    delta = mean2 - mean
    return total, mean + delta * share, m2 + (m22 + delta**2 * n * share)


class _Moments:
    """Count, mean and sum of squared deviations per column, merged chunk by chunk (Chan et al.)."""

    def __init__(self, width: int) -> None:
        self.n = np.zeros(width)
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)

    def add(self, i: int, x: np.ndarray) -> None:
        if not len(x):
            return
        mean = float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        n, total = self.n[i], self.n[i] + len(x)
        delta = mean - self.mean[i]
        self.mean[i] += delta * len(x) / total
        self.m2[i] += m2 + delta**2 * n * len(x) / total
        self.n[i] = total

    def merge(self, later: _Moments) -> None:
        """Take in the moments of other rows (Chan et al.'s pairwise combine, stable where a sum of
        squares is not), so partial fits of partitions add up to the fit of their union."""
        self.n, self.mean, self.m2 = combine_moments(self.n, self.mean, self.m2, later.n, later.mean, later.m2)

    def scale(self) -> np.ndarray:
        std = np.sqrt(np.divide(self.m2, self.n, out=np.zeros_like(self.m2), where=self.n > 0))
        return np.where(std > 0, std, 1.0)


@dataclass
class _Column:
    """What the fit has learnt of one column so far."""

    name: str
    kind: str | None = None  # None until a chunk gives the column a type (an all-null chunk does not)
    dtype: str = "null"
    declared: bool = False
    rows: int = 0
    missing: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    moments: _Moments | None = None
    has_time: bool = False
    text_dates: bool = False


def _number_text(text: str) -> bool:
    """Whether a category's text is a number (``3``, ``-0.5``, ``1e3``)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def category_key(value: Any) -> str | None:
    """The text a category value is known by, the same from Arrow, pandas or JSON (None: a gap).

    ``3``, ``3.0`` and ``np.int64(3)`` are all ``"3"``, so an integer column that pandas turned
    into floats because of a gap still finds its categories.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return text if text.strip() else None  # an empty field (a CSV gap) is a gap


def _first_text(text: pa.ChunkedArray) -> list[str]:
    """The first value of a text column that is not a gap (null or blank), as a list of at most one."""
    import pyarrow.compute as pc

    filled = text.filter(pc.not_equal(pc.utf8_trim_whitespace(text), ""))
    return filled.slice(0, 1).to_pylist()


def _kind_of(kind: pa.DataType) -> str | None:
    import pyarrow as pa

    if pa.types.is_null(kind):
        return None
    if pa.types.is_boolean(kind):
        return BOOLEAN
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return NUMERIC
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return DATE
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        return CATEGORY
    if hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind):
        return CATEGORY
    return "unsupported"


class EncodingFitter:
    """The encoding fitted one Arrow table (or DataFrame) at a time: :meth:`add` each, then :meth:`finish`.

    ``target`` is skipped (see :class:`TargetFitter`), ``drop`` columns are left out, ``categorical``
    columns are categories whatever their type. ``where`` prefixes every message (``"data.source x: "``).
    """

    def __init__(
        self,
        *,
        target: str | None = None,
        drop: Sequence[str] = (),
        categorical: Sequence[str] = (),
        max_categories: int = MAX_CATEGORIES,
        where: str = "",
    ) -> None:
        both = sorted(set(drop) & set(categorical))
        if both:
            raise DataError(f"{where}column {both[0]!r} is in both data.drop and data.categorical; keep one")
        if max_categories < 1:
            raise DataError(f"max_categories must be at least 1, got {max_categories}")
        self.target, self.drop, self.categorical = target, list(drop), list(categorical)
        self.max_categories, self.where = max_categories, where
        self.rows = 0
        self.columns: list[_Column] | None = None
        self._moments = _Moments(0)

    def add(self, table: pa.Table | pd.DataFrame) -> None:
        import pyarrow as pa

        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table, preserve_index=False)
        if self.columns is None:
            self._start(table.column_names)
        assert self.columns is not None
        names = set(table.column_names)
        absent = [c.name for c in self.columns if c.name not in names]
        if absent:
            raise DataError(f"{self.where}column {absent[0]!r} is missing from a later chunk of the table")
        self.rows += table.num_rows
        for i, column in enumerate(self.columns):
            self._add_column(i, column, table.column(column.name))

    def check(self, table: pa.Table) -> None:
        """Rows the fit does not see (the validation and test splits) still hold dates written as
        text: one that does not parse is refused here, as in training rows, not later by training or
        scoring. Columns are checked once the training rows have typed them."""
        import pyarrow as pa

        for column in self.columns or []:
            if column.text_dates and column.name in table.column_names:
                values = table.column(column.name)
                if pa.types.is_dictionary(values.type):
                    values = values.cast(values.type.value_type)
                if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
                    self._parse_dates(column, values)

    def merge(self, later: EncodingFitter) -> EncodingFitter:
        """Take in the partial fit of rows that come after this fit's (the next partition in order):
        counts, sums, category tallies and moments add up, and a column's type is the first one seen,
        so partial fits merged in partition order give :meth:`finish` the one-pass fit's encoding.
        Returns ``self``, for a reduction."""
        if later.columns is None:
            self.rows += later.rows
            return self
        if self.columns is None:
            self.columns, self._moments = later.columns, later._moments
            self.rows += later.rows
            return self
        names = [c.name for c in later.columns]
        absent = [c.name for c in self.columns if c.name not in names]
        if absent or len(names) != len(self.columns):
            missing = absent[0] if absent else next(n for n in names if n not in {c.name for c in self.columns})
            raise DataError(f"{self.where}column {missing!r} is missing from a later part of the table")
        self.rows += later.rows
        for column, other in zip(self.columns, later.columns, strict=True):
            column.rows += other.rows
            column.missing += other.missing
            if other.kind is None:
                continue
            if column.kind is None:
                column.kind, column.dtype, column.text_dates = other.kind, other.dtype, other.text_dates
            elif column.kind != other.kind:
                raise DataError(
                    f"{self.where}column {column.name!r} changes type partway through the table "
                    f"({column.dtype}, then {other.dtype}); cast it to one type"
                )
            column.has_time = column.has_time or other.has_time
            for key, n in other.counts.items():
                column.counts[key] = column.counts.get(key, 0) + n
            if len(column.counts) > MAX_DISTINCT:
                raise DataError(
                    f"{self.where}column {column.name!r} has more than {MAX_DISTINCT:,} distinct values, "
                    "an identifier or free text; add it to data.drop"
                )
        self._moments.merge(later._moments)
        return self

    def _start(self, names: list[str]) -> None:
        for role, listed in (("data.drop", self.drop), ("data.categorical", self.categorical)):
            unknown = [c for c in listed if c not in names]
            if unknown:
                shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
                raise DataError(f"{self.where}{role} names {unknown[0]!r}, which is not a column (columns: {shown})")
        keep = [n for n in names if n != self.target and n not in self.drop]
        if not keep:
            raise DataError(f"{self.where}no feature columns left besides the target and data.drop")
        self.columns = [_Column(n, declared=n in self.categorical) for n in keep]
        self._moments = _Moments(len(keep) * len(DATE_PARTS))

    def _add_column(self, i: int, column: _Column, values: pa.ChunkedArray) -> None:
        import pyarrow as pa

        column.rows += len(values)
        kind = CATEGORY if column.declared else _kind_of(values.type)
        if kind is None:  # an all-null chunk (a CSV block of gaps) types nothing yet
            column.missing += len(values)
            return
        if kind == "unsupported":
            raise DataError(
                f"{self.where}column {column.name!r} has type {values.type}, which cannot be a feature; "
                "add it to data.drop"
            )
        if kind == CATEGORY and not column.declared and column.kind in (None, DATE):
            text = values.cast(values.type.value_type) if pa.types.is_dictionary(values.type) else values
            if column.kind is None:  # text whose first value is an ISO date is a date column
                sample = _first_text(text)
                if not sample:
                    column.missing += len(values)
                    return
                column.text_dates = bool(ISO_DATE.fullmatch(sample[0].strip()))
            if column.text_dates:
                kind, values = DATE, self._parse_dates(column, text)
        if column.kind is None:
            column.kind, column.dtype = kind, "string" if column.text_dates else str(values.type)
        elif column.kind != kind:
            raise DataError(
                f"{self.where}column {column.name!r} changes type partway through the table "
                f"({column.dtype}, then {values.type}); cast it to one type"
            )
        if kind == CATEGORY:
            self._add_categories(column, values)
        elif kind == DATE:
            self._add_dates(i, column, values)
        else:
            x = values.cast(pa.float64()).to_numpy(zero_copy_only=False) if len(values) else np.empty(0)
            finite = np.isfinite(x)
            column.missing += int(len(x) - finite.sum())
            self._moments.add(i * len(DATE_PARTS), x if finite.all() else x[finite])

    def _parse_dates(self, column: _Column, text: pa.ChunkedArray) -> pa.ChunkedArray:
        import pyarrow as pa

        series = text.to_pandas()
        parsed = _to_datetime(series)
        bad = parsed.isna().to_numpy() & _present(series)
        if bad.any():
            raise DataError(
                f"{self.where}column {column.name!r} holds dates, but {_shown(series[bad].iloc[0])} does not parse "
                "as one (use YYYY-MM-DD or YYYY-MM-DD HH:MM:SS); fix it, or add the column to data.categorical "
                "or data.drop"
            )
        return pa.chunked_array([pa.Array.from_pandas(parsed)])

    def _add_categories(self, column: _Column, values: pa.ChunkedArray) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        if pa.types.is_null(values.type):
            column.missing += len(values)
            return
        counted = pc.value_counts(values)
        counts = column.counts
        for value, n in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True):
            key = category_key(value)
            if key is None:
                column.missing += n
            else:
                counts[key] = counts.get(key, 0) + n
        if len(counts) > MAX_DISTINCT:
            raise DataError(
                f"{self.where}column {column.name!r} has more than {MAX_DISTINCT:,} distinct values, "
                "an identifier or free text; add it to data.drop"
            )

    def _add_dates(self, i: int, column: _Column, values: pa.ChunkedArray) -> None:
        series = values.to_pandas(date_as_object=False) if len(values) else pd.Series([], dtype="datetime64[ns]")
        parts, present = _date_parts(pd.Series(series))
        column.missing += int(len(present) - present.sum())
        if present.any():
            column.has_time = column.has_time or bool((parts[present, 4] != 0).any())
            for p in range(len(DATE_PARTS)):
                self._moments.add(i * len(DATE_PARTS) + p, parts[present, p])

    def finish(self) -> Encoding:
        """The fitted encoding, or the one-line reason a column cannot be encoded."""
        if self.columns is None or not self.rows:
            raise DataError(f"{self.where}no training rows to fit the encoding on")
        specs = []
        scale = self._moments.scale()
        for i, column in enumerate(self.columns):
            if column.kind is None or column.missing == column.rows:
                raise DataError(
                    f"{self.where}column {column.name!r} has no values in the training rows (all missing); "
                    "add it to data.drop"
                )
            spec: dict[str, Any] = {
                "name": column.name,
                "type": column.kind,
                "dtype": column.dtype,
                "missing": column.missing > 0,
                "gaps": column.missing,  # training rows without a value: shown, not used to encode
            }
            at = i * len(DATE_PARTS)
            if column.kind in (NUMERIC, BOOLEAN):
                spec |= {"mean": float(self._moments.mean[at]), "scale": float(scale[at])}
            elif column.kind == DATE:
                parts = [p for p in DATE_PARTS if p != "hour" or column.has_time]
                spec |= {
                    "parts": parts,
                    "mean": [float(self._moments.mean[at + DATE_PARTS.index(p)]) for p in parts],
                    "scale": [float(scale[at + DATE_PARTS.index(p)]) for p in parts],
                }
            else:
                spec["values"] = self._vocabulary(column)
            specs.append(spec)
        return Encoding(specs, self.max_categories, self.rows)

    def _refuse_stray_words(self, column: _Column, present: int) -> None:
        """A column of numbers with a few words in it (``oops``, ``n.a.``, ``?``) reads as text, and
        one-hot encoding its numbers as categories would drop what they measure without a word: say
        so, with the share and the words, rather than guess which the column is."""
        words = {key: n for key, n in column.counts.items() if not _number_text(key)}
        numbers = present - sum(words.values())
        if not words or numbers < MOSTLY_NUMBERS * present:
            return
        shown = ", ".join(_shown(key) for key in sorted(words, key=lambda k: (-words[k], k))[:3])
        more = f" and {len(words) - 3:,} more" if len(words) > 3 else ""
        raise DataError(
            f"{self.where}column {column.name!r} holds numbers, but {present - numbers:,} of its {present:,} values "
            f"({(present - numbers) / present:.1%}) are words: {shown}{more}; clean them (an empty field or NA is a "
            "gap), or add the column to data.categorical to keep its values as categories"
        )

    def _vocabulary(self, column: _Column) -> list[str]:
        counts = column.counts
        present = column.rows - column.missing
        if column.declared and len(counts) > self.max_categories:
            raise DataError(
                f"{self.where}data.categorical column {column.name!r} has {len(counts):,} distinct values, "
                f"more than max_categories {self.max_categories}; raise max_categories or leave it out of "
                "data.categorical"
            )
        if not column.declared:
            self._refuse_stray_words(column, present)
        if not column.declared and present >= ID_MIN_ROWS and len(counts) > ID_SHARE * present:
            written = _dates_written_otherwise(list(counts)[:20])
            if written:
                raise DataError(
                    f"{self.where}column {column.name!r} holds dates written as {written!r}, not YYYY-MM-DD, so they "
                    "read as text with a value per row; write them as YYYY-MM-DD (ISO 8601), or add the column to "
                    "data.drop"
                )
            raise DataError(
                f"{self.where}column {column.name!r} looks like an identifier ({len(counts):,} distinct values in "
                f"{present:,} rows); add it to data.drop (or to data.categorical, with data.max_categories "
                f"{len(counts):,} or more, to keep it)"
            )
        top = sorted(counts, key=lambda k: (-counts[k], k))[: self.max_categories]
        return sorted(top)


def fit_encoding(
    chunks: Iterable[pa.Table | pd.DataFrame],
    *,
    target: str | None = None,
    drop: Sequence[str] = (),
    categorical: Sequence[str] = (),
    max_categories: int = MAX_CATEGORIES,
    where: str = "",
) -> Encoding:
    """The encoding of the training rows, read one chunk at a time (see :class:`EncodingFitter`)."""
    fitter = EncodingFitter(
        target=target, drop=drop, categorical=categorical, max_categories=max_categories, where=where
    )
    for chunk in chunks:
        fitter.add(chunk)
    return fitter.finish()


# ---- targets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The target column: its task, its classes in order (classification), the rows it lacks, and for
    regression the training split's mean and scale, which the model's standardised output is undone with."""

    name: str
    task: str  # "classification" or "regression"
    classes: list | None
    rows: int
    missing: int
    mean: float = 0.0
    scale: float = 1.0

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @property
    def outputs(self) -> int:
        """The model's output width: one number for regression, one logit per class."""
        return 1 if self.regression else len(self.classes or [])

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "classes": self.classes,
            "rows": self.rows,
            "missing": self.missing,
            "mean": self.mean,
            "scale": self.scale,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Target:
        return cls(
            data["name"],
            data["task"],
            data["classes"],
            int(data["rows"]),
            int(data["missing"]),
            float(data.get("mean", 0.0)),
            float(data.get("scale", 1.0)),
        )

    def with_moments(self, mean: float, std: float) -> Target:
        """This target with the training split's mean and std (a constant target keeps a scale of 1)."""
        return replace(self, mean=float(mean), scale=float(std) if std > 0 else 1.0)

    def encode(self, values: Any) -> np.ndarray:
        """Class indices (int64; -1 for a missing or unknown label) or float32 values (NaN where missing)."""
        series = pd.Series(values) if not isinstance(values, pd.Series) else values
        if self.task == "regression":
            return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan).astype(np.float32)
        index = {category_key(c): i for i, c in enumerate(self.classes or [])}
        codes, uniques = pd.factorize(series)
        lookup = np.array([index.get(category_key(u), -1) for u in uniques] + [-1], dtype=np.int64)
        return lookup[codes]

    def model_target(self, values: Any) -> np.ndarray:
        """What the model trains against: class indices, or the number standardised (float32)."""
        y = self.encode(values)
        return ((y.astype(np.float64) - self.mean) / self.scale).astype(np.float32) if self.regression else y

    def predicted(self, outputs: np.ndarray) -> np.ndarray:
        """The prediction in the target's own terms from model outputs: the number in its units, or
        the class index (argmax) to look up in :attr:`classes`."""
        outputs = np.asarray(outputs)
        if self.regression:
            return outputs.reshape(len(outputs), -1)[:, 0].astype(np.float64) * self.scale + self.mean
        return outputs.argmax(axis=1)


class TargetFitter:
    """The target's task and classes, counted one chunk at a time (memory: at most MAX_CLASSES values)."""

    def __init__(self, name: str, task: str = "auto", where: str = "") -> None:
        if task not in ("auto", "classification", "regression"):
            raise DataError(f"task must be auto, classification or regression, got {task!r}")
        self.name, self.task, self.where = name, task, where
        self.rows = self.missing = 0
        self.kind: str | None = None
        self.integral = True
        self.counts: dict[Any, int] = {}
        self.overflow = False

    def add(self, table: pa.Table | pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table[[self.name]], preserve_index=False)
        if self.name not in table.column_names:
            shown = ", ".join(table.column_names[:8]) + (" ..." if table.num_columns > 8 else "")
            raise DataError(
                f"{self.where}data.target {self.name!r} is not a column (columns: {shown}); set data.target"
            )
        values = table.column(self.name)
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        self.rows += len(values)
        kind = _kind_of(values.type)
        if kind is None:
            self.missing += len(values)
            return
        if kind not in (NUMERIC, BOOLEAN, CATEGORY):
            raise DataError(
                f"{self.where}data.target {self.name!r} has type {values.type}; it must be a label or a number"
            )
        if self.kind is None:
            self.kind = kind
        elif self.kind != kind:
            raise DataError(f"{self.where}data.target {self.name!r} changes type partway through the table")
        if kind == NUMERIC:
            x = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
            present = ~np.isnan(x)
            if np.isinf(x).any():
                raise DataError(f"{self.where}data.target {self.name!r} has infinite values; fill or drop those rows")
            self.missing += int(len(x) - present.sum())
            x = x[present]
            self.integral = self.integral and bool(np.all(x == np.round(x)))
            if self.overflow:
                return
            uniques, counts = np.unique(x, return_counts=True)
            pairs = zip(uniques.tolist(), counts.tolist(), strict=True)
        else:
            if kind == CATEGORY:  # an empty CSV field is a row without a target, not a class named ""
                blank = pc.equal(pc.utf8_trim_whitespace(values), "")
                values = pc.if_else(blank, pa.scalar(None, values.type), values)
            self.missing += values.null_count
            if self.overflow:
                return
            counted = pc.value_counts(values.drop_null())
            pairs = zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True)
        for value, n in pairs:
            self.counts[value] = self.counts.get(value, 0) + n
        if len(self.counts) > MAX_CLASSES:
            self.overflow, self.counts = True, {}

    def merge(self, later: TargetFitter) -> TargetFitter:
        """Take in the partial count of later rows (the next partition): the classes and task are those
        of one pass over both. Returns ``self``, for a reduction."""
        self.rows += later.rows
        self.missing += later.missing
        if later.kind is not None:
            if self.kind is None:
                self.kind = later.kind
            elif self.kind != later.kind:
                raise DataError(f"{self.where}data.target {self.name!r} changes type partway through the table")
        self.integral = self.integral and later.integral
        if self.overflow or later.overflow:
            self.overflow, self.counts = True, {}
            return self
        for value, n in later.counts.items():
            self.counts[value] = self.counts.get(value, 0) + n
        if len(self.counts) > MAX_CLASSES:
            self.overflow, self.counts = True, {}
        return self

    def finish(self) -> Target:
        if self.kind is None or self.missing == self.rows:
            raise DataError(f"{self.where}data.target {self.name!r} has no values (all missing)")
        task = self.task
        if task == "auto":
            few = not self.overflow and len(self.counts) <= CLASSIFICATION_MAX_INTEGERS
            task = "regression" if self.kind == NUMERIC and not (self.integral and few) else "classification"
        if task == "regression":
            if self.kind == CATEGORY:
                raise DataError(f"{self.where}data.target {self.name!r} is text; a regression target must be numeric")
            return Target(self.name, task, None, self.rows, self.missing)
        if self.overflow:
            raise DataError(
                f"{self.where}data.target {self.name!r} has more than {MAX_CLASSES:,} distinct values; "
                "it must be a class label, not a measurement (or set task: regression)"
            )
        classes = sorted(self.counts)
        if self.kind == NUMERIC and self.integral:
            classes = [int(c) for c in classes]
        elif self.kind == BOOLEAN:
            classes = [bool(c) for c in classes]
        if len(classes) < 2:
            raise DataError(
                f"{self.where}data.target {self.name!r} has {len(classes)} class ({classes[0]!r}); needs at least 2"
            )
        return Target(self.name, task, classes, self.rows, self.missing)


def fit_target(chunks: Iterable[pa.Table | pd.DataFrame], name: str, task: str = "auto", where: str = "") -> Target:
    """The target's task (auto: text, booleans or at most 20 distinct whole numbers classify; other numbers
    regress), its sorted classes and the count of rows without a target, for the caller to drop."""
    fitter = TargetFitter(name, task, where)
    for chunk in chunks:
        fitter.add(chunk)
    return fitter.finish()


# ---- applying: numpy and pandas only, so a standalone copy can run where the package cannot --------


def _dates_written_otherwise(values: list[str]) -> str | None:
    """The first of ``values`` when every one reads as a date in some other form (``01/02/2012``,
    ``3 Jan 2012``), else None: such a column is dates, not an identifier."""
    import warnings

    sample = pd.Series([v for v in values if any(c.isdigit() for c in v)], dtype=object)
    if len(sample) < len(values) or not len(sample):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns when it guesses a format per element
        for dayfirst in (False, True):
            if pd.to_datetime(sample, errors="coerce", format="mixed", dayfirst=dayfirst).notna().all():
                return values[0]
    return None


def _to_datetime(series: pd.Series) -> pd.Series:
    """Dates parsed from text (ISO 8601); what does not parse is NaT.

    pandas parses text to nanoseconds, which reach only the years 1677 to 2262; Arrow's CSV reader
    (batch scoring) takes any year, and ``9999-12-31`` is a common "no end date". Those dates are
    parsed again at second resolution, so every reader of a table sees the same dates.
    """
    try:
        parsed = pd.to_datetime(series, errors="coerce", format="ISO8601")
    except (TypeError, ValueError):  # pandas < 2 has no format="ISO8601"
        parsed = pd.to_datetime(series, errors="coerce")
    lost = parsed.isna().to_numpy() & _present(series)
    if not lost.any():
        return parsed
    wide = np.array([_iso_seconds(v) for v in series[lost]], dtype="datetime64[s]")
    if np.isnat(wide).all():
        return parsed
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):  # the wall-clock time, as the date parts read it
        parsed = parsed.dt.tz_localize(None)
    seconds = parsed.to_numpy(dtype="datetime64[s]")
    seconds[lost] = wide
    return pd.Series(seconds, index=series.index, name=series.name)


def _iso_seconds(value: Any) -> np.datetime64:
    """An ISO date or date and time of any year from 1 to 9999, its wall-clock time; NaT if it is none."""
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            return np.datetime64("NaT")
    if isinstance(value, datetime.datetime):
        return np.datetime64(value.replace(tzinfo=None), "s")
    if isinstance(value, datetime.date):
        return np.datetime64(value, "s")
    return np.datetime64("NaT")


def _present(series: pd.Series) -> np.ndarray:
    """Which rows hold a value: not null, and not blank text (an empty CSV field)."""
    present = series.notna().to_numpy()
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        present &= series.astype(str).str.strip().ne("").to_numpy()
    return present


def _date_parts(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Year, month, day of week, day of year and hour per row (float64) and which rows have a date."""
    dt = series.dt
    present = series.notna().to_numpy()
    parts = (
        np.column_stack(
            [
                part.to_numpy(dtype=np.float64, na_value=np.nan)
                for part in (dt.year, dt.month, dt.dayofweek, dt.dayofyear, dt.hour)
            ]
        )
        if len(series)
        else np.empty((0, len(DATE_PARTS)))
    )
    return parts, present


def _records(data: Any, names: list[str]) -> pd.DataFrame:
    """The rows as a DataFrame of the needed columns: from pandas, Arrow (duck-typed) or dict records."""
    if isinstance(data, pd.DataFrame):
        frame = data
    elif hasattr(data, "column_names") and hasattr(data, "to_pandas"):  # an Arrow table, without importing pyarrow
        have = set(data.column_names)
        frame = data.select([n for n in names if n in have]).to_pandas(
            date_as_object=False, strings_to_categorical=True
        )
    elif isinstance(data, dict):
        frame = pd.DataFrame(data)
    else:
        frame = pd.DataFrame.from_records(list(data))
    absent = [n for n in names if n not in frame.columns]
    if absent:
        raise DataError(
            f"column {absent[0]!r} is missing from the rows to encode; the model was trained on it"
            + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
        )
    return frame


def _gap_words(series: pd.Series) -> np.ndarray:
    """Which rows hold a word for a gap (``NA``, ``NaN``, ``null``, ...) in a column of numbers or booleans."""
    return series.map(lambda v: isinstance(v, str) and v.strip() in GAP_WORDS).to_numpy(dtype=bool)


def _overflows(value: Any) -> bool:
    """Text of a number beyond float64 (``1e400``), which pandas cannot convert and Python reads as infinity."""
    if not isinstance(value, str):
        return False
    try:
        return math.isinf(float(value))
    except ValueError:
        return False


def check_kind(name: str, kind: str, values: np.ndarray) -> None:
    """One rule for what a number or boolean column holds, whichever reader brought the values (a
    CSV's text, JSON, Arrow, numpy): a boolean column takes true, false, 1 and 0, a number column
    numbers and never true or false; a gap (NaN, infinity) is a gap in both."""
    if values.dtype.kind == "b":
        if kind == NUMERIC and len(values):
            raise DataError(f"column {name!r}: {_shown(bool(values[0]))} is not a number")
    elif kind == BOOLEAN and values.dtype.kind in "iuf":
        bad = (values != 0) & (values != 1) & np.isfinite(values)
        if bad.any():
            raise DataError(f"column {name!r}: {_shown(values[bad][0].item())} is not true or false")


def _numbers(series: pd.Series, name: str, boolean: bool) -> np.ndarray:
    """The column as float64 with NaN for gaps; text that is no number is refused with a sample."""
    if pd.api.types.is_bool_dtype(series.dtype) or (
        pd.api.types.is_numeric_dtype(series.dtype) and not isinstance(series.dtype, pd.CategoricalDtype)
    ):
        if isinstance(series.dtype, np.dtype):  # numpy already writes a gap as NaN: no mask to check
            raw = series.to_numpy()
            x = raw.astype(np.float64, copy=False)
        else:  # pandas' nullable Int64, boolean, ...: their NA becomes NaN
            raw = x = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if pd.api.types.is_bool_dtype(series.dtype):
            if not boolean and series.notna().any():
                raise DataError(f"column {name!r}: {_shown(bool(series.dropna().iloc[0]))} is not a number")
        elif boolean:
            check_kind(name, BOOLEAN, raw)
    else:
        series = series.where(~_gap_words(series), None)
        if boolean:
            words = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0}
            converted = series.map(lambda v: words.get(str(v).strip().lower(), np.nan) if category_key(v) else np.nan)
        else:
            converted = pd.to_numeric(series.astype(object), errors="coerce")
            beyond = converted.isna().to_numpy() & series.map(_overflows).to_numpy(dtype=bool)  # 1e400: a gap
            if beyond.any():
                converted = converted.where(~beyond, np.inf)
            truth = series.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)  # to_numeric makes 1
            if truth.any():
                converted = converted.where(~truth, np.nan)
        bad = converted.isna().to_numpy() & series.notna().to_numpy()
        if bad.any():
            what = "true or false" if boolean else "a number"
            raise DataError(f"column {name!r}: {_shown(series[bad].iloc[0])} is not {what}")
        x = converted.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isfinite(x), x, np.nan)


def _dates(series: pd.Series, name: str) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return series
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    if pd.api.types.is_numeric_dtype(series.dtype) and series.notna().any():
        raise DataError(f"column {name!r} should hold dates, got {_shown(series.dropna().iloc[0])}")
    parsed = _to_datetime(series)
    bad = parsed.isna().to_numpy() & _present(series)
    if bad.any():
        raise DataError(f"column {name!r}: {_shown(series[bad].iloc[0])} does not parse as a date")
    return parsed


PLAIN_KINDS = "biuf"  # numpy kinds (bool, int, uint, float) that become float64 as _numbers makes them


def _series_numbers(series: Any) -> np.ndarray | None:
    """A pandas column of numbers held by numpy itself, as its array; None for anything _numbers
    must convert (text, categories, pandas' nullable types) or a repeated name (a DataFrame, not a column)."""
    if not isinstance(series, pd.Series) or not isinstance(series.dtype, np.dtype):
        return None
    return series.to_numpy() if series.dtype.kind in PLAIN_KINDS else None


def _arrow_numbers(column: Any) -> np.ndarray | None:
    """An Arrow column of numbers as numpy, a gap in integers as NaN (as pandas makes it), without a
    DataFrame in between; None for any other type, whose conversion is left to _numbers."""
    try:
        kind = np.dtype(column.type.to_pandas_dtype()).kind
    except NotImplementedError:  # dictionary (categorical) columns: pandas makes them categories
        return None
    if kind not in PLAIN_KINDS:
        return None
    values = column.to_numpy(zero_copy_only=False)
    return values if values.dtype.kind in PLAIN_KINDS else None  # booleans with gaps arrive as objects


def _plain_columns(data: Any, names: list[str]) -> list[np.ndarray] | None:
    """The named columns as numpy numbers straight from a DataFrame or an Arrow table (duck-typed), or
    None where the general path must run: other input, an absent column (its error names it), or
    any column that is not plain numbers."""
    if isinstance(data, pd.DataFrame):
        have, pick = set(data.columns), lambda name: _series_numbers(data[name])
    elif hasattr(data, "column_names") and hasattr(data, "column"):
        have, pick = set(data.column_names), lambda name: _arrow_numbers(data.column(name))
        if len(have) != len(data.column_names):  # a repeated name: the general path decides
            return None
    else:
        return None
    if not names or any(name not in have for name in names):
        return None
    columns = []
    for name in names:
        values = pick(name)
        if values is None:
            return None
        columns.append(values)
    return columns


STANDARDISED_ROWS = 4096  # rows per pass: few calls per column, a float64 scratch about a core's cache
TILE_COLUMNS = 8  # columns cast to float32 at a time


def _cast_into(out: np.ndarray, x: np.ndarray) -> None:
    """``x`` (column-major float64) into ``out`` (row-major float32), a few columns at a time: numpy's
    transposing copy of all columns at once strides across every column for each row and took 2.5
    times as long at 4,096 x 64."""
    if len(x) < STANDARDISED_ROWS // 8:  # too few rows for the tiles to pay
        out[...] = x
        return
    for left in range(0, x.shape[1], TILE_COLUMNS):
        out[:, left : left + TILE_COLUMNS] = x[:, left : left + TILE_COLUMNS]


@dataclass(frozen=True)
class NumericLayout:
    """Where an all-number encoding puts each column's standardised value and ``:missing`` flag."""

    mean: np.ndarray
    scale: np.ndarray
    value_at: np.ndarray
    flag_at: np.ndarray  # output positions of the flags ...
    flagged: np.ndarray  # ... and the input columns they flag
    names: tuple[str, ...] = ()
    boolean: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # which columns are booleans

    @classmethod
    def of(cls, columns: list[dict[str, Any]]) -> NumericLayout | None:
        """The layout, or None when some column is a category or a date (or there is none)."""
        if not columns or any(spec["type"] not in (NUMERIC, BOOLEAN) for spec in columns):
            return None
        value_at, flag_at, flagged = [], [], []
        at = 0
        for i, spec in enumerate(columns):
            value_at.append(at)
            at += 1
            if spec["missing"]:
                flag_at.append(at)
                flagged.append(i)
                at += 1
        return cls(
            np.asarray([spec["mean"] for spec in columns], dtype=np.float64),
            np.asarray([spec["scale"] for spec in columns], dtype=np.float64),
            *(np.asarray(v, dtype=np.int64) for v in (value_at, flag_at, flagged)),
            tuple(spec["name"] for spec in columns),
            np.asarray([spec["type"] == BOOLEAN for spec in columns], dtype=bool),
        )

    def check(self, x: np.ndarray) -> None:
        """A matrix of raw values in training column order holds what each column may (see
        :func:`check_kind`): no number but 0 and 1 in a boolean column, no boolean in a number column."""
        if x.dtype.kind == "b":
            numbers = np.flatnonzero(~self.boolean)
            if len(numbers) and len(x):
                check_kind(self.names[numbers[0]], NUMERIC, x[:, numbers[0]])
            return
        for j in np.flatnonzero(self.boolean):
            check_kind(self.names[j], BOOLEAN, x[:, j])

    def apply(self, columns: list[np.ndarray], width: int) -> np.ndarray:
        """The arithmetic of Encoding.apply, float64 ``(x - mean) / scale`` with gaps (non-finite
        values) at the mean, then float32, for all columns together: a few whole-matrix passes per
        chunk of rows instead of several calls per column, the chunk small enough to stay in cache."""
        rows = len(columns[0])
        out = (np.zeros if len(self.flag_at) else np.empty)((rows, width), dtype=np.float32)
        scratch = np.empty((min(rows, STANDARDISED_ROWS), len(columns)), dtype=np.float64, order="F")
        floats = any(values.dtype.kind == "f" for values in columns)  # integers and booleans are always finite
        for top in range(0, rows, STANDARDISED_ROWS):
            x = scratch[: min(STANDARDISED_ROWS, rows - top)]
            for j, values in enumerate(columns):
                x[:, j] = values[top : top + len(x)]
            gaps = self._impute(x) if floats else None
            x -= self.mean
            x /= self.scale
            self._place(out[top : top + len(x)], x, gaps)
        return out

    def standardise(self, x: np.ndarray) -> np.ndarray:
        """The same for a float64 matrix of raw values in training column order, at once: a server's
        few rows, for which the chunked passes of :meth:`apply` cost more than they save."""
        if not len(self.flag_at) and np.isfinite(x).all():  # one feature per column and no gap
            return ((x - self.mean) / self.scale).astype(np.float32)
        gaps = ~np.isfinite(x)
        out = np.zeros((len(x), len(self.value_at) + len(self.flag_at)), dtype=np.float32)
        out[:, self.value_at] = (np.where(gaps, self.mean, x) - self.mean) / self.scale
        out[:, self.flag_at] = gaps[:, self.flagged]
        return out

    def _impute(self, x: np.ndarray) -> np.ndarray | None:
        """Non-finite values set to their column's mean, in place; where they were, or None if nowhere."""
        finite = np.isfinite(x)
        if finite.all():
            return None
        gaps = ~finite
        np.copyto(x, np.broadcast_to(self.mean, x.shape), where=gaps)
        return gaps

    def _place(self, out: np.ndarray, x: np.ndarray, gaps: np.ndarray | None) -> None:
        """Standardised values into their output columns, and the flags of the columns that have one."""
        if not len(self.flag_at):
            _cast_into(out, x)
            return
        out[:, self.value_at] = x
        if gaps is not None:
            out[:, self.flag_at] = gaps[:, self.flagged]


def _category_codes(series: pd.Series, index: dict[str, int], other: int, missing: int) -> np.ndarray:
    """Per row, the one-hot position of its value: its own, ``missing`` for a gap, ``other`` for the rest."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes, uniques = series.cat.codes.to_numpy(), series.cat.categories
    else:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
    lookup = []
    for value in uniques:
        key = category_key(value)
        lookup.append(missing if key is None else index.get(key, other))
    return np.asarray([*lookup, missing], dtype=np.int64)[codes]  # code -1 (a gap) takes the last


@dataclass
class Encoding:
    """The fitted encoding: one JSON object, applied the same wherever the model predicts.

    ``columns`` holds one dict per input column, in training order: ``name``, ``type`` (numeric,
    boolean, category, date), ``dtype`` (as trained), ``missing`` (training had gaps: a missing
    column follows), and ``mean``/``scale`` (numbers), ``values`` (categories) or ``parts``,
    ``mean``, ``scale`` (dates).
    """

    columns: list[dict[str, Any]]
    max_categories: int = MAX_CATEGORIES
    rows: int = 0
    target: Target | None = None
    features: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.features = [name for spec in self.columns for name in feature_names(spec)]

    @functools.cached_property
    def numeric_layout(self) -> NumericLayout | None:
        """The layout of an encoding of numbers and booleans alone: those skip the per-column steps
        and pandas wherever the input's columns are plain numbers too (batch scoring, streaming)."""
        return NumericLayout.of(self.columns)

    @property
    def inputs(self) -> list[str]:
        return [spec["name"] for spec in self.columns]

    @property
    def image_side(self) -> int | None:
        """The side of the square image each row is, or None: as many plain numbers of one type as a
        square of at least 8x8 has cells, none with gaps. A table of 4 or 16 measurements is square by chance."""
        side = math.isqrt(len(self.columns))
        plain = all(c["type"] == NUMERIC and not c["missing"] for c in self.columns)
        one_type = len({c["dtype"] for c in self.columns}) == 1
        return side if plain and one_type and side * side == len(self.columns) and side >= MIN_IMAGE_SIDE else None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "max_categories": self.max_categories,
            "rows": self.rows,
            "columns": self.columns,
            "features": self.features,
            "target": self.target.to_json() if self.target else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Encoding:
        if data.get("format") != FORMAT:
            raise DataError(f"not a {FORMAT} encoding (format {data.get('format')!r})")
        target = Target.from_json(data["target"]) if data.get("target") else None
        return cls([dict(spec) for spec in data["columns"]], int(data["max_categories"]), int(data["rows"]), target)

    def apply(self, data: Any) -> np.ndarray:
        """Float32 model input from raw rows with the training columns in any order (others ignored)."""
        if self.numeric_layout is not None:
            columns = _plain_columns(data, self.inputs)
            if columns is not None:
                for spec, values in zip(self.columns, columns, strict=True):
                    check_kind(spec["name"], spec["type"], values)
                return self.numeric_layout.apply(columns, len(self.features))
        return self._apply_frame(_records(data, self.inputs))

    def _apply_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """The general path, column by column through pandas: any column type, any input."""
        out = np.zeros((len(frame), len(self.features)), dtype=np.float32)
        at = 0
        for spec in self.columns:
            name, kind = spec["name"], spec["type"]
            if kind in (NUMERIC, BOOLEAN):
                x = _numbers(frame[name], name, kind == BOOLEAN)
                gaps = np.isnan(x)
                out[:, at] = (np.where(gaps, spec["mean"], x) - spec["mean"]) / spec["scale"]
                at += 1
                if spec["missing"]:
                    out[:, at] = gaps
                    at += 1
            elif kind == DATE:
                parts, present = _date_parts(_dates(frame[name], name))
                keep = [DATE_PARTS.index(p) for p in spec["parts"]]
                mean, scale = np.asarray(spec["mean"]), np.asarray(spec["scale"])
                values = np.where(present[:, None], parts[:, keep], mean)
                out[:, at : at + len(keep)] = (values - mean) / scale
                at += len(keep)
                if spec["missing"]:
                    out[:, at] = ~present
                    at += 1
            else:
                values = spec["values"]
                index = {value: i for i, value in enumerate(values)}
                other = len(values) + spec["missing"]
                missing = len(values) if spec["missing"] else other
                codes = _category_codes(frame[name], index, other, missing)
                out[np.arange(len(codes)), at + codes] = 1.0
                at += other + 1
        return out


def feature_names(spec: dict[str, Any]) -> list[str]:
    name, kind, gaps = spec["name"], spec["type"], spec["missing"]
    if kind in (NUMERIC, BOOLEAN):
        return [name] + ([f"{name}:missing"] if gaps else [])
    if kind == DATE:
        return [f"{name}:{p}" for p in spec["parts"]] + ([f"{name}:missing"] if gaps else [])
    return [f"{name}={v}" for v in spec["values"]] + ([f"{name}=<missing>"] if gaps else []) + [f"{name}=<other>"]
