from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from workbench.errors import ModelError
from workbench.ml.onnx_export import INPUT, MXNET_OPS, OUTPUT, check_mxnet_ops, to_onnx


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
    meta = {p.key: p.value for p in proto.metadata_props}
    assert (
        meta["run_id"] == "unit" and meta["target"] == "mxnet" and meta["classes"] == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"
    )
    encoding = __import__("json").loads(meta["encoding"])
    assert len(encoding["features"]) == 64 and encoding["target"]["classes"] == list(range(10))
    assert meta["task"] == "classification"
    assert exported.summary.loc["inputs", "value"] == "input [batch, 64]"
    assert exported.metrics["ort_max_abs_err"] < 1e-4
    assert ctx.load_json("export.json", "export")["target"] == "mxnet"


def test_dynamic_batch_in_onnxruntime(trained, stage_ctx_factory):
    blob = stage_ctx_factory("export").load("model.onnx", "export")
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    for batch in (1, 257):
        x = np.random.default_rng(0).normal(size=(batch, 64)).astype(np.float32)
        assert session.run([OUTPUT], {INPUT: x})[0].shape == (batch, 10)


def test_reference_outputs_are_saved(trained, stage_ctx_factory):
    ref = np.load(io.BytesIO(stage_ctx_factory("export").load("reference.npz", "export")))
    assert ref["x"].shape == (269, 64) and ref["logits"].shape == (269, 10) and ref["labels"].shape == (269,)


def test_outputs_too_large_for_float32_name_the_training_not_the_export(trained, stage_ctx_factory):
    """A model whose logits reach 1e22 (training diverged) differs from its ONNX copy by float32
    rounding alone: the message says to train again, not that the export is unfaithful."""
    from workbench.config.schema import ExportParams
    from workbench.stages.export_onnx import export_onnx

    store = stage_ctx_factory("export").store
    for key in store.list("runs/unit/prepare") + store.list("runs/unit/train"):
        data = store.read_bytes(key)
        if key.endswith("/model.pth"):
            state = torch.load(io.BytesIO(data), weights_only=True)
            last = [name for name in state if name.endswith(".weight")][-1]
            state[last] = state[last] * 1e20
            buffer = io.BytesIO()
            torch.save(state, buffer)
            data = buffer.getvalue()
        store.write_bytes(key.replace("runs/unit/", "runs/diverged/", 1), data)
    with pytest.raises(
        ModelError,
        match=r"^PyTorch's outputs reach [0-9.e+]+, where float32 rounding alone .*"
        r"the training diverged: try a lower train\.lr$",
    ):
        export_onnx(stage_ctx_factory("export", run_id="diverged"), ExportParams())


def test_op_table_matches_mxnets_own():
    from mxnet.contrib.onnx.onnx2mx._import_helper import _convert_map

    assert frozenset(_convert_map) == MXNET_OPS


class GeluNet(nn.Module):
    def __init__(self, in_features: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(in_features, 32), nn.GELU(), nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc(x)))


def test_unsupported_ops_are_named_before_mxnet_sees_them():
    proto = to_onnx(GeluNet().eval(), 64, 12, "mxnet")
    with pytest.raises(ModelError) as err:
        check_mxnet_ops(proto, "mypkg:GeluNet")
    message = str(err.value)
    assert "ONNX ops MXNet cannot import: Erf (nn.GELU: use nn.GELU(approximate='tanh') or ReLU)" in message
    assert "export.target=onnxruntime" in message


class NormNet(nn.Module):
    def __init__(self, in_features: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.fc, self.norm, self.out = nn.Linear(in_features, 32), nn.LayerNorm(32), nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.norm(self.fc(x))))


def test_layer_norm_imports_into_mxnet_and_agrees_and_its_failure_keeps_mxnets_line():
    """nn.LayerNorm at opset 12 is ReduceMean, Sub, Pow, ...: MXNet's importer read ReduceMean's
    missing keepdims as 0 and failed at bind time as 'simple_bind error. Arguments:'. The MXNet
    layout writes keepdims out; without it, the error kept is MXNet's own line."""
    from workbench.ml.runtimes import BACKENDS, ModelFiles, one_line

    model = NormNet().eval()
    proto = to_onnx(model, 64, 12, "mxnet")
    check_mxnet_ops(proto, "mypkg:NormNet")
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    predict = BACKENDS["mxnet"](ModelFiles.of_onnx(proto.SerializeToString()))
    np.testing.assert_allclose(predict(x), reference, atol=1e-5, rtol=0)
    for node in proto.graph.node:  # as exported before: keepdims left to its default
        kept = [a for a in node.attribute if a.name != "keepdims"]
        del node.attribute[:]
        node.attribute.extend(kept)
    with pytest.raises(Exception) as caught:
        BACKENDS["mxnet"](ModelFiles.of_onnx(proto.SerializeToString()))(x)
    said = one_line(caught.value)
    assert said.startswith("RuntimeError: Error in operator /norm/Sub: Check failed: "), said
    assert "could not be broadcast together with shapes" in said and "simple_bind" not in said and "../src" not in said


def test_onnxruntime_target_uses_plain_initializers_and_newer_opsets():
    proto = to_onnx(GeluNet().eval(), 64, 17, "onnxruntime")
    assert proto.opset_import[0].version == 17
    assert not {i.name for i in proto.graph.initializer} & {i.name for i in proto.graph.input}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {INPUT: np.zeros((3, 64), np.float32)})[0].shape == (3, 10)
