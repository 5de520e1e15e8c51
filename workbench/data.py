"""Data preparation: check the source, split it, fit the normalisation, in bounded memory.

Reading any kind of source is :mod:`workbench.sources`' job; this stage only sees Arrow chunks,
so a 5-million-row table from S3 or a warehouse query is prepared like the bundled digits.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.errors import DataError
from workbench.progress import progress as progress_bar
from workbench.sources import CHUNK_ROWS, Source, count_rows, describe, is_parquet, iter_source

if TYPE_CHECKING:
    import pyarrow as pa
    from matplotlib.figure import Figure

    from workbench.context import StepContext

SPLITS = ("train", "val", "test")
MAX_CLASSES = 10_000
MAX_HISTOGRAMS = 16  # features whose distribution prepare counts: a readable grid, not a cost
HISTOGRAM_BINS = 30
SAMPLE_ROWS = 40
MIN_IMAGE_SIDE = 8  # 4 or 16 features are more often a table than a 2x2 or 4x4 image


def _numeric(kind: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _features(schema: pa.Schema, target: str, shown: str) -> list[str]:
    """The feature columns, or why the table cannot be trained on (known from its first chunk)."""
    names = schema.names
    if target not in names:
        cols = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        raise DataError(f"data.target {target!r} is not a column of {shown} (columns: {cols}); set data.target")
    features = [c for c in names if c != target]
    if not features:
        raise DataError(f"data.source {shown}: no feature columns besides {target!r}")
    bad = [c for c in features if not _numeric(schema.field(c).type)]
    if bad:
        raise DataError(f"data.source {shown}: non-numeric feature columns {bad[:5]}; encode or drop them first")
    return features


@dataclass
class _Scan:
    """What one pass over the source learns: enough to split it exactly in a second pass."""

    schema: pa.Schema
    features: list[str]
    rows: int = 0
    class_rows: dict = field(default_factory=dict)
    missing: set = field(default_factory=set)
    infinite: set = field(default_factory=set)
    low: dict = field(default_factory=dict)
    high: dict = field(default_factory=dict)

    def add(self, table: pa.Table, target: str) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        self.rows += table.num_rows
        for name in table.column_names:
            column = table.column(name)
            floating = pa.types.is_floating(column.type)
            if column.null_count or (floating and pc.any(pc.is_nan(column)).as_py()):
                self.missing.add(name)
            if floating and pc.any(pc.is_inf(column)).as_py():
                self.infinite.add(name)
            bounds = pc.min_max(column).as_py()
            if bounds["min"] is not None:
                self.low[name] = min(self.low.get(name, bounds["min"]), bounds["min"])
                self.high[name] = max(self.high.get(name, bounds["max"]), bounds["max"])
        counts = pc.value_counts(table.column(target)).to_pylist()
        for entry in counts:
            self.class_rows[entry["values"]] = self.class_rows.get(entry["values"], 0) + entry["counts"]
        if len(self.class_rows) > MAX_CLASSES:
            raise DataError(
                f"data.target {target!r} has more than {MAX_CLASSES:,} distinct values; "
                "it must be a class label, not a measurement"
            )

    def check(self, target: str, shown: str) -> list:
        if self.missing:
            columns = [c for c in self.schema.names if c in self.missing]
            raise DataError(f"data.source {shown}: missing values in columns {columns[:5]}; fill or drop them first")
        if self.infinite:  # an inf reaches training as NaN losses, then fails far away in the metrics table
            columns = [c for c in self.schema.names if c in self.infinite]
            raise DataError(
                f"data.source {shown}: non-finite values (inf, -inf) in columns {columns[:5]}; fill or drop them first"
            )
        if len(self.class_rows) < 2:
            raise DataError(f"data.target {target!r}: needs at least 2 classes, found {len(self.class_rows)}")
        classes = sorted(self.class_rows)
        rarest = min(classes, key=self.class_rows.__getitem__)
        if self.class_rows[rarest] < 3:
            raise DataError(
                f"data.target {target!r}: class {rarest!r} has {self.class_rows[rarest]} rows; "
                "each class needs 3 or more to split"
            )
        return classes


def split_plan(class_rows: list[int], val_fraction: float, test_fraction: float, seed: int) -> list[np.ndarray]:
    """Per class, the split of each of its rows in order of appearance (0 train, 1 val, 2 test).

    It needs only the class counts, so a second pass can split a source it never holds whole.
    Each class is shuffled with ``seed`` and cut in the same shares.
    """
    rng = np.random.default_rng(seed)
    plans = []
    for n in class_rows:
        order = rng.permutation(n)
        n_val = max(1, round(n * val_fraction))
        n_test = max(1, round(n * test_fraction))
        plan = np.zeros(n, dtype=np.uint8)
        plan[order[:n_val]] = 1
        plan[order[n_val : n_val + n_test]] = 2
        plans.append(plan)
    return plans


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Row indices per split of an in-memory label array (the same cut the streamed prepare makes)."""
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    assigned = np.empty(len(labels), dtype=np.uint8)
    for code, plan in enumerate(split_plan(counts.tolist(), val_fraction, test_fraction, seed)):
        assigned[codes == code] = plan
    return {name: np.flatnonzero(assigned == i) for i, name in enumerate(SPLITS)}


