"""SageMaker PyTorch serving handlers for a model exported by workbench.

The archive holds ``model.pth`` (a state_dict) at its top and, under ``code/``, this file, the
architectures the model was trained with and ``model.json``: the architecture and the encoding fitted
on the training split (input columns, their types, means, scales, vocabularies, and the target).
Requests carry raw rows, encoded here exactly as in training, so a client sends what it has:

- ``application/json``: records ``[{"column": value, ...}]``, ``{"instances": [...]}`` holding records
  or lists of values, or a bare list of value lists (values in training column order);
- ``text/csv``: with a header row naming the columns (any order, other columns ignored) or without one
  (values in training column order); ``header=present`` or ``header=absent`` settles which;
- ``application/x-npy``: a 2-D numeric array in training column order, for models whose inputs are all
  numbers or booleans.

Answers follow ``Accept``: JSON (``predictions``, plus ``classes`` and ``probabilities`` for a
classifier), CSV (one line per row: the prediction, then the class probabilities) or
``application/x-npy`` (the model's raw outputs). A client's mistake is answered with a 4xx status and a
one-line message naming the culprit; a 500 means a fault here.

Only numpy, pandas and torch are imported: the serving container has them, and nothing else is
installed, so the archive has no ``requirements.txt`` (the toolkit pip-installs one at every start).
"""

from __future__ import annotations

import codecs
import csv
import datetime
import functools
import io
import json
import math
import os
import re
from typing import Any

import numpy as np
import pandas as pd
import torch
from architectures import BUILTIN

HERE = os.path.dirname(os.path.abspath(__file__))
JSON, CSV, NPY = "application/json", "text/csv", "application/x-npy"
SENT = f"{JSON}, {CSV} or {NPY}"

try:  # the toolkit answers its own error class with the status the error carries, anything else with a 500
    from sagemaker_inference.errors import GenericInferenceToolkitError as RequestError
except ImportError:  # outside the serving container: the same attributes, so a caller reads one shape

    class RequestError(Exception):
        def __init__(self, status_code, message=None, phrase=None):
            self.status_code = status_code
            self.message = message or "Invalid Request"
            self.phrase = phrase or self.message
            super().__init__(status_code, self.message, self.phrase)


class DataError(RequestError):
    """Rows the encoding refuses: the client's data, so a 400."""

    def __init__(self, message):
        super().__init__(400, message)


# ---- the model --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def metadata():
    """model.json, read once: input_fn needs the column order before the model is at hand."""
    with open(os.path.join(HERE, "model.json")) as fh:
        return json.load(fh)


def model_fn(model_dir):
    meta = metadata()
    arguments = {"in_features": meta["in_features"], "num_classes": meta["num_classes"]}
    if meta["model"] == "mlp":  # the MLP's shape is part of its config, as in workbench.ml.models.build_model
        arguments |= {key: meta[key] for key in ("width", "depth") if key in meta}
    model = BUILTIN[meta["model"]](**arguments)
    state = torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    model.meta = meta
    return model


def input_fn(request_body, request_content_type):
    """The request's raw rows (records or a DataFrame); encoding waits for predict_fn."""
    kind, params = content_type(request_content_type)
    columns = metadata()["encoding"]["columns"]
    names = [spec["name"] for spec in columns]
    if kind == NPY:
        return npy_rows(request_body, columns)
    if kind == JSON:
        return json_rows(text_of(request_body, params.get("charset")), names)
    if kind == CSV:
        return csv_rows(text_of(request_body, params.get("charset")), names, params.get("header", "").lower())
    raise RequestError(415, f"Content-Type {kind!r} is not served here; send {SENT}")


def predict_fn(input_data, model):
    encoding = model.meta["encoding"]
    x = encode(input_data, encoding)
    with torch.no_grad():
        outputs = model(torch.from_numpy(x))
    return {"outputs": outputs.numpy(), "target": encoding["target"]}


