from __future__ import annotations

import io

import numpy as np
import pytest

from workbench.errors import ModelError
from workbench.validate import compare, mxnet_predict, validate_mxnet


def test_compare_statistics():
    ref = np.array([[1.0, 2.0], [3.0, -1.0]])
    out = ref + np.array([[0.0, 0.1], [0.0, 0.0]])
    stats = compare(out, ref, np.array([1, 0]), atol=0.01, rtol=0.0)
    assert stats["max_abs_err"] == pytest.approx(0.1)
    assert stats["max_rel_err"] == pytest.approx(0.05)
    assert stats["within_tolerance"] == 0.75
    assert stats["argmax_agreement"] == 1.0 and stats["accuracy_reference"] == 1.0


def test_mxnet_matches_pytorch(trained, stage_ctx_factory):
    ctx = stage_ctx_factory("validate")
    parity = validate_mxnet(ctx, atol=1e-4, rtol=1e-3, min_agreement=0.999)
    assert parity.verdict == "PASS", parity.reasons
    parity.check()
    assert parity.stats["max_abs_err"] < 1e-4
    metrics = ctx.tracker.get_run("unit")["metrics"]
    assert metrics["parity_pass"] == 1.0 and "mxnet_max_abs_err" in metrics
    assert "PASS" in parity._repr_html_()


def test_mxnet_dynamic_batch(trained, stage_ctx_factory):
    blob = stage_ctx_factory("export").load("model.onnx", "export")
    for batch in (1, 257):
        x = np.zeros((batch, 64), dtype=np.float32)
        assert mxnet_predict(blob, x).shape == (batch, 10)


def test_a_tampered_reference_fails_with_reasons(trained, stage_ctx_factory):
    source = stage_ctx_factory("export")
    target = stage_ctx_factory("export", run_id="tampered")
    ref = np.load(io.BytesIO(source.load("reference.npz", "export")))
    buf = io.BytesIO()
    np.savez(buf, x=ref["x"], logits=ref["logits"] + 0.5, labels=ref["labels"])
    target.save("reference.npz", buf.getvalue())
    target.save("model.onnx", source.load("model.onnx", "export"))
    parity = validate_mxnet(stage_ctx_factory("validate", run_id="tampered"), atol=1e-4, rtol=1e-3, min_agreement=0.999)
    assert parity.verdict == "FAIL" and "exceed atol" in parity.reasons[0]
    with pytest.raises(ModelError, match="MXNet parity FAIL"):
        parity.check()


def test_corrupt_or_truncated_onnx_is_a_model_error(trained, stage_ctx_factory):
    blob = stage_ctx_factory("export").load("model.onnx", "export")
    for broken in (b"not an onnx file", blob[: len(blob) // 3]):
        with pytest.raises(ModelError, match="the ONNX model is corrupt or truncated"):
            mxnet_predict(broken, np.zeros((1, 64), dtype=np.float32))
