"""The validation stage: does the ONNX model give PyTorch's answers in another framework (MXNet)?

It reads only ``model.onnx`` and ``reference.npz`` from the export step, so it never imports
torch and can run on a machine that has MXNet alone.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.errors import ModelError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from workbench.context import StepContext


def compare(
    candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray, atol: float, rtol: float
) -> dict[str, float]:
    """Error statistics and agreement of ``candidate`` logits against ``reference`` logits."""
    abs_err = np.abs(candidate - reference)
    rel_err = abs_err / np.maximum(np.abs(reference), 1e-12)
    return {
        "max_abs_err": float(abs_err.max()),
        "mean_abs_err": float(abs_err.mean()),
        "max_rel_err": float(rel_err.max()),
        "mean_rel_err": float(rel_err.mean()),
        # the same elementwise rule as numpy.allclose: |a - b| <= atol + rtol * |b|
        "within_tolerance": float((abs_err <= atol + rtol * np.abs(reference)).mean()),
        "argmax_agreement": float((candidate.argmax(1) == reference.argmax(1)).mean()),
        "accuracy_reference": float((reference.argmax(1) == labels).mean()),
        "accuracy_candidate": float((candidate.argmax(1) == labels).mean()),
    }


def mxnet_predict(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Import the ONNX model into MXNet and run ``x`` through it (GPU context when present)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        onnx.load_from_string(onnx_bytes)
    except DecodeError:
        raise ModelError("the ONNX model is corrupt or truncated; rerun the export step") from None
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")  # else MXNet logs a banner on every bind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mxnet as mx
        from mxnet.contrib import onnx as onnx_mxnet

    ctx = mx.gpu(0) if mx.context.num_gpus() > 0 else mx.cpu()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as fh:
            fh.write(onnx_bytes)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the importer prints a deprecation banner
                sym, arg_params, aux_params = onnx_mxnet.import_model(path)
        except (KeyError, NotImplementedError, AttributeError) as exc:
            raise ModelError(
                f"MXNet cannot import the ONNX model ({type(exc).__name__}: {exc}); export with export.opset <= 12 and supported ops"
            ) from None
    data_names = [name for name in sym.list_inputs() if name not in arg_params and name not in aux_params]
    module = mx.mod.Module(symbol=sym, data_names=data_names, label_names=None, context=ctx)
    module.bind(for_training=False, data_shapes=[(data_names[0], x.shape)])
    module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)
    module.forward(mx.io.DataBatch([mx.nd.array(x, ctx=ctx)]), is_train=False)
    return module.get_outputs()[0].asnumpy()


@dataclass
class Parity:
    """The comparison and its verdict; shows as a table and a PASS/FAIL badge in a notebook."""

    stats: dict[str, float]
    passed: bool
    reasons: list[str]
    candidate: np.ndarray
    reference: np.ndarray

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"value": self.stats}).rename_axis("MXNet vs PyTorch")

    def check(self) -> None:
        """Fail the step (and so the run) when the verdict is FAIL, after it has been recorded."""
        if not self.passed:
            raise ModelError("MXNet parity FAIL: " + "; ".join(self.reasons) + "; see validate.atol/rtol/min_agreement")

    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.passed else "#cf222e"
        why = "" if self.passed else "<ul>" + "".join(f"<li>{r}</li>" for r in self.reasons) + "</ul>"
        return f'<div style="font-size:1.4em;font-weight:600;color:{color}">MXNet parity: {self.verdict}</div>{why}'


def validate_mxnet(ctx: StepContext, atol: float, rtol: float, min_agreement: float) -> Parity:
    """Compare MXNet with PyTorch on the validation split and record a PASS/FAIL verdict."""
    blob = ctx.load("model.onnx", "export")
    ref = np.load(io.BytesIO(ctx.load("reference.npz", "export")))
    out = mxnet_predict(blob, ref["x"])
    stats = compare(out, ref["logits"], ref["labels"], atol, rtol)
    reasons = []
    if stats["within_tolerance"] < 1.0:
        reasons.append(
            f"{1 - stats['within_tolerance']:.2%} of logits exceed atol={atol:g} + rtol={rtol:g}·|ref| (max abs err {stats['max_abs_err']:.3g})"
        )
    if stats["argmax_agreement"] < min_agreement:
        reasons.append(f"predicted classes agree on {stats['argmax_agreement']:.2%} of rows, below {min_agreement:.2%}")
    parity = Parity(stats, not reasons, reasons, out, ref["logits"])
    ctx.log_metrics({f"mxnet_{k}": v for k, v in stats.items()} | {"parity_pass": float(parity.passed)})
    ctx.save_json("parity.json", {"verdict": parity.verdict, "reasons": reasons, "atol": atol, "rtol": rtol, **stats})
    ctx.save_figure("parity.png", plot_parity(parity))
    return parity


def plot_parity(parity: Parity) -> Figure:
    """MXNet logits against PyTorch's, and the distribution of absolute errors."""
    import matplotlib.pyplot as plt

    fig, (scatter, hist) = plt.subplots(1, 2, figsize=(10, 3.6))
    scatter.scatter(parity.reference.ravel(), parity.candidate.ravel(), s=3, alpha=0.4)
    lims = [parity.reference.min(), parity.reference.max()]
    scatter.plot(lims, lims, color="grey", lw=0.8)
    scatter.set(title="logits", xlabel="PyTorch", ylabel="MXNet")
    err = np.abs(parity.candidate - parity.reference).ravel()
    hist.hist(np.log10(np.maximum(err, 1e-12)), bins=40)
    hist.set(title="absolute error", xlabel="log10 |MXNet - PyTorch|", ylabel="logits")
    fig.tight_layout()
    plt.close(fig)
    return fig
