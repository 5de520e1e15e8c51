"""The validation stage: do onnxruntime and MXNet give PyTorch's answers on the exported model?

It reads only ``model.onnx``, ``export.json`` and ``reference.npz`` from the export step (PyTorch's
logits were computed there, in eval mode under no_grad), so it never imports torch and runs on a
machine that has the inference runtimes alone. A backend that cannot load or run the model, for
whatever reason, is a FAIL with that reason on one line, not a crash: the table, plot, metrics and
``parity.json`` are still written, and the step fails afterwards through :meth:`Parity.check`.
"""

from __future__ import annotations

import contextlib
import html
import io
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.errors import ModelError

if TYPE_CHECKING:
    import onnx
    from matplotlib.figure import Figure

    from workbench.context import StepContext

REFERENCE = "pytorch"
BATCH_SIZES = (1, 257)  # dynamic batch is proven on these, not assumed


def compare(
    candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray, atol: float, rtol: float
) -> dict[str, float]:
    """Error statistics and agreement of ``candidate`` logits against ``reference`` logits.

    ``within_tolerance`` is the share of elements passing the elementwise rule NVIDIA Polygraphy
    applies (``--check-error-stat elemwise``): |a - b| <= atol or |a - b| / |b| <= rtol.
    """
    abs_err = np.abs(candidate - reference)
    rel_err = abs_err / np.maximum(np.abs(reference), 1e-12)
    return {
        "max_abs_err": float(abs_err.max()),
        "mean_abs_err": float(abs_err.mean()),
        "p99_abs_err": float(np.quantile(abs_err, 0.99)),
        "max_rel_err": float(rel_err.max()),
        "mean_rel_err": float(rel_err.mean()),
        "p99_rel_err": float(np.quantile(rel_err, 0.99)),
        "within_tolerance": float(((abs_err <= atol) | (rel_err <= rtol)).mean()),
        "argmax_agreement": float((candidate.argmax(1) == reference.argmax(1)).mean()),
        "accuracy": float((candidate.argmax(1) == labels).mean()),
    }


