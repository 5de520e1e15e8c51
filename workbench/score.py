"""Batch scoring: a dataset through a trained model, in streaming batches with bounded memory.

Scoring is its own workflow (``workbench run --steps score``): it reads the model of an earlier
run and never trains. Rows stream from the source, through the chosen backend, into a Parquet
file written batch by batch, so memory depends on the batch size, not on the dataset.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.errors import DataError, TrackingError
from workbench.progress import progress as progress_bar
from workbench.sources import Source, count_rows, describe, iter_source
from workbench.validate import Predict, load_mxnet, load_onnxruntime, top_class

if TYPE_CHECKING:
    import pyarrow as pa
    from matplotlib.figure import Figure

    from workbench.context import StepContext

SOURCE_KEY = "score.source"


def load_torch(ctx: StepContext, model_run: str) -> Predict:
    import torch

    from workbench.models import load_model

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
        bad = [
            c
            for c in self.features
            if not (pa.types.is_integer(schema.field(c).type) or pa.types.is_floating(schema.field(c).type))
        ]
        if bad:
            raise DataError(f"{SOURCE_KEY} {source}: non-numeric input columns {bad[:5]}; the model takes numbers")

    def matrix(self, table: pa.Table) -> np.ndarray:
        """Normalised float32 model input, built column by column straight from Arrow."""
        x = np.empty((table.num_rows, len(self.features)), dtype=np.float32)
        for i, name in enumerate(self.features):
            x[:, i] = table.column(name).to_numpy()
        x -= self.mean
        x *= self.scale
        return x


def model_inputs(ctx: StepContext, model_run: str) -> ModelInputs:
    norm = ctx.load_json("normalization.json", "prepare", model_run)
    schema = ctx.load_json("schema.json", "prepare", model_run)
    mean = np.asarray(norm["mean"], dtype=np.float32)
    scale = (1.0 / np.asarray(norm["std"])).astype(np.float32)
    return ModelInputs(norm["features"], mean, scale, np.asarray(schema["classes"]), schema["target"])


def score_stream(tables: Iterable[pa.Table], inputs: ModelInputs, predict: Predict, source: str) -> Iterator[pa.Table]:
    """Predictions per table: row number, predicted class, confidence, and the label when present."""
    import pyarrow as pa

    offset = 0
    for table in tables:
        if offset == 0:
            inputs.check(table.schema, source)
        best, confidence = top_class(predict(inputs.matrix(table)))
        columns = {
            "row": pa.array(np.arange(offset, offset + table.num_rows)),
            "predicted": pa.array(inputs.classes[best]),
            "confidence": pa.array(confidence),
        }
        if inputs.target in table.schema.names:
            columns["actual"] = table.column(inputs.target)
        offset += table.num_rows
        yield pa.table(columns)


def resolve_model_run(ctx: StepContext, model_run: str) -> str:
    """``latest`` means the newest run that exported a model."""
    if model_run != "latest":
        if not ctx.store.exists(ctx.key("model.onnx", "export", model_run)):
            raise TrackingError(
                f"score.model_run {model_run!r} has no exported model in {ctx.store.root}; `workbench runs` lists the runs"
            )
        return model_run
    found = ctx.tracker.latest_with_artifact("export/model.onnx")
    if found is None:
        raise TrackingError("score.model_run 'latest': no run has exported a model yet; run `workbench run` first")
    return found


@dataclass
class ScoreResult:
    summary: pd.DataFrame
    preview: pd.DataFrame
    class_counts: pd.DataFrame
    metrics: dict[str, float]


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
    """Score ``source`` with the model of ``model_run``; write ``predictions.parquet``, maybe publish."""
    import pyarrow.parquet as pq

    if batch_size < 1:
        raise DataError(f"score.batch_size must be at least 1, got {batch_size}")
    shown = describe(source)
    model_run = resolve_model_run(ctx, model_run)
    inputs = model_inputs(ctx, model_run)
    predict = predictor(ctx, backend, model_run)
    publisher = None
    if publish_url:
        from workbench.publish import Publisher, prediction_rows, publish_metrics

        publisher = Publisher(publish_url, publish_table, ctx.run_id, ctx.step)
    counts = np.zeros(len(inputs.classes), dtype=np.int64)
    rows, correct, labelled, preview = 0, 0, 0, None
    started = time.perf_counter()
    bar = progress_bar(total=count_rows(source, SOURCE_KEY), unit="row", desc="scoring", enabled=progress)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.parquet"
        writer = None
        try:
            for out in score_stream(iter_source(source, batch_size, SOURCE_KEY), inputs, predict, shown):
                writer = writer or pq.ParquetWriter(path, out.schema)
                writer.write_table(out)
                if publisher:
                    publisher.append(prediction_rows(out, backend))
                preview = out.slice(0, 10).to_pandas() if preview is None else preview
                predicted = out.column("predicted").to_numpy()
                # classes are sorted, so searchsorted gives each prediction's class index
                counts += np.bincount(np.searchsorted(inputs.classes, predicted), minlength=len(counts))
                if "actual" in out.schema.names:
                    correct += int((predicted == out.column("actual").to_numpy()).sum())
                    labelled += out.num_rows
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
    metrics = {"rows_scored": float(rows), "score_seconds": seconds, "rows_per_second": rows / seconds}
    if labelled:
        metrics["score_accuracy"] = correct / labelled
    ctx.log_metrics(metrics)
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
                f"{rows / seconds:,.0f}",
                f"{metrics.get('score_accuracy', float('nan')):.4f}",
            ]
        },
        index=["model run", "backend", "source", "rows", "rows per second", "accuracy (where labelled)"],
    )
    class_counts = pd.DataFrame({"predicted": inputs.classes, "rows": counts})
    result = ScoreResult(summary, preview, class_counts, metrics)
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
