"""The data stage (notebook 01): check the source, split it, fit the encoding, in bounded memory.

Reading any kind of source is :mod:`workbench.storage.sources`' job; this stage only sees Arrow
chunks, so a 5-million-row table from S3 or a warehouse query is prepared like the bundled digits.
"""

from __future__ import annotations

import copy
import functools
import html
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from workbench.errors import DataError
from workbench.ml.encoding import NUMERIC, Encoding, EncodingFitter, Target, TargetFitter, category_key, feature_names
from workbench.ml.features import column_matrix
from workbench.ml.splits import (
    MAX_HISTOGRAMS,
    MIN_CLASS_ROWS,
    SPLITS,
    Histograms,
    Moments,
    Ranges,
    class_counts,
    split_plan,
)
from workbench.progress import progress as progress_bar
from workbench.storage import scratch
from workbench.storage.catalog import ENCODING, SCHEMA, SPLIT_ARTIFACTS, suffix
from workbench.storage.sources import CHUNK_ROWS, count_rows, describe, is_parquet, iter_source

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from matplotlib.figure import Figure

    from workbench.config.schema import DaskParams, DataParams
    from workbench.engine.partitions import Partition
    from workbench.run.context import StepContext
    from workbench.storage.base import ArtifactInfo


SAMPLE_ROWS = 40


SPOOL = "source" + suffix("parquet")  # a SQL result or CSV kept as Parquet between the passes


@dataclass(frozen=True)
class Notes:
    """Choices prepare made that a reader might not expect, said out loud in notebook 01 (and so in
    the report), as lines of plain text or a coloured box."""

    lines: tuple[str, ...]

    def _repr_html_(self) -> str:
        if not self.lines:
            return '<p style="color:#1a7f37">No choices to note about the columns.</p>'
        items = "".join(f"<p style='margin:0.2em 0'><b>NOTE:</b> {html.escape(line)}</p>" for line in self.lines)
        return f'<div style="background:#fff8c5;border-left:6px solid #9a6700;padding:0.5em 1em">{items}</div>'

    def __repr__(self) -> str:
        return "\n".join(f"NOTE: {line}" for line in self.lines) or "No choices to note about the columns."


def silent_choices(params: DataParams, encoding: Encoding, ranges: Ranges, rows: int) -> list[str]:
    """What prepare decided without a word before: a row counter used as a feature, the target named
    in data.drop or data.categorical (ignored), a column named like another column's encoded feature,
    and many unrelated number columns that make an image (train.model=auto then picks the CNN)."""
    import pyarrow as pa

    notes = []
    for role, listed in (("data.drop", params.drop), ("data.categorical", params.categorical)):
        if params.target in listed:
            notes.append(
                f"data.target {params.target!r} is also in {role}; the target is never a feature, so that entry is ignored"
            )
    for spec in encoding.columns:
        name = spec["name"]
        if spec["type"] != NUMERIC or name not in ranges.low or not pa.types.is_integer(ranges.schema.field(name).type):
            continue
        low, high = ranges.low[name], ranges.high[name]
        if low in (0, 1) and high - low + 1 == rows > 2:
            notes.append(
                f"column {name!r} holds the whole numbers {low} to {high}, one per row: a row counter or an index, "
                "used as a feature; add it to data.drop unless it means something"
            )
    seen: dict[str, str] = {}
    for spec in encoding.columns:
        for feature in feature_names(spec):
            other = seen.setdefault(feature, spec["name"])
            if other != spec["name"]:
                first, second = sorted((other, spec["name"]), key=lambda n: n != feature)
                notes.append(
                    f"column {first!r} has the name of a feature encoded from column {second!r}; the model input "
                    f"holds two features named {feature!r}: rename the column"
                )
    side = encoding.image_side
    names = encoding.inputs
    if side and not _numbered(names):
        notes.append(
            f"the {len(names)} number columns ({names[0]}, {names[1]}, ...) make one {side}x{side} image, so "
            "train.model=auto picks the CNN; set train.model=mlp unless they are pixels in row order"
        )
    return notes


