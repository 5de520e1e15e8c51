"""The validation stage (notebook 04): do onnxruntime and MXNet give PyTorch's answers on the
exported model, and how good is that model on the test split it never saw?

Parity reads only ``model.onnx``, ``export.json`` and ``reference.npz`` from the export step
(PyTorch's logits were computed there, in eval mode under no_grad), so it never imports torch and
runs on a machine that has the inference runtimes alone. A backend that cannot load the model is a
FAIL with its reason, not a crash.

The test score (:func:`evaluate_test`) runs the prepare step's test split through ``model.onnx`` in
onnxruntime, the model that ships, and scores gradient boosting and chance, fitted on the same
encoded training rows, on the same test rows: the validation split chose the epoch, so only the
test split says how the model does on rows nothing was tuned on.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.ml.baselines import fit_classes, fit_numbers
from workbench.ml.encoding import Encoding, Target
from workbench.ml.evaluation import (
    BASELINE_NAMES,
    PREFIXES,
    Comparison,
    Evaluation,
    comparison,
    evaluate_classes,
    evaluate_numbers,
    softmax,
)
from workbench.ml.parity import REFERENCE, Parity, backends_for, three_way
from workbench.ml.runtimes import ModelFiles, load_backend, top_class
from workbench.ml.training.figures import plot_fit
from workbench.storage.catalog import (
    CONFUSION,
    ENCODING,
    EXPORT_INFO,
    ONNX_MODEL,
    PARITY,
    PARITY_PLOT,
    PER_CLASS,
    REFERENCE_OUTPUTS,
    SCHEMA,
    TEST_PLOT,
    TEST_SCORE,
    TEST_SPLIT,
    TRAIN_SPLIT,
    Artifact,
)

if TYPE_CHECKING:
    import pyarrow as pa
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


# --- the test score -------------------------------------------------------------------------------

BATCH_ROWS = 65_536  # test rows per onnxruntime call
BASELINE_ROWS = 1_000_000  # training rows the baselines fit on at most (a seeded sample beyond)
SHOWN = {"model": "model (onnxruntime)", "baseline": BASELINE_NAMES["baseline"], "chance": BASELINE_NAMES["chance"]}


@dataclass
class HeldOutScore:
    """The exported model, gradient boosting and chance on the same test rows; or why there are none."""

    rows: int
    evaluations: dict[str, Evaluation] = field(default_factory=dict)  # model, baseline, chance
    figure: Figure | None = field(default=None, repr=False)
    reason: str = ""  # why nothing was scored

    @property
    def metrics(self) -> dict[str, float]:
        """Every recorded metric: ``test_*``, ``baseline_test_*`` and ``chance_test_*``."""
        return {k: v for who, e in self.evaluations.items() for k, v in e.prefixed(PREFIXES[who]).items()}

    @property
    def comparison(self) -> Comparison | None:
        return comparison(self.metrics | {"classes": self.classes}) if self.evaluations else None

    @property
    def classes(self) -> int:
        table = self.per_class
        return 0 if table is None else len(table)

    @property
    def table(self) -> pd.DataFrame:
        """One row per metric, one column each for the model, gradient boosting and chance."""
        columns = {SHOWN[who]: pd.Series(e.metrics, dtype="float64") for who, e in self.evaluations.items()}
        return pd.DataFrame(columns).rename_axis("test metric").round(4)

    @property
    def per_class(self) -> pd.DataFrame | None:
        model = self.evaluations.get("model")
        return None if model is None else model.per_class

    @property
    def confusion(self) -> pd.DataFrame | None:
        model = self.evaluations.get("model")
        return None if model is None else model.confusion

    @property
    def notes(self) -> list[str]:
        return [self.reason] if self.reason else list(self.evaluations["model"].notes)

    @property
    def loses(self) -> bool:
        found = self.comparison
        return bool(found and found.loses)

    def summary(self) -> dict:
        """What ``test.json`` holds."""
        found = self.comparison
        return {
            "rows": self.rows,
            "reason": self.reason,
            "comparison": found.line if found else None,
            "loses_to_baseline": self.loses,
            "notes": self.notes,
            "metrics": {who: e.metrics for who, e in self.evaluations.items()},
        }

    def _repr_html_(self) -> str:
        found = self.comparison
        head = found._repr_html_() if found else f"<p><b>No test score:</b> {html.escape(self.reason)}</p>"
        notes = "".join(f"<li>{html.escape(note)}</li>" for note in self.notes if note != self.reason)
        return head + (f"<ul>{notes}</ul>" if notes else "")

    def __repr__(self) -> str:
        found = self.comparison
        lines = [repr(found) if found else f"No test score: {self.reason}"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes if n != self.reason])


def _table(ctx: StepContext, item: Artifact, limit: int | None = None, seed: int = 0) -> pa.Table:
    """A prepared split as Arrow; beyond ``limit`` rows, a seeded sample of ``limit`` of them."""
    from workbench.storage.parts import read_table

    table = read_table(ctx.store, ctx.key(item))  # one file, or the parts engine dask wrote
    if limit is not None and table.num_rows > limit:
        picked = np.sort(np.random.default_rng(seed).choice(table.num_rows, limit, replace=False))
        table = table.take(picked)
    return table


def _outputs(blob: bytes, x: np.ndarray) -> np.ndarray:
    predict = load_backend("onnxruntime", ModelFiles.of_onnx(blob))
    return np.concatenate([np.asarray(predict(x[i : i + BATCH_ROWS])) for i in range(0, len(x), BATCH_ROWS)])


def _numbers(table: pa.Table, target: Target) -> np.ndarray:
    """The target column in its own units, as float64 (prepare dropped the rows without one)."""
    return pd.to_numeric(table.column(target.name).to_pandas(), errors="coerce").to_numpy(np.float64)


def evaluate_test(ctx: StepContext) -> HeldOutScore:
    """Score the test split with the exported ONNX model in onnxruntime, and the two baselines; record
    the ``test_*``, ``baseline_test_*`` and ``chance_test_*`` metrics, ``loses_to_baseline``,
    ``test.json``, the figure and (classes) the per-class table and confusion matrix.

    Baselines fit on the training split as the model saw it (the same encoding) with the run's seed;
    beyond :data:`BASELINE_ROWS` training rows, on a seeded sample. A run whose prepare step held out
    no test rows (``data.test_fraction`` 0) is said to have no test score; nothing fails.
    """
    encoding = Encoding.from_json(ctx.load_artifact(ENCODING))
    target = encoding.target
    assert target is not None, "prepare writes the target into the encoding"
    test = _table(ctx, TEST_SPLIT)
    if not test.num_rows:
        score = HeldOutScore(
            0,
            reason="the prepare step held out no test rows (data.test_fraction is 0), so the model has no test "
            "score; set data.test_fraction above 0 for one",
        )
        ctx.save_artifact(TEST_SCORE, score.summary())
        return score
    seed = int(ctx.load_artifact(SCHEMA).get("seed", 0))
    x_test = encoding.apply(test)
    outputs = _outputs(ctx.load(ONNX_MODEL), x_test)
    train = _table(ctx, TRAIN_SPLIT, BASELINE_ROWS, seed)
    x_train = encoding.apply(train)
    if target.regression:
        actual = _numbers(test, target)
        fitted = fit_numbers(x_train, _numbers(train, target), seed)
        evaluations = {
            "model": evaluate_numbers(actual, target.predicted(outputs)),
            "baseline": evaluate_numbers(actual, fitted.boosting(x_test)),
            "chance": evaluate_numbers(actual, fitted.chance(x_test)),
        }
        labels = target.model_target(test.column(target.name).to_pandas())
    else:
        classes = list(target.classes or [])
        labels = target.encode(test.column(target.name).to_pandas())
        fitted = fit_classes(x_train, target.encode(train.column(target.name).to_pandas()), len(classes), seed)
        evaluations = {
            "model": evaluate_classes(labels, softmax(outputs), classes),
            "baseline": evaluate_classes(labels, fitted.boosting(x_test), classes),
            "chance": evaluate_classes(labels, fitted.chance(x_test), classes),
        }
    score = HeldOutScore(test.num_rows, evaluations, plot_fit(outputs, labels, target, split="test"))
    ctx.log_metrics(score.metrics | {"loses_to_baseline": float(score.loses)})
    ctx.save_artifact(TEST_SCORE, score.summary())
    if score.per_class is not None and score.confusion is not None:
        ctx.save_artifact(PER_CLASS, score.per_class.reset_index())
        ctx.save_artifact(CONFUSION, score.confusion.reset_index())
    ctx.save_artifact(TEST_PLOT, score.figure)
    return score
