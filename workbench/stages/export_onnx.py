"""The export stage (notebook 03): PyTorch to ONNX, checked before anything is written."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import pandas as pd
import torch

from workbench.errors import ModelError
from workbench.ml.dataset import load_split, prepared_encoding, prepared_target
from workbench.ml.models import load_model
from workbench.ml.onnx_export import INPUT, OUTPUT, check_mxnet_ops, summarize, to_onnx
from workbench.ml.parity import BATCH_SIZES
from workbench.ml.runtimes import load_onnxruntime, one_line, weights_digest
from workbench.storage.catalog import (
    EXPORT_INFO,
    MODEL_CONFIG,
    MODEL_STATE,
    ONNX_MODEL,
    REFERENCE_OUTPUTS,
    SAGEMAKER_ARCHIVE,
)

if TYPE_CHECKING:
    from workbench.config.schema import ExportParams
    from workbench.run.context import StepContext


@dataclass
class ExportResult:
    summary: pd.DataFrame
    ops: pd.DataFrame
    metrics: dict[str, float]


FLOAT32_SLACK = 1e-5  # relative differences float32 arithmetic in another order gives (epsilon 1.2e-7, summed)


def export_onnx(ctx: StepContext, params: ExportParams) -> ExportResult:
    """Export, check, compare onnxruntime with PyTorch on the validation split, save references.

    The reference (``reference.npz``) holds the validation inputs (encoded), PyTorch's outputs and the
    labels (standardised numbers for regression), so the validation step compares against PyTorch
    without importing it. The ONNX file carries the encoding and the target in its metadata: what
    turns raw rows into its input and its output into a prediction.
    """
    opset, ort_atol, target = params.opset, params.ort_atol, params.target
    config = ctx.load_artifact(MODEL_CONFIG)
    state_blob = ctx.load(MODEL_STATE)
    state = torch.load(io.BytesIO(state_blob), map_location="cpu", weights_only=True)
    model = load_model(config, state)
    proto = to_onnx(model, config["in_features"], opset, target)
    if target == "mxnet":
        check_mxnet_ops(proto, config["model"])
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"exported ONNX model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    encoding = prepared_encoding(ctx)
    task = prepared_target(encoding)
    meta = {
        "run_id": ctx.run_id,
        "model": config["model"],
        "target": target,
        "task": task.task,
        "classes": json.dumps(task.classes),
        "encoding": json.dumps(encoding.to_json()),
    }
    onnx.helper.set_model_props(proto, meta)
    blob = proto.SerializeToString()

    val = load_split(ctx, "val")
    with torch.no_grad():
        reference = model(torch.from_numpy(val.x)).numpy()
    predict = _batch_checked(load_onnxruntime(blob))
    ort_out = predict(val.x)
    err = float(np.abs(ort_out - reference).max())
    if err > ort_atol:
        largest = float(np.abs(reference).max())
        if err <= FLOAT32_SLACK * largest:  # the export agrees; the outputs are too large for float32 to
            raise ModelError(  # round alike: a model that diverged in training
                f"PyTorch's outputs reach {largest:.3g}, where float32 rounding alone differs by more than "
                f"export.ort_atol {ort_atol:g} ({err:.3g}); the training diverged: try a lower train.lr"
            )
        raise ModelError(
            f"onnxruntime differs from PyTorch by {err:.3g} > export.ort_atol {ort_atol:g}; the export is not faithful"
        )
    for batch in BATCH_SIZES:
        rows = np.resize(val.x, (batch, val.x.shape[1]))
        if predict(rows).shape != (batch, reference.shape[1]):
            raise ModelError(f"exported model does not accept a batch of {batch}; the batch axis is not dynamic")

    ctx.save_artifact(ONNX_MODEL, blob)
    if params.sagemaker:
        from workbench.ml.sagemaker import model_archive

        ctx.save_artifact(SAGEMAKER_ARCHIVE, model_archive(state_blob, config, encoding.to_json()))
    ctx.save_artifact(
        EXPORT_INFO,
        {
            "target": target,
            "opset": opset,
            "exporter": "torchscript",
            "input": INPUT,
            "output": OUTPUT,
            "task": task.task,
            "model_sha256": weights_digest(state_blob),  # which training this export holds
        },
    )
    ctx.save_artifact(REFERENCE_OUTPUTS, {"x": val.x, "logits": reference, "labels": val.y})
    metrics = {
        "onnx_opset": float(opset),
        "onnx_bytes": float(len(blob)),
        "ort_max_abs_err": err,
    }
    if not task.regression:
        metrics["ort_argmax_agreement"] = float((ort_out.argmax(1) == reference.argmax(1)).mean())
    ctx.log_metrics(metrics)
    summary, ops = summarize(proto, len(blob))
    return ExportResult(summary, ops, metrics)


def _batch_checked(predict: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """``predict``, with onnxruntime's failure on a batch size it was not traced at as one line: a size
    read with ``len(x)`` or ``int(x.shape[0])`` is baked in as the tracer's example batch."""

    def run(x: np.ndarray) -> np.ndarray:
        try:
            return predict(x)
        except Exception as exc:  # broad on purpose: onnxruntime raises its own Fail/InvalidArgument types
            raise ModelError(
                f"the exported model fails on a batch of {len(x)} rows ({one_line(exc)}); a size taken from the "
                "batch with len(x) or int(x.shape[0]) is fixed at export: write x.shape[0] or -1 instead"
            ) from exc

    return run