def _numbered(names: list[str]) -> bool:
    """Whether columns are named as pixels are: one prefix and their position (p0..p63, pixel1..pixel64)."""
    prefix = names[0].rstrip("0123456789")
    return any(all(name == f"{prefix}{i + start}" for i, name in enumerate(names)) for start in (0, 1))


@dataclass
class Prepared:
    """What the data notebook shows: schema, split sizes, class balance, a sample and the encoding.

    ``feature_summary`` (count, mean, std, min, max per numeric input column) and ``histograms``
    (bin counts and edges for the first :data:`MAX_HISTOGRAMS` of them) describe the whole training
    split: they are counted while prepare streams it, so they cost no extra pass. ``encoding`` is the
    model's input contract, fitted on the training split; ``target`` its task and classes.
    """

    schema: pd.DataFrame
    counts: pd.DataFrame
    class_balance: pd.DataFrame
    sample: pd.DataFrame
    features: list[str]
    target: str
    feature_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    histograms: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    encoding: Encoding | None = None
    task: Target | None = None
    notes: Notes = field(default_factory=lambda: Notes(()))

    @property
    def encoding_table(self) -> pd.DataFrame:
        """The encoding as a reader checks it: per input column its type, gaps and what it becomes."""
        return encoding_table(self.encoding) if self.encoding else pd.DataFrame()


def prepare_data(
    ctx: StepContext,
    params: DataParams,
    *,
    seed: int,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = True,
    engine: str = "local",
    dask: DaskParams | None = None,
) -> Prepared:
    """Read, check and split ``params.source``; fit the encoding on the training split; write them all.

    Two passes, each holding one chunk: the first checks the table and counts each class (rows without
    a target are dropped and counted), the second sends every row to its split's Parquet file and fits
    the encoding and the target's scale on the training rows. A SQL result or CSV is kept on local disk
    as Parquet between the passes, so the query runs once and the CSV is parsed once. Nothing is stored
    unless both passes succeed. With ``engine="dask"`` the passes run per partition of a Parquet
    dataset on the cluster ``dask.scheduler`` names (:func:`prepare_on_cluster`).
    """
    if engine == "dask":
        from workbench.config.schema import DaskParams

        return prepare_on_cluster(
            ctx, params, seed=seed, dask=dask or DaskParams(), chunk_rows=chunk_rows, progress=progress
        )
    import pyarrow.parquet as pq

    source, target = params.source, params.target
    shown = describe(source)
    where = f"data.source {shown}: "
    bar = functools.partial(progress_bar, unit="row", enabled=progress, delay=2)
    fitter = _fitter(params, where)
    labels = TargetFitter(target, params.task, where)
    with tempfile.TemporaryDirectory(prefix="prepare-", dir=scratch.root()) as tmp:
        folder = Path(tmp)
        spool = None
        ranges: Ranges | None = None
        rows = 0
        with bar(total=count_rows(source), desc="checking") as checked:
            for table in iter_source(source, chunk_rows):
                labels.add(table)
                if ranges is None:
                    fitter.add(table.slice(0, 0))  # names and types refused before a long pass, not after
                    assert fitter.columns is not None
                    numeric = [c.name for c in fitter.columns if c.kind == NUMERIC]
                    ranges = Ranges(table.schema, numeric)
                    if not is_parquet(source):
                        spool = pq.ParquetWriter(folder / SPOOL, table.schema)
                ranges.add(table)
                if spool:
                    spool.write_table(table)
                rows += table.num_rows
                checked.update(table.num_rows)
        if spool:
            spool.close()
        if ranges is None or not rows:
            raise DataError(f"{where}no rows")
        task, groups, plans = _plan(labels, rows, params, seed, where)
        seen = np.zeros(len(groups), dtype=np.int64)
        writers = {name: pq.ParquetWriter(folder / SPLIT_ARTIFACTS[name].file, ranges.schema) for name in SPLITS}
        numeric = [c for c in ranges.columns if c in ranges.low]  # a numeric column empty throughout is refused below
        fit = _PartialFit(fitter, Moments(len(numeric)), Histograms(ranges, numeric[:MAX_HISTOGRAMS]), Moments(1))
        sample: list[pd.DataFrame] = []
        again = str(folder / SPOOL) if spool else source
        with bar(total=rows, desc="splitting") as split_rows:
            for table in iter_source(again, chunk_rows):
                assigned = _assign(task, table.column(target), plans, seen, where)
                _write_splits(table, assigned, writers, fit, task, numeric, sample)
                split_rows.update(table.num_rows)
        for writer in writers.values():
            writer.close()
        if seen.sum() != rows - task.missing:
            raise DataError(f"{where}changed while it was read; run the step again")
        if task.regression:
            task = task.with_moments(float(fit.target_moments.mean[0]), float(fit.target_moments.std[0]))
        encoding = fitter.finish()
        encoding.target = task
        for name in SPLITS:
            ctx.discard(SPLIT_ARTIFACTS[name])  # parts an earlier attempt with engine dask left
            ctx.save_artifact(SPLIT_ARTIFACTS[name], folder / SPLIT_ARTIFACTS[name].file)
    return _record(
        ctx, params, seed, shown, Passes(ranges, rows, task, plans, encoding, fit.moments, fit.histograms, sample)
    )


