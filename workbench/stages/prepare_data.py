"""The data stage (notebook 01): check the source, split it, fit the normalisation, in bounded memory.

Reading any kind of source is :mod:`workbench.storage.sources`' job; this stage only sees Arrow
chunks, so a 5-million-row table from S3 or a warehouse query is prepared like the bundled digits.
"""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.errors import DataError
from workbench.ml.features import Normalization, column_matrix
from workbench.ml.splits import (
    MAX_HISTOGRAMS,
    SPLITS,
    Histograms,
    Moments,
    Scan,
    feature_columns,
    split_plan,
)
from workbench.progress import progress as progress_bar
from workbench.storage.catalog import NORMALIZATION, SCHEMA, SPLIT_ARTIFACTS, suffix
from workbench.storage.sources import CHUNK_ROWS, count_rows, describe, is_parquet, iter_source

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from workbench.config.schema import DataParams
    from workbench.run.context import StepContext


SAMPLE_ROWS = 40


SPOOL = "source" + suffix("parquet")  # a SQL result or CSV kept as Parquet between the passes


MIN_IMAGE_SIDE = 8  # 4 or 16 features are more often a table than a 2x2 or 4x4 image


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
    ctx: StepContext, params: DataParams, *, seed: int, chunk_rows: int = CHUNK_ROWS, progress: bool = True
) -> Prepared:
    """Read, check and split ``params.source``; write the splits, schema and normalisation.

    Two passes, each holding one chunk: the first checks the table and counts each class, the
    second sends every row to its split's Parquet file. A SQL result or CSV is kept on local disk
    as Parquet between the passes, so the query runs once and the CSV is parsed once. Nothing is
    stored unless both passes succeed.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    source, target = params.source, params.target
    shown = describe(source)
    bar = functools.partial(progress_bar, unit="row", enabled=progress, delay=2)
    with tempfile.TemporaryDirectory(prefix="workbench-prepare-") as tmp:
        folder = Path(tmp)
        spool = None
        scan: Scan | None = None
        with bar(total=count_rows(source), desc="checking") as checked:
            for table in iter_source(source, chunk_rows):
                if scan is None:
                    scan = Scan(table.schema, feature_columns(table.schema, target, shown))
                    if not is_parquet(source):
                        spool = pq.ParquetWriter(folder / SPOOL, table.schema)
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
        plans = split_plan([scan.class_rows[c] for c in classes], params.val_fraction, params.test_fraction, seed)
        seen = np.zeros(len(classes), dtype=np.int64)
        class_values = pa.array(classes, type=scan.schema.field(target).type)
        writers = {name: pq.ParquetWriter(folder / SPLIT_ARTIFACTS[name].file, scan.schema) for name in SPLITS}
        moments = Moments(len(features))
        histograms = Histograms(scan, features[:MAX_HISTOGRAMS])
        sample: list[pd.DataFrame] = []
        again = str(folder / SPOOL) if spool else source
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
                        x = column_matrix(part, features)
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
            ctx.save_artifact(SPLIT_ARTIFACTS[name], folder / SPLIT_ARTIFACTS[name].file)

    ctx.save_artifact(NORMALIZATION, Normalization.fit(features, moments.mean, moments.std).to_json())
    ctx.save_artifact(
        SCHEMA,
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
