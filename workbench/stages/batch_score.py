"""Batch scoring (notebook 05): a dataset through a trained model, in streaming batches with
bounded memory.

Scoring is its own workflow (``workbench run --steps score``): it reads the model of an earlier
run and never trains. Rows stream from the source, through the chosen backend, into a Parquet
file written batch by batch, so memory depends on the batch size, not on the dataset.
"""

from __future__ import annotations

import functools
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from workbench.config.secrets import mask
from workbench.errors import DataError, TrackingError
from workbench.ml.encoding import Encoding, Target
from workbench.ml.runtimes import (
    ModelFiles,
    Predict,
    check_exported_weights,
    load_backend,
    session_predict,
    top_class,
)
from workbench.progress import progress as progress_bar
from workbench.storage import scratch
from workbench.storage.base import verified
from workbench.storage.catalog import (
    CLASSES_PLOT,
    ENCODING,
    EXPORT_INFO,
    MODEL_CONFIG,
    MODEL_STATE,
    ONNX_MODEL,
    PREDICTIONS,
    SCHEMA,
    SCORE_INFO,
    SPLIT_ARTIFACTS,
    part_key,
    parts_prefix,
)
from workbench.storage.datasets import first_lacking, is_dataset, open_dataset
from workbench.storage.parts import part_keys
from workbench.storage.sources import Source, count_rows, describe, iter_source
from workbench.tracking.aliases import is_alias, resolve

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from matplotlib.figure import Figure

    from workbench.config.schema import DaskParams, PublishParams, ScoreParams
    from workbench.engine.partitions import Partition
    from workbench.run.context import StepContext
    from workbench.storage.base import ArtifactInfo
    from workbench.storage.catalog import Artifact
    from workbench.storage.datasets import Fragment


SOURCE_KEY = "score.source"
# score.source naming a split of the model run: split:test (the default), split:val, split:train
SPLIT_SOURCE = "split:"

# What a score on each split of the model run means, said beside the accuracy it gives.
MEASURED_ON = {
    "test": "the model run's test split: rows kept from training and tuning, so a quality measure",
    "val": "the model run's validation split: it chose the epoch, so the score is optimistic",
    "train": "the model run's training rows: not a quality measure",
}


SHOWN_ROWS = 5  # unscored rows named in the warning; the rest are counted
PREVIEW_ROWS = 10
# Rows read, encoded, written and counted at a time, in whole batches: beside a small model, the
# calls per batch (Arrow, numpy, pandas, a Parquet row group each) cost more than their work at a few
# thousand rows. Only the model runs batch by batch, as the batch size says.
BLOCK_ROWS = 65_536
BLOCK_BYTES = 64 << 20  # fewer rows where a block's working copies (see block_rows) would pass this


class DataWarning(UserWarning):
    """Some rows could not be scored; the step goes on with the others and says which."""


def predictor(ctx: StepContext, backend: str, model_run: str) -> Predict:
    """``backend`` from the runtimes' registry, loading the files of ``model_run`` it needs, each
    refused unless it is the file the run recorded (its sha256)."""

    def load(item: Artifact) -> bytes:
        key = ctx.key(item, run=model_run)
        return verified(ctx.load(item, run=model_run), ctx.tracker.recorded_sha256(key), ctx.store.uri(key))

    state = functools.cache(lambda: load(MODEL_STATE))  # read once, checked and loaded
    if ctx.has_artifact(EXPORT_INFO, run=model_run):
        check_exported_weights(ctx.load_artifact(EXPORT_INFO, run=model_run), state(), model_run)
    files = ModelFiles(
        onnx=lambda: load(ONNX_MODEL),
        torch=lambda: (ctx.load_artifact(MODEL_CONFIG, run=model_run), state()),
    )
    return load_backend(backend, files)