def _plan(
    labels: TargetFitter, rows: int, params: DataParams, seed: int, where: str
) -> tuple[Target, list[int], list[np.ndarray]]:
    """The target as fitted on all ``rows``, the rows per stratum (class, or one for regression) and
    each stratum's split plan: drawn from the whole table's counts, whichever engine counted them."""
    task = labels.finish()
    groups = class_counts(task, labels.counts) if not task.regression else [rows - task.missing]
    if task.regression and groups[0] < MIN_CLASS_ROWS:
        raise DataError(
            f"{where}data.target {params.target!r} has {groups[0]} value(s); needs {MIN_CLASS_ROWS} or more rows to split"
        )
    return task, groups, split_plan(groups, params.val_fraction, params.test_fraction, seed)


def _write_splits(
    table: pa.Table,
    assigned: np.ndarray,
    writers: dict[str, pq.ParquetWriter],
    fit: _PartialFit,
    task: Target,
    numeric: list[str],
    sample: list[pd.DataFrame],
) -> None:
    """Send each row of a chunk to its split's file; the training rows feed the fit, the others are
    only checked against it. The same for both engines, so their splits and fits agree."""
    import pyarrow as pa

    for i, name in enumerate(SPLITS):
        part = table.filter(pa.array(assigned == i))
        writers[name].write_table(part)
        if name == "train":
            fit.add(part, task, numeric, sample)
        else:
            fit.fitter.check(part)


def _assign(task: Target, labels: pa.ChunkedArray, plans: list[np.ndarray], seen: np.ndarray, where: str) -> np.ndarray:
    """Per row of a chunk, its split (0 train, 1 val, 2 test; 3 without a target): the next entries
    of its class's plan, ``seen`` counting how far each plan has been used."""
    codes = _groups(task, labels)
    assigned = np.full(len(codes), len(SPLITS), dtype=np.uint8)  # no target: no split
    for code in np.unique(codes[codes >= 0]):
        picked = codes == code
        n = int(picked.sum())
        if seen[code] + n > len(plans[code]):
            raise DataError(f"{where}changed while it was read; run the step again")
        assigned[picked] = plans[code][seen[code] : seen[code] + n]
        seen[code] += n
    return assigned


@dataclass
class _PartialFit:
    """What pass 2 fits on the training rows: the encoding, the features' moments and histograms, and
    the target's moments; partial fits of partitions merge, partition after partition."""

    fitter: EncodingFitter
    moments: Moments
    histograms: Histograms
    target_moments: Moments

    def add(self, part: pa.Table, task: Target, numeric: list[str], sample: list[pd.DataFrame]) -> None:
        """Fit on a chunk's training rows; keep the first rows as the sample (a copy: a slice would pin the chunk)."""
        self.fitter.add(part)
        x = column_matrix(part, numeric)
        self.moments.add(x)
        self.histograms.add(x[:, :MAX_HISTOGRAMS])
        if task.regression:
            self.target_moments.add(task.encode(part.column(task.name).to_pandas()).astype(np.float64)[:, None])
        if sum(len(f) for f in sample) < SAMPLE_ROWS:
            sample.append(part.slice(0, SAMPLE_ROWS).to_pandas())

    def merge(self, later: _PartialFit) -> _PartialFit:
        self.fitter.merge(later.fitter)
        self.moments.merge(later.moments)
        self.histograms.merge(later.histograms)
        self.target_moments.merge(later.target_moments)
        return self


