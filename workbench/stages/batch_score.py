"""Batch scoring (notebook 05): a dataset through a trained model, in streaming batches with
bounded memory.

Scoring is its own workflow (``workbench run --steps score``): it reads the model of an earlier
run and never trains. Rows stream from the source, through the chosen backend, into a Parquet
file written batch by batch, so memory depends on the batch size, not on the dataset.
"""

from __future__ import annotations

import io
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
from workbench.ml.runtimes import Predict, load_mxnet, load_onnxruntime, top_class
from workbench.progress import progress as progress_bar
from workbench.storage.sources import Source, count_rows, describe, iter_source

if TYPE_CHECKING:
    import pyarrow as pa
    from matplotlib.figure import Figure

    from workbench.run.context import StepContext


SOURCE_KEY = "score.source"


SHOWN_ROWS = 5  # unscored rows named in the warning; the rest are counted


class DataWarning(UserWarning):
    """Some rows could not be scored; the step goes on with the others and says which."""


def load_torch(ctx: StepContext, model_run: str) -> Predict:
    import torch

    from workbench.ml.models import load_model

    config = ctx.load_json("model_config.json", "train", model_run)
    state = torch.load(io.BytesIO(ctx.load("model.pth", "train", model_run)), map_location="cpu", weights_only=True)
    model = load_model(config, state)

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return predict


def predictor(ctx: StepContext, backend: str, model_run: str) -> Predict:
    if backend == "torch":
        return load_torch(ctx, model_run)
    blob = ctx.load("model.onnx", "export", model_run)
    return load_onnxruntime(blob) if backend == "onnxruntime" else load_mxnet(blob)


def _int_as_nullable(dtype: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
    """Integer columns as pandas' nullable Int64, so a null prediction shows as <NA>, not a float."""
    import pyarrow as pa

    return pd.Int64Dtype() if pa.types.is_signed_integer(dtype) else None


@dataclass(frozen=True)
class ModelInputs:
    """What the model expects: feature columns, their normalisation, class names, label column."""

    features: list[str]
    mean: np.ndarray
    scale: np.ndarray  # 1 / std, so normalising is a multiply
    classes: np.ndarray
    target: str

    def check(self, schema: pa.Schema, source: str) -> None:
        import pyarrow as pa

        missing = [c for c in self.features if c not in schema.names]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(
                f"{SOURCE_KEY} {source}: lacks the model's input columns {shown} ({len(missing)} missing); "
                "score data shaped like the training data"
            )
        # a CSV column empty throughout its first block arrives as type null: missing values, not text
        numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_null)
        bad = [c for c in self.features if not any(is_type(schema.field(c).type) for is_type in numeric)]
        if bad:
            raise DataError(f"{SOURCE_KEY} {source}: non-numeric input columns {bad[:5]}; the model takes numbers")

    def matrix(self, table: pa.Table) -> np.ndarray:
        """Normalised float32 model input, built column by column straight from Arrow; nulls are NaN."""
        import pyarrow as pa

        x = np.empty((table.num_rows, len(self.features)), dtype=np.float32)
        for i, name in enumerate(self.features):
            column = table.column(name)
            x[:, i] = np.nan if pa.types.is_null(column.type) else column.to_numpy()
        x -= self.mean
        x *= self.scale
        return x


def model_inputs(ctx: StepContext, model_run: str) -> ModelInputs:
    norm = ctx.load_json("normalization.json", "prepare", model_run)
    schema = ctx.load_json("schema.json", "prepare", model_run)
    mean = np.asarray(norm["mean"], dtype=np.float32)
    scale = (1.0 / np.asarray(norm["std"])).astype(np.float32)
    return ModelInputs(norm["features"], mean, scale, np.asarray(schema["classes"]), schema["target"])


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
            f"predicted and confidence are null for them in predictions.parquet; {shown}{more}"
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
        if not ctx.store.exists(ctx.key("model.onnx", "export", model_run)):
            raise TrackingError(
                f"score.model_run {model_run!r} has no exported model in {ctx.store.root}; `workbench runs` lists the runs"
            )
        return model_run
    found = ctx.tracker.latest_with_artifacts("export/model.onnx", "prepare/normalization.json")
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
    ctx: StepContext,
    source: Source,
    backend: str,
    batch_size: int,
    model_run: str,
    publish_url: str = "",
    publish_table: str = "predictions",
    progress: bool = True,
) -> ScoreResult:
    """Score ``source`` with the model of ``model_run``; write ``predictions.parquet``, maybe publish.

    ``rows_scored`` counts the rows that got a prediction, ``rows_unscored`` those that could not
    (null in ``predictions.parquet``, named in a DataWarning); ``score_accuracy`` is logged only
    where some scored row has a label.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if batch_size < 1:
        raise DataError(f"score.batch_size must be at least 1, got {batch_size}")
    shown = describe(source)
    model_run = resolve_model_run(ctx, model_run)
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
        path = Path(tmp) / "predictions.parquet"
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
        ctx.store_file("predictions.parquet", path)
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
    ctx.save_json("model.json", {"model_run": model_run, "backend": backend, "source": shown})
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
    ctx.save_figure("classes.png", plot_predictions(result))
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
