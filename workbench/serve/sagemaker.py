"""SageMaker's hosting contract: ``POST /invocations`` bodies in, answers out.

Requests carry raw rows, as the archive's ``inference.py`` takes them:

- ``application/json``: records ``[{"column": value, ...}]``, ``{"instances": [...]}`` holding records
  or lists of values, one record, or lists of values in training column order;
- ``text/csv``: with a header row naming the columns (any order, other columns ignored) or without
  one (values in training column order); ``header=present`` or ``header=absent`` settles which;
- ``application/x-npy``: a 2-D numeric array in training column order, for a model whose columns are
  all numbers or booleans.

``null`` (JSON), an empty field (CSV) and NaN or infinity (any number) are gaps, imputed as in
training; a record must hold every training column (``null`` for a gap), and keys the model does not
know are ignored, as batch scoring ignores extra columns. Answers are JSON (``predictions``, with
``classes`` and ``probabilities`` for a classifier), CSV (the prediction, then the class
probabilities) or ``application/x-npy`` (the model's raw outputs), as ``Accept`` asks.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
from collections.abc import Sequence
from itertools import repeat
from typing import Any

import numpy as np
import orjson

from workbench.ml.encoding import Target
from workbench.serve.encoder import RowEncoder
from workbench.serve.media import (
    CSV,
    JSON,
    NPY,
    SENT,
    Offer,
    RequestError,
    columns_missing,
    content_type,
    invalid_byte,
    text_of,
)
from workbench.serve.outputs import Scored
from workbench.storage.sources import DECIMAL_COMMA, CsvLayout, text_layout


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``: orjson's speed, with Python's leniency for NaN and Infinity.

    Python's ``json.dumps`` writes a float NaN as the bare word ``NaN``, which strict parsers refuse;
    a client's gap written that way is still a gap.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the body is not UTF-8 JSON ({invalid_byte(exc)})") from None
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None


def check_records(records: Sequence[Any], names: Sequence[str], label: str = "record") -> None:
    """Every record is an object holding every training column; ``label`` names a record in messages."""
    wanted = set(names)
    for i, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise RequestError(400, "JSON rows must be all records or all lists of values, not a mix")
        if not wanted.issubset(record):
            held = [name for name in names if name in record]
            if not held:
                shown = ", ".join(repr(k) for k in list(record)[:5]) or "nothing"
                raise RequestError(
                    400,
                    f"{label} {i} holds none of the model's columns ({_listed(names)}); it holds {shown}",
                )
            absent = [name for name in names if name not in record]
            raise columns_missing(absent, f"{label} {i} lacks column {{column}}", "send null for a gap")


def check_values(records: Sequence[dict[str, Any]], names: Sequence[str], label: str = "record") -> None:
    """Each training column holds one value, not a JSON object or list."""
    for i, record in enumerate(records, 1):
        for name in names:
            if isinstance(record[name], (dict, list)):
                raise RequestError(
                    400, f"{label} {i}: column {name!r} holds a JSON structure; send one value per column"
                )


def records_input(records: Sequence[dict[str, Any]], encoder: RowEncoder) -> np.ndarray:
    """Model input from complete records: plain numbers straight into a matrix, anything else checked
    and encoded column by column."""
    x = encoder.plain(records)
    if x is None:
        check_values(records, encoder.names)
        x = encoder.records(records)
    return x


def _positional(rows: Sequence[Any], names: Sequence[str], bare: bool = False) -> None:
    """Each list of values has one value per training column (``bare``: the body is one such list)."""
    for i, row in enumerate(rows, 1):
        if len(row) != len(names):
            at = "the row" if bare else f"row {i}"
            raise RequestError(
                400, f"{at} has {len(row)} values; the model takes {len(names)}, in this order: {_listed(names)}"
            )


def json_input(body: bytes, encoder: RowEncoder) -> np.ndarray:
    """Model input from a JSON body: records, lists of values, or either under ``instances``."""
    if not body.strip():
        raise RequestError(400, "the request body is empty; send rows")
    payload = parse_json(body)
    names = encoder.names
    rows = payload.get("instances", [payload]) if isinstance(payload, dict) else payload
    if not isinstance(rows, list):
        raise RequestError(400, f'JSON rows come as a list or as {{"instances": [...]}}, not as {type(rows).__name__}')
    if not rows:
        raise RequestError(400, "the request holds no rows")
    first = rows[0]
    if isinstance(first, dict):
        x = encoder.plain(rows)  # the commonest request; anything else is checked, then encoded
        if x is not None:
            return x
        check_records(rows, names)
        return records_input(rows, encoder)
    if isinstance(first, list):
        if not all(isinstance(row, list) for row in rows):
            raise RequestError(400, "JSON rows must be all records or all lists of values, not a mix")
        _positional(rows, names)
    elif any(isinstance(row, (dict, list)) for row in rows):
        raise RequestError(400, "JSON rows must be all records or all lists of values, not a mix")
    else:
        rows = [rows]
        _positional(rows, names, bare=True)
    return values_input(rows, encoder)


def values_input(rows: Sequence[Sequence[Any]], encoder: RowEncoder) -> np.ndarray:
    """Model input from lists of values in training column order."""
    x = encoder.plain_values(rows)
    if x is not None:
        return x
    names = encoder.names
    return records_input([dict(zip(names, row, strict=True)) for row in rows], encoder)


def csv_input(text: str, encoder: RowEncoder, header: str) -> np.ndarray:
    """Model input from CSV; an empty field is a gap. Without ``header=present|absent`` the first row
    is a header when it names a training column. The delimiter (``,`` ``;`` tab ``|``) and a decimal
    comma are read off the first two lines as batch scoring reads a file's."""
    names = encoder.names
    head = text.lstrip("\r\n").splitlines()[:2]
    layout = text_layout(head[0] if head else "", head[1] if len(head) > 1 else "")
    x = _plain_csv(text, layout, encoder, header)
    if x is not None:
        return x
    cells = functools.partial(_cells, comma=layout.decimal == ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=layout.delimiter, strict=True, skipinitialspace=True)
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if row:
                rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise RequestError(400, f"malformed CSV at line {reader.line_num}: {exc}") from None
    if not rows:
        raise RequestError(400, "the request body is empty; send rows")
    first = [cell.strip() for cell in rows[0][1]]
    has_header = header == "present" or (header != "absent" and bool(set(first) & set(names)))
    if not has_header and header != "absent":
        folded = {name.casefold(): name for name in names}
        close = [(cell, folded[cell.casefold()]) for cell in first if cell.casefold() in folded]
        if 2 * len(close) >= len(first):  # a header meant for these columns, not a row of values
            cell, name = close[0]
            raise RequestError(
                400, f"the CSV header names {cell!r}, and the model's column is {name!r}; column names match exactly"
            )
    if not has_header:
        for line, row in rows:
            if len(row) != len(names):
                raise RequestError(
                    400,
                    f"CSV line {line} has {len(row)} values; the model takes {len(names)}, in this order: "
                    f"{_listed(names)}",
                )
        return encoder.records([dict(zip(names, cells(row), strict=True)) for _, row in rows])
    columns = first
    twice = [name for i, name in enumerate(columns) if name in columns[:i]]
    if twice:
        raise RequestError(400, f"column {twice[0]!r} appears twice in the CSV header")
    absent = [name for name in names if name not in columns]
    if absent:
        raise columns_missing(absent, "the CSV header lacks column {column}", "leave a field empty for a gap")
    records = []
    for line, row in rows[1:]:
        if len(row) != len(columns):
            raise RequestError(400, f"CSV line {line} has {len(row)} values; the header names {len(columns)} columns")
        records.append(dict(zip(columns, cells(row), strict=True)))
    if not records:
        raise RequestError(400, "the CSV has a header but no rows")
    return encoder.records(records)