def _int_as_nullable(dtype: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
    """Integer columns as pandas' nullable Int64, so a null prediction shows as <NA>, not a float."""
    import pyarrow as pa

    return pd.Int64Dtype() if pa.types.is_signed_integer(dtype) else None


@dataclass(frozen=True)
class ModelInputs:
    """What the model expects and gives: the fitted encoding of raw rows, and the target's classes or scale."""

    encoding: Encoding
    target: Target

    @property
    def features(self) -> list[str]:
        return self.encoding.inputs

    @property
    def classes(self) -> np.ndarray:
        return np.asarray(self.target.classes if self.target.classes else [])

    def check(self, schema: pa.Schema, source: str) -> None:
        """The table has every input column the model was trained on (in any order; others are ignored)."""
        missing = [c for c in self.features if c not in schema.names]
        if missing:
            shown = ", ".join(repr(c) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(
                f"{SOURCE_KEY} {source}: lacks the model's input column{'s' if len(missing) > 1 else ''} {shown} "
                f"({len(missing)} missing); score a table with the columns the model was trained on"
            )

    def check_files(self, schema: pa.Schema, fragments: Iterable[Fragment], source: str) -> None:
        """The dataset's unified ``schema`` has every input column, and so does each of its files,
        unless training had gaps in that column. The unified schema reads a column a file lacks as
        null there: where training saw gaps (prepare read such files the same way) those rows are
        gaps as they were then; elsewhere they would all be scored on the training mean, so that
        file is refused. Asked before anything is scored or written."""
        self.check(schema, source)
        required = [spec["name"] for spec in self.encoding.columns if not spec.get("missing")]
        found = first_lacking(fragments, required)
        if found:
            fragment, missing = found
            shown = ", ".join(repr(c) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(
                f"{SOURCE_KEY} {fragment.uri}: lacks the model's input column{'s' if len(missing) > 1 else ''} "
                f"{shown}, which other files of {source} hold and training never saw empty; write the column into "
                "this file or leave the file out of score.source"
            )

    def matrix(self, table: pa.Table, source: str) -> np.ndarray:
        """Float32 model input by the fitted encoding (gaps imputed as in training); a value that
        cannot be converted is one line naming the column and the value."""
        try:
            return self.encoding.apply(table)
        except DataError as exc:
            raise DataError(f"{SOURCE_KEY} {source}: {exc}") from None


def model_inputs(ctx: StepContext, model_run: str) -> ModelInputs:
    encoding = Encoding.from_json(ctx.load_artifact(ENCODING, run=model_run))
    if encoding.target is None:
        raise DataError(f"run {model_run}'s encoding has no target; run its prepare step again")
    return ModelInputs(encoding, encoding.target)


@dataclass(frozen=True)
class ScoredSource:
    """The table to read, how messages show it, and what a score over its labelled rows measures."""

    source: Source
    shown: str
    measured_on: str
    split: str | None = None  # a split of the model run


def scored_source(ctx: StepContext, source: Source, model_run: str) -> ScoredSource:
    """``split:NAME`` is the model run's prepared split; any other source is read as it is, and its
    score is said to include training rows when it is the table the model run trained on."""
    if isinstance(source, str) and source.startswith(SPLIT_SOURCE):
        name = source.removeprefix(SPLIT_SOURCE)
        if name not in SPLIT_ARTIFACTS:
            raise DataError(
                f"{SOURCE_KEY} {source!r}: no split {name!r}; use {', '.join(SPLIT_SOURCE + s for s in MEASURED_ON)}"
            )
        key = ctx.key(SPLIT_ARTIFACTS[name], run=model_run)
        if part_keys(ctx.store, key) != [key]:  # prepared by engine dask: the folder of its parts
            key = parts_prefix(key)
        uri = ctx.store.uri(key)
        return ScoredSource(uri, f"{source} of run {model_run}", MEASURED_ON[name], name)
    shown = describe(source)
    trained_on = (
        ctx.load_artifact(SCHEMA, run=model_run).get("source") if ctx.has_artifact(SCHEMA, run=model_run) else None
    )
    if shown == trained_on:
        return ScoredSource(
            source,
            shown,
            "the model run's own data.source: its training rows are among these, so not a quality measure "
            f"(score.source {SPLIT_SOURCE}test scores the held-out rows)",
        )
    return ScoredSource(source, shown, f"the labelled rows of {shown}")


@dataclass
class Unscored:
    """Rows left without a prediction (the model's output was not finite): how many, and the first few."""

    count: int = 0
    examples: list[int] = field(default_factory=list)

    def add(self, rows: np.ndarray) -> None:
        self.count += len(rows)
        self.examples.extend(int(row) for row in rows[: SHOWN_ROWS - len(self.examples)])

    def merge(self, later: Unscored) -> Unscored:
        """Take in the count of later rows (the next partition); the first rows named stay the first."""
        self.count += later.count
        self.examples = (self.examples + later.examples)[:SHOWN_ROWS]
        return self

    def warning(self, total: int) -> str | None:
        """One line naming the count and the first rows, or None when every row was scored."""
        if not self.count:
            return None
        more = " ..." if self.count > len(self.examples) else ""
        return (
            f"{self.count:,} of {total:,} rows not scored (the model's output is not finite): predicted is null "
            f"for them in {PREDICTIONS.file}; rows {', '.join(map(str, self.examples))}{more}"
        )


def block_rows(batch_size: int, inputs: ModelInputs) -> int:
    """Rows per block: whole batches, at most BLOCK_ROWS (unless one batch is more) and at most
    BLOCK_BYTES of working copies (float32 model input and output, a float64 value per raw column
    while encoding), so memory follows the batch size and the table's width, never its length."""
    row_bytes = 4 * (len(inputs.encoding.features) + inputs.target.outputs) + 8 * len(inputs.features)
    fit = min(BLOCK_ROWS, BLOCK_BYTES // max(row_bytes, 1))
    return batch_size * max(1, fit // batch_size)


def predict_block(table: pa.Table, inputs: ModelInputs, predict: Predict, source: str, batch_size: int) -> np.ndarray:
    """The model's outputs for a block, run batch by batch on row slices of its encoding: each row
    encodes on its own, so the model sees the very batches it would see unblocked, to the bit."""
    x = inputs.matrix(table, source)
    parts = [predict(x[start : start + batch_size]) for start in range(0, max(len(x), 1), batch_size)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def score_stream(
    tables: Iterable[pa.Table],
    inputs: ModelInputs,
    predict: Predict,
    source: str,
    unscored: Unscored | None = None,
    batch_size: int | None = None,
    start: int = 0,
) -> Iterator[pa.Table]:
    """Predictions per table: row number, predicted class and confidence (or the predicted number),
    and the label when present. The model runs on ``batch_size`` rows at a time (default: the whole table).
    Rows are numbered from ``start`` (a partition's first row number in its table).

    Raw rows go through the fitted encoding, so a gap is imputed as in training. A row whose model
    output is not finite gets null ``predicted`` (and ``confidence``) and is recorded in ``unscored``:
    argmax of NaNs is 0, a class with no sign that it was garbage.
    """
    offset = start
    for table in tables:
        if offset == start:
            inputs.check(table.schema, source)
        outputs = predict_block(table, inputs, predict, source, batch_size or max(table.num_rows, 1))
        yield predictions(table, outputs, inputs, offset, unscored)
        offset += table.num_rows


def predictions(
    table: pa.Table, outputs: np.ndarray, inputs: ModelInputs, offset: int, unscored: Unscored | None
) -> pa.Table:
    """The predictions table of one block from the model's outputs (rows from ``offset`` on)."""
    import pyarrow as pa

    task = inputs.target
    mask = None
    if not np.isfinite(outputs).all():  # the check row by row costs ten times this one, so only when needed
        bad = ~np.isfinite(outputs).all(axis=1)
        outputs = np.where(bad[:, None], 0.0, outputs)
        mask = bad
        if unscored is not None:
            unscored.add(np.flatnonzero(bad) + offset)
    columns = {"row": pa.array(np.arange(offset, offset + table.num_rows))}
    if task.regression:
        columns["predicted"] = pa.array(task.predicted(outputs), mask=mask)
    else:
        best, confidence = top_class(outputs)
        columns["predicted"] = pa.array(inputs.classes[best], mask=mask)
        columns["confidence"] = pa.array(confidence, mask=mask)
    if task.name in table.schema.names:
        columns["actual"] = table.column(task.name)
    return pa.table(columns)


def predictions_writer(path: Path, schema: pa.Schema, regression: bool) -> pq.ParquetWriter:
    """A Parquet writer that dictionary-encodes the class columns alone: on row numbers and
    confidences (nearly all distinct) a dictionary grew in every row group until it gave way to plain
    pages, which took over half the writing time and made the file larger."""
    import pyarrow.parquet as pq

    classes = [] if regression else [name for name in ("predicted", "actual") if name in schema.names]
    return pq.ParquetWriter(path, schema, use_dictionary=classes or False)


def resolve_model_run(ctx: StepContext, model_run: str) -> str:
    """``latest`` means this run's own model when it exported one, else the newest run whose export
    finished and whose parity verdict passed (neither stale since), with its prepared inputs. A run
    named by id is scored whatever its verdict, with a warning under the cell when its model is not
    vouched for (failed, stale or never validated). ``@NAME`` is the run an alias names."""
    if is_alias(model_run):
        model_run = resolve(ctx.tracker, model_run, "score.model_run")
    if model_run != "latest":
        if not ctx.has_artifact(ONNX_MODEL, run=model_run):
            if not ctx.tracker.has_run(model_run):
                raise TrackingError(
                    f"score.model_run {model_run!r} is not a run in db {mask(ctx.tracker.url)!r}; "
                    "`workbench runs` lists the runs"
                )
            raise TrackingError(
                f"score.model_run {model_run!r} has no exported model in {ctx.store.root}; `workbench runs` lists the runs"
            )
        doubt = ctx.tracker.model_doubts([model_run])[model_run]
        if doubt:
            warnings.warn(
                f"score.model_run {model_run}: {doubt}; scored because it is named (latest skips such a model)",
                DataWarning,
                stacklevel=3,
            )
        return model_run
    found = ctx.tracker.latest_model(own=ctx.run_id)
    if found is None:
        raise TrackingError(
            "score.model_run 'latest': no run has an exported model that passed validation; run `workbench run` "
            "with every step, or name a run with score.model_run=RUN_ID (scored with a warning)"
        )
    if found == ctx.run_id:
        doubt = ctx.tracker.model_doubts([found])[found]
        if doubt:
            warnings.warn(
                f"score.model_run 'latest' is this run's own model: {doubt}; scored because it is this run's",
                DataWarning,
                stacklevel=3,
            )
    else:  # another run's model: say whose, so nobody takes the scores for this run's own
        print(another_model_line(ctx, found), flush=True)
    return found


LAUNCHERS = {"workbench": "`workbench run`", "notebook": "a notebook (JupyterLab or papermill)"}


def another_model_line(ctx: StepContext, model_run: str) -> str:
    """The line saying that ``latest`` scores another run's model: which run, when and how it was started."""
    run = ctx.tracker.get_run(model_run)
    named = f" ({run['name']})" if run.get("name") else ""
    started = (run["started_at"] or "?").replace("T", " ")[:16]
    launcher = LAUNCHERS.get(run["launcher"], run["launcher"] or "an unknown launcher")
    return (
        f"score.model_run 'latest' is run {model_run}{named}, started {started} UTC by {launcher}: run "
        f"{ctx.run_id} has no exported model of its own, so this scores the newest one that passed validation; "
        "set score.model_run to choose another"
    )


@dataclass
class ScoreResult:
    summary: pd.DataFrame
    preview: pd.DataFrame
    class_counts: pd.DataFrame  # rows per predicted class, or per bin of the predicted number
    metrics: dict[str, float]
    warnings: list[str] = field(default_factory=list)  # also raised as DataWarning, so a notebook shows them
    regression: bool = False
    measured_on: str = ""  # what the accuracy (or RMSE) over labelled rows measures

    @property
    def accuracy(self) -> float | None:
        """Accuracy over the scored rows that carry a label; None when none does (unlabelled data)."""
        return self.metrics.get("score_accuracy")

    @property
    def better_than_chance(self) -> bool | None:
        """Where rows carry a label: whether the model beats always answering the most frequent class
        (or the mean, for a number); None for unlabelled data."""
        if self.regression:
            return None if "score_r2" not in self.metrics else self.metrics["score_r2"] > 0
        if self.accuracy is None:
            return None
        return self.accuracy > self.metrics["score_chance_accuracy"]


class _Tally:
    """What scoring counts as batches pass: predictions per class (or number bin) and, where rows carry
    a label, hits, errors and the labels' spread."""

    def __init__(self, task: Target, batch_size: int) -> None:
        self.task = task
        self.batch_size = batch_size
        self.regression = task.regression
        low, high = task.mean - 4 * task.scale, task.mean + 4 * task.scale
        self.edges = np.linspace(low, high, 41) if self.regression else None
        width = 40 if self.regression else len(task.classes or [])
        self.counts = np.zeros(width, dtype=np.int64)
        self.actual_counts = np.zeros(max(width, 1), dtype=np.int64)
        self.labelled = 0
        self.hits = self.abs_err = self.sq_err = self.y_sum = self.y2_sum = 0.0

    def add(self, out: pa.Table) -> None:
        """Count a block of predictions. Class counts and hits are integers, the same however rows are
        grouped; a number's error sums (float32 labels among them) are taken batch by batch, so the
        metrics do not move with the block size."""
        if not self.regression:
            self._add(out)
            return
        for start in range(0, out.num_rows, self.batch_size):
            self._add(out.slice(start, self.batch_size))

    def _add(self, out: pa.Table) -> None:
        import pyarrow.compute as pc

        predicted = out.column("predicted")
        scored = out.filter(pc.is_valid(predicted)) if predicted.null_count else out
        values = scored.column("predicted").to_numpy(zero_copy_only=False)
        if self.regression:
            self.counts += np.histogram(np.clip(values, self.edges[0], self.edges[-1]), bins=self.edges)[0]
        else:
            index = self.task.encode(pd.Series(values))
            self.counts += np.bincount(index, minlength=len(self.counts))
        if "actual" not in scored.column_names:
            return
        actual = self.task.encode(scored.column("actual").to_pandas())
        known = ~np.isnan(actual) if self.regression else actual >= 0
        if not known.any():
            return
        self.labelled += int(known.sum())
        if self.regression:
            error = values[known] - actual[known]
            self.abs_err += float(np.abs(error).sum())
            self.sq_err += float((error**2).sum())
            self.y_sum += float(actual[known].sum())
            self.y2_sum += float((actual[known].astype(np.float64) ** 2).sum())
        else:
            self.hits += float((index[known] == actual[known]).sum())
            self.actual_counts += np.bincount(actual[known], minlength=len(self.actual_counts))

    def merge(self, later: _Tally) -> _Tally:
        """Take in what another partition counted: counts and sums add up."""
        self.counts += later.counts
        self.actual_counts += later.actual_counts
        self.labelled += later.labelled
        self.hits += later.hits
        self.abs_err += later.abs_err
        self.sq_err += later.sq_err
        self.y_sum += later.y_sum
        self.y2_sum += later.y2_sum
        return self

    def metrics(self) -> dict[str, float]:
        n = self.labelled
        if not n:
            return {}
        if not self.regression:
            return {"score_accuracy": self.hits / n, "score_chance_accuracy": float(self.actual_counts.max() / n)}
        spread = self.y2_sum - self.y_sum**2 / n
        return {
            "score_rmse": float(np.sqrt(self.sq_err / n)),
            "score_mae": self.abs_err / n,
            **({"score_r2": 1.0 - self.sq_err / spread} if spread > 0 else {}),
        }

    def frame(self) -> pd.DataFrame:
        if self.regression:
            middles = (self.edges[:-1] + self.edges[1:]) / 2
            return pd.DataFrame({"predicted": middles.round(6), "rows": self.counts})
        return pd.DataFrame({"predicted": self.task.classes, "rows": self.counts})


def score_batch(
    ctx: StepContext,
    params: ScoreParams,
    publish: PublishParams | None = None,
    *,
    progress: bool = True,
    engine: str = "local",
    dask: DaskParams | None = None,
) -> ScoreResult:
    """Score ``params.source`` with the model of ``params.model_run``; write ``predictions.parquet``;
    with ``publish.url``, publish the predictions and metrics too.

    The source is a raw table with the training columns in any order (others ignored, the target
    optional): the model run's fitted encoding turns it into model input, as in training. ``split:NAME``
    names a split the model run's prepare step wrote; ``split:test``, the default, holds rows the model
    never trained or tuned on, so its accuracy is a quality measure (``measured_on`` says so).
    ``rows_scored`` counts the rows that got a prediction, ``rows_unscored`` those that could not
    (null in ``predictions.parquet``, named in a DataWarning); ``score_accuracy`` (or ``score_rmse``,
    ``score_mae`` and ``score_r2`` for a number) is logged only where some scored row has a label.
    With ``engine="dask"`` each Parquet file of the source is scored on a worker of ``dask.scheduler``
    (:func:`score_on_cluster`).
    """
    if engine == "dask":
        from workbench.config.schema import DaskParams

        return score_on_cluster(ctx, params, publish, dask=dask or DaskParams(), progress=progress)
    source, backend, batch_size = params.source, params.backend, params.batch_size
    publish_url, publish_table = (publish.url, publish.table) if publish else ("", "")
    model_run = resolve_model_run(ctx, params.model_run)
    scored = scored_source(ctx, source, model_run)
    source, shown = scored.source, scored.shown
    inputs = model_inputs(ctx, model_run)
    if is_dataset(source):
        dataset = open_dataset(source, SOURCE_KEY)
        inputs.check_files(dataset.schema, dataset.fragments, shown)
    predict = predictor(ctx, backend, model_run)
    publisher = None
    if publish_url:
        from workbench.storage.publish import Publisher, prediction_rows

        publisher = Publisher(publish_url, publish_table, ctx.run_id, ctx.step)
    tally = _Tally(inputs.target, batch_size)
    rows, preview = 0, None
    unscored = Unscored()
    started = time.perf_counter()
    bar = progress_bar(total=count_rows(source, SOURCE_KEY), unit="row", desc="scoring", enabled=progress)
    with tempfile.TemporaryDirectory(prefix="score-", dir=scratch.root()) as tmp:
        path = Path(tmp) / PREDICTIONS.file
        writer = None
        try:
            blocks = iter_source(source, block_rows(batch_size, inputs), SOURCE_KEY)
            for out in score_stream(blocks, inputs, predict, shown, unscored, batch_size):
                writer = writer or predictions_writer(path, out.schema, inputs.target.regression)
                writer.write_table(out)
                if publisher:
                    publisher.append(prediction_rows(out, backend))
                if preview is None:  # the first rows of the first batch
                    preview = out.slice(0, min(PREVIEW_ROWS, batch_size)).to_pandas(types_mapper=_int_as_nullable)
                tally.add(out)
                rows += out.num_rows
                bar.update(out.num_rows)
        finally:
            bar.close()
            if writer:
                writer.close()
        if not rows and scored.split == "test":
            raise DataError(
                f"{SOURCE_KEY} {params.source}: run {model_run} held out no test rows (data.test_fraction 0); "
                "give score.source a table to score"
            )
        if not rows:
            raise DataError(f"{SOURCE_KEY} {shown}: no rows to score")
        seconds = time.perf_counter() - started
        ctx.discard(PREDICTIONS)  # parts an earlier attempt with engine dask left
        ctx.save_artifact(PREDICTIONS, path)
    return _summarise(ctx, params, publish, model_run, scored, inputs, Scored(rows, unscored, tally, seconds, preview))


@dataclass
class Scored:
    """What scoring counted, however it ran: rows, unscored rows, the tally, seconds and the first rows."""

    rows: int
    unscored: Unscored
    tally: _Tally
    seconds: float
    preview: pd.DataFrame | None


def _summarise(
    ctx: StepContext,
    params: ScoreParams,
    publish: PublishParams | None,
    model_run: str,
    scored: ScoredSource,
    inputs: ModelInputs,
    counted: Scored,
) -> ScoreResult:
    """Log and publish the metrics, record what was scored, and say what the notebook shows."""
    rows, unscored, tally, seconds, preview = (
        counted.rows,
        counted.unscored,
        counted.tally,
        counted.seconds,
        counted.preview,
    )
    backend, shown = params.backend, scored.shown
    publish_url, publish_table = (publish.url, publish.table) if publish else ("", "")
    metrics = {
        "rows_scored": float(rows - unscored.count),
        "rows_unscored": float(unscored.count),
        "score_seconds": seconds,
        "rows_per_second": rows / seconds,
    } | tally.metrics()
    ctx.log_metrics(metrics)
    warning = unscored.warning(rows)
    if warning:  # shown under the notebook cell (and by any script calling this), not only in the summary
        warnings.warn(warning, DataWarning, stacklevel=3)
    if publish_url:
        from workbench.storage.publish import publish_metrics

        publish_metrics(publish_url, publish_table, ctx.run_id, ctx.step, metrics)
    measured_on = scored.measured_on if tally.labelled else "n/a (unlabelled)"
    ctx.save_artifact(
        SCORE_INFO, {"model_run": model_run, "backend": backend, "source": shown, "measured_on": measured_on}
    )
    if inputs.target.regression:
        quality = ("RMSE (where labelled)", f"{metrics['score_rmse']:.4g}" if tally.labelled else "n/a (unlabelled)")
    else:
        quality = (
            "accuracy (where labelled)",
            f"{metrics['score_accuracy']:.4f}" if tally.labelled else "n/a (unlabelled)",
        )
    summary = pd.DataFrame(
        {
            "value": [
                model_run,
                backend,
                shown,
                f"{rows:,}",
                f"{unscored.count:,}" + (" (see the warning)" if unscored.count else ""),
                f"{rows / seconds:,.0f}",
                quality[1],
                measured_on,
            ]
        },
        index=[
            "model run",
            "backend",
            "source",
            "rows",
            "rows not scored",
            "rows per second",
            quality[0],
            "measured on",
        ],
    )
    result = ScoreResult(
        summary, preview, tally.frame(), metrics, [warning] if warning else [], inputs.target.regression, measured_on
    )
    ctx.save_artifact(CLASSES_PLOT, plot_predictions(result))
    return result


# ---- engine: dask -------------------------------------------------------------------------------------
# Each Parquet file of the source is scored on a worker: its rows keep the numbers one pass gives them
# (the file's first row is the rows of the files before it), its predictions are a part of the
# predictions dataset named by the file's index (a task run again replaces its own part), and its
# tally, unscored rows and published rows are its own.


@dataclass(frozen=True)
class _ScoreJob:
    """What every partition's task needs (small: the model is read by each worker, once)."""

    inputs: ModelInputs
    store: str
    model_key: str
    model_sha256: str | None
    predictions_key: str
    batch_size: int
    shown: str
    publish_url: str = ""
    publish_table: str = ""
    run_id: str = ""
    step: str = ""
    backend: str = "onnxruntime"


@functools.lru_cache(maxsize=2)
def _worker_session(store: str, key: str, sha256: str | None) -> Any:
    """The ONNX model in onnxruntime, one session per worker process, loaded by the first task that
    needs it and kept for the others (keyed by the model's recorded sha256). It computes with the
    worker's threads, not one per core of the host: a host runs several workers, whose sessions
    would otherwise each start a thread per core and fight over them; its threads sleep when idle,
    as the task reads and encodes between calls."""
    from workbench.ml.runtimes import ModelFiles, onnxruntime_session
    from workbench.storage import open_store

    opened = open_store(store)
    blob = verified(opened.read_bytes(key), sha256, opened.uri(key))
    return onnxruntime_session(ModelFiles.of_onnx(blob).onnx(), threads=_worker_threads(), sleep_when_idle=True)


def _worker_threads() -> int:
    """The threads of the Dask worker this runs on (``threads_per_worker``), 1 outside a worker."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError):  # ValueError: not on a worker
        return 1


def _score_part(fragment: Partition, job: _ScoreJob) -> tuple[Scored, ArtifactInfo | None]:
    """One partition scored: its predictions part written, and published when asked (its rows replaced)."""
    from workbench.engine.partitions import read_partition
    from workbench.storage import open_store

    predict = session_predict(_worker_session(job.store, job.model_key, job.model_sha256))
    tally, unscored = _Tally(job.inputs.target, job.batch_size), Unscored()
    rows, preview, frames = 0, None, []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="score-part-", dir=scratch.root()) as tmp:
        path = Path(tmp) / PREDICTIONS.file
        writer = None
        blocks = read_partition(fragment, block_rows(job.batch_size, job.inputs))
        for out in score_stream(blocks, job.inputs, predict, job.shown, unscored, job.batch_size, fragment.offset):
            writer = writer or predictions_writer(path, out.schema, job.inputs.target.regression)
            writer.write_table(out)
            if job.publish_url:
                from workbench.storage.publish import prediction_rows

                frames.append(prediction_rows(out, job.backend))
            if preview is None:
                preview = out.slice(0, min(PREVIEW_ROWS, job.batch_size)).to_pandas(types_mapper=_int_as_nullable)
            tally.add(out)
            rows += out.num_rows
        if writer is None:
            return Scored(0, unscored, tally, 0.0, None), None
        writer.close()
        if job.publish_url:
            from workbench.storage.publish import publish_part

            publish_part(
                job.publish_url,
                job.publish_table,
                job.run_id,
                job.step,
                frames,
                (fragment.offset, fragment.offset + rows),
            )
        info = open_store(job.store).put_file(part_key(job.predictions_key, fragment.index), path)
    return Scored(rows, unscored, tally, time.perf_counter() - started, preview), info


def score_on_cluster(
    ctx: StepContext, params: ScoreParams, publish: PublishParams | None, *, dask: DaskParams, progress: bool = True
) -> ScoreResult:
    """:func:`score_batch` on a Dask cluster, one task per Parquet file of the source: the same
    predictions row for row (numbered as one pass numbers them), stored as the parts
    ``score/predictions/part-NNNNN.parquet``, the summary combined from each part's counts.

    Publishing: the step's earlier rows are removed once, up front; then each part's rows go in from
    its worker in one transaction that first deletes the rows of that part's range of row numbers,
    so a task that runs again (its worker died after COPY) replaces its rows rather than adding them.
    """
    from workbench.engine.cluster import connect, run_tasks
    from workbench.engine.partitions import partitions

    if params.backend != "onnxruntime":
        raise DataError(
            f"score.backend {params.backend}: engine dask scores with onnxruntime; set score.backend=onnxruntime "
            "or engine: local"
        )
    model_run = resolve_model_run(ctx, params.model_run)
    scored = scored_source(ctx, params.source, model_run)
    inputs = model_inputs(ctx, model_run)
    predictor(ctx, params.backend, model_run)  # the model's files checked here, before any worker starts
    parts = partitions(scored.source, SOURCE_KEY)
    inputs.check_files(parts[0].reader.schema, [p.fragment for p in parts], scored.shown)  # before any worker starts
    publish_url, publish_table = (publish.url, publish.table) if publish else ("", "")
    if publish_url:
        from workbench.storage.publish import Publisher, prediction_rows

        empty = predictions(_no_rows(), np.zeros((0, inputs.target.outputs), np.float32), inputs, 0, None)
        Publisher(publish_url, publish_table, ctx.run_id, ctx.step).append(prediction_rows(empty, params.backend))
    model_key = ctx.key(ONNX_MODEL, run=model_run)
    job = _ScoreJob(
        inputs,
        ctx.store.root,
        model_key,
        ctx.tracker.recorded_sha256(model_key),
        ctx.key(PREDICTIONS),
        params.batch_size,
        scored.shown,
        publish_url,
        publish_table,
        ctx.run_id,
        ctx.step,
        params.backend,
    )
    ctx.discard(PREDICTIONS)  # an earlier attempt's one file, or its parts past this source's count
    started = time.perf_counter()
    try:
        with connect(dask.scheduler) as client:
            futures = run_tasks(
                client,
                _score_part,
                [(f, job) for f in parts],
                desc="scoring",
                weights=[f.rows for f in parts],
                progress=progress,
            )
            results = client.gather(futures)
    except Exception:
        ctx.discard(PREDICTIONS)  # the parts that other tasks wrote: a failed step leaves no predictions to read
        raise
    seconds = time.perf_counter() - started
    total = Scored(0, Unscored(), _Tally(inputs.target, params.batch_size), seconds, None)
    for part, info in results:
        total.rows += part.rows
        total.unscored.merge(part.unscored)
        total.tally.merge(part.tally)
        total.preview = total.preview if total.preview is not None else part.preview
        if info is not None:
            ctx.tracker.log_artifact(ctx.run_id, ctx.step, info)
    if not total.rows:
        raise DataError(f"{SOURCE_KEY} {scored.shown}: no rows to score")
    return _summarise(ctx, params, publish, model_run, scored, inputs, total)


def _no_rows() -> pa.Table:
    import pyarrow as pa

    return pa.table({"row": pa.array([], pa.int64())})


def plot_predictions(result: ScoreResult) -> Figure:
    """How many rows each class received, or the distribution of the predicted number."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    counts = result.class_counts
    if result.regression:
        step = float(counts.predicted.diff().iloc[1]) if len(counts) > 1 else 1.0
        ax.bar(counts.predicted, counts.rows, width=step)
        ax.set(title="predicted values", xlabel="predicted", ylabel="rows")
    else:
        ax.bar(counts.predicted.astype(str), counts.rows)
        ax.set(title="predicted classes", xlabel="class", ylabel="rows")
    fig.tight_layout()
    plt.close(fig)
    return fig
