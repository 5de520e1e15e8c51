"""Batch scoring (notebook 05): a dataset through a trained model, in streaming batches with
bounded memory.

Scoring is its own workflow (``workbench run --steps score``): it reads the model of an earlier
run and never trains. Rows stream from the source, through the chosen backend, into a Parquet
file written batch by batch, so memory depends on the batch size, not on the dataset.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.errors import DataError, TrackingError
from workbench.ml.features import Normalization, column_matrix, is_numeric
from workbench.ml.runtimes import ModelFiles, Predict, load_backend, top_class
from workbench.progress import progress as progress_bar
from workbench.storage.catalog import (
    CLASSES_PLOT,
    MODEL_CONFIG,
    MODEL_STATE,
    NORMALIZATION,
    ONNX_MODEL,
    PREDICTIONS,
    SCHEMA,
    SCORE_INFO,
)
from workbench.storage.sources import count_rows, describe, iter_source

if TYPE_CHECKING:
    import pyarrow as pa
    from matplotlib.figure import Figure

    from workbench.config.schema import PublishParams, ScoreParams
    from workbench.run.context import StepContext


SOURCE_KEY = "score.source"


SHOWN_ROWS = 5  # unscored rows named in the warning; the rest are counted


class DataWarning(UserWarning):
    """Some rows could not be scored; the step goes on with the others and says which."""


def predictor(ctx: StepContext, backend: str, model_run: str) -> Predict:
    """``backend`` from the runtimes' registry, loading the files of ``model_run`` it needs."""
    files = ModelFiles(
        onnx=lambda: ctx.load(ONNX_MODEL, run=model_run),
        torch=lambda: (ctx.load_artifact(MODEL_CONFIG, run=model_run), ctx.load(MODEL_STATE, run=model_run)),
    )
    return load_backend(backend, files)


