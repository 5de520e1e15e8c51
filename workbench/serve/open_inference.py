"""The Open Inference Protocol v2 (KServe, Triton): typed tensors in, typed tensors out.

A request carries either one input per training column, named as the column (``BYTES`` for text
and dates, a number type or ``BOOL`` for numbers and booleans, shape ``[n]`` or ``[n, 1]``), or,
for a model whose columns are all numbers, one 2-D input ``[n, columns]`` of raw values in training
column order. The answer holds ``predicted`` (``BYTES`` class names, or ``FP64`` numbers) and, for a
classifier, ``probabilities`` (``FP32 [n, classes]``). Triton's binary tensor extension works both
ways: the JSON header's length in ``Inference-Header-Content-Length``, each binary tensor's size in
its ``binary_data_size`` parameter, ``binary_data`` (per output) or ``binary_data_output`` (per
request) asking for binary outputs. null, an empty ``BYTES`` element, NaN and infinity are gaps;
a value its datatype cannot hold (300 as ``UINT8``, 3.5 as ``INT64``) is refused, never wrapped.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from workbench.ml.encoding import Encoding, Target
from workbench.serve.encoder import RowEncoder
from workbench.serve.media import JSON, RequestError, columns_missing, content_type, shown
from workbench.serve.outputs import Scored
from workbench.serve.sagemaker import parse_json

HEADER_LENGTH = "inference-header-content-length"
VERSION = "1"

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
COLUMN_TYPES = {"numeric": "FP64", "boolean": "BOOL", "category": "BYTES", "date": "BYTES"}


def class_datatype(target: Target) -> str:
    """The datatype of the predicted class: the labels' own kind, so that class 1 is answered as the
    number 1, as /invocations answers it (``INT64``; ``BOOL`` for true/false), and text as ``BYTES``."""
    classes = target.classes or []
    if classes and all(isinstance(c, bool) for c in classes):
        return "BOOL"
    if classes and all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return "INT64"
    return "BYTES"


def model_metadata(name: str, encoding: Encoding, backend: str, version: str = VERSION) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the inputs one per training column, the outputs, and the version
    serving (a run id)."""
    target = encoding.target
    assert target is not None
    inputs = [
        {"name": spec["name"], "datatype": COLUMN_TYPES[spec["type"]], "shape": [-1]} for spec in encoding.columns
    ]
    outputs = [
        {"name": "predicted", "datatype": "FP64" if target.regression else class_datatype(target), "shape": [-1]}
    ]
    if not target.regression:
        outputs.append({"name": "probabilities", "datatype": "FP32", "shape": [-1, len(target.classes or [])]})
    return {
        "name": name,
        "versions": [version],
        "platform": f"workbench_{backend}",
        "inputs": inputs,
        "outputs": outputs,
    }


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[str | None]  # numbers as an array; BYTES as text, None for an empty element


@dataclass
class InferRequest:
    """A parsed ``/infer`` request: its id, its tensors, and the outputs it asks for (binary or JSON)."""

    id: str | None
    tensors: list[Tensor]
    outputs: list[tuple[str, bool]] | None  # None: every output, all binary when ``binary`` is set
    binary: bool


def _bytes_elements(blob: bytes, name: str) -> list[bytes]:
    """Triton's BYTES serialisation: each element a little-endian uint32 length, then its bytes."""
    out, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise RequestError(400, f"input {name!r}: its BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", blob, at)
        at += 4
        if at + size > len(blob):
            raise RequestError(400, f"input {name!r}: a BYTES element runs past the end of its data")
        out.append(blob[at : at + size])
        at += size
    return out


def _parameters(spec: dict[str, Any], what: str) -> dict[str, Any]:
    """An input's, output's or request's ``parameters``: an object, or absent."""
    parameters = spec.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise RequestError(400, f"{what}: parameters must be an object, got {shown(parameters)}")
    return parameters


_JSON_NUMBERS = frozenset({int, float, bool, type(None)})