class _Moments:
    """Running mean, variance and range per column, merged chunk by chunk (Chan et al.)."""

    def __init__(self, width: int) -> None:
        self.n = 0
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.low = np.full(width, np.inf)
        self.high = np.full(width, -np.inf)

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        self.low = np.minimum(self.low, x.min(axis=0))
        self.high = np.maximum(self.high, x.max(axis=0))
        mean = x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        total = self.n + len(x)
        delta = mean - self.mean
        self.mean += delta * len(x) / total
        self.m2 += m2 + delta**2 * self.n * len(x) / total
        self.n = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.n)

    def summary(self, features: list[str]) -> pd.DataFrame:
        """One row per feature: count, mean, std (population, as the normalisation uses), min, max."""
        return pd.DataFrame(
            {"count": self.n, "mean": self.mean, "std": self.std, "min": self.low, "max": self.high},
            index=pd.Index(features, name="feature"),
        )


def _bin_edges(low: float, high: float, integer: bool) -> np.ndarray:
    """Histogram bins over a column's whole range, known from the first pass.

    Integers with few values get one bin per value, so a 0..16 pixel count shows 17 bars rather
    than 30 bins that alternately catch one value and none.
    """
    if integer and high - low < HISTOGRAM_BINS:
        return np.arange(low, high + 2) - 0.5
    if high == low:
        return np.array([low - 0.5, high + 0.5])
    return np.linspace(low, high, HISTOGRAM_BINS + 1)


class _Histograms:
    """Exact per-feature histograms of the training split, counted as its chunks pass by."""

    def __init__(self, scan: _Scan, features: list[str]) -> None:
        import pyarrow as pa

        self.edges = []
        for name in features:
            kind = scan.schema.field(name).type
            integer = pa.types.is_integer(kind) or pa.types.is_boolean(kind)
            self.edges.append(_bin_edges(float(scan.low[name]), float(scan.high[name]), integer))
        self.counts = [np.zeros(len(e) - 1, dtype=np.int64) for e in self.edges]

    def add(self, x: np.ndarray) -> None:
        for i, edges in enumerate(self.edges):
            self.counts[i] += np.histogram(x[:, i], bins=edges)[0]


def _matrix(table: pa.Table, columns: list[str]) -> np.ndarray:
    x = np.empty((table.num_rows, len(columns)))
    for i, name in enumerate(columns):
        x[:, i] = table.column(name).to_numpy()
    return x