NUMBER_TEXT = b"0123456789.+-eE \r\n"  # what the fields and lines of a CSV of plain numbers are made of
EXACT = 2.0**53  # pandas reads a longer whole number as an integer first, not as the float read here
READER_FROM = 2048  # fields: from here pandas' CSV reader costs less than its converter field by field
LINE_BREAK = re.compile(r"\r\n?|\n")


def _plain_csv(text: str, layout: CsvLayout, encoder: RowEncoder, header: str) -> np.ndarray | None:
    """A CSV of nothing but numbers and empty fields, for a model taking numbers alone, as one matrix;
    None for anything else (text, a quote, a decimal comma, a boolean column, a short row, a header
    not naming each column once, a number the general path would read otherwise), which
    :func:`csv_input` then reads field by field and refuses in its own words where it must.

    Each number is read by pandas' converter, the one the general path applies to each column, so
    both give the same bytes; the rule for the header is the general path's."""
    if not encoder.numbers_only or layout.decimal != "." or not text.isascii():
        return None
    names, delimiter = encoder.names, layout.delimiter
    lines = LINE_BREAK.split(text.lstrip("\r\n"), maxsplit=1)
    if '"' in lines[0]:
        return None
    first = [cell.strip() for cell in lines[0].split(delimiter)]
    order = None
    if header == "present" or (header != "absent" and bool(set(first) & set(names))):
        if len(set(first)) != len(first) or not set(names) <= set(first) or len(lines) < 2:
            return None
        data, width, order = lines[1], len(first), [first.index(name) for name in names]
    else:
        folded = {name.casefold() for name in names}
        if header != "absent" and 2 * sum(cell.casefold() in folded for cell in first) >= len(first):
            return None  # a header with names in another case: the general path says so
        data, width = text, len(names)
    if data.encode("ascii").translate(None, NUMBER_TEXT + delimiter.encode("ascii")):
        return None
    x = _csv_numbers(data, delimiter, width)
    if x is None:
        return None
    return encoder.plain_matrix(np.ascontiguousarray(x if order is None else x[:, order]))


