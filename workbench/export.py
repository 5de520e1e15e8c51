"""The export stage: PyTorch to an ONNX file that MXNet's importer can read.

MXNet's importer (the last release, 1.9.1) translates ops up to opset 12 and only knows
initializers that are also graph inputs, so the TorchScript exporter is used with
``keep_initializers_as_inputs=True``; torch's default dynamo exporter emits opset 18+.
"""

from __future__ import annotations

import io
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

if TYPE_CHECKING:
    from workbench.context import StepContext

INPUT, OUTPUT = "input", "logits"


@dataclass
class ExportResult:
    summary: pd.DataFrame
    ops: pd.DataFrame
    metrics: dict[str, float]


def to_onnx(model: torch.nn.Module, in_features: int, opset: int) -> bytes:
    """Serialise with a dynamic batch axis; returns the ONNX bytes."""
    dummy = torch.zeros(2, in_features)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(
            model,
            (dummy,),
            path,
            dynamo=False,
            opset_version=opset,
            keep_initializers_as_inputs=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
        with open(path, "rb") as fh:
            return fh.read()


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


def export_onnx(ctx: StepContext, opset: int, ort_atol: float) -> ExportResult:
    """Export, check, compare onnxruntime with PyTorch on the validation split, save references.

    ``reference.npz`` holds the validation inputs, PyTorch's logits and the labels, so the
    validation step compares against PyTorch without importing it.
    """
    import onnxruntime as ort

    config = ctx.load_json("model_config.json", "train")
    state = torch.load(io.BytesIO(ctx.load("model.pth", "train")), map_location="cpu", weights_only=True)
    model = load_model(config, state)
    blob = to_onnx(model, config["in_features"], opset)
    proto = onnx.load_from_string(blob)
    constants_as_initializers(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"exported ONNX model fails onnx.checker: {str(exc).splitlines()[0]}") from None
    meta = {
        "run_id": ctx.run_id,
        "model": config["model"],
        "classes": ",".join(map(str, ctx.load_json("schema.json", "prepare")["classes"])),
    }
    onnx.helper.set_model_props(proto, meta)
    blob = proto.SerializeToString()

    val = load_split(ctx, "val")
    with torch.no_grad():
        reference = model(torch.from_numpy(val.x)).numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # initializers-as-inputs is deliberate (for MXNet); skip the warning per weight
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    ort_out = session.run([OUTPUT], {INPUT: val.x})[0]
    err = float(np.abs(ort_out - reference).max())
    if err > ort_atol:
        raise ModelError(
            f"onnxruntime differs from PyTorch by {err:.3g} > export.ort_atol {ort_atol:g}; the export is not faithful"
        )

    ctx.save("model.onnx", blob)
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