@dataclass
class Prepared:
    """What the data notebook shows: schema, split sizes, class balance and a sample.

    ``feature_summary`` (count, mean, std, min, max per feature) and ``histograms`` (bin counts
    and edges for the first :data:`MAX_HISTOGRAMS` features) describe the whole training split:
    they are counted while prepare streams it, so they cost no extra pass.
    """

    schema: pd.DataFrame
    counts: pd.DataFrame
    class_balance: pd.DataFrame
    sample: pd.DataFrame
    features: list[str]
    target: str
    feature_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    histograms: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def prepare_data(
    ctx: StepContext,
    source: Source,
    target: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = True,
) -> Prepared:
    """Read, check and split the source; write the splits, schema and normalisation.

    Two passes, each holding one chunk: the first checks the table and counts each class, the
    second sends every row to its split's Parquet file. A SQL result or CSV is kept on local disk
    as Parquet between the passes, so the query runs once and the CSV is parsed once. Nothing is
    stored unless both passes succeed.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shown = describe(source)
    bar = functools.partial(progress_bar, unit="row", enabled=progress, delay=2)
    with tempfile.TemporaryDirectory(prefix="workbench-prepare-") as tmp:
        folder = Path(tmp)
        spool = None
        scan: _Scan | None = None
        with bar(total=count_rows(source), desc="checking") as checked:
            for table in iter_source(source, chunk_rows):
                if scan is None:
                    scan = _Scan(table.schema, _features(table.schema, target, shown))
                    if not is_parquet(source):
                        spool = pq.ParquetWriter(folder / "source.parquet", table.schema)
                scan.add(table, target)
                if spool:
                    spool.write_table(table)
                checked.update(table.num_rows)
        if spool:
            spool.close()
        if scan is None:
            raise DataError(f"data.source {shown}: no rows")
        classes = scan.check(target, shown)
        features = scan.features
        plans = split_plan([scan.class_rows[c] for c in classes], val_fraction, test_fraction, seed)
        seen = np.zeros(len(classes), dtype=np.int64)
        class_values = pa.array(classes, type=scan.schema.field(target).type)
        writers = {name: pq.ParquetWriter(folder / f"{name}.parquet", scan.schema) for name in SPLITS}
        moments = _Moments(len(features))
        histograms = _Histograms(scan, features[:MAX_HISTOGRAMS])
        sample: list[pd.DataFrame] = []
        again = str(folder / "source.parquet") if spool else source
        with bar(total=scan.rows, desc="splitting") as split_rows:
            for table in iter_source(again, chunk_rows):
                codes = pc.index_in(table.column(target), value_set=class_values).to_numpy(zero_copy_only=False)
                assigned = np.empty(table.num_rows, dtype=np.uint8)
                for code in np.unique(codes):
                    rows = codes == code
                    n = int(rows.sum())
                    if seen[code] + n > len(plans[code]):
                        raise DataError(f"data.source {shown}: changed while it was read; run the step again")
                    assigned[rows] = plans[code][seen[code] : seen[code] + n]
                    seen[code] += n
                for i, name in enumerate(SPLITS):
                    part = table.filter(pa.array(assigned == i))
                    writers[name].write_table(part)
                    if name == "train":
                        x = _matrix(part, features)
                        moments.add(x)
                        histograms.add(x[:, :MAX_HISTOGRAMS])
                        if sum(len(f) for f in sample) < SAMPLE_ROWS:  # a copy: a slice would pin the chunk
                            sample.append(part.slice(0, SAMPLE_ROWS).to_pandas())
                split_rows.update(table.num_rows)
        for writer in writers.values():
            writer.close()
        if seen.sum() != scan.rows:
            raise DataError(f"data.source {shown}: changed while it was read; run the step again")
        for name in SPLITS:
            ctx.store_file(f"{name}.parquet", folder / f"{name}.parquet")

    std = moments.std
    ctx.save_json(
        "normalization.json",
        {"features": features, "mean": moments.mean.tolist(), "std": np.where(std > 0, std, 1.0).tolist()},
    )
    ctx.save_json(
        "schema.json",
        {"features": features, "target": target, "classes": [_plain(c) for c in classes], "source": shown},
    )
    split_counts = {name: int(sum((plan == i).sum() for plan in plans)) for i, name in enumerate(SPLITS)}
    counts = pd.DataFrame({"split": [*SPLITS, "total"], "rows": [*split_counts.values(), scan.rows]})
    ctx.log_metrics(
        {f"rows_{s}": n for s, n in split_counts.items()}
        | {"rows_total": scan.rows, "features": len(features), "classes": len(classes)}
    )
    balance = pd.DataFrame(
        {name: [int((plan == i).sum()) for plan in plans] for i, name in enumerate(SPLITS)},
        index=pd.Index(classes, name=target),
    )
    schema = pd.DataFrame(
        {
            "column": scan.schema.names,
            "dtype": [str(f.type) for f in scan.schema],
            "min": [scan.low.get(c) for c in scan.schema.names],
            "max": [scan.high.get(c) for c in scan.schema.names],
            "role": ["target" if c == target else "feature" for c in scan.schema.names],
        }
    )
    head = pd.concat(sample, ignore_index=True).head(SAMPLE_ROWS)
    shapes = dict(zip(features, zip(histograms.counts, histograms.edges, strict=True), strict=False))
    return Prepared(schema, counts, balance, head, features, target, moments.summary(features), shapes)


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class Split:
    """One split as model-ready arrays: normalised float32 features and class indices."""

    x: np.ndarray
    y: np.ndarray


# Inside a SageMaker training job the splits arrive as input channels (local folders).
SAGEMAKER_CHANNELS = {"train": "SM_CHANNEL_TRAIN", "val": "SM_CHANNEL_VALIDATION"}


def prepared_bytes(ctx: StepContext, name: str, split: str = "train") -> bytes:
    """An output of the prepare step: from the SageMaker channel of ``split`` when the job has
    one (the prepare folder uploaded as the channel), else from the run's store."""
    variable = SAGEMAKER_CHANNELS[split]
    channel = os.environ.get(variable)
    if not channel:
        return ctx.load(name, "prepare")
    path = Path(channel) / name
    if not path.is_file():
        raise DataError(f"{variable}={channel} has no {name}; use the prepare step's outputs as the {split} channel")
    return path.read_bytes()