def _csv_numbers(data: str, delimiter: str, width: int) -> np.ndarray | None:
    """The float64 rows of ``data`` (numbers, empty fields, and no quote, made sure of by the caller),
    ``width`` fields to a row, an empty field NaN; None where a row has other than ``width`` fields or
    a field is not a number as ``pandas.to_numeric`` reads one."""
    import pandas as pd

    lines = [line for line in data.splitlines() if line]  # the csv module skips empty lines only
    if not lines or set(map(str.count, lines, repeat(delimiter))) != {width - 1}:
        return None
    fields = "\n".join(lines).replace(delimiter, "\n")  # one field a line: one column for pandas
    if len(lines) * width < READER_FROM:
        flat = np.array(fields.split("\n"), dtype=object)
        x = pd.to_numeric(flat, errors="coerce")
        if x.dtype.kind not in "iuf":
            return None
        x = x.astype(np.float64, copy=False)
        gaps = np.isnan(x)
        if gaps.any() and any(cell.strip() for cell in flat[gaps]):
            return None  # a field that is no number, or beyond float64: the general path decides
    else:
        try:
            x = pd.read_csv(
                io.StringIO(fields),
                header=None,
                dtype=np.float64,
                keep_default_na=False,
                na_values=[""],  # and a field of spaces, as skipinitialspace leaves it
                skipinitialspace=True,
                skip_blank_lines=False,
                engine="c",
            )[0].to_numpy()
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            return None
        if len(x) != len(lines) * width:
            return None
    if (np.abs(x) >= EXACT).any():
        return None
    return x.reshape(len(lines), width)


def _cells(row: list[str], comma: bool = False) -> list[str | None]:
    """A row's fields, an empty one a gap; with ``comma``, a number written ``1,5`` read as 1.5."""
    if comma:
        row = [cell.replace(",", ".") if DECIMAL_COMMA.fullmatch(cell.strip()) else cell for cell in row]
    return [cell if cell.strip() else None for cell in row]


