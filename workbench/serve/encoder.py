"""The fitted encoding applied to a request's rows, fast where the values are plain.

:meth:`Encoding.apply` builds a pandas DataFrame and walks it column by column: about 5 ms for one
row of the 64 digit pixels, more than the model takes. A server mostly sees plain JSON numbers,
booleans and text, for which the same arithmetic runs on numpy arrays here in microseconds. Any
other value (text in a number column, a date, a mix of types pandas would coerce) sends the whole
request through :meth:`Encoding.apply` itself, so the input, every gap and every refusal are the
package's own; the tests check both ways give the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

from workbench.errors import DataError
from workbench.ml.encoding import BOOLEAN, CATEGORY, NUMERIC, Encoding, check_kind, feature_names
from workbench.serve.media import RequestError

_NUMBER_TYPES = frozenset({int, float, type(None)})
_BOOL_TYPES = frozenset({bool})
_TEXT_TYPES = frozenset({str, type(None)})


def _allowed(kind: str, values: np.ndarray) -> bool:
    """Whether a number or boolean column may hold these values (:func:`check_kind`); where it may
    not, the caller leaves the refusal to :meth:`Encoding.apply`, so its words are the package's."""
    try:
        check_kind("", kind, values)
    except DataError:
        return False
    return True


def _floats(values: Sequence[Any], kind: str) -> np.ndarray | None:
    """The column as float64 (NaN for a gap) where pandas would read it the same way, else None.

    Plain numbers (with nulls) are numbers, in a boolean column only 0 and 1; booleans alone are
    0 and 1 in a boolean column. Booleans mixed with nulls are read word by word in a boolean column.
    Anything else (true in a number column, 2 in a boolean one) is pandas' to decide, and refuse.
    """
    types = {type(v) for v in values}
    try:
        if types <= _NUMBER_TYPES:
            x = np.array(values, dtype=np.float64)
            return x if kind != BOOLEAN or _allowed(kind, x) else None
        if types <= _BOOL_TYPES:
            return np.array(values, dtype=np.float64) if kind == BOOLEAN else None
        if kind == BOOLEAN and types <= {bool, type(None)}:
            return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    except OverflowError:  # an integer beyond float64: pandas says what to do about it
        return None
    return None


def _huge(data: Any, names: Sequence[str]) -> str:
    """``column 'x': 1000...000 `` for the first integer too large for a float, or an empty string."""
    rows = data.to_dict("records") if isinstance(data, pd.DataFrame) else data
    for row in rows:
        for name in names:
            value = row.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > np.finfo(np.float64).max:
                text = str(value)
                return f"column {name!r}: {text[:12]}...{text[-4:]} ({len(text)} digits) "
    return "a number "