def output_fn(prediction, accept):
    """The answer in the representation ``accept`` ranks highest, with its Content-Type."""
    kind, params, media = negotiate(accept)
    outputs, target = prediction["outputs"], prediction["target"]
    if kind == NPY:
        buf = io.BytesIO()
        np.save(buf, outputs)
        return buf.getvalue(), media
    values = predicted(outputs, target)
    classes = target["classes"]
    if target["task"] == "regression":
        columns, rows = [target["name"]], [[float(v)] for v in values]
        answer = {"predictions": [float(v) for v in values]}
    else:
        logits = np.asarray(outputs, dtype=np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = (shifted / shifted.sum(axis=1, keepdims=True)).tolist()
        labels = [classes[i] for i in values]
        columns = [target["name"], *(str(c) for c in classes)]
        rows = [[label, *p] for label, p in zip(labels, probabilities, strict=True)]
        answer = {"predictions": labels, "classes": classes, "probabilities": probabilities}
    if kind == JSON:
        return json.dumps(answer), media
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if params.get("header") == "present":
        writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue(), media


# ---- media types (RFC 9110) -------------------------------------------------------------------------

TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
QVALUE = re.compile(r"0(\.\d{0,3})?|1(\.0{0,3})?")
OFFERS = (  # what output_fn writes, in the order preferred where the client's q values tie
    (JSON, {"charset": "utf-8"}, JSON),
    (CSV, {"charset": "utf-8", "header": "absent"}, f"{CSV}; charset=utf-8"),
    (CSV, {"charset": "utf-8", "header": "present"}, f"{CSV}; charset=utf-8; header=present"),
    (NPY, {}, NPY),
)


def _split(text, sep):
    """The parts of ``text`` between ``sep`` outside double-quoted strings."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def media_type(value, header):
    """``type/subtype`` lowercased and the parameters as (lowercased name, value) pairs, in order."""
    head, *rest = _split(value, ";")
    kind = head.strip().lower()
    main, _, sub = kind.partition("/")
    if not (TOKEN.fullmatch(main) and TOKEN.fullmatch(sub)):
        raise RequestError(400, f"{header} {value.strip()!r} is not a media type (type/subtype)")
    params = []
    for part in rest:
        if not part.strip():
            continue
        name, eq, text = part.partition("=")
        name, text = name.strip().lower(), text.strip()
        if not (eq and TOKEN.fullmatch(name) and text):
            raise RequestError(400, f"{header} {value.strip()!r}: parameter {part.strip()!r} is not name=value")
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        params.append((name, text))
    return kind, params


def content_type(value):
    """The request's media type and its parameters; a request must say what it carries."""
    if not value or not str(value).strip():
        raise RequestError(415, f"the request has no Content-Type; send {SENT}")
    kind, params = media_type(str(value), "Content-Type")
    return kind, dict(params)


def _same(name, asked, offered):
    if name == "charset":
        try:
            return codecs.lookup(asked).name == codecs.lookup(offered).name
        except LookupError:
            return False
    return asked.lower() == offered.lower()


def negotiate(accept):
    """The offer the Accept header ranks highest: each offer takes the q of the most specific range
    matching it (a range's parameters must all match the offer's); q=0 refuses; ties go to the first offer.
    No Accept, or an empty one, accepts anything."""
    if accept is None or not str(accept).strip():
        return OFFERS[0]
    ranges = []
    for element in _split(str(accept), ","):
        if not element.strip():
            continue
        kind, params = media_type(element, "Accept")
        own, q = {}, 1.0
        for name, text in params:
            if name == "q":
                if not QVALUE.fullmatch(text):
                    raise RequestError(400, f"Accept {element.strip()!r}: q must be a number from 0 to 1")
                q = float(text)
                break  # what follows q are extensions, not parameters of the media type
            own[name] = text
        ranges.append((kind, own, q))
    best, best_q = None, 0.0
    for offer in OFFERS:
        offered_kind, offered = offer[0], offer[1]
        matched = None
        for kind, own, q in ranges:
            main, sub = kind.split("/")
            if kind == offered_kind:
                level = 2
            elif sub == "*" and (main == "*" or offered_kind.startswith(main + "/")):
                level = 0 if main == "*" else 1
            else:
                continue
            if not all(name in offered and _same(name, text, offered[name]) for name, text in own.items()):
                continue
            if matched is None or (level, len(own)) > matched[0]:
                matched = ((level, len(own)), q)
        if matched and matched[1] > best_q:
            best, best_q = offer, matched[1]
    if best is None:
        raise RequestError(406, f"Accept {str(accept).strip()!r} matches nothing served here; ask for {SENT}")
    return best


# ---- request bodies ---------------------------------------------------------------------------------


def _listed(names):
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")


def text_of(body, charset):
    """The body as text (the toolkit hands over text for some types and bytes for others)."""
    if isinstance(body, str):
        text = body
    else:
        charset = charset or "utf-8"
        try:
            text = bytes(body).decode(charset)
        except LookupError:
            raise RequestError(415, f"charset {charset!r} is unknown; send UTF-8") from None
        except UnicodeDecodeError as exc:
            raise RequestError(400, f"the body is not {charset} text (byte {exc.start} is invalid)") from None
    return text.lstrip("\ufeff")


def _by_position(values, names, where):
    if len(values) != len(names):
        raise RequestError(
            400, f"{where} has {len(values)} values; the model takes {len(names)}, in this order: {_listed(names)}"
        )
    return dict(zip(names, values, strict=True))


def json_rows(text, names):
    """Records from JSON: a list of records or of value lists, the same under "instances", or one row."""
    if not text.strip():
        raise RequestError(400, "the request body is empty; send rows")
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None
    rows = payload.get("instances", [payload]) if isinstance(payload, dict) else payload
    if not isinstance(rows, list):
        raise RequestError(400, f'JSON rows come as a list or as {{"instances": [...]}}, not as {type(rows).__name__}')
    if not rows:
        raise RequestError(400, "the request holds no rows")
    if all(isinstance(row, dict) for row in rows):
        records = rows
    elif all(isinstance(row, list) for row in rows):
        records = [_by_position(row, names, f"row {i}") for i, row in enumerate(rows, 1)]
    elif not any(isinstance(row, (dict, list)) for row in rows):
        records = [_by_position(rows, names, "the row")]
    else:
        raise RequestError(400, "JSON rows must be all records or all lists of values, not a mix")
    for i, record in enumerate(records, 1):
        for name in names:
            if isinstance(record.get(name), (dict, list)):
                raise RequestError(400, f"row {i}: column {name!r} holds a JSON structure; send one value per column")
    return records


def csv_rows(text, names, header):
    """Records from CSV; an empty field is a gap. Without ``header=present|absent`` the first row is a
    header when it names a training column."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, skipinitialspace=True)
    rows = []
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
    if has_header:
        columns = first
        twice = [name for i, name in enumerate(columns) if name in columns[:i]]
        if twice:
            raise RequestError(400, f"column {twice[0]!r} appears twice in the CSV header")
        rows = rows[1:]
        if not rows:
            raise RequestError(400, "the CSV has a header but no rows")
    records = []
    for line, row in rows:
        values = [cell if cell.strip() else None for cell in row]
        if not has_header:
            records.append(_by_position(values, names, f"CSV line {line}"))
        elif len(values) != len(columns):
            raise RequestError(
                400, f"CSV line {line} has {len(values)} values; the header names {len(columns)} columns"
            )
        else:
            records.append(dict(zip(columns, values, strict=True)))
    return records


def npy_rows(body, columns):
    """A DataFrame from a numeric .npy array: numbers only, so only for models taking numbers only."""
    words = [spec for spec in columns if spec["type"] not in (NUMERIC, BOOLEAN)]
    if words:
        raise RequestError(
            415,
            f"{NPY} carries numbers, and column {words[0]['name']!r} is a {words[0]['type']}; send {JSON} or {CSV}",
        )
    data = body.encode("latin-1") if isinstance(body, str) else bytes(body)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        reason = (str(exc).splitlines() or ["unreadable"])[0]
        raise RequestError(400, f"the body is not a .npy array ({reason})") from None
    if not isinstance(array, np.ndarray):
        raise RequestError(400, "the body is an .npz archive; send one .npy array")
    if array.dtype.kind not in "biuf":
        raise RequestError(400, f"the .npy array holds {array.dtype}, not numbers")
    if array.ndim == 1:
        array = array[None, :]
    names = [spec["name"] for spec in columns]
    if array.ndim != 2:
        raise RequestError(400, f"the .npy array has {array.ndim} dimensions; send rows by columns (2)")
    if array.shape[1] != len(names):
        raise RequestError(
            400,
            f"the .npy array has {array.shape[1]} columns; the model takes {len(names)}, in this order: {_listed(names)}",
        )
    return pd.DataFrame(array, columns=names)


# ---- applying the encoding ---------------------------------------------------------------------------
# A copy of the applying section of workbench/ml/encoding.py (with category_key and _shown), and of
# Encoding.apply and Target.predicted as functions of the JSON encoding: this file runs without the
# workbench package. tests/test_sagemaker.py keeps the copy equal to the package (same rows, same
# output or the same refusal); change both together.

DATE_PARTS = ("year", "month", "weekday", "yearday", "hour")
NUMERIC, BOOLEAN, CATEGORY, DATE = "numeric", "boolean", "category", "date"
# fmt: off
GAP_WORDS = frozenset([
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null",
])
# fmt: on


def _shown(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def category_key(value: Any) -> str | None:
    """The text a category value is known by, the same from Arrow, pandas or JSON (None: a gap)."""
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


def _to_datetime(series: pd.Series) -> pd.Series:
    """Dates parsed from text (ISO 8601); what does not parse is NaT; years beyond pandas'
    nanoseconds (1677 to 2262) at second resolution."""
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
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_localize(None)
    seconds = parsed.to_numpy(dtype="datetime64[s]")
    seconds[lost] = wide
    return pd.Series(seconds, index=series.index, name=series.name)


def _iso_seconds(value: Any) -> np.datetime64:
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


def _overflows(value: Any) -> bool:
    """Text of a number beyond float64 (``1e400``), which pandas cannot convert and Python reads as infinity."""
    if not isinstance(value, str):
        return False
    try:
        return math.isinf(float(value))
    except ValueError:
        return False


def check_kind(name: str, kind: str, values: np.ndarray) -> None:
    """A boolean column takes true, false, 1 and 0; a number column numbers, never true or false."""
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
        x = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if pd.api.types.is_bool_dtype(series.dtype):
            if not boolean and series.notna().any():
                raise DataError(f"column {name!r}: {_shown(bool(series.dropna().iloc[0]))} is not a number")
        elif boolean:
            check_kind(name, BOOLEAN, series.to_numpy() if isinstance(series.dtype, np.dtype) else x)
    else:
        series = series.where(~series.map(lambda v: isinstance(v, str) and v.strip() in GAP_WORDS).to_numpy(bool), None)
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


def encode(data: Any, encoding: dict[str, Any]) -> np.ndarray:
    """Float32 model input from raw rows with the training columns in any order (Encoding.apply)."""
    columns = encoding["columns"]
    frame = _records(data, [spec["name"] for spec in columns])
    out = np.zeros((len(frame), len(encoding["features"])), dtype=np.float32)
    at = 0
    for spec in columns:
        name, series = spec["name"], frame[spec["name"]]
        kind = spec["type"]
        if kind in (NUMERIC, BOOLEAN):
            x = _numbers(series, name, kind == BOOLEAN)
            gaps = np.isnan(x)
            out[:, at] = (np.where(gaps, spec["mean"], x) - spec["mean"]) / spec["scale"]
            at += 1
            if spec["missing"]:
                out[:, at] = gaps
                at += 1
        elif kind == DATE:
            parts, present = _date_parts(_dates(series, name))
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
            codes = _category_codes(series, index, other, missing)
            out[np.arange(len(codes)), at + codes] = 1.0
            at += other + 1
    return out


def predicted(outputs: np.ndarray, target: dict[str, Any]) -> np.ndarray:
    """The prediction in the target's own terms (Target.predicted): the number in its units, or the
    class index (argmax) to look up in the target's classes."""
    outputs = np.asarray(outputs)
    if target["task"] == "regression":
        return outputs.reshape(len(outputs), -1)[:, 0].astype(np.float64) * target["scale"] + target["mean"]
    return outputs.argmax(axis=1)
