from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort

from workbench.export import INPUT, OUTPUT


def test_export_for_mxnet(trained, stage_ctx_factory):
    _, exported = trained
    ctx = stage_ctx_factory("export")
    proto = onnx.load_from_string(ctx.load("model.onnx", "export"))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 12
    inputs = {i.name for i in proto.graph.input}
    # MXNet's importer only sees initializers that are graph inputs
    assert {i.name for i in proto.graph.initializer} <= inputs
    assert "Constant" not in {n.op_type for n in proto.graph.node}
    assert {p.key: p.value for p in proto.metadata_props}["run_id"] == "unit"
    assert exported.summary.loc["inputs", "value"] == "input [batch, 64]"
    assert exported.metrics["ort_max_abs_err"] < 1e-4


def test_dynamic_batch_in_onnxruntime(trained, stage_ctx_factory):
    blob = stage_ctx_factory("export").load("model.onnx", "export")
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    for batch in (1, 257):
        x = np.random.default_rng(0).normal(size=(batch, 64)).astype(np.float32)
        assert session.run([OUTPUT], {INPUT: x})[0].shape == (batch, 10)


def test_reference_outputs_are_saved(trained, stage_ctx_factory):
    ref = np.load(io.BytesIO(stage_ctx_factory("export").load("reference.npz", "export")))
    assert ref["x"].shape == (269, 64) and ref["logits"].shape == (269, 10) and ref["labels"].shape == (269,)
