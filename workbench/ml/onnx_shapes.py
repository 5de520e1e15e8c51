"""Reshapes whose sizes PyTorch reads at run time, given the constant shapes MXNet's importer needs.

MXNet's importer (1.9.1) reads a Reshape's target shape from the initializers, but the TorchScript
exporter writes ``x.view(x.size(0), ...)`` as a Shape -> Gather -> Unsqueeze -> Concat chain, and
bakes ``len(x)`` in as the example batch size, which breaks the dynamic batch axis. ONNX's Reshape
(opset 12 and below) and MXNet's both copy a size given as 0 from the same position of the input
and infer one size given as -1, so such a shape is constant after all when every size known only
at run time is the same dimension of the tensor being reshaped, or is the only one left. Reshapes
are rewritten in graph order, each making its output's sizes known to the next one in a chain.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from workbench.errors import ModelError

INSTEAD = (
    "write a reshape with constant sizes and at most one -1, e.g. x.view(-1, 1, 8, 8) or x.flatten(1), "
    "or set export.target=onnxruntime to skip MXNet"
)


@dataclass(frozen=True)
class Dim:
    """Size ``axis`` of ``tensor``: the Reshape of that same tensor at that position keeps it as 0."""

    tensor: str
    axis: int

    def __str__(self) -> str:
        return f"size {self.axis} of {self.tensor!r}"


@dataclass(frozen=True)
class Unknown:
    """A size no constant can stand for but -1, and why (for the error when two are left)."""

    why: str

    def __str__(self) -> str:
        return self.why


Size = int | Dim | Unknown


class Refused(Exception):
    """The shape comes from something this evaluation does not follow; the text completes the error."""


def constant_reshapes(proto: onnx.ModelProto, batch: int, retraced: tuple[int, onnx.ModelProto]) -> None:
    """Give every Reshape a constant shape, in place, or fail naming the one that cannot have one.

    ``proto`` was traced at an example batch of ``batch`` rows and ``retraced`` is ``(rows, model)``
    from a second trace: a constant shape that differs between the two was baked in from the batch.
    """
    graph = proto.graph
    consts = _constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    other_rows, other = retraced
    other_consts = _constants(other.graph)
    other_shapes = {n.name: other_consts.get(n.input[1]) for n in other.graph.node if n.op_type == "Reshape"}
    taken = {name for node in graph.node for name in (*node.input, *node.output)} | set(consts)
    changed, stale = False, True
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if stale:  # a Reshape given a constant shape makes its output's sizes known to the next in a chain
            # sizes at both trace batches from this graph, whose earlier Reshapes now copy the batch
            dims, here, there, symbols = _dims(proto), _dims(proto, batch), _dims(proto, other_rows), _symbols(proto)
            stale = False
        data, shape = node.input[0], node.input[1]
        if shape in consts:
            sizes = _traced_sizes(data, consts[shape], other_shapes.get(node.name), here, there)
            if sizes is None:
                continue
        else:
            try:
                sizes = list(_evaluate(shape, consts, producers, dims, {}).reshape(-1))
            except Refused as exc:
                raise ModelError(f"Reshape node {node.name!r} {exc}, which MXNet cannot import; {INSTEAD}") from exc
        name = _unique(f"{node.name or node.output[0]}/shape", taken)
        value = numpy_helper.from_array(np.array(_resolve(node, data, sizes, symbols), dtype=np.int64), name)
        graph.initializer.append(value)
        graph.input.append(onnx.helper.make_tensor_value_info(name, value.data_type, list(value.dims)))
        node.input[1] = name
        changed = stale = True
    if changed:
        _drop_dead(graph)


def _traced_sizes(
    data: str,
    traced: np.ndarray,
    retraced: np.ndarray | None,
    here: dict[str, list[int | None]],
    there: dict[str, list[int | None]],
) -> list[Size] | None:
    """The sizes of a constant shape, with those that changed with the example batch marked; None if none did.

    A size that equals the reshaped tensor's own size at that position in both traces is that size
    (``x.reshape(len(x), -1)``); any other that changed depends on the batch some other way.
    """
    if retraced is None or retraced.shape != traced.shape or np.array_equal(traced, retraced):
        return None
    mine, theirs = here.get(data, []), there.get(data, [])
    sizes: list[Size] = []
    for axis, (a, b) in enumerate(zip(traced.reshape(-1).tolist(), retraced.reshape(-1).tolist(), strict=True)):
        if a == b:
            sizes.append(a)
        elif axis < min(len(mine), len(theirs)) and (mine[axis], theirs[axis]) == (a, b):
            sizes.append(Dim(data, axis))
        else:
            sizes.append(Unknown(f"size {axis} was traced from the example batch, as len(x) or int(x.size(0)) are"))
    return sizes


def _resolve(
    node: onnx.NodeProto, data: str, sizes: list[Size], symbols: dict[str, list[str | None]] | None = None
) -> list[int]:
    """0 for a size copied from the same position of ``data``, -1 for the one size left unknown.

    A size of another tensor is the same size where shape inference gives both one symbol (the
    batch of a tensor reshaped earlier in a chain with its batch copied, or of a convolution's output).
    """
    out: list[int] = []
    open_sizes: list[str] = []
    known = (symbols or {}).get(data, [])
    for axis, size in enumerate(sizes):
        if isinstance(size, int):
            out.append(size)
            if size == -1:
                open_sizes.append("a -1")
        elif isinstance(size, Dim) and (
            size == Dim(data, axis)
            or (axis < len(known) and known[axis] is not None and _symbol(size, symbols) == known[axis])
        ):
            out.append(0)
        else:
            out.append(-1)
            open_sizes.append(str(size) if isinstance(size, Unknown) else f"{size} rather than of the tensor reshaped")
    if len(open_sizes) > 1:
        raise ModelError(
            f"Reshape node {node.name!r} has {len(open_sizes)} sizes known only at run time "
            f"({' and '.join(open_sizes)}), which MXNet cannot import; {INSTEAD}"
        )
    return out


def _evaluate(
    name: str,
    consts: dict[str, np.ndarray],
    producers: dict[str, onnx.NodeProto],
    dims: dict[str, list[int | None]],
    memo: dict[str, np.ndarray],
) -> np.ndarray:
    """The value of ``name`` as an object array of sizes, following the ops shapes are computed with."""
    if name in memo:
        return memo[name]
    if name in consts:
        value = consts[name]
        if value.dtype.kind not in "iu":
            raise Refused(f"takes its shape from {name!r}, which is not a tensor of integers")
        result = np.vectorize(int, otypes=[object])(value) if value.size else value.astype(object)
        memo[name] = result
        return result
    node = producers.get(name)
    if node is None:
        raise Refused(f"takes its shape from the graph input {name!r}")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def arg(i: int) -> np.ndarray:
        return _evaluate(node.input[i], consts, producers, dims, memo)

    def ints(i: int) -> list[int]:
        value = arg(i).reshape(-1).tolist()
        if not all(isinstance(v, int) for v in value):
            raise Refused(f"takes its shape from {node.op_type} node {node.name!r}, whose {i}th input is not constant")
        return value

    op = node.op_type
    if op == "Shape":
        if node.input[0] not in dims:
            raise Refused(f"reads the shape of {node.input[0]!r}, whose rank is unknown")
        sizes = [d if d is not None else Dim(node.input[0], i) for i, d in enumerate(dims[node.input[0]])]
        result = np.empty(len(sizes), dtype=object)
        result[:] = sizes
    elif op in ("Identity", "Cast"):
        result = arg(0)
    elif op == "Gather":
        result = np.take(arg(0), np.array(ints(1)).reshape(arg(1).shape), axis=attrs.get("axis", 0))
    elif op == "Unsqueeze":
        axes = attrs["axes"] if "axes" in attrs else ints(1)
        rank = arg(0).ndim + len(axes)
        result = np.expand_dims(arg(0), tuple(a % rank for a in axes))
    elif op == "Squeeze":
        axes = attrs.get("axes") or (ints(1) if len(node.input) > 1 else None)
        result = np.squeeze(arg(0), axis=None if axes is None else tuple(axes))
    elif op == "Concat":
        result = np.concatenate([arg(i) for i in range(len(node.input))], axis=attrs["axis"])
    elif op == "Slice":
        if "starts" in attrs:  # opset 9 keeps them as attributes
            starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
        else:
            starts, ends = ints(1), ints(2)
            axes = ints(3) if len(node.input) > 3 and node.input[3] else None
            steps = ints(4) if len(node.input) > 4 and node.input[4] else None
        result = arg(0)
        index = [slice(None)] * result.ndim
        for k, axis in enumerate(axes if axes is not None else range(len(starts))):
            index[axis] = slice(starts[k], ends[k], steps[k] if steps else 1)
        result = result[tuple(index)]
    elif op in ARITHMETIC:
        result = np.frompyfunc(_arithmetic(ARITHMETIC[op]), 2, 1)(arg(0), arg(1))
    else:
        raise Refused(f"takes its shape from {op} node {node.name!r}")
    memo[name] = np.asarray(result, dtype=object)
    return memo[name]


ARITHMETIC: dict[str, Callable[[int, int], int]] = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": lambda a, b: int(a / b),  # ONNX divides integers towards zero
}


def _arithmetic(op: Callable[[int, int], int]) -> Callable[[Size, Size], Size]:
    def apply(a: Size, b: Size) -> Size:
        if isinstance(a, int) and isinstance(b, int):
            return op(a, b)
        return Unknown(f"a size computed from {a} and {b}")

    return apply


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes' values by name."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            tensor = next((a.t for a in node.attribute if a.name == "value"), None)
            if tensor is not None:
                values[node.output[0]] = numpy_helper.to_array(tensor)
    return values


def _dims(proto: onnx.ModelProto, batch: int | None = None) -> dict[str, list[int | None]]:
    """Every tensor's sizes as ONNX's shape inference knows them, None where symbolic.

    With ``batch``, the graph inputs' symbolic sizes are fixed to it first, so that the sizes are
    those of the trace taken at that batch size.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    if batch is not None:
        for value in model.graph.input:
            for dim in value.type.tensor_type.shape.dim:
                if not dim.HasField("dim_value"):
                    dim.dim_value = batch
    inferred = onnx.shape_inference.infer_shapes(model).graph
    known = {}
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            known[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return known


def _symbols(proto: onnx.ModelProto) -> dict[str, list[str | None]]:
    """Every tensor's symbolic sizes (``batch``) as ONNX's shape inference carries them, None where not symbolic."""
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    named = {}
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            named[value.name] = [d.dim_param if d.HasField("dim_param") else None for d in tensor.shape.dim]
    return named


def _symbol(size: Dim, symbols: dict[str, list[str | None]] | None) -> str | None:
    sizes = (symbols or {}).get(size.tensor, [])
    return sizes[size.axis] if size.axis < len(sizes) else None


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Remove the nodes no output depends on any more, what is known of their outputs, and the
    initializers only they read."""
    live = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(out in live for out in node.output):
            keep.append(node)
            live.update(_reads(node))
    keep.reverse()
    read_before = {name for node in graph.node for name in _reads(node)}
    dead = (read_before - live) & {t.name for t in graph.initializer}
    gone = {out for node in graph.node for out in node.output} - {out for node in keep for out in node.output}
    del graph.node[:]
    graph.node.extend(keep)
    kept = [t for t in graph.initializer if t.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in dead]
    del graph.input[:]
    graph.input.extend(inputs)
    known = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(known)


def _reads(node: onnx.NodeProto) -> set[str]:
    """The names ``node`` reads, its subgraphs' included (they may read the outer graph's tensors)."""
    names = set(node.input)
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            names.update(name for inner in sub.node for name in _reads(inner))
    return names
