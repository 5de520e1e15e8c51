"""Splits larger than memory: Parquet row groups streamed through a prefetching loader.

A split that fits (see :func:`fits`) is loaded whole by :func:`workbench.ml.dataset.load_split` and
batched by index slices on the device. One that does not is a :class:`StreamedSplit`: its row groups
are read one at a time by a background thread (into pinned buffers when training on CUDA),
encoded with the fitted :class:`~workbench.ml.encoding.Encoding` exactly as ``load_split``
does, and batched from a shuffle buffer, so memory follows ``train.shuffle_buffer`` and the row
group size, not the split.

The order of an epoch depends on ``(seed, epoch)`` alone: the row groups' order and every shuffle of
the buffer are drawn from ``numpy.random.default_rng([seed, epoch])``. A checkpoint written after
epoch k therefore holds the loader's whole position (the epoch), and a resumed run streams epoch
k + 1 exactly as an uninterrupted one would.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from workbench.errors import DataError
from workbench.ml.encoding import Encoding, Target
from workbench.ml.training.objective import CLASSES, Objective
from workbench.storage import scratch
from workbench.storage.catalog import SPLIT_ARTIFACTS, parts_prefix, suffix

if TYPE_CHECKING:
    import pyarrow as pa

    from workbench.run.context import StepContext

IN_MEMORY, STREAMED = "in memory", "streamed"

# Loading a split whole peaks at several times its final size: the Parquet frame (8 bytes a
# feature), the float64 columns the encoding works in, and the float32 result (+ the int64 labels).
SAFETY = 5.0
# Without train.max_memory_gb, a split's data may take this share of the memory free now.
FREE_SHARE = 0.5


def split_bytes(rows: int, features: int) -> int:
    """The size of a split as model input: float32 features and int64 labels."""
    return rows * (features * 4 + 8)


def host_available() -> int:
    """Bytes of host memory available now (MemAvailable on Linux, free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_budget(max_memory_gb: float, device: torch.device) -> int:
    """Bytes the splits may take: ``train.max_memory_gb``, or 0 for half of what is free now on the
    host (and on the GPU when training there, the smaller of the two)."""
    if max_memory_gb > 0:
        return int(max_memory_gb * 2**30)
    free = host_available()
    if device.type == "cuda":
        free = min(free, torch.cuda.mem_get_info(device)[0])
    return int(free * FREE_SHARE)


def fits(rows: int, features: int, budget: int) -> bool:
    """Whether a split of ``rows`` x ``features`` can be loaded whole within ``budget`` bytes."""
    return split_bytes(rows, features) * SAFETY <= budget


def plan(train: tuple[int, int], val: tuple[int, int], budget: int) -> dict[str, str]:
    """In memory or streamed, per split, from their (rows, features): both in memory when both fit
    together; otherwise the training split streams and validation stays in memory if it alone fits
    in half the budget."""
    if fits(train[0] + val[0], train[1], budget):
        return {"train": IN_MEMORY, "val": IN_MEMORY}
    return {"train": STREAMED, "val": IN_MEMORY if fits(*val, budget // 2) else STREAMED}


def split_file(ctx: StepContext, name: str) -> Path:
    """A local Parquet file of the split: the SageMaker channel's or the local store's file in
    place; from S3 downloaded once to a temporary file (deleted when the process ends)."""
    from workbench.ml.dataset import SAGEMAKER_CHANNELS

    item = SPLIT_ARTIFACTS[name]
    channel = os.environ.get(SAGEMAKER_CHANNELS.get(name, SAGEMAKER_CHANNELS["train"]))
    if channel:
        path = Path(channel) / item.file
        if not path.is_file():
            raise DataError(f"{channel} has no {item.file}; use the prepare step's outputs as the {name} channel")
        return path
    from workbench.storage.parts import part_keys

    key = ctx.key(item)
    store = ctx.store
    keys = part_keys(store, key)  # the parts engine dask wrote, in order, or the one file
    if hasattr(store, "local_path"):
        path = store.local_path(key) if keys == [key] else store.local_path(parts_prefix(key))
        if keys == [key] and not path.is_file():
            store.read_bytes(key)  # raises the store's own "not found" error
        return path
    folder = scratch.make("split")
    path = folder / item.file if keys == [key] else folder / parts_prefix(item.file).rstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    for k in keys:
        target = path if keys == [key] else path / k.rpartition("/")[2]
        target.parent.mkdir(parents=True, exist_ok=True)
        with store.errors(k):
            store.client.download_file(store.bucket, store._full(k), str(target))
    return path


def split_files(path: Path) -> list[Path]:
    """The Parquet files of a split: the file itself, or a folder's parts in name order."""
    return sorted(path.glob("*" + suffix("parquet"))) if path.is_dir() else [path]


def parquet_shape(path: Path, features: int) -> tuple[int, int]:
    """(rows, features) of a Parquet split, from its footer alone."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in split_files(path)), features


class StreamedSplit:
    """One split read row group by row group, encoded on the fly, in bounded memory.

    Row groups are decoded ``chunk_rows`` rows at a time. ``batches`` yields (x, y) tensors on
    ``device``; ``peak_rows`` is the most rows it ever held at once (decoded chunks waiting in the
    prefetch queue, the one being decoded, and the shuffle buffer), at most
    ``shuffle_buffer + batch_size + (prefetch + 2) * chunk_rows``.
    """

    def __init__(
        self,
        path: str | Path,
        encoding: Encoding,
        target: Target,
        device: torch.device,
        shuffle_buffer: int = 65_536,
        prefetch: int = 2,
        chunk_rows: int = 16_384,
    ) -> None:
        import pyarrow.parquet as pq

        self.path, self.encoding, self.target, self.device = Path(path), encoding, target, device
        self.shuffle_buffer, self.prefetch = max(1, shuffle_buffer), max(1, prefetch)
        self.chunk_rows = max(1, chunk_rows)  # a row group is decoded this many rows at a time
        # row groups across the split's files (one, or the parts engine dask wrote): (file, group)
        self.files = split_files(self.path)
        self.group_at: list[tuple[int, int]] = []
        self.group_rows = []
        for f, file in enumerate(self.files):
            meta = pq.ParquetFile(file).metadata
            self.group_at += [(f, i) for i in range(meta.num_row_groups)]
            self.group_rows += [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.rows = sum(self.group_rows)
        self.features = len(encoding.features)
        self._lock = threading.Lock()
        self.held_rows = self.peak_rows = 0

    def __len__(self) -> int:
        return self.rows

    # ---- accounting ------------------------------------------------------------------------------

    def _hold(self, rows: int) -> None:
        with self._lock:
            self.held_rows += rows
            self.peak_rows = max(self.peak_rows, self.held_rows)

    def _release(self, rows: int) -> None:
        with self._lock:
            self.held_rows -= rows

    @property
    def bound_rows(self) -> int:
        """What :attr:`peak_rows` never exceeds for batches of ``batch_size`` 1 (add the batch size)."""
        return self.shuffle_buffer + (self.prefetch + 2) * min(self.chunk_rows, max(self.group_rows, default=0))

    # ---- reading -----------------------------------------------------------------------------------

    def _decode(self, table: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
        """A row group as model input, by the same steps as load_split (the fitted encoding to
        float32); targets as class indices or standardised numbers."""
        x = self.encoding.apply(table)
        y = self.target.model_target(table.column(self.target.name).to_pandas())
        if not self.target.regression and (y < 0).any():
            raise DataError(
                f"{self.path.name} has labels outside the encoding's classes in column {self.target.name!r}"
            )
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        if self.device.type == "cuda":
            xt, yt = xt.pin_memory(), yt.pin_memory()
        return xt, yt

    def _groups(self, order: list[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The row groups in ``order`` as decoded chunks, by a background thread ``prefetch`` ahead."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = [*self.encoding.inputs, self.target.name]
        ready: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                opened: dict[int, pq.ParquetFile] = {}
                try:
                    for i in order:
                        if stop.is_set():
                            return
                        f, group = self.group_at[i]
                        file = opened.get(f) or opened.setdefault(f, pq.ParquetFile(self.files[f]))
                        for chunk in file.iter_batches(self.chunk_rows, row_groups=[group], columns=columns):
                            self._hold(chunk.num_rows)
                            if not put(self._decode(pa.Table.from_batches([chunk]))):
                                self._release(chunk.num_rows)
                                return
                finally:
                    for file in opened.values():
                        file.close()
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)
                return
            put(None)

        thread = threading.Thread(target=produce, name="workbench-stream", daemon=True)
        thread.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while True:  # drop what was prefetched but not taken (an early stop)
                try:
                    left = ready.get_nowait()
                except queue.Empty:
                    break
                if isinstance(left, tuple):
                    self._release(len(left[1]))
            thread.join()

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of ``batch_size`` rows on the device (the last may be short); under
        torch.distributed each rank gets ``[rank::world]`` of each global batch, as in memory.

        ``epoch`` None: file order, nothing shuffled (evaluation). Otherwise the row groups come in
        an order drawn from (seed, epoch) and rows are shuffled within a buffer of at least
        ``shuffle_buffer`` rows.
        """
        rng = None if epoch is None else np.random.default_rng([seed, epoch])
        order = list(range(len(self.group_rows)))
        if rng is not None:
            order = [int(i) for i in rng.permutation(order)]
        fill = self.shuffle_buffer if rng is not None else batch_size
        pool_x: list[torch.Tensor] = []
        pool_y: list[torch.Tensor] = []
        pooled = 0

        def drain(final: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            nonlocal pool_x, pool_y, pooled
            x = torch.cat(pool_x) if len(pool_x) > 1 else pool_x[0]
            y = torch.cat(pool_y) if len(pool_y) > 1 else pool_y[0]
            if rng is not None:
                perm = torch.from_numpy(rng.permutation(len(y))).to(self.device, non_blocking=True)
                x, y = x[perm], y[perm]
            whole = len(y) if final else len(y) - len(y) % batch_size
            for start in range(0, whole, batch_size):
                yield x[start : start + batch_size][rank::world], y[start : start + batch_size][rank::world]
            rest = len(y) - whole
            self._release(pooled - rest)
            pool_x, pool_y, pooled = ([x[whole:]], [y[whole:]], rest) if rest else ([], [], 0)

        try:
            for xg, yg in self._groups(order):
                pool_x.append(xg.to(self.device, non_blocking=True))
                pool_y.append(yg.to(self.device, non_blocking=True))
                pooled += len(yg)
                if pooled >= fill:
                    yield from drain(final=False)
            if pooled:
                yield from drain(final=True)
        finally:  # also when the consumer stops early
            self._release(pooled)
            pool_x, pool_y, pooled = [], [], 0

    # ---- whole-split statistics in bounded memory --------------------------------------------------

    def evaluate(
        self, model: nn.Module, amp: torch.dtype | None, batch: int = 1024, objective: Objective = CLASSES
    ) -> dict[str, float]:
        """The split's validation metrics, as :func:`workbench.ml.training.loop.evaluate` computes them
        in memory (the same batches, in file order)."""
        model.eval()
        totals = torch.zeros(4, device=self.device)
        autocast = torch.autocast(self.device.type, dtype=amp) if amp else nullcontext()
        with torch.no_grad(), autocast:
            for xb, yb in self.batches(batch):
                totals += objective.totals(model(xb), yb)
        return objective.metrics(totals.tolist(), self.rows, "val")

    def chance_accuracy(self) -> float:
        """The share of the most frequent class (reads the label column only)."""
        import pyarrow.parquet as pq

        labels = pq.read_table(self.path, columns=[self.target.name]).column(self.target.name).to_pandas()
        return float(labels.value_counts().max() / len(labels))

    def bad_rows(self) -> int:
        """Rows with an inf or nan feature after encoding."""
        return sum(int((~torch.isfinite(x)).any(dim=1).sum()) for x, _ in self.batches(65_536))


def open_split(ctx: StepContext, name: str, device: torch.device, shuffle_buffer: int = 65_536) -> StreamedSplit:
    """The prepared split ``name`` as a :class:`StreamedSplit` on ``device``."""
    from workbench.ml.dataset import prepared_encoding, prepared_target

    encoding = prepared_encoding(ctx)
    return StreamedSplit(split_file(ctx, name), encoding, prepared_target(encoding), device, shuffle_buffer)