def _int_as_nullable(dtype: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
    """Integer columns as pandas' nullable Int64, so a null prediction shows as <NA>, not a float."""
    import pyarrow as pa

    return pd.Int64Dtype() if pa.types.is_signed_integer(dtype) else None


@dataclass(frozen=True)
class ModelInputs:
    """What the model expects: feature columns, their normalisation, class names, label column."""

    normalization: Normalization
    classes: np.ndarray
    target: str

    @property
    def features(self) -> list[str]:
        return self.normalization.features

    def check(self, schema: pa.Schema, source: str) -> None:
        import pyarrow as pa

        missing = [c for c in self.features if c not in schema.names]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(
                f"{SOURCE_KEY} {source}: lacks the model's input columns {shown} ({len(missing)} missing); "
                "score data shaped like the training data"
            )
        # the numbers training takes; a CSV column empty throughout its first block arrives as type
        # null: missing values (flagged per row), not text
        bad = [c for c in self.features if not (is_numeric(t := schema.field(c).type) or pa.types.is_null(t))]
        if bad:
            raise DataError(f"{SOURCE_KEY} {source}: non-numeric input columns {bad[:5]}; the model takes numbers")

    def matrix(self, table: pa.Table) -> np.ndarray:
        """Normalised float32 model input, built column by column straight from Arrow; nulls are NaN."""
        return self.normalization.apply(column_matrix(table, self.features))


def model_inputs(ctx: StepContext, model_run: str) -> ModelInputs:
    norm = ctx.load_artifact(NORMALIZATION, run=model_run)
    schema = ctx.load_artifact(SCHEMA, run=model_run)
    return ModelInputs(Normalization.from_json(norm), np.asarray(schema["classes"]), schema["target"])


@dataclass
class Unscored:
    """Rows left without a prediction: how many, and the first few with the columns to blame."""

    count: int = 0
    examples: list[tuple[int, list[str]]] = field(default_factory=list)

    def add(self, rows: np.ndarray, bad_cells: np.ndarray, features: list[str]) -> None:
        """``rows``: the unscored rows' numbers; ``bad_cells``: their non-finite inputs, one row each."""
        self.count += len(rows)
        for row, cells in zip(rows[: SHOWN_ROWS - len(self.examples)], bad_cells, strict=False):
            self.examples.append((int(row), [features[i] for i in np.flatnonzero(cells)]))

    def warning(self, total: int) -> str | None:
        """One line naming the count and the first rows, or None when every row was scored."""
        if not self.count:
            return None

        def culprit(columns: list[str]) -> str:
            if not columns:
                return "model output not finite"
            return ", ".join(columns[:3]) + (f" and {len(columns) - 3} more" if len(columns) > 3 else "")

        shown = "; ".join(f"row {row} ({culprit(columns)})" for row, columns in self.examples)
        more = " ..." if self.count > len(self.examples) else ""
        return (
            f"{self.count:,} of {total:,} rows not scored (missing or infinite features): "
            f"predicted and confidence are null for them in {PREDICTIONS.file}; {shown}{more}"
        )


def score_stream(
    tables: Iterable[pa.Table], inputs: ModelInputs, predict: Predict, source: str, unscored: Unscored | None = None
) -> Iterator[pa.Table]:
    """Predictions per table: row number, predicted class, confidence, and the label when present.

    A row with a missing (null, NaN) or infinite feature, or whose logits are not finite, gets
    null ``predicted`` and ``confidence`` and is recorded in ``unscored``: the model would give it
    some class (argmax of NaNs is 0) with no sign that it was garbage.
    """
    import pyarrow as pa

    offset = 0
    for table in tables:
        if offset == 0:
            inputs.check(table.schema, source)
        x = inputs.matrix(table)
        bad_cells = ~np.isfinite(x)
        bad = bad_cells.any(axis=1)
        if bad.any():
            x[bad] = 0.0  # the batch keeps its shape (no rebinding in MXNet); these rows' results are dropped
        logits = predict(x)
        bad |= ~np.isfinite(logits).all(axis=1)
        mask = None
        if bad.any():
            logits = np.where(bad[:, None], 0.0, logits)
            mask = bad
            if unscored is not None:
                unscored.add(np.flatnonzero(bad) + offset, bad_cells[bad], inputs.features)
        best, confidence = top_class(logits)
        columns = {
            "row": pa.array(np.arange(offset, offset + table.num_rows)),
            "predicted": pa.array(inputs.classes[best], mask=mask),
            "confidence": pa.array(confidence, mask=mask),
        }
        if inputs.target in table.schema.names:
            columns["actual"] = table.column(inputs.target)
        offset += table.num_rows
        yield pa.table(columns)


def resolve_model_run(ctx: StepContext, model_run: str) -> str:
    """``latest`` means the newest run that exported a model and still has its prepared inputs."""
    if model_run != "latest":
        if not ctx.has_artifact(ONNX_MODEL, run=model_run):
            raise TrackingError(
                f"score.model_run {model_run!r} has no exported model in {ctx.store.root}; `workbench runs` lists the runs"
            )
        return model_run
    found = ctx.tracker.latest_with_artifacts(ONNX_MODEL.path, NORMALIZATION.path)
    if found is None:
        raise TrackingError("score.model_run 'latest': no run has exported a model yet; run `workbench run` first")
    return found


@dataclass
class ScoreResult:
    summary: pd.DataFrame
    preview: pd.DataFrame
    class_counts: pd.DataFrame
    metrics: dict[str, float]
    warnings: list[str] = field(default_factory=list)  # also raised as DataWarning, so a notebook shows them

    @property
    def accuracy(self) -> float | None:
        """Accuracy over the scored rows that carry a label; None when none does (unlabelled data)."""
        return self.metrics.get("score_accuracy")


def score_batch(
    ctx: StepContext, params: ScoreParams, publish: PublishParams | None = None, *, progress: bool = True
) -> ScoreResult:
    """Score ``params.source`` with the model of ``params.model_run``; write ``predictions.parquet``;
    with ``publish.url``, publish the predictions and metrics too.

    ``rows_scored`` counts the rows that got a prediction, ``rows_unscored`` those that could not
    (null in ``predictions.parquet``, named in a DataWarning); ``score_accuracy`` is logged only
    where some scored row has a label.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    source, backend, batch_size = params.source, params.backend, params.batch_size
    publish_url, publish_table = (publish.url, publish.table) if publish else ("", "")
    shown = describe(source)
    model_run = resolve_model_run(ctx, params.model_run)
    inputs = model_inputs(ctx, model_run)
    predict = predictor(ctx, backend, model_run)
    publisher = None
    if publish_url:
        from workbench.storage.publish import Publisher, prediction_rows, publish_metrics

        publisher = Publisher(publish_url, publish_table, ctx.run_id, ctx.step)
    counts = np.zeros(len(inputs.classes), dtype=np.int64)
    rows, correct, labelled, preview = 0, 0, 0, None
    unscored = Unscored()
    started = time.perf_counter()
    bar = progress_bar(total=count_rows(source, SOURCE_KEY), unit="row", desc="scoring", enabled=progress)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / PREDICTIONS.file
        writer = None
        try:
            for out in score_stream(iter_source(source, batch_size, SOURCE_KEY), inputs, predict, shown, unscored):
                writer = writer or pq.ParquetWriter(path, out.schema)
                writer.write_table(out)
                if publisher:
                    publisher.append(prediction_rows(out, backend))
                preview = out.slice(0, 10).to_pandas(types_mapper=_int_as_nullable) if preview is None else preview
                # only rows with a prediction count, and for accuracy only those with a label too
                scored = out.filter(pc.is_valid(out.column("predicted"))) if out.column("predicted").null_count else out
                predicted = scored.column("predicted").to_numpy()
                # classes are sorted, so searchsorted gives each prediction's class index
                counts += np.bincount(np.searchsorted(inputs.classes, predicted), minlength=len(counts))
                if "actual" in out.schema.names:
                    actual = scored.column("actual")
                    if actual.null_count:
                        keep = pc.is_valid(actual)
                        predicted = scored.column("predicted").filter(keep).to_numpy()
                        actual = actual.filter(keep)
                    correct += int((predicted == actual.to_numpy()).sum())
                    labelled += len(actual)
                rows += out.num_rows
                bar.update(out.num_rows)
        finally:
            bar.close()
            if writer:
                writer.close()
        if not rows:
            raise DataError(f"{SOURCE_KEY} {shown}: no rows to score")
        seconds = time.perf_counter() - started
        ctx.save_artifact(PREDICTIONS, path)
    metrics = {
        "rows_scored": float(rows - unscored.count),
        "rows_unscored": float(unscored.count),
        "score_seconds": seconds,
        "rows_per_second": rows / seconds,
    }
    if labelled:
        metrics["score_accuracy"] = correct / labelled
    ctx.log_metrics(metrics)
    warning = unscored.warning(rows)
    if warning:  # shown under the notebook cell (and by any script calling this), not only in the summary
        warnings.warn(warning, DataWarning, stacklevel=2)
    if publish_url:
        publish_metrics(publish_url, publish_table, ctx.run_id, ctx.step, metrics)
    ctx.save_artifact(SCORE_INFO, {"model_run": model_run, "backend": backend, "source": shown})
    summary = pd.DataFrame(
        {
            "value": [
                model_run,
                backend,
                shown,
                f"{rows:,}",
                f"{unscored.count:,}" + (" (missing or infinite features: see the warning)" if unscored.count else ""),
                f"{rows / seconds:,.0f}",
                f"{correct / labelled:.4f}" if labelled else "n/a (unlabelled)",
            ]
        },
        index=[
            "model run",
            "backend",
            "source",
            "rows",
            "rows not scored",
            "rows per second",
            "accuracy (where labelled)",
        ],
    )
    class_counts = pd.DataFrame({"predicted": inputs.classes, "rows": counts})
    result = ScoreResult(summary, preview, class_counts, metrics, [warning] if warning else [])
    ctx.save_artifact(CLASSES_PLOT, plot_predictions(result))
    return result


def plot_predictions(result: ScoreResult) -> Figure:
    """How many rows each class received."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(result.class_counts.predicted.astype(str), result.class_counts.rows)
    ax.set(title="predicted classes", xlabel="class", ylabel="rows")
    fig.tight_layout()
    plt.close(fig)
    return fig