@dataclass
class Passes:
    """What prepare's two passes found, however they ran: on this process or on a cluster."""

    ranges: Ranges
    rows: int
    task: Target
    plans: list[np.ndarray]
    encoding: Encoding
    moments: Moments
    histograms: Histograms
    sample: list[pd.DataFrame]


def _record(ctx: StepContext, params: DataParams, seed: int, shown: str, passes: Passes) -> Prepared:
    """Store the encoding and schema, log the counts, and say what the notebook shows."""
    ranges, rows, task, plans, encoding = passes.ranges, passes.rows, passes.task, passes.plans, passes.encoding
    target = params.target
    numeric = [c for c in ranges.columns if c in ranges.low]
    ctx.save_artifact(ENCODING, encoding.to_json())
    notes = silent_choices(params, encoding, ranges, rows)
    ctx.save_artifact(
        SCHEMA,
        {
            "inputs": encoding.inputs,
            "features": encoding.features,
            "target": target,
            "task": task.task,
            "classes": [_plain(c) for c in task.classes] if task.classes else None,
            "dropped": list(params.drop),
            "rows_without_target": task.missing,
            "source": shown,
            "seed": seed,  # the split's; validation fits its gradient-boosting baseline with it too
            "notes": notes,
        },
    )
    split_counts = {name: int(sum((plan == i).sum() for plan in plans)) for i, name in enumerate(SPLITS)}
    counts = pd.DataFrame({"split": [*SPLITS, "total"], "rows": [*split_counts.values(), rows - task.missing]})
    if task.missing:
        counts.loc[len(counts)] = ["dropped: no target", task.missing]
    ctx.log_metrics(
        {f"rows_{s}": n for s, n in split_counts.items()}
        | {
            "rows_total": rows - task.missing,
            "rows_without_target": task.missing,
            "inputs": len(encoding.inputs),
            "features": len(encoding.features),
            "classes": len(task.classes or []),
        }
    )
    return Prepared(
        _schema(ranges, encoding, target, params.drop),
        counts,
        _balance(task, plans),
        pd.concat(passes.sample, ignore_index=True).head(SAMPLE_ROWS),
        encoding.inputs,
        target,
        passes.moments.summary(numeric),
        dict(zip(numeric, zip(passes.histograms.counts, passes.histograms.edges, strict=True), strict=False)),
        encoding,
        task,
        Notes(tuple(notes)),
    )


def _groups(task: Target, values: pa.ChunkedArray) -> np.ndarray:
    """Per row, its stratum: the class index, 0 for every regression row, -1 without a target."""
    y = task.encode(values.to_pandas())
    if task.regression:
        return np.where(np.isnan(y), -1, 0)
    return y


def _balance(task: Target, plans: list[np.ndarray]) -> pd.DataFrame:
    """Rows per class and split; for regression, the rows of each split (one group)."""
    index = pd.Index(task.classes if task.classes else ["all rows"], name=task.name)
    return pd.DataFrame(
        {name: [int((plan == i).sum()) for plan in plans] for i, name in enumerate(SPLITS)}, index=index
    )


def _schema(ranges: Ranges, encoding: Encoding, target: str, drop: list[str]) -> pd.DataFrame:
    types = {spec["name"]: spec["type"] for spec in encoding.columns}
    names = ranges.schema.names
    return pd.DataFrame(
        {
            "column": names,
            "dtype": [str(f.type) for f in ranges.schema],
            "min": [ranges.low.get(c) for c in names],
            "max": [ranges.high.get(c) for c in names],
            "role": ["target" if c == target else "dropped" if c in drop else types.get(c, "feature") for c in names],
        }
    )