def load_split(ctx: StepContext, name: str) -> Split:
    """Read a split written by the prepare step and apply its normalisation."""
    schema = json.loads(prepared_bytes(ctx, "schema.json"))
    norm = json.loads(prepared_bytes(ctx, "normalization.json"))
    frame = pd.read_parquet(
        io.BytesIO(prepared_bytes(ctx, f"{name}.parquet", name if name in SAGEMAKER_CHANNELS else "train"))
    )
    codes = {c: i for i, c in enumerate(schema["classes"])}
    x = (frame[norm["features"]].to_numpy(dtype=np.float64) - np.asarray(norm["mean"])) / np.asarray(norm["std"])
    y = frame[schema["target"]].map(codes).to_numpy(dtype=np.int64)
    return Split(x.astype(np.float32), y)


def plot_digits(prepared: Prepared, count: int = 40, per_row: int = 10) -> Figure:
    """Sample rows drawn as square images with their labels (features must form a square).

    One mosaic image on one axes: drawing 40 separate axes costs more than the whole data step.
    """
    import matplotlib.pyplot as plt

    side = math.isqrt(len(prepared.features))
    if side * side != len(prepared.features):
        raise DataError(
            f"{len(prepared.features)} features do not form a square image; plot_digits needs e.g. 64 (8x8)"
        )
    rows = prepared.sample.head(count)
    images = rows[prepared.features].to_numpy(dtype=float).reshape(-1, side, side)
    grid_rows = -(-len(images) // per_row)
    cell = side + 2
    mosaic = np.full((grid_rows * (cell + 3), per_row * cell), np.nan)
    for i, image in enumerate(images):
        top, left = (i // per_row) * (cell + 3) + 3, (i % per_row) * cell
        mosaic[top : top + side, left : left + side] = image
    fig, ax = plt.subplots(figsize=(per_row * 0.9, grid_rows * 1.1))
    ax.imshow(mosaic, cmap="gray_r", interpolation="nearest")
    for i, label in enumerate(rows[prepared.target]):
        ax.text(
            (i % per_row) * cell + side / 2 - 0.5,
            (i // per_row) * (cell + 3) + 1.2,
            str(label),
            ha="center",
            fontsize=9,
        )
    ax.axis("off")
    plt.close(fig)
    return fig


def image_side(prepared: Prepared) -> int | None:
    """The side of the square image each row is, or None when the features are a plain table.

    An image has a square number of pixels, at least 8x8, all stored in one type; a table of 4
    or 16 measurements is square by chance and reads better as distributions.
    """
    side = math.isqrt(len(prepared.features))
    kinds = set(prepared.schema.loc[prepared.schema.role == "feature", "dtype"])
    return side if side * side == len(prepared.features) and side >= MIN_IMAGE_SIDE and len(kinds) == 1 else None


def plot_distributions(prepared: Prepared, per_row: int = 4) -> Figure:
    """Histograms of the training split, one small panel per feature (the first 16 at most)."""
    import matplotlib.pyplot as plt

    shown = list(prepared.histograms.items())
    grid_rows = max(1, -(-len(shown) // per_row))
    fig, axes = plt.subplots(grid_rows, per_row, figsize=(per_row * 2.6, grid_rows * 2.0), squeeze=False)
    for ax, (name, (counts, edges)) in zip(axes.flat, shown, strict=False):
        ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(shown) :]:
        ax.axis("off")
    more = f" (first {len(shown)} of {len(prepared.features)} features)" if len(shown) < len(prepared.features) else ""
    fig.suptitle(f"Training split: distribution of each feature{more}", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_sample(prepared: Prepared) -> Figure:
    """What the training split looks like: sample rows as images when the features are pixels,
    else each feature's distribution, so notebook 01 shows something for any numeric table."""
    return plot_digits(prepared) if image_side(prepared) else plot_distributions(prepared)
