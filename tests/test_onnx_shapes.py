"""Reshapes by the run-time batch size: exported for MXNet with constant shapes, or refused by name."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from support.nets import OTHER_BATCH_NET, VIEW_NET
from torch import nn

from workbench.errors import ModelError
from workbench.ml.onnx_export import check_mxnet_ops, to_onnx
from workbench.ml.runtimes import BACKENDS, ModelFiles

SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "Constant", "Slice", "Cast"}


class Dense(nn.Module):
    """A linear layer after ``reshape``, the way the batch size is read differing per case."""

    def __init__(self, reshape: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.reshape = reshape
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.reshape(x))


class Convolved(nn.Module):
    """A conv on 8x8 images, then ``flatten`` of its (intermediate) output before the classifier."""

    def __init__(self, flatten: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.flatten = flatten
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(torch.relu(self.conv(x.view(-1, 1, 8, 8)))))


class InputsBatch(Convolved):
    """Flattens by the input's batch size with every other size given: the batch is left to -1."""

    def __init__(self) -> None:
        super().__init__(nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.view(-1, 1, 8, 8)))
        return self.fc(h.view(x.shape[0], 256))


def user_net(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str) -> nn.Module:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / f"{module}.py").write_text(source)
    torch.manual_seed(0)
    return __import__(module).Net().eval()


CASES: dict[str, Callable[[], nn.Module]] = {
    "x.reshape(len(x), -1)": lambda: Dense(lambda x: x.reshape(len(x), -1)),
    "x.view(x.size(0), -1)": lambda: Dense(lambda x: x.view(x.size(0), -1)),
    "x.flatten(1)": lambda: Convolved(lambda h: h.flatten(1)),
    "torch.flatten(x, 1)": lambda: Convolved(lambda h: torch.flatten(h, 1)),
    "nn.Flatten()": lambda: Convolved(nn.Flatten()),
    "h.view(h.size(0), -1) after a conv": lambda: Convolved(lambda h: h.view(h.size(0), -1)),
    "h.flatten(2) after a conv": lambda: Convolved(lambda h: h.flatten(2).flatten(1)),
    "h.view(x.shape[0], 256), the batch of another tensor": InputsBatch,
    "x.view(x.shape[0], 1, 8, 8) then x.reshape(len(x), -1)": lambda: Dense(
        lambda x: (lambda h: h.reshape(len(h), -1))(x.view(x.shape[0], 1, 8, 8))
    ),
    "x.view(x.shape[0], 1, 8, 8) then x.view(x.size(0), -1)": lambda: Dense(
        lambda x: (lambda h: h.view(h.size(0), -1))(x.view(x.shape[0], 1, 8, 8))
    ),
    "a chain of three, the batch read each time": lambda: Dense(
        lambda x: (lambda h: h.view(h.size(0), -1))(
            (lambda h: h.reshape(len(h), 4, -1))(torch.relu(x.view(x.shape[0], 1, 8, 8)))
        )
    ),
}


def exported(model: nn.Module, opset: int, target: str = "mxnet") -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer warns about len(x), which the export handles
        return to_onnx(model, 64, opset, target)


def assert_same_as_pytorch(model: nn.Module, proto: onnx.ModelProto) -> None:
    """onnxruntime and MXNet give PyTorch's logits at batch sizes 1, 2 (the traced one) and 7."""
    check_mxnet_ops(proto, "test")
    onnx.checker.check_model(proto, full_check=True)
    files = ModelFiles.of_onnx(proto.SerializeToString())
    runtimes = {name: BACKENDS[name](files) for name in ("onnxruntime", "mxnet")}
    rng = np.random.default_rng(0)
    for batch in (1, 2, 7):
        x = rng.normal(size=(batch, 64)).astype(np.float32)
        with torch.no_grad():
            reference = model(torch.from_numpy(x)).numpy()
        for name, predict in runtimes.items():
            np.testing.assert_allclose(predict(x), reference, atol=1e-4, rtol=0, err_msg=f"{name}, batch {batch}")


def shapes(proto: onnx.ModelProto) -> list[list[int]]:
    """Each Reshape's target shape, in graph order."""
    values = {t.name: onnx.numpy_helper.to_array(t).tolist() for t in proto.graph.initializer}
    return [values[n.input[1]] for n in proto.graph.node if n.op_type == "Reshape"]


@pytest.mark.parametrize("opset", [9, 12])
@pytest.mark.parametrize("case", list(CASES))
def test_a_batch_read_at_run_time_exports_for_mxnet(case: str, opset: int):
    torch.manual_seed(0)
    model = CASES[case]().eval()
    proto = exported(model, opset)
    assert not SHAPE_OPS & {n.op_type for n in proto.graph.node}, "the shape computation is gone"
    assert all(i.name in {v.name for v in proto.graph.input} for i in proto.graph.initializer)
    assert_same_as_pytorch(model, proto)