def _numbers(data: list[Any], datatype: str, name: str, kinds: set[type]) -> np.ndarray:
    """JSON tensor data (its elements of ``kinds``) as ``datatype``, refusing what the type cannot
    hold rather than wrapping it (300 as UINT8 is not 44, 3.5 as INT64 is not 3). null, NaN and
    infinity are gaps: a column holding one comes as float64 with NaN there."""
    dtype = DTYPES[datatype]
    if not kinds <= _JSON_NUMBERS:
        odd = next(v for v in data if type(v) not in _JSON_NUMBERS)
        raise RequestError(400, f"input {name!r} is {datatype}, but holds {shown(odd)}; send numbers")
    try:
        x = np.array(data, dtype=np.float64)  # null becomes NaN
    except OverflowError:
        raise RequestError(400, f"input {name!r} holds an integer beyond {datatype}'s range") from None
    if dtype == np.float64:  # nothing to narrow: gaps stay NaN or infinity, as below
        return x
    finite = np.isfinite(x)
    if dtype.kind == "f":
        narrow = x.astype(dtype)
        beyond = finite & ~np.isfinite(narrow)
        if beyond.any():
            raise RequestError(400, f"input {name!r}: {x[beyond][0]:g} is beyond {datatype}'s range; send FP64")
        return narrow
    if dtype.kind == "b":
        wrong, want = finite & (x != 0) & (x != 1), "true or false"
    else:
        info = np.iinfo(dtype)  # max + 1 is exact as a float, max is not (2**63 - 1)
        wrong = finite & ((x != np.round(x)) | (x < info.min) | (x >= float(info.max) + 1))
        want = f"whole numbers from {info.min} to {info.max}"
    if wrong.any():
        odd = data[int(np.flatnonzero(wrong)[0])]
        raise RequestError(400, f"input {name!r} is {datatype}, but holds {shown(odd)}; send {want}")
    return x if not finite.all() else x.astype(dtype)


def _text(element: Any, name: str) -> str | None:
    if element is None:  # null in JSON, a gap as an empty element is
        return None
    if isinstance(element, bytes):
        try:
            element = element.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, f"input {name!r}: a BYTES element is not UTF-8 text") from None
    if not isinstance(element, str):
        raise RequestError(400, f"input {name!r} is BYTES, but holds {shown(element)}; send text")
    return element if element.strip() else None


def _flat(data: Any) -> tuple[list[Any], set[type]]:
    """JSON tensor data, nested (row-major) or flat, as one flat list, and the types of its elements."""
    if not isinstance(data, list):
        return [data], {type(data)}
    kinds = set(map(type, data))
    if list not in kinds:
        return data, kinds
    flat = list(_nested(data))
    return flat, set(map(type, flat))


def _nested(data: list[Any]) -> Iterator[Any]:
    for d in data:
        if isinstance(d, list):
            yield from _nested(d)
        else:
            yield d