def _npy_sized(body: bytes) -> None:
    """The array the .npy header announces is the one the body holds, checked before numpy allocates
    it: a header of a few bytes may claim terabytes."""
    from numpy.lib import format as npy

    buffer = io.BytesIO(body)
    version = npy.read_magic(buffer)
    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, _, dtype = read(buffer)
    if dtype.hasobject:
        return  # np.load refuses it without pickles
    announced = math.prod(shape) * dtype.itemsize
    held = len(body) - buffer.tell()
    if announced != held:
        raise ValueError(f"its header announces {shape} of {dtype}, {announced:,} bytes, but {held:,} follow")


def npy_input(body: bytes, encoder: RowEncoder) -> np.ndarray:
    """Model input from a numeric .npy array: numbers only, so only for models taking numbers only."""
    if not encoder.numeric:
        word = next(spec for spec in encoder.encoding.columns if spec["type"] not in ("numeric", "boolean"))
        raise RequestError(
            415, f"{NPY} carries numbers, and column {word['name']!r} is a {word['type']}; send {JSON} or {CSV}"
        )
    if body.startswith(b"PK\x03\x04"):
        raise RequestError(400, "the body is an .npz archive; send one .npy array")
    try:
        _npy_sized(body)
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        reason = (str(exc).splitlines() or ["unreadable"])[0]
        raise RequestError(400, f"the body is not a .npy array ({reason})") from None
    if array.dtype.kind not in "biuf":
        raise RequestError(400, f"the .npy array holds {array.dtype}, not numbers")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise RequestError(400, f"the .npy array has {array.ndim} dimensions; send rows by columns (2)")
    names = encoder.names
    if array.shape[1] != len(names):
        raise RequestError(
            400,
            f"the .npy array has {array.shape[1]} columns; the model takes {len(names)}, in this order: "
            f"{_listed(names)}",
        )
    if not len(array):
        raise RequestError(400, "the request holds no rows")
    return encoder.matrix(array)


_content_type = functools.lru_cache(maxsize=256)(content_type)  # clients send the same few


def invocation_input(body: bytes, content_type_header: str | None, encoder: RowEncoder) -> np.ndarray:
    """The float32 model input of an ``/invocations`` request."""
    kind, params = _content_type(content_type_header)
    if kind == JSON:
        if params.get("charset", "utf-8").lower().replace("_", "-") not in ("utf-8", "utf8"):
            return json_input(text_of(body, params["charset"]).encode(), encoder)
        return json_input(body, encoder)
    if kind == CSV:
        return csv_input(text_of(body, params.get("charset")), encoder, params.get("header", "").lower())
    if kind == NPY:
        return npy_input(body, encoder)
    raise RequestError(415, f"Content-Type {kind!r} is not served here; send {SENT}")


def invocation_answer(scored: Scored, target: Target, offer: Offer) -> bytes:
    """The answer's bytes in the representation ``offer`` names (see :func:`~workbench.serve.media.negotiate`).

    A row whose outputs are not finite (a number too large for float32) has a null prediction, as
    batch scoring leaves it: argmax of NaNs would name a class with no sign it is garbage.
    """
    kind, params, _ = offer
    if kind == NPY:
        buf = io.BytesIO()
        np.save(buf, scored.logits)
        return buf.getvalue()
    classes = target.classes or []
    if target.regression:
        assert scored.values is not None
        predicted: list[Any] = scored.values.tolist()
        answer: dict[str, Any] = {"predictions": predicted}
    else:
        assert scored.best is not None and scored.probabilities is not None
        predicted = [classes[i] for i in scored.best.tolist()]
        answer = {"predictions": predicted, "classes": classes, "probabilities": scored.probabilities}
    bad = np.flatnonzero(scored.bad).tolist() if scored.bad.any() else []
    for row in bad:
        predicted[row] = None  # and the probabilities are NaN: null in JSON
    if kind == JSON:
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if target.regression:
        table: list[list[Any]] = [[v] for v in predicted]
    else:
        assert scored.probabilities is not None
        table = [[label, *p] for label, p in zip(predicted, scored.probabilities.tolist(), strict=True)]
    for row in bad:
        table[row] = [None] * len(table[row])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if params.get("header") == "present":
        writer.writerow([target.name, *(str(c) for c in classes)])
    writer.writerows(table)  # None is an empty field
    return buf.getvalue().encode()