def encoding_table(encoding: Encoding) -> pd.DataFrame:
    """One row per input column: its type as fitted, training gaps, and the model features it becomes."""
    rows = []
    for spec in encoding.columns:
        kind = spec["type"]
        if kind == "category":
            values = spec["values"]
            detail = ", ".join(map(str, values[:6])) + (f" ... ({len(values)} kept)" if len(values) > 6 else "")
        elif kind == "date":
            detail = ", ".join(spec["parts"])
        else:
            detail = f"mean {spec['mean']:.4g}, scale {spec['scale']:.4g}"
        rows.append(
            {
                "column": spec["name"],
                "type": kind,
                "dtype": spec["dtype"],
                "gaps": spec.get("gaps", 0),
                "features": len(feature_names(spec)),
                "encoding": detail,
            }
        )
    return pd.DataFrame(rows).set_index("column")


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
    """The side of the square image each row is, or None when the features are a plain table."""
    return prepared.encoding.image_side if prepared.encoding else None


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


# ---- engine: dask -------------------------------------------------------------------------------------
# The same two passes, each partition (a file of the Parquet source) on a worker. Pass 1 counts; the
# split plan is drawn from the whole table's class counts exactly as above, then cut per partition at
# the per-class prefix sums in file order, so every row lands in the split one pass gives it. Pass 2
# writes each partition's split rows as a part of each split (prepare/train/part-NNNNN.parquet) and fits
# partial states that a tree reduction merges in order into the one-pass fit.


@dataclass(frozen=True)
class _Job:
    """What every partition's task needs to know (sent once with each task; small)."""

    params: DataParams
    where: str
    chunk_rows: int
    store: str = ""
    split_keys: tuple[str, ...] = ()
    task: Target | None = None
    ranges: Ranges | None = None


def _first_pass(fragment: Partition, job: _Job) -> tuple[TargetFitter, Ranges | None, EncodingFitter, int]:
    """One partition's target counts, numeric ranges and rows; its columns checked and typed."""
    from workbench.engine.partitions import read_partition

    params = job.params
    labels = TargetFitter(params.target, params.task, job.where)
    fitter = _fitter(params, job.where)
    ranges, rows = None, 0
    for table in read_partition(fragment, job.chunk_rows):
        labels.add(table)
        if ranges is None:
            fitter.add(table.slice(0, 0))
            assert fitter.columns is not None
            ranges = Ranges(table.schema, [c.name for c in fitter.columns if c.kind == NUMERIC])
        ranges.add(table)
        rows += table.num_rows
    return labels, ranges, fitter, rows


def _fitter(params: DataParams, where: str) -> EncodingFitter:
    return EncodingFitter(
        target=params.target,
        drop=params.drop,
        categorical=params.categorical,
        max_categories=params.max_categories,
        where=where,
    )


def _second_pass(
    fragment: Partition, job: _Job, plans: list[np.ndarray]
) -> tuple[_PartialFit, list[ArtifactInfo], pd.DataFrame]:
    """One partition split by its slice of the plan, each split's rows written as this partition's
    part (replaced whole if the task runs again), and the partial fit of its training rows."""
    import pyarrow.parquet as pq

    from workbench.engine.partitions import read_partition
    from workbench.storage import open_store
    from workbench.storage.catalog import part_key

    params, task, ranges = job.params, job.task, job.ranges
    assert task is not None and ranges is not None
    numeric = [c for c in ranges.columns if c in ranges.low]
    fit = _PartialFit(
        _fitter(params, job.where), Moments(len(numeric)), Histograms(ranges, numeric[:MAX_HISTOGRAMS]), Moments(1)
    )
    seen = np.zeros(len(plans), dtype=np.int64)
    sample: list[pd.DataFrame] = []
    store = open_store(job.store)
    with tempfile.TemporaryDirectory(prefix="prepare-part-", dir=scratch.root()) as tmp:
        writers: dict[str, pq.ParquetWriter] = {}
        for table in read_partition(fragment, job.chunk_rows):
            if not writers:
                fit.fitter.add(table.slice(0, 0))
                writers = {
                    name: pq.ParquetWriter(Path(tmp) / SPLIT_ARTIFACTS[name].file, table.schema) for name in SPLITS
                }
            assigned = _assign(task, table.column(params.target), plans, seen, job.where)
            _write_splits(table, assigned, writers, fit, task, numeric, sample)
        if any(seen[c] != len(plans[c]) for c in range(len(plans))):
            raise DataError(f"{job.where}changed while it was read; run the step again")
        infos = []
        for name, key in zip(SPLITS, job.split_keys, strict=True):
            if name in writers:
                writers[name].close()
                infos.append(store.put_file(part_key(key, fragment.index), Path(tmp) / SPLIT_ARTIFACTS[name].file))
    head = pd.concat(sample, ignore_index=True).head(SAMPLE_ROWS) if sample else pd.DataFrame()
    return fit, infos, head


def _partition_groups(task: Target, labels: TargetFitter, rows: int) -> list[int]:
    """A partition's rows per stratum (class, or the one regression group), as pass 2 will meet them."""
    if task.regression:
        return [rows - labels.missing]
    by_key: dict[str | None, int] = {}
    for value, n in labels.counts.items():
        key = category_key(value)
        by_key[key] = by_key.get(key, 0) + n
    return [by_key.get(category_key(c), 0) for c in task.classes or []]


def prepare_on_cluster(
    ctx: StepContext,
    params: DataParams,
    *,
    seed: int,
    dask: DaskParams,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool = True,
) -> Prepared:
    """:func:`prepare_data` with its two passes on a Dask cluster, one task per Parquet file of
    ``params.source``: the same splits row for row, the same encoding (categories identical, means
    and scales to rounding), each split stored as parts ``prepare/<split>/part-NNNNN.parquet``."""
    from workbench.engine.cluster import connect, pick, run_tasks, tree_reduce
    from workbench.engine.partitions import partitions

    shown = describe(params.source)
    where = f"data.source {shown}: "
    parts = partitions(params.source, "data.source")
    weights = [f.rows for f in parts]
    job = _Job(params, where, chunk_rows)
    with connect(dask.scheduler) as client:
        calls = [(fragment, job) for fragment in parts]
        counted = client.gather(
            run_tasks(client, _first_pass, calls, desc="checking", weights=weights, progress=progress)
        )
        labels, ranges, fitter, _ = copy.deepcopy(counted[0])  # counted[0] itself cuts partition 0's plan
        for part_labels, part_ranges, part_fitter, _ in counted[1:]:
            labels.merge(part_labels)
            fitter.merge(part_fitter)  # names and types refused before the long pass, not after
            if part_ranges is not None:
                ranges = part_ranges if ranges is None else ranges.merge(part_ranges)
        rows = sum(c[3] for c in counted)
        if ranges is None or not rows:
            raise DataError(f"{where}no rows")
        task, groups, plans = _plan(labels, rows, params, seed, where)
        offsets = np.zeros(len(groups), dtype=np.int64)
        slices = []
        for part_labels, _, _, part_rows in counted:
            n = np.asarray(_partition_groups(task, part_labels, part_rows), dtype=np.int64)
            slices.append([plan[a : a + k] for plan, a, k in zip(plans, offsets, n, strict=True)])
            offsets += n
        for name in SPLITS:  # an earlier attempt's one file, or its parts past this source's count
            ctx.discard(SPLIT_ARTIFACTS[name])
        keys = tuple(ctx.key(SPLIT_ARTIFACTS[name]) for name in SPLITS)
        job = _Job(params, where, chunk_rows, ctx.store.root, keys, task, ranges)
        calls = [(fragment, job, plan) for fragment, plan in zip(parts, slices, strict=True)]
        futures = run_tasks(client, _second_pass, calls, desc="splitting", weights=weights, progress=progress)
        fit = tree_reduce(client, pick(client, futures, 0))
        written = client.gather(pick(client, futures, 1))
        sample = client.gather(pick(client, futures, 2))
    for infos in written:
        for info in infos:
            ctx.tracker.log_artifact(ctx.run_id, ctx.step, info)
    if task.regression:
        task = task.with_moments(float(fit.target_moments.mean[0]), float(fit.target_moments.std[0]))
    encoding = fit.fitter.finish()
    encoding.target = task
    sample = [frame for frame in sample if len(frame)] or [pd.DataFrame()]
    return _record(
        ctx, params, seed, shown, Passes(ranges, rows, task, plans, encoding, fit.moments, fit.histograms, sample)
    )