def _tensor(spec: Any, binary: memoryview, at: int) -> tuple[Tensor, int]:
    if not isinstance(spec, dict):
        raise RequestError(400, "each input is an object with name, shape, datatype and data")
    name = spec.get("name")
    if not isinstance(name, str):
        raise RequestError(400, "an input has no name")
    datatype, shape = spec.get("datatype"), spec.get("shape")
    if datatype != "BYTES" and datatype not in DTYPES:
        raise RequestError(
            400, f"input {name!r}: datatype {shown(datatype)} is not served; use BYTES, {', '.join(DTYPES)}"
        )
    if not (isinstance(shape, list) and set(map(type, shape)) <= {int} and min(shape, default=0) >= 0):
        raise RequestError(400, f"input {name!r}: shape must be a list of sizes, got {shown(shape)}")
    count = math.prod(shape)
    size = None if spec.get("parameters") is None else _parameters(spec, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or at + size > len(binary):
            raise RequestError(400, f"input {name!r}: binary_data_size {size!r} runs past the end of the body")
        blob = bytes(binary[at : at + size])
        at += size
        if datatype == "BYTES":
            elements: Any = _bytes_elements(blob, name)
        else:
            dtype = DTYPES[datatype]
            if size != count * dtype.itemsize:
                raise RequestError(
                    400, f"input {name!r}: {size} bytes of {datatype} are not the {count} elements its shape says"
                )
            elements = np.frombuffer(blob, dtype=dtype.newbyteorder("<"))
    elif "data" in spec:
        data, kinds = _flat(spec["data"])
        elements = data if datatype == "BYTES" else _numbers(data, datatype, name, kinds)
    else:
        raise RequestError(400, f"input {name!r} has neither data nor binary_data_size")
    if len(elements) != count:
        raise RequestError(400, f"input {name!r}: shape {shape} holds {count} elements, but {len(elements)} came")
    values: np.ndarray | list[str | None] = (
        [_text(e, name) for e in elements] if datatype == "BYTES" else np.asarray(elements)
    )
    return Tensor(name, datatype, shape, values), at


def _check_content_type(value: str | None) -> None:
    """A v2 request is JSON (then binary tensors): a body of another media type, such as CSV meant for
    ``/invocations``, is a 415 naming it rather than a 400 for malformed JSON. No Content-Type, JSON
    (also ``+json`` types) and ``application/octet-stream`` (how binary clients label the body) are read."""
    if value is None or not value.strip():
        return
    kind, _ = content_type(value)
    if kind == JSON or kind.endswith("+json") or kind == "application/octet-stream":
        return
    raise RequestError(
        415, f"Content-Type {kind!r} is not served on the v2 infer route; send {JSON} (or use /invocations for it)"
    )


def parse_infer(body: bytes, header_length: str | None, content_type_header: str | None = None) -> InferRequest:
    """The request's JSON header and tensors, with the binary part cut by ``Inference-Header-Content-Length``."""
    _check_content_type(content_type_header)
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            split = -1
        if not 0 <= split <= len(body):
            raise RequestError(400, f"Inference-Header-Content-Length {header_length!r} does not fit the body")
        head, binary = body[:split], memoryview(body)[split:]
    else:
        head, binary = body, memoryview(b"")
    if not head.strip():
        raise RequestError(400, "the request body is empty; send inputs")
    payload = parse_json(head)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise RequestError(400, 'an inference request is an object with "inputs": [...]')
    tensors, at = [], 0
    for spec in payload["inputs"]:
        tensor, at = _tensor(spec, binary, at)
        tensors.append(tensor)
    if at != len(binary):
        raise RequestError(400, f"the body has {len(binary) - at} bytes beyond the inputs' binary_data_size")
    binary_all = bool(_parameters(payload, "the request").get("binary_data_output", False))
    wanted = payload.get("outputs")
    outputs = None
    if wanted is not None:
        if not isinstance(wanted, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
        ):
            raise RequestError(400, 'outputs must be a list of {"name": ...}')
        outputs = [
            (o["name"], bool(_parameters(o, f"output {o['name']!r}").get("binary_data", binary_all))) for o in wanted
        ]
    request_id = payload.get("id")
    return InferRequest(request_id if isinstance(request_id, str) else None, tensors, outputs, binary_all)


def infer_input(request: InferRequest, encoder: RowEncoder) -> np.ndarray:
    """The float32 model input of the request's tensors."""
    names = encoder.names
    tensors = request.tensors
    if not tensors:
        raise RequestError(400, "the request has no inputs")
    if len(tensors) == 1 and tensors[0].name not in names and len(tensors[0].shape) == 2:
        return _matrix(tensors[0], encoder)
    known = set(names)
    by_name: dict[str, Tensor] = {}
    for tensor in tensors:
        if tensor.name not in known:
            raise RequestError(
                400,
                f"input {shown(tensor.name)} is not a column of the model; send one input per column "
                f"({', '.join(names[:8])}{' ...' if len(names) > 8 else ''})"
                + (" or one 2-D input of all columns" if encoder.numeric else ""),
            )
        if tensor.name in by_name:
            raise RequestError(400, f"input {tensor.name!r} is sent twice")
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise RequestError(400, f"input {tensor.name!r} has shape {tensor.shape}; a column is [n] or [n, 1]")
        by_name[tensor.name] = tensor
    absent = [name for name in names if name not in by_name]
    if absent:
        raise columns_missing(absent, "input for column {column} is missing", "send one input per training column")
    rows = {tensor.shape[0] for tensor in by_name.values()}
    if len(rows) > 1:
        raise RequestError(400, f"the inputs hold different numbers of rows: {sorted(rows)}")
    n = rows.pop()
    if not n:
        raise RequestError(400, "the request holds no rows")
    return encoder.columns({name: by_name[name].values for name in names}, n)


def _matrix(tensor: Tensor, encoder: RowEncoder) -> np.ndarray:
    names = encoder.names
    if not encoder.numeric:
        word = next(spec["name"] for spec in encoder.encoding.columns if spec["type"] not in ("numeric", "boolean"))
        raise RequestError(
            400,
            f"input {tensor.name!r} is not a column of the model, and a single 2-D input serves only models whose "
            f"columns are all numbers ({word!r} is not); send one input per column",
        )
    if isinstance(tensor.values, list):
        raise RequestError(400, f"input {tensor.name!r}: a 2-D input carries numbers, not BYTES")
    n, width = tensor.shape
    if width != len(names):
        raise RequestError(
            400,
            f"input {tensor.name!r} has {width} columns; the model takes {len(names)}, in this order: "
            f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}",
        )
    if not n:
        raise RequestError(400, "the request holds no rows")
    return encoder.matrix(tensor.values.reshape(n, width))


