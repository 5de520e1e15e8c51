"""The validation stage (notebook 04): do onnxruntime and MXNet give PyTorch's answers on the
exported model?

It reads only ``model.onnx``, ``export.json`` and ``reference.npz`` from the export step (PyTorch's
logits were computed there, in eval mode under no_grad), so it never imports torch and runs on a
machine that has the inference runtimes alone. A backend that cannot load the model is a FAIL
with its reason, not a crash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from workbench.ml.encoding import Encoding
from workbench.ml.parity import REFERENCE, Parity, backends_for, three_way
from workbench.ml.runtimes import top_class
from workbench.storage.catalog import ENCODING, EXPORT_INFO, ONNX_MODEL, PARITY, PARITY_PLOT, REFERENCE_OUTPUTS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from workbench.config.schema import PublishParams, ValidateParams
    from workbench.run.context import StepContext


def validate_model(ctx: StepContext, params: ValidateParams, publish: PublishParams | None = None) -> Parity:
    """Compare every backend the export targets with PyTorch on the validation split; record it all.

    With ``publish.url``, the metrics and every backend's prediction for every validation row are
    published too, whatever the verdict: a FAIL is a result the warehouse should see.
    """
    atol, rtol, min_agreement = params.atol, params.rtol, params.min_agreement
    publish_url, publish_table = (publish.url, publish.table) if publish else ("", "")
    blob = ctx.load(ONNX_MODEL)
    info = ctx.load_artifact(EXPORT_INFO)
    regression = info.get("task") == "regression"
    ref = ctx.load_artifact(REFERENCE_OUTPUTS)
    parity = three_way(
        blob,
        ref["x"],
        ref["logits"],
        ref["labels"],
        backends_for(info["target"]),
        atol,
        rtol,
        min_agreement,
        regression,
    )
    metrics = {f"{backend}_{key}": value for backend, stats in parity.stats.items() for key, value in stats.items()}
    metrics["parity_pass"] = float(parity.passed)
    ctx.log_metrics(metrics)
    ctx.save_artifact(
        PARITY,
        {"verdict": parity.verdict, "reasons": parity.reasons, "atol": atol, "rtol": rtol, "stats": parity.stats},
    )
    ctx.save_artifact(PARITY_PLOT, plot_parity(parity))
    if publish_url:
        _publish(ctx, parity, publish_url, publish_table, metrics)
    return parity


def _publish(ctx: StepContext, parity: Parity, url: str, table: str, metrics: dict[str, float]) -> None:
    import pyarrow as pa

    from workbench.storage.publish import Publisher, prediction_rows, publish_metrics

    task = Encoding.from_json(ctx.load_artifact(ENCODING)).target
    assert task is not None
    publisher = Publisher(url, table, ctx.run_id, ctx.step)
    rows = np.arange(len(parity.labels))
    for backend, outputs in {REFERENCE: parity.reference, **parity.outputs}.items():
        if task.regression:
            columns = {"predicted": task.predicted(outputs), "actual": parity.labels * task.scale + task.mean}
        else:
            classes = np.asarray(task.classes)
            best, confidence = top_class(outputs)
            columns = {"predicted": classes[best], "confidence": confidence, "actual": classes[parity.labels]}
        publisher.append(prediction_rows(pa.table({"row": rows, **columns}), backend))
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
    scatter.set(title="outputs", xlabel="PyTorch", ylabel="backend")
    hist.set(title="absolute error (exact matches at -12)", xlabel="log10 |backend - PyTorch|", ylabel="logits")
    for ax in (scatter, hist):
        if parity.outputs:
            ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig
