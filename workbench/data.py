"""Data preparation: read the source, check it, split it, fit the normalisation.

The source is one string (a URI or path) handled by :func:`read_source`, so new kinds of source
(object stores, SQL) plug in there without the stage changing.
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.errors import DataError, StoreError
from workbench.params import project_root

if TYPE_CHECKING:
    import pyarrow as pa
    from matplotlib.figure import Figure

    from workbench.context import StepContext

BUNDLED = {"digits": "digits.csv.gz"}
SPLITS = ("train", "val", "test")


def _locate(source: str, key: str) -> tuple[Path, str]:
    """The file behind a source string and its format (``csv`` or ``parquet``)."""
    if source.startswith("bundled:"):
        name = source.split(":", 1)[1]
        if name not in BUNDLED:
            raise DataError(f"{key} {source!r}: no bundled dataset {name!r}; bundled: {', '.join(BUNDLED)}")
        return Path(__file__).parent / "data" / BUNDLED[name], "csv"
    name = source.lower()
    fmt = "parquet" if name.endswith((".parquet", ".pq")) else "csv" if name.endswith((".csv", ".csv.gz")) else None
    if "://" in source:
        scheme = source.split("://", 1)[0]
        if scheme != "s3":
            raise DataError(f"{key} {source!r}: {scheme}:// sources are not supported; use s3:// or a local path")
        if fmt is None:
            raise DataError(f"{key} {source}: unknown format; use .csv, .csv.gz or .parquet")
        return _download(source, key), fmt
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = project_root() / path
    if not path.is_file():
        raise DataError(f"{key}: no file at {path}; check the path or use bundled:digits")
    if fmt is None:
        raise DataError(f"{key} {path}: unknown format; use .csv, .csv.gz or .parquet")
    return path, fmt


@functools.lru_cache(maxsize=8)
def _download(uri: str, key: str = "data.source") -> Path:
    """An S3 object streamed to a local temporary file (disk, not memory, holds it), once per process."""
    from workbench.s3 import S3Store

    bucket, _, name = uri.removeprefix("s3://").partition("/")
    try:
        store = S3Store(f"s3://{bucket}")
    except StoreError:
        raise DataError(f"{key} {uri!r} is not a valid S3 URI; use s3://bucket/path/file.parquet") from None
    folder = Path(tempfile.mkdtemp(prefix="workbench-source-"))
    atexit.register(shutil.rmtree, folder, True)
    target = folder / Path(name).name
    try:
        with store.errors(name, missing=f"check {key}"):
            store.client.download_file(bucket, name, str(target))
    except StoreError as exc:
        raise DataError(f"{key}: {exc}") from None
    return target


def _unreadable(key: str, path: Path, exc: Exception) -> DataError:
    return DataError(f"{key} {path}: cannot be read ({str(exc).splitlines()[0]}); is it a valid table?")


def read_source(source: str, key: str = "data.source") -> pd.DataFrame:
    """A whole table from ``bundled:NAME``, or a local CSV, CSV.gz or Parquet file."""
    path, fmt = _locate(source, key)
    try:
        return pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise _unreadable(key, path, exc) from None


def iter_source(source: str, rows: int, key: str = "data.source") -> Iterator[pa.Table]:
    """The same table as Arrow tables of ``rows`` rows (the last may be shorter).

    Parquet is read by row groups and CSV (also gzipped) by blocks, with no pandas in between,
    so memory follows ``rows``, not the size of the source.
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    path, fmt = _locate(source, key)
    try:
        if fmt == "parquet":
            blocks: Iterator[pa.RecordBatch] = pq.ParquetFile(path).iter_batches(batch_size=rows)
        else:
            blocks = iter(pa_csv.open_csv(pa.input_stream(str(path), compression="detect")))
        pending: list = []
        count = 0
        for block in blocks:
            pending.append(block)
            count += block.num_rows
            while count >= rows:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, rows)
                rest = table.slice(rows)
                pending, count = rest.to_batches(), rest.num_rows
        if count:
            yield pa.Table.from_batches(pending)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _unreadable(key, path, exc) from None


def count_rows(source: str, key: str = "data.source") -> int | None:
    """Rows in the source when that is cheap to know (Parquet metadata), else None."""
    import pyarrow.parquet as pq

    path, fmt = _locate(source, key)
    return pq.ParquetFile(path).metadata.num_rows if fmt == "parquet" else None


def _check(frame: pd.DataFrame, target: str, source: str) -> list[str]:
    if target not in frame.columns:
        cols = ", ".join(map(str, frame.columns[:8])) + (" ..." if len(frame.columns) > 8 else "")
        raise DataError(f"data.target {target!r} is not a column of {source} (columns: {cols}); set data.target")
    features = [c for c in frame.columns if c != target]
    if not features:
        raise DataError(f"data.source {source}: no feature columns besides {target!r}")
    bad = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise DataError(f"data.source {source}: non-numeric feature columns {bad[:5]}; encode or drop them first")
    missing = frame.columns[frame.isna().any()].tolist()
    if missing:
        raise DataError(f"data.source {source}: missing values in columns {missing[:5]}; fill or drop them first")
    counts = frame[target].value_counts()
    if len(counts) < 2:
        raise DataError(f"data.target {target!r}: needs at least 2 classes, found {len(counts)}")
    if counts.min() < 3:
        raise DataError(
            f"data.target {target!r}: class {counts.idxmin()!r} has {counts.min()} rows; each class needs 3 or more to split"
        )
    return features


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Row indices per split; each class is shuffled with ``seed`` and cut in the same shares."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = max(1, round(len(idx) * val_fraction))
        n_test = max(1, round(len(idx) * test_fraction))
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


@dataclass
class Prepared:
    """What the data notebook shows: schema, split sizes, class balance and a sample."""

    schema: pd.DataFrame
    counts: pd.DataFrame
    class_balance: pd.DataFrame
    sample: pd.DataFrame
    features: list[str]
    target: str


def prepare_data(
    ctx: StepContext, source: str, target: str, val_fraction: float, test_fraction: float, seed: int
) -> Prepared:
    """Read, check and split the source; write the splits, schema and normalisation."""
    frame = read_source(source)
    features = _check(frame, target, source)
    classes = sorted(frame[target].unique().tolist())
    label_codes = frame[target].map({c: i for i, c in enumerate(classes)}).to_numpy()
    index = stratified_split(label_codes, val_fraction, test_fraction, seed)
    splits = {s: frame.iloc[idx].reset_index(drop=True) for s, idx in index.items()}

    train_x = splits["train"][features].to_numpy(dtype=np.float64)
    std = train_x.std(axis=0)
    normalization = {
        "features": features,
        "mean": train_x.mean(axis=0).tolist(),
        "std": np.where(std > 0, std, 1.0).tolist(),
    }
    for name, part in splits.items():
        ctx.save_frame(f"{name}.parquet", part)
    ctx.save_json("normalization.json", normalization)
    ctx.save_json(
        "schema.json",
        {"features": features, "target": target, "classes": [_plain(c) for c in classes], "source": source},
    )

    counts = pd.DataFrame({"split": [*SPLITS, "total"], "rows": [len(splits[s]) for s in SPLITS] + [len(frame)]})
    ctx.log_metrics(
        {f"rows_{s}": len(splits[s]) for s in SPLITS}
        | {"rows_total": len(frame), "features": len(features), "classes": len(classes)}
    )
    balance = pd.DataFrame({s: splits[s][target].value_counts().sort_index() for s in SPLITS}).fillna(0).astype(int)
    balance.index.name = target
    schema = pd.DataFrame(
        {
            "column": frame.columns,
            "dtype": [str(t) for t in frame.dtypes],
            "min": frame.min().to_numpy(),
            "max": frame.max().to_numpy(),
            "role": ["target" if c == target else "feature" for c in frame.columns],
        }
    )
    return Prepared(schema, counts, balance, splits["train"].head(40), features, target)


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