@pytest.mark.parametrize("opset", [9, 12])
def test_view_net_copies_the_batch_from_its_own_input(opset: int, tmp_path, monkeypatch):
    model = user_net(VIEW_NET, tmp_path, monkeypatch, f"viewnet{opset}")
    proto = exported(model, opset)
    assert shapes(proto) == [[0, 1, 8, 8]]  # 0: copied from the input's batch size
    assert {n.op_type for n in proto.graph.node} == {"Reshape", "Conv", "Relu", "Flatten", "Gemm"}
    assert_same_as_pytorch(model, proto)


def test_the_chosen_constants():
    """0 copies the reshaped tensor's own size; the one size left to run time becomes -1."""
    assert shapes(exported(CASES["x.reshape(len(x), -1)"]().eval(), 12)) == [[0, -1]]
    assert shapes(exported(CASES["h.view(h.size(0), -1) after a conv"]().eval(), 12)) == [[-1, 1, 8, 8], [0, -1]]
    assert shapes(exported(CASES["h.flatten(2) after a conv"]().eval(), 9)) == [[-1, 1, 8, 8], [0, 4, -1]]
    assert shapes(exported(InputsBatch().eval(), 12)) == [[-1, 1, 8, 8], [-1, 256]]


@pytest.mark.parametrize("opset", [9, 12])
def test_a_shape_that_cannot_be_constant_names_the_node_and_the_fix(opset: int, tmp_path, monkeypatch):
    model = user_net(OTHER_BATCH_NET, tmp_path, monkeypatch, f"otherbatch{opset}")
    with pytest.raises(ModelError) as refused:
        exported(model, opset)
    assert str(refused.value) == (
        "Reshape node '/Reshape_1' has 2 sizes known only at run time (size 0 of 'input' rather than of the "
        "tensor reshaped and a -1), which MXNet cannot import; write a reshape with constant sizes and at most "
        "one -1, e.g. x.view(-1, 1, 8, 8) or x.flatten(1), or set export.target=onnxruntime to skip MXNet"
    )


@pytest.mark.parametrize(
    ("reshape", "why"),
    [
        (lambda x: x.view(x.size(0) * 2, -1).view(-1, 64), "a size computed from size 0 of 'input' and 2 and a -1"),
        (lambda x: x.reshape(len(x) * 2, -1).view(-1, 64), "size 0 was traced from the example batch"),
    ],
)
def test_a_batch_computed_with_leaves_two_sizes_open(reshape, why: str):
    with pytest.raises(ModelError, match=r"^Reshape node '/Reshape' has 2 sizes known only at run time") as refused:
        exported(Dense(reshape).eval(), 12)
    assert why in str(refused.value) and "\n" not in str(refused.value)


def test_the_onnxruntime_target_keeps_the_exported_graph(tmp_path, monkeypatch):
    model = user_net(VIEW_NET, tmp_path, monkeypatch, "viewnet_ort")
    proto = exported(model, 17, "onnxruntime")
    ops = [n.op_type for n in proto.graph.node]
    assert {"Shape", "Gather", "Concat", "Constant"} <= set(ops) and ops.count("Reshape") == 1
    assert not {i.name for i in proto.graph.initializer} & {i.name for i in proto.graph.input}


def test_a_run_time_shape_from_another_exporter_is_an_import_error_naming_the_fix(tmp_path, monkeypatch):
    """A file not exported through this rewrite still meets MXNet's importer: one line saying what to do."""
    proto = exported(user_net(VIEW_NET, tmp_path, monkeypatch, "viewnet_other"), 12, "onnxruntime")
    onnx.helper.set_model_props(proto, {"target": "mxnet"})
    with pytest.raises(ModelError) as failed:
        BACKENDS["mxnet"](ModelFiles.of_onnx(proto.SerializeToString()))
    message = str(failed.value)
    assert message.startswith("MXNet cannot import the ONNX model (KeyError: ") and "\n" not in message
    assert "shape computed at run time" in message and "x.view(-1, ...)" in message


def test_a_batch_baked_in_for_onnxruntime_is_one_line_at_export():
    """onnxruntime takes run-time shapes as they are, but len(x) is traced as the example batch."""
    from workbench.errors import ModelError
    from workbench.ml.runtimes import load_onnxruntime
    from workbench.stages.export_onnx import _batch_checked

    class Baked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(len(x), -1))

    predict = _batch_checked(load_onnxruntime(to_onnx(Baked().eval(), 64, 17, "onnxruntime").SerializeToString()))
    assert predict(np.zeros((2, 64), np.float32)).shape == (2, 10)
    with pytest.raises(ModelError, match=r"fails on a batch of 5 rows \(InvalidArgument: .*write x\.shape\[0\] or -1"):
        predict(np.zeros((5, 64), np.float32))
