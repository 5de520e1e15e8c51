"""PyTorch to ONNX, laid out for its target, and the checks MXNet's importer needs.

For ``target: mxnet`` the model must suit MXNet's importer (the last release, 1.9.1): opset 12 at
most, initializers listed as graph inputs, and only the ops it translates. Those are checked
here, where the fix is obvious, rather than discovered as a KeyError inside MXNet. The TorchScript
exporter is used for both targets; torch's dynamo exporter emits opset 18+, beyond MXNet.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter

import numpy as np
import onnx
import pandas as pd
import torch

from workbench.errors import ModelError
from workbench.ml.onnx_shapes import constant_reshapes
from workbench.storage.catalog import ONNX_MODEL

INPUT, OUTPUT = "input", "logits"

# The op types mxnet.contrib.onnx (1.9.1, the final release) translates; a test keeps this in step
# with MXNet's own table, so the export step need not import MXNet to check a graph.
MXNET_OPS = frozenset(
    "Abs Acos Add And ArgMax ArgMin Asin Atan AveragePool BatchNormalization Cast Ceil Clip Concat "  # noqa: SIM905
    "Constant Conv ConvTranspose Cos DepthToSpace Div Dropout Elu Equal Exp FC Flatten Floor Gather Gemm "
    "GlobalAveragePool GlobalLpPool GlobalMaxPool Greater HardSigmoid Hardmax Identity "
    "InstanceNormalization LRN LeakyRelu Less Log LogSoftmax LpNormalization LpPool MatMul Max MaxPool "
    "MaxRoiPool Mean Min Mul Multinomial Neg Not Or PRelu Pad Pow RandomNormal RandomNormalLike "
    "RandomUniform RandomUniformLike Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax "
    "ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Selu Shape Sigmoid Sin Size "
    "Slice Softmax Softplus Softsign SpaceToDepth SpatialBN Split Sqrt Squeeze Sub Sum Tan Tanh TopK "
    "Transpose Unsqueeze Xor ".split()
)


# Where an unsupported op usually comes from, and what to use instead.
OP_HINTS = {
    "Erf": "nn.GELU: use nn.GELU(approximate='tanh') or ReLU",
    "Gelu": "nn.GELU: use nn.GELU(approximate='tanh') or ReLU",
    "LayerNormalization": "nn.LayerNorm: export at opset <= 12 (export.opset), where it decomposes into ops MXNet takes",
    "Expand": "tensor.expand or broadcasting: use repeat or explicit shapes",
    "Where": "torch.where / masked_fill: use arithmetic masks",
    "Range": "torch.arange in forward: precompute it as a buffer",
    "Resize": "F.interpolate / nn.Upsample: use ConvTranspose2d",
    "Tile": "tensor.repeat: use broadcasting",
    "ConstantOfShape": "torch.zeros/ones of a runtime shape: use a buffer",
}


# The tracer's example batch, and a second one for MXNet: a size baked in from the batch differs between them.
EXAMPLE_ROWS, RETRACE_ROWS = 2, 3


def to_onnx(model: torch.nn.Module, in_features: int, opset: int, target: str) -> onnx.ModelProto:
    """Serialise with a dynamic batch axis, laid out as ``target`` needs."""
    proto = _trace(model, in_features, opset, target, EXAMPLE_ROWS)
    if target == "mxnet":
        retraced = _trace(model, in_features, opset, target, RETRACE_ROWS)
        constant_reshapes(proto, EXAMPLE_ROWS, (RETRACE_ROWS, retraced))
        constants_as_initializers(proto)
        explicit_keepdims(proto)
    return proto


def explicit_keepdims(proto: onnx.ModelProto) -> None:
    """Write ONNX's default ``keepdims=1`` on every Reduce node that leaves it out, in place.

    MXNet's importer takes a missing ``keepdims`` as 0, so the mean of nn.LayerNorm (opset 12:
    ReduceMean, Sub, Pow, ...) lost its last axis and the Sub after it failed to broadcast at bind
    time; written out, LayerNorm imports and agrees with PyTorch.
    """
    for node in proto.graph.node:
        if node.op_type.startswith("Reduce") and not any(a.name == "keepdims" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("keepdims", 1))


def _trace(model: torch.nn.Module, in_features: int, opset: int, target: str, rows: int) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, ONNX_MODEL.file)
        torch.onnx.export(
            model,
            (torch.zeros(rows, in_features),),
            path,
            dynamo=False,
            opset_version=opset,
            keep_initializers_as_inputs=target == "mxnet",
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
        return onnx.load(path)


def constants_as_initializers(proto: onnx.ModelProto) -> None:
    """Turn ``Constant`` nodes into initializers listed as graph inputs, in place.

    MXNet's importer looks up a Reshape's target shape among the initializers and fails with a
    ``KeyError`` on the node name when the exporter emitted it as a ``Constant`` node instead.
    """
    graph = proto.graph
    keep = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is None:
            keep.append(node)
            continue
        value.name = node.output[0]
        graph.initializer.append(value)
        graph.input.append(onnx.helper.make_tensor_value_info(value.name, value.data_type, list(value.dims)))
    del graph.node[:]
    graph.node.extend(keep)


def check_mxnet_ops(proto: onnx.ModelProto, model_name: str) -> None:
    """Fail with every op MXNet cannot import, and where each usually comes from."""
    missing = sorted({n.op_type for n in proto.graph.node} - MXNET_OPS)
    if missing:
        detail = "; ".join(f"{op} ({OP_HINTS[op]})" if op in OP_HINTS else op for op in missing)
        raise ModelError(
            f"model {model_name!r} exports ONNX ops MXNet cannot import: {detail}; "
            "change those layers, or set export.target=onnxruntime to skip MXNet"
        )


def summarize(proto: onnx.ModelProto, size: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A one-column overview (opset, inputs, outputs, size) and op counts."""
    graph = proto.graph
    initializers = {i.name for i in graph.initializer}

    def shape(value: onnx.ValueInfoProto) -> str:
        dims = value.type.tensor_type.shape.dim
        return "[" + ", ".join(d.dim_param or str(d.dim_value) for d in dims) + "]"

    params = sum(int(np.prod(i.dims)) for i in graph.initializer)
    summary = pd.DataFrame(
        {
            "value": [
                proto.opset_import[0].version,
                proto.producer_name + " " + proto.producer_version,
                ", ".join(f"{i.name} {shape(i)}" for i in graph.input if i.name not in initializers),
                ", ".join(f"{o.name} {shape(o)}" for o in graph.output),
                len(graph.node),
                f"{params:,}",
                f"{size / 1024:.1f} KiB",
            ]
        },
        index=["opset", "producer", "inputs", "outputs", "nodes", "parameters", "file size"],
    )
    counts = Counter(n.op_type for n in graph.node)
    ops = pd.DataFrame(sorted(counts.items()), columns=["op", "count"])
    return summary, ops