def _bytes_tensor(texts: Sequence[str]) -> bytes:
    parts = []
    for text in texts:
        data = text.encode("utf-8")
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def output_names(target: Target) -> list[str]:
    return ["predicted"] if target.regression else ["predicted", "probabilities"]


def check_outputs(request: InferRequest, target: Target) -> None:
    """Outputs asked for that the model does not give are refused before the model runs."""
    served = output_names(target)
    for name, _ in request.outputs or []:
        if name not in served:
            raise RequestError(400, f"output {name!r} is not served; ask for {' or '.join(map(repr, served))}")


def infer_answer(
    request: InferRequest, scored: Scored, target: Target, model_name: str, version: str = VERSION
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON then binary tensors when asked for (the outputs
    asked for were checked by :func:`check_outputs`)."""
    n = len(scored)
    available: dict[str, tuple[str, list[int], Any]] = {}
    if target.regression:
        assert scored.values is not None
        numbers = np.where(scored.bad, np.nan, scored.values) if scored.bad.any() else scored.values
        available["predicted"] = ("FP64", [n], numbers.astype(np.float64))
    else:
        assert scored.best is not None and scored.probabilities is not None
        kind = class_datatype(target)
        classes = [c if kind != "BYTES" else str(c) for c in target.classes or []]
        labels = [classes[i] for i in scored.best.tolist()]
        for row in np.flatnonzero(scored.bad).tolist():
            labels[row] = "" if kind == "BYTES" else None  # no class: empty text, or null
        available["predicted"] = (kind, [n], labels)
        available["probabilities"] = ("FP32", [n, len(classes)], scored.probabilities.astype(np.float32))
    wanted = request.outputs if request.outputs is not None else [(name, request.binary) for name in available]
    tensors, blobs = [], []
    for name, binary in wanted:
        datatype, shape, data = available[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if isinstance(data, list) and datatype != "BYTES" and None not in data:
            data = np.asarray(data, dtype=DTYPES[datatype])
        # a row without a class has no binary number: such a tensor goes as JSON, which has null
        if binary and (datatype == "BYTES" or isinstance(data, np.ndarray)):
            if datatype == "BYTES":
                blob = _bytes_tensor(data)
            else:
                blob = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = data.reshape(-1) if isinstance(data, np.ndarray) else data
        tensors.append(tensor)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": version, "outputs": tensors}
    if request.id is not None:
        answer["id"] = request.id
    head = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }
