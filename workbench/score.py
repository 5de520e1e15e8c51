"""Batch scoring: a dataset through a trained model, in streaming batches with bounded memory.

Scoring is its own workflow (``workbench run --steps score``): it reads the model of an earlier
run and never trains. Rows stream from the source, through the chosen backend, into a Parquet
file written batch by batch, so memory depends on the batch size, not on the dataset.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from workbench.data import count_rows, iter_source
from workbench.errors import DataError, TrackingError
from workbench.validate import Predict, load_mxnet, load_onnxruntime

if TYPE_CHECKING:
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
    std: np.ndarray
    classes: list
    target: str

    def matrix(self, chunk: pd.DataFrame, source: str) -> np.ndarray:
        missing = [c for c in self.features if c not in chunk.columns]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(
                f"{SOURCE_KEY} {source}: lacks the model's input columns {shown} ({len(missing)} missing); score data shaped like the training data"
            )
        frame = chunk[self.features]
        bad = [c for c in self.features if not pd.api.types.is_numeric_dtype(frame[c])]
        if bad:
            raise DataError(f"{SOURCE_KEY} {source}: non-numeric input columns {bad[:5]}; the model takes numbers")
        return ((frame.to_numpy(dtype=np.float64) - self.mean) / self.std).astype(np.float32)


def model_inputs(ctx: StepContext, model_run: str) -> ModelInputs:
    norm = ctx.load_json("normalization.json", "prepare", model_run)
    schema = ctx.load_json("schema.json", "prepare", model_run)
    return ModelInputs(
        norm["features"], np.asarray(norm["mean"]), np.asarray(norm["std"]), schema["classes"], schema["target"]
    )


def score_stream(
    chunks: Iterable[pd.DataFrame], inputs: ModelInputs, predict: Predict, source: str
) -> Iterator[pd.DataFrame]:
    """Predictions per chunk: row number, predicted class, confidence, and the label when present."""
    classes = np.asarray(inputs.classes)
    offset = 0
    for chunk in chunks:
        logits = predict(inputs.matrix(chunk, source))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        best = logits.argmax(axis=1)
        out = pd.DataFrame(
            {
                "row": np.arange(offset, offset + len(chunk)),
                "predicted": classes[best],
                "confidence": (shifted.max(axis=1) / shifted.sum(axis=1)).astype(np.float32),
            }
        )
        if inputs.target in chunk.columns:
            out["actual"] = chunk[inputs.target].to_numpy()
        offset += len(chunk)
        yield out


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
    source: str,
    backend: str,
    batch_size: int,
    model_run: str,
    publish_url: str = "",
    publish_table: str = "predictions",
    progress: bool = True,
) -> ScoreResult:
    """Score ``source`` with the model of ``model_run``; write ``predictions.parquet``, maybe publish."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if batch_size < 1:
        raise DataError(f"score.batch_size must be at least 1, got {batch_size}")
    model_run = resolve_model_run(ctx, model_run)
    inputs = model_inputs(ctx, model_run)
    predict = predictor(ctx, backend, model_run)
    publisher = None
    if publish_url:
        from workbench.publish import Publisher

        publisher = Publisher(publish_url, publish_table, ctx.run_id)
    counts: dict = {}
    rows, correct, labelled, preview = 0, 0, 0, None
    started = time.perf_counter()
    bar = tqdm(
        total=count_rows(source, SOURCE_KEY),
        unit="row",
        desc="scoring",
        file=sys.stderr,
        disable=not progress,
        mininterval=2,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.parquet"
        writer = None
        try:
            for out in score_stream(iter_source(source, batch_size, SOURCE_KEY), inputs, predict, source):
                table = pa.Table.from_pandas(out, preserve_index=False)
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
                if publisher:
                    publisher.append(out)
                preview = out.head(10) if preview is None else preview
                for label, n in out.predicted.value_counts().items():
                    counts[label] = counts.get(label, 0) + int(n)
                if "actual" in out:
                    correct += int((out.predicted == out.actual).sum())
                    labelled += len(out)
                rows += len(out)
                bar.update(len(out))
        finally:
            bar.close()
            if writer:
                writer.close()
        if not rows:
            raise DataError(f"{SOURCE_KEY} {source}: no rows to score")
        seconds = time.perf_counter() - started
        ctx.store_file("predictions.parquet", path)
    metrics = {"rows_scored": float(rows), "score_seconds": seconds, "rows_per_second": rows / seconds}
    if labelled:
        metrics["score_accuracy"] = correct / labelled
    ctx.log_metrics(metrics)
    ctx.save_json("model.json", {"model_run": model_run, "backend": backend, "source": source})
    summary = pd.DataFrame(
        {
            "value": [
                model_run,
                backend,
                source,
                f"{rows:,}",
                f"{rows / seconds:,.0f}",
                f"{metrics.get('score_accuracy', float('nan')):.4f}",
            ]
        },
        index=["model run", "backend", "source", "rows", "rows per second", "accuracy (where labelled)"],
    )
    class_counts = pd.DataFrame({"predicted": list(counts), "rows": list(counts.values())}).sort_values("predicted")
    result = ScoreResult(summary, preview, class_counts.reset_index(drop=True), metrics)
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