def top_class(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and softmax probability of each row's winning class."""
    best = logits.argmax(axis=1)
    top = logits[np.arange(len(best)), best][:, None]
    # softmax at the winning class is 1 / sum(exp(logit - top))
    return best, (1.0 / np.exp(logits - top).sum(axis=1)).astype(np.float32)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: runtimes put stack traces in their messages, and a
    reason must stay one line in ``parity.json``, the notebook and the CLI's error line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def onnx_file_check(onnx_bytes: bytes) -> onnx.ModelProto:
    """The parsed model, or a ModelError naming the fix when the file is not a model at all."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load_from_string(onnx_bytes)
    except DecodeError:
        raise ModelError("the ONNX model is corrupt or truncated; rerun the export step") from None


def mxnet_import_hint(proto: onnx.ModelProto) -> str:
    """What to change when MXNet's importer rejects a graph, from what the graph holds.

    The importer reads a Reshape's target shape from the initializers, so a shape computed at
    run time (``x.view(x.shape[0], ...)`` exports Shape, Gather, Concat, Reshape) fails inside it
    with a bare ``KeyError`` on the node that computes the shape.
    """
    target = {p.key: p.value for p in proto.metadata_props}.get("target")
    if target and target != "mxnet":
        return f"the model was exported for {target}; export with export.target=mxnet"
    constants = {i.name for i in proto.graph.initializer}
    if any(n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] not in constants for n in proto.graph.node):
        return (
            "the model reshapes to a shape computed at run time, e.g. x.view(x.shape[0], ...): "
            "use x.view(-1, ...), x.flatten(1) or nn.Unflatten, or export.target=onnxruntime to skip MXNet"
        )
    return "export with export.target=mxnet, or use export.target=onnxruntime to skip MXNet"


Predict = Callable[[np.ndarray], np.ndarray]


def load_onnxruntime(onnx_bytes: bytes) -> Predict:
    """An onnxruntime session as a function of a float32 batch (CUDA provider first when built in)."""
    import onnxruntime as ort

    onnx_file_check(onnx_bytes)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # initializers-as-inputs is deliberate (for MXNet); skip the warning per weight
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        session = ort.InferenceSession(onnx_bytes, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        raise ModelError(f"onnxruntime cannot load the ONNX model ({one_line(exc)})") from None
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def load_mxnet(onnx_bytes: bytes) -> Predict:
    """The ONNX model imported into MXNet (GPU context when present), as a function of a batch."""
    proto = onnx_file_check(onnx_bytes)
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
        except Exception as exc:  # the importer fails in many ways (KeyError, MXNetError, ...) on graphs it lacks
            raise ModelError(
                f"MXNet cannot import the ONNX model ({one_line(exc)}); {mxnet_import_hint(proto)}"
            ) from None
    data_name = next(n for n in sym.list_inputs() if n not in arg_params and n not in aux_params)
    module = mx.mod.Module(symbol=sym, data_names=[data_name], label_names=None, context=ctx)

    def predict(x: np.ndarray) -> np.ndarray:
        if not module.binded:
            module.bind(for_training=False, data_shapes=[(data_name, x.shape)])
            module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)
        elif module.data_shapes[0].shape != x.shape:
            module.reshape(data_shapes=[(data_name, x.shape)])
        module.forward(mx.io.DataBatch([mx.nd.array(x, ctx=ctx)]), is_train=False)
        return module.get_outputs()[0].asnumpy()

    return predict


BACKENDS: dict[str, Callable[[bytes], Predict]] = {"onnxruntime": load_onnxruntime, "mxnet": load_mxnet}


@dataclass
class Parity:
    """PyTorch against each backend: a table, a plot and one verdict."""

    reference: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    outputs: dict[str, np.ndarray] = field(repr=False)
    stats: dict[str, dict[str, float]]
    reasons: list[str] = field(default_factory=list)
    out_of_tolerance: bool = field(default=False, repr=False)  # a reason is about tolerances: check() names them

    @property
    def accuracies(self) -> dict[str, float]:
        """Accuracy of PyTorch and of every backend that ran; a backend that failed has none."""
        return {name: stats["accuracy"] for name, stats in self.stats.items() if "accuracy" in stats}

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    @property
    def table(self) -> pd.DataFrame:
        """One column per backend, PyTorch first, formatted for reading (raw numbers in ``stats``)."""

        def show(key: str, value: float) -> str:
            if key in ("loaded", "ran", "dynamic_batch"):
                return "yes" if value == 1.0 else "no"
            if key in ("accuracy", "argmax_agreement", "within_tolerance"):
                return f"{value:.2%}"
            return f"{value:.2e}"

        rows = dict.fromkeys(key for stats in self.stats.values() for key in stats)
        return pd.DataFrame(
            {name: [show(k, stats[k]) if k in stats else "" for k in rows] for name, stats in self.stats.items()},
            index=pd.Index(list(rows), name="vs PyTorch"),
        )

    def check(self) -> None:
        """Fail the step (and so the run) when the verdict is FAIL, after it has been recorded."""
        if not self.passed:
            hint = "; see validate.atol/rtol/min_agreement" if self.out_of_tolerance else ""
            raise ModelError("parity FAIL: " + "; ".join(self.reasons) + hint)

    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.passed else "#cf222e"
        backends = " and ".join(name for name in self.stats if name != REFERENCE)
        why = "" if self.passed else "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in self.reasons) + "</ul>"
        return f'<div style="font-size:1.4em;font-weight:600;color:{color}">PyTorch vs {backends}: {self.verdict}</div>{why}'


def _backends(target: str) -> list[str]:
    # a model exported for onnxruntime is not meant for MXNet (newer opsets, other layout)
    return ["onnxruntime", "mxnet"] if target == "mxnet" else ["onnxruntime"]


def three_way(
    blob: bytes,
    x: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
    backends: list[str],
    atol: float,
    rtol: float,
    min_agreement: float,
) -> Parity:
    """Run every backend on ``x`` and judge it against PyTorch's ``reference`` logits.

    Any exception from a backend (runtimes raise their own types: KeyError, MXNetError, onnxruntime's
    Fail) becomes that backend's FAIL reason, so one broken backend never hides the others' results.
    """
    accuracy = float((reference.argmax(1) == labels).mean())
    parity = Parity(reference, labels, {}, {REFERENCE: {"accuracy": accuracy}})
    for name in backends:
        try:
            predict = BACKENDS[name](blob)
        except Exception as exc:
            parity.stats[name] = {"loaded": 0.0}
            # a ModelError already says what to change; anything else is named by its type and first line
            why = (
                " ".join(str(exc).split())
                if isinstance(exc, ModelError)
                else f"cannot load the model ({one_line(exc)})"
            )
            parity.reasons.append(f"{name}: {why}")
            continue
        try:
            out = np.asarray(predict(x))
            if out.shape != reference.shape:
                raise ModelError(f"returns logits of shape {out.shape}, PyTorch {reference.shape}")
        except Exception as exc:
            parity.stats[name] = {"loaded": 1.0, "ran": 0.0}
            parity.reasons.append(f"{name}: fails on the validation split ({one_line(exc)})")
            continue
        batch_errors = []
        for n in BATCH_SIZES:
            try:
                same = np.allclose(
                    predict(np.resize(x, (n, x.shape[1]))), np.resize(out, (n, out.shape[1])), atol=atol, rtol=rtol
                )
            except Exception as exc:
                batch_errors.append(f"{name}: fails on a batch of {n} rows ({one_line(exc)})")
                continue
            if not same:
                parity.out_of_tolerance = True
                batch_errors.append(f"{name}: results change with the batch size ({n} rows)")
        stats = {"loaded": 1.0, **compare(out, reference, labels, atol, rtol), "dynamic_batch": float(not batch_errors)}
        parity.outputs[name], parity.stats[name] = out, stats
        if stats["within_tolerance"] < 1.0:
            parity.out_of_tolerance = True
            parity.reasons.append(
                f"{name}: {1 - stats['within_tolerance']:.2%} of logits outside atol={atol:g} / rtol={rtol:g} "
                f"(max abs err {stats['max_abs_err']:.3g})"
            )
        if stats["argmax_agreement"] < min_agreement:
            parity.out_of_tolerance = True
            parity.reasons.append(
                f"{name}: predicted classes agree on {stats['argmax_agreement']:.2%} of rows, below {min_agreement:.2%}"
            )
        parity.reasons.extend(batch_errors)
    return parity


def validate_model(
    ctx: StepContext,
    atol: float,
    rtol: float,
    min_agreement: float,
    publish_url: str = "",
    publish_table: str = "predictions",
) -> Parity:
    """Compare every backend the export targets with PyTorch on the validation split; record it all.

    With ``publish_url``, the metrics and every backend's prediction for every validation row are
    published too, whatever the verdict: a FAIL is a result the warehouse should see.
    """
    blob = ctx.load("model.onnx", "export")
    target = ctx.load_json("export.json", "export")["target"]
    ref = np.load(io.BytesIO(ctx.load("reference.npz", "export")))
    parity = three_way(blob, ref["x"], ref["logits"], ref["labels"], _backends(target), atol, rtol, min_agreement)
    metrics = {f"{backend}_{key}": value for backend, stats in parity.stats.items() for key, value in stats.items()}
    metrics["parity_pass"] = float(parity.passed)
    ctx.log_metrics(metrics)
    ctx.save_json(
        "parity.json",
        {"verdict": parity.verdict, "reasons": parity.reasons, "atol": atol, "rtol": rtol, "stats": parity.stats},
    )
    ctx.save_figure("parity.png", plot_parity(parity))
    if publish_url:
        _publish(ctx, parity, publish_url, publish_table, metrics)
    return parity


def _publish(ctx: StepContext, parity: Parity, url: str, table: str, metrics: dict[str, float]) -> None:
    import pyarrow as pa

    from workbench.publish import Publisher, prediction_rows, publish_metrics

    classes = np.asarray(ctx.load_json("schema.json", "prepare")["classes"])
    publisher = Publisher(url, table, ctx.run_id, ctx.step)
    rows = np.arange(len(parity.labels))
    for backend, logits in {REFERENCE: parity.reference, **parity.outputs}.items():
        best, confidence = top_class(logits)
        predictions = pa.table(
            {
                "row": rows,
                "predicted": classes[best],
                "confidence": confidence,
                "actual": classes[parity.labels],
            }
        )
        publisher.append(prediction_rows(predictions, backend))
    publish_metrics(url, table, ctx.run_id, ctx.step, metrics)


def plot_parity(parity: Parity) -> Figure:
    """Each backend's logits against PyTorch's, and the distribution of absolute errors."""
    import matplotlib.pyplot as plt

    fig, (scatter, hist) = plt.subplots(1, 2, figsize=(10, 3.6))
    lims = [parity.reference.min(), parity.reference.max()]
    scatter.plot(lims, lims, color="grey", lw=0.8)
    for name, out in parity.outputs.items():
        scatter.scatter(parity.reference.ravel(), out.ravel(), s=3, alpha=0.4, label=name)
        err = np.abs(out - parity.reference).ravel()
        hist.hist(np.log10(np.maximum(err, 1e-12)), bins=40, alpha=0.6, label=name)
    scatter.set(title="logits", xlabel="PyTorch", ylabel="backend")
    hist.set(title="absolute error (exact matches at -12)", xlabel="log10 |backend - PyTorch|", ylabel="logits")
    for ax in (scatter, hist):
        if parity.outputs:
            ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig
