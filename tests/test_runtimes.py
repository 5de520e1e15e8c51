"""onnxruntime runs the model with its weights as constants; the file stays the form MXNet imports."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from workbench.ml import runtimes
from workbench.ml.models import build_model, model_config
from workbench.ml.onnx_export import INPUT, to_onnx
from workbench.ml.parity import three_way
from workbench.ml.runtimes import BACKENDS, ModelFiles, fast_form, load_onnxruntime

FEATURES, CLASSES = 64, 10


@pytest.fixture(scope="module", params=["cnn", "mlp"])
def exported(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, onnx.ModelProto]:
    """A model (digits CNN or MLP, random weights and batch-norm statistics) and its MXNet-profile export."""
    torch.manual_seed(0)
    model = build_model(model_config(request.param, FEATURES, CLASSES))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # not the identity, so folding it would show
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    return model, to_onnx(model, FEATURES, 12, "mxnet")


def batch(rows: int = 300) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(rows, FEATURES)).astype(np.float32)


def test_the_export_lists_every_initializer_as_an_input_and_the_fast_form_none(exported):
    _, proto = exported
    constants = {i.name for i in proto.graph.initializer}
    assert constants and constants <= {i.name for i in proto.graph.input}  # what MXNet's importer needs
    fast = fast_form(proto)
    assert [i.name for i in fast.graph.input] == [INPUT]
    assert {i.name for i in fast.graph.initializer} == constants  # the weights are kept, as constants
    assert len(proto.graph.input) == len(constants) + 1  # the model given is not changed
    onnx.checker.check_model(fast, full_check=True)


def test_both_forms_give_the_same_logits_as_pytorch(exported):
    model, proto = exported
    blob, x = proto.SerializeToString(), batch()
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    fast, as_exported = load_onnxruntime(blob)(x), load_onnxruntime(blob, as_exported=True)(x)
    np.testing.assert_allclose(fast, as_exported, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(fast, reference, atol=1e-4, rtol=1e-4)
    assert load_onnxruntime(blob)(x[:1]).shape == (1, CLASSES)  # the batch axis stays dynamic


def test_the_fast_form_loads_silently_where_the_export_warns_per_weight(exported, capfd):
    _, proto = exported
    blob, x = proto.SerializeToString(), batch(8)
    capfd.readouterr()
    # onnxruntime at its default log level on the file as exported: one warning per weight, on stderr
    ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, {INPUT: x})
    assert "appears in graph inputs and will not be treated as constant" in capfd.readouterr().err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_onnxruntime(blob)(x)  # the backend, which keeps onnxruntime's warnings on
        ort.InferenceSession(fast_form(proto).SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {INPUT: x}
        )
    assert capfd.readouterr() == ("", "") and not caught


def test_mxnet_still_imports_the_file_as_exported(exported):
    model, proto = exported
    blob, x = proto.SerializeToString(), batch()
    files = ModelFiles.of_onnx(blob)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    mxnet, onnxruntime = BACKENDS["mxnet"](files)(x), BACKENDS["onnxruntime"](files)(x)
    np.testing.assert_allclose(mxnet, reference, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(mxnet, onnxruntime, atol=1e-4, rtol=1e-4)


def test_an_old_ir_version_keeps_its_initializers_as_inputs(exported):
    """Before IR version 4 every initializer must also be an input: such a model is left as it is."""
    _, proto = exported
    old = onnx.ModelProto()
    old.CopyFrom(proto)
    old.ir_version = 3
    assert len(fast_form(old).graph.input) == len(proto.graph.input)


def _parity(proto: onnx.ModelProto, model: torch.nn.Module):
    x = batch(50)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    return three_way(
        proto.SerializeToString(), x, reference, reference.argmax(1), ["onnxruntime", "mxnet"], 1e-4, 1e-3, 0.999
    )


def test_parity_checks_the_fast_form_against_the_file_as_exported(exported):
    model, proto = exported
    parity = _parity(proto, model)
    assert parity.verdict == "PASS", parity.reasons
    assert list(parity.table.columns) == ["pytorch", "onnxruntime", "mxnet"]
    stats = parity.stats["onnxruntime"]
    assert stats["as_exported_agrees"] == 1.0 and stats["as_exported_max_abs_err"] < 1e-5
    assert "as_exported_agrees" not in parity.stats["mxnet"]  # MXNet runs the file itself
    assert parity.table.loc["as_exported_agrees", "onnxruntime"] == "yes" and parity.scores_agree


def test_forms_that_differ_are_a_fail_with_a_reason(exported, monkeypatch):
    model, proto = exported

    def shifted(files: ModelFiles) -> runtimes.Predict:
        predict = load_onnxruntime(files.onnx(), as_exported=True)
        return lambda x: predict(x) + 0.01

    monkeypatch.setitem(runtimes.AS_EXPORTED, "onnxruntime", shifted)
    parity = _parity(proto, model)
    assert parity.verdict == "FAIL" and parity.stats["onnxruntime"]["as_exported_agrees"] == 0.0
    assert parity.reasons == [
        "onnxruntime: the model as exported (initializers as inputs) and the fast form differ on 100.00% of "
        "logits beyond atol=0.0001 / rtol=0.001 (max abs err 0.01)"
    ]
    assert parity.out_of_tolerance and parity.stats["mxnet"]["within_tolerance"] == 1.0

    def broken(files: ModelFiles) -> runtimes.Predict:
        raise RuntimeError("cannot bind\nsecond line")

    monkeypatch.setitem(runtimes.AS_EXPORTED, "onnxruntime", broken)
    parity = _parity(proto, model)
    assert parity.reasons == ["onnxruntime: the model as exported does not run (RuntimeError: cannot bind)"]
    assert parity.stats["onnxruntime"]["as_exported_agrees"] == 0.0 and not parity.out_of_tolerance
