"""The export stage: PyTorch to ONNX, checked before anything is written.

For ``target: mxnet`` the model must suit MXNet's importer (the last release, 1.9.1): opset 12 at
most, initializers listed as graph inputs, and only the ops it translates. Those are checked
here, where the fix is obvious, rather than discovered as a KeyError inside MXNet. The TorchScript
exporter is used for both targets; torch's dynamo exporter emits opset 18+, beyond MXNet.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import pandas as pd
import torch

from workbench.data import load_split
from workbench.errors import ModelError
from workbench.models import load_model
from workbench.validate import BATCH_SIZES, load_onnxruntime

if TYPE_CHECKING:
    from workbench.context import StepContext

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
    "LayerNormalization": "nn.LayerNorm: use BatchNorm, or opset <= 12 so it decomposes",
    "Expand": "tensor.expand or broadcasting: use repeat or explicit shapes",
    "Where": "torch.where / masked_fill: use arithmetic masks",
    "Range": "torch.arange in forward: precompute it as a buffer",
    "Resize": "F.interpolate / nn.Upsample: use ConvTranspose2d",
    "Tile": "tensor.repeat: use broadcasting",
    "ConstantOfShape": "torch.zeros/ones of a runtime shape: use a buffer",
}


@dataclass
class ExportResult:
    summary: pd.DataFrame
    ops: pd.DataFrame
    metrics: dict[str, float]


def to_onnx(model: torch.nn.Module, in_features: int, opset: int, target: str) -> onnx.ModelProto:
    """Serialise with a dynamic batch axis, laid out as ``target`` needs."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(
            model,
            (torch.zeros(2, in_features),),
            path,
            dynamo=False,
            opset_version=opset,
            keep_initializers_as_inputs=target == "mxnet",
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
        proto = onnx.load(path)
    if target == "mxnet":
        constants_as_initializers(proto)
    return proto


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


def export_onnx(
    ctx: StepContext, opset: int, ort_atol: float, target: str = "mxnet", sagemaker: bool = False
) -> ExportResult:
    """Export, check, compare onnxruntime with PyTorch on the validation split, save references.

    ``reference.npz`` holds the validation inputs, PyTorch's logits and the labels, so the
    validation step compares against PyTorch without importing it.
    """
    config = ctx.load_json("model_config.json", "train")
    state = torch.load(io.BytesIO(ctx.load("model.pth", "train")), map_location="cpu", weights_only=True)
    model = load_model(config, state)
    proto = to_onnx(model, config["in_features"], opset, target)
    if target == "mxnet":
        check_mxnet_ops(proto, config["model"])
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"exported ONNX model fails onnx.checker: {str(exc).splitlines()[0]}") from None
    schema = ctx.load_json("schema.json", "prepare")
    normalization = ctx.load_json("normalization.json", "prepare")
    meta = {
        "run_id": ctx.run_id,
        "model": config["model"],
        "target": target,
        "classes": json.dumps(schema["classes"]),
        "normalization": json.dumps(normalization),
    }
    onnx.helper.set_model_props(proto, meta)
    blob = proto.SerializeToString()

    val = load_split(ctx, "val")
    with torch.no_grad():
        reference = model(torch.from_numpy(val.x)).numpy()
    predict = load_onnxruntime(blob)
    ort_out = predict(val.x)
    err = float(np.abs(ort_out - reference).max())
    if err > ort_atol:
        raise ModelError(
            f"onnxruntime differs from PyTorch by {err:.3g} > export.ort_atol {ort_atol:g}; the export is not faithful"
        )
    for batch in BATCH_SIZES:
        rows = np.resize(val.x, (batch, val.x.shape[1]))
        if predict(rows).shape != (batch, reference.shape[1]):
            raise ModelError(f"exported model does not accept a batch of {batch}; the batch axis is not dynamic")

    ctx.save("model.onnx", blob)
    if sagemaker:
        from workbench.sagemaker import model_archive

        ctx.save(
            "model.tar.gz", model_archive(ctx.load("model.pth", "train"), config, normalization, schema["classes"])
        )
    ctx.save_json(
        "export.json", {"target": target, "opset": opset, "exporter": "torchscript", "input": INPUT, "output": OUTPUT}
    )
    buf = io.BytesIO()
    np.savez_compressed(buf, x=val.x, logits=reference, labels=val.y)
    ctx.save("reference.npz", buf.getvalue())
    metrics = {
        "onnx_opset": float(opset),
        "onnx_bytes": float(len(blob)),
        "ort_max_abs_err": err,
        "ort_argmax_agreement": float((ort_out.argmax(1) == reference.argmax(1)).mean()),
    }
    ctx.log_metrics(metrics)
    summary, ops = summarize(proto, len(blob))
    return ExportResult(summary, ops, metrics)
