"""JSON Lines on ``/invocations``: one record per line in, one answer per line out, in the same order.

SageMaker Batch Transform splits a JSON Lines file by line (``SplitType: Line``) and sends as many
whole lines as fit a payload; with ``AssembleWith: Line`` it writes the answers one after another,
so answer *n* must be the one for line *n*. A line is a record (``{"column": value, ...}``, every
training column, ``null`` for a gap) or a list of values in training column order. A blank line
at the end is tolerated (files end with a newline); one in the middle would shift every answer after
it, so it is refused, as is any bad line, with a 400 naming its number.

An answer line is ``{"prediction": ...}``; a classifier's also holds ``"probabilities"`` by class.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from workbench.ml.encoding import Target
from workbench.serve.encoder import RowEncoder
from workbench.serve.media import JSONL, JSONLINES, OFFERS, Offer, RequestError, content_type, negotiate, text_of
from workbench.serve.outputs import Scored
from workbench.serve.sagemaker import check_records, check_values, parse_json, values_input

LINES = (JSONLINES, JSONL)
LINE = "JSON Lines line"  # how messages name a row: by its line, which is its number in the body


@functools.lru_cache(maxsize=256)
def lines_request(content_type_header: str | None) -> tuple[str, str | None] | None:
    """The media type and charset of a JSON Lines request, or None for any other (or a Content-Type
    the other readers refuse in their words)."""
    if not content_type_header or "jsonl" not in content_type_header.lower():
        return None
    kind, params = content_type(content_type_header)
    return (kind, params.get("charset")) if kind in LINES else None


def _lines(body: bytes) -> list[bytes]:
    lines = body.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise RequestError(400, "the request body is empty; send one JSON record per line")
    return lines


def _parsed(line: bytes, number: int) -> Any:
    if not line.strip():
        raise RequestError(400, f"{LINE} {number} is blank; send one record per line, none empty")
    try:
        return parse_json(line)
    except RequestError as exc:
        if number == 1 and not line.lstrip().startswith((b"{", b"[")) and b"," in line:  # CSV sent as JSON Lines
            raise RequestError(
                400,
                f"{LINE} 1 is not JSON but looks like CSV ({line[:40].decode(errors='replace')!r}); send CSV with "
                "Content-Type text/csv, or one JSON record per line",
            ) from None
        raise RequestError(exc.status, f"{LINE} {number}: {exc.message}") from None


def _row(value: Any, number: int, names: Sequence[str]) -> Any:
    if isinstance(value, list):
        if len(value) != len(names):
            shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            raise RequestError(
                400,
                f"{LINE} {number} has {len(value)} values; the model takes {len(names)}, in this order: {shown}",
            )
        return value
    if not isinstance(value, dict):
        raise RequestError(400, f"{LINE} {number} holds {type(value).__name__}; send a record or a list of values")
    return value


def jsonlines_input(body: bytes, encoder: RowEncoder, charset: str | None = None) -> np.ndarray:
    """The float32 model input of a JSON Lines body, one row per line."""
    if charset and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        body = text_of(body, charset).encode()
    names = encoder.names
    rows = [_row(_parsed(line, n), n, names) for n, line in enumerate(_lines(body), 1)]
    if all(isinstance(row, list) for row in rows):
        return _located(rows, lambda part: values_input(part, encoder))
    x = encoder.plain(rows)  # records of plain numbers: the commonest body, one matrix
    if x is not None:
        return x
    records = [row if isinstance(row, dict) else dict(zip(names, row, strict=True)) for row in rows]
    check_records(records, names, LINE)
    check_values(records, names, LINE)
    return _located(records, encoder.records)


def _located(rows: list[Any], encode: Any) -> np.ndarray:
    """``encode(rows)``; a value it refuses is named with its line, found by encoding line by line
    (only once something is wrong, so a good body pays nothing for it)."""
    try:
        return encode(rows)
    except RequestError as exc:
        for n, row in enumerate(rows, 1):
            try:
                encode([row])
            except RequestError as one:
                raise RequestError(one.status, f"{LINE} {n}: {one.message}") from None
        raise exc from None


def jsonlines_answer(scored: Scored, target: Target) -> bytes:
    """One JSON object per row, each line ending in a newline; a row whose outputs are not finite has
    a null prediction (and null probabilities), as batch scoring leaves it."""
    bad = scored.bad
    if target.regression:
        assert scored.values is not None
        lines = [{"prediction": None if b else v} for v, b in zip(scored.values.tolist(), bad.tolist(), strict=True)]
    else:
        assert scored.best is not None and scored.probabilities is not None
        classes = target.classes or []
        lines = [
            {"prediction": None if b else classes[i], "probabilities": dict(zip(classes, p, strict=True))}
            for i, p, b in zip(scored.best.tolist(), scored.probabilities.tolist(), bad.tolist(), strict=True)
        ]
    option = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
    return b"".join(orjson.dumps(line, option=option) for line in lines)


@functools.lru_cache(maxsize=64)
def negotiate_lines(accept: str | None, kind: str) -> Offer:
    """:func:`~workbench.serve.media.negotiate` for a JSON Lines request: JSON Lines, as sent, is what
    it gets where ``Accept`` is absent or ranks it no lower than the rest (``*/*``), since a transform
    job's answers are written line for line after each other."""
    first = tuple(offer for offer in OFFERS if offer[0] == kind)
    return negotiate(accept, first + tuple(offer for offer in OFFERS if offer[0] != kind))