class RowEncoder:
    """The encoding of one model, ready for requests: records, columns, or a matrix of raw values."""

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding
        self.names = encoding.inputs
        # a record's values in training column order, in one C call (itemgetter of one name gives no tuple)
        self._values_of: Callable[[Mapping[str, Any]], tuple[Any, ...]] = (
            itemgetter(*self.names) if len(self.names) > 1 else lambda record: (record[self.names[0]],)
        )
        self.width = len(encoding.features)
        self._layout = encoding.numeric_layout  # None unless every column is a number or a boolean
        self.numeric = self._layout is not None
        # numbers alone, no boolean column: text such as a CSV field reads as a number the same way in each
        self.numbers_only = self._layout is not None and not self._layout.boolean.any()
        # where each column's one-hot block or date parts begin, for requests that hold text
        at, value_at = 0, []
        for spec in encoding.columns:
            value_at.append(at)
            at += len(feature_names(spec))
        self._value_at = value_at
        self._index = [
            {value: j for j, value in enumerate(spec["values"])} if spec["type"] == CATEGORY else None
            for spec in encoding.columns
        ]

    def _apply(self, data: Any) -> np.ndarray:
        try:
            return self.encoding.apply(data)
        except DataError as exc:
            raise RequestError(400, str(exc)) from None
        except OverflowError:  # pandas meets an integer beyond float64 (JSON allows any size)
            raise RequestError(400, f"{_huge(data, self.names)}is beyond the range of a 64-bit float") from None

    def matrix(self, values: np.ndarray) -> np.ndarray:
        """Raw values in training column order (a model whose columns are all numbers or booleans)."""
        assert self._layout is not None
        try:
            self._layout.check(values)
        except DataError as exc:
            raise RequestError(400, str(exc)) from None
        return self._layout.standardise(np.asarray(values, dtype=np.float64))

    def plain(self, records: Sequence[Any]) -> np.ndarray | None:
        """The records as one matrix when the model takes numbers only and every record is an object
        holding every column as a plain number or null, else None (the caller checks and says what is
        wrong, or encodes column by column): no per-column work for the commonest request."""
        if not self.numeric:
            return None
        try:
            rows = list(map(self._values_of, records))
        except (KeyError, TypeError):  # a column missing, or a record that is not an object
            return None
        return self.plain_values(rows)

    def plain_values(self, rows: Sequence[Sequence[Any]]) -> np.ndarray | None:
        """Rows of values in training column order (each as long as the columns) as one matrix, on
        the same terms as :meth:`plain`."""
        if not self.numeric or not set(map(type, chain.from_iterable(rows))) <= _NUMBER_TYPES:
            return None
        try:
            values = np.array(rows, dtype=np.float64)
        except OverflowError:
            return None
        return self.plain_matrix(values)  # 2 in a boolean column: refused column by column, in its words

    def records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Dict records holding every training column (other keys ignored)."""
        x = self.plain(records)
        if x is not None:
            return x
        columns = {name: [record[name] for record in records] for name in self.names}
        return self._columns(columns, len(records), lambda: self._apply(list(records)))

    def columns(self, columns: Mapping[str, np.ndarray | list[Any]], rows: int) -> np.ndarray:
        """One array (numbers) or list (text, None for a gap) per training column, ``rows`` long."""
        if self.numeric:  # number arrays alone: one matrix, standardised at once rather than per column
            arrays = [columns[name] for name in self.names]
            if all(isinstance(a, np.ndarray) and a.dtype.kind in "iuf" for a in arrays):
                x = self.plain_matrix(np.stack(arrays, axis=1).astype(np.float64, copy=False))
                if x is not None:
                    return x
        return self._columns(columns, rows, lambda: self._apply(pd.DataFrame({n: columns[n] for n in self.names})))

    def plain_matrix(self, values: np.ndarray) -> np.ndarray | None:
        """A float64 matrix of raw values in training column order, standardised; None where a boolean
        column holds another number (the caller's general path refuses it in the package's words)."""
        assert self._layout is not None
        try:
            self._layout.check(values)
        except DataError:
            return None
        return self._layout.standardise(values)

    def _columns(self, columns: Mapping[str, Any], rows: int, fallback: Any) -> np.ndarray:
        out = np.zeros((rows, self.width), dtype=np.float32)
        for i, spec in enumerate(self.encoding.columns):
            values = columns[spec["name"]]
            at = self._value_at[i]
            if spec["type"] in (NUMERIC, BOOLEAN):
                if isinstance(values, np.ndarray):
                    plain = values.dtype.kind in "biuf" and _allowed(spec["type"], values)
                    x = values.astype(np.float64) if plain else None
                else:
                    x = _floats(values, spec["type"])
                if x is None:
                    return fallback()
                gaps = ~np.isfinite(x)
                out[:, at] = (np.where(gaps, spec["mean"], x) - spec["mean"]) / spec["scale"]
                if spec["missing"]:
                    out[:, at + 1] = gaps
            elif spec["type"] == CATEGORY:
                if isinstance(values, np.ndarray) or not {type(v) for v in values} <= _TEXT_TYPES:
                    return fallback()
                index = self._index[i]
                assert index is not None
                other = len(index) + spec["missing"]
                missing = len(index) if spec["missing"] else other
                codes = [missing if v is None or not v.strip() else index.get(v, other) for v in values]
                out[np.arange(rows), at + np.asarray(codes, dtype=np.int64)] = 1.0
            else:  # dates: pandas parses them
                return fallback()
        return out
