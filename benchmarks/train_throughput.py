"""Training samples/s: the workbench loop against a minimal hand-written PyTorch loop and Lightning.

All train the same model (the digits CNN, or with ``--model mlp`` a 64-2048-2048-10 MLP whose
weights dominate) on the same normalised data, batch size, epochs and optimiser (Adam, fused on
CUDA for both the workbench and the hand-written loop), each validating once per epoch; they take
turns within one process so machine noise hits all alike. Prints samples/s for each and the
ratios, once per batch size; targets: workbench at least 1.0 of the hand-written loop (first bar
0.97) at batch 64 to 2,048, and faster than Lightning.

    python benchmarks/train_throughput.py [--epochs 5] [--repeat 3] [--device cpu|cuda]
    python benchmarks/train_throughput.py --model mlp --batch-sizes 64,256,2048 --no-lightning

``--streamed`` instead compares the workbench loop on a split streamed from Parquet (row groups of
65,536 rows, ``train.shuffle_buffer`` rows mixed) with the same split in memory (target: streamed at
least 0.9 of in-memory samples/s), then trains one epoch streamed in a fresh process on ``--rows`` and
10x as many rows (a small MLP; row groups of 65,536 rows, so use 4 or more of them) and compares
their peak RSS (target at most 1.2):

    python benchmarks/train_throughput.py --streamed [--rows 300000] [--copies 4] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from peak_memory import peak_rss_mib
from torch import nn

from workbench.ml.architectures import MLP, DigitCNN
from workbench.ml.training.loop import FitSettings, Trainer
from workbench.storage.sources import read_source


def data(
    device: torch.device, copies: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    frame = read_source("bundled:digits")
    x = frame.drop(columns="label").to_numpy(np.float32)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    y = frame.label.to_numpy(np.int64)
    x, y = np.tile(x, (copies, 1)), np.tile(y, copies)
    cut = len(x) * 4 // 5
    as_t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return (as_t(x[:cut]), as_t(y[:cut])), (as_t(x[cut:]), as_t(y[cut:]))


MODELS = {
    "cnn": lambda: DigitCNN(64, 10),
    "mlp": lambda: MLP(64, 10, width=2048),  # 64-2048-2048-10: weights dominate, as in larger tables
}


def workbench_loop(make, train, val, epochs: int, batch: int) -> None:
    torch.manual_seed(0)
    model = make().to(train[0].device)
    Trainer(model, FitSettings(epochs=epochs, batch_size=batch, lr=0.002, seed=0)).run(train, val, progress=False)


def hand_loop(make, train, val, epochs: int, batch: int) -> None:
    torch.manual_seed(0)
    x, y = train
    model = make().to(x.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002, fused=x.device.type == "cuda")
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), device=x.device)
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            nn.functional.cross_entropy(model(val[0]), val[1]).item()


def lightning_loop(make, train, val, epochs: int, batch: int) -> None:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make()

        def training_step(self, b, _):
            return nn.functional.cross_entropy(self.net(b[0]), b[1])

        def validation_step(self, b, _):
            self.log("val_loss", nn.functional.cross_entropy(self.net(b[0]), b[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.002)

    torch.manual_seed(0)
    device = train[0].device
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    cpu = lambda t: (t[0].cpu(), t[1].cpu())  # noqa: E731 - Lightning moves batches itself
    trainer.fit(
        Module(),
        DataLoader(TensorDataset(*cpu(train)), batch_size=batch, shuffle=True, pin_memory=device.type == "cuda"),
        DataLoader(TensorDataset(*cpu(val)), batch_size=len(val[0])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="one batch size (see --batch-sizes)")
    parser.add_argument("--batch-sizes", help="comma list, e.g. 64,256,2048: one comparison per size")
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn", help="cnn, or the 64-2048-2048-10 mlp")
    parser.add_argument("--no-lightning", action="store_true", help="compare with the hand-written loop only")
    parser.add_argument("--copies", type=int, default=4, help="tile the 1,797 digits this many times")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--streamed", action="store_true", help="streamed vs in memory: samples/s and peak memory")
    parser.add_argument("--rows", type=int, default=300_000, help="--streamed: rows of the memory run (and 10x)")
    parser.add_argument("--shuffle-buffer", type=int, default=65_536)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one streamed epoch on this Parquet file, for its RSS
    args = parser.parse_args()
    if args.child:
        return streamed_child(args)
    if args.streamed:
        return streamed(args)
    warnings.filterwarnings("ignore")
    for logger in ("lightning", "lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    train, val = data(torch.device(args.device), args.copies)
    make = MODELS[args.model]
    loops = {"workbench": workbench_loop, "hand-written": hand_loop}
    if not args.no_lightning:
        loops["lightning"] = lightning_loop
    sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else [args.batch_size]
    for batch in sizes:
        compare(loops, make, train, val, args, batch)


def compare(loops, make, train, val, args: argparse.Namespace, batch: int) -> None:
    """The loops in turns at one batch size; prints samples/s and the ratios."""
    samples = len(train[0]) * args.epochs
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for loop in loops.values():  # warm-up: first-call costs (kernels, imports) out of the timing
        loop(make, train, val, 1, batch)
    for i in range(args.repeat):
        order = list(loops) if i % 2 == 0 else list(reversed(loops))
        for name in order:
            if args.device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            loops[name](make, train, val, args.epochs, batch)
            if args.device == "cuda":
                torch.cuda.synchronize()
            rates[name].append(samples / (time.perf_counter() - started))
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"device {args.device}, model {args.model}, {len(train[0]):,} samples x {args.epochs} epochs, batch {batch}")
    for name, rate in median.items():
        print(f"  {name:<13} {rate:>10,.0f} samples/s")
    print(
        f"workbench / hand-written: {median['workbench'] / median['hand-written']:.3f}  (target >= 1.0, first bar 0.97)"
    )
    if "lightning" in median:
        print(f"workbench / lightning:    {median['workbench'] / median['lightning']:.3f}  (target > 1)")


# ---- --streamed: the loader against in-memory training, and its memory at 10x rows -----------------


def write_split(path: Path, rows: int, group: int = 65_536) -> None:
    """``rows`` digits (tiled) as the prepare step writes a split: raw columns, row groups of ``group``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = read_source("bundled:digits")
    with pq.ParquetWriter(path, pa.Schema.from_pandas(frame, preserve_index=False)) as writer:
        for start in range(0, rows, group):
            reps = -(-min(group, rows - start) // len(frame))
            part = pd.concat([frame] * reps, ignore_index=True).iloc[: min(group, rows - start)]
            writer.write_table(pa.Table.from_pandas(part, preserve_index=False), row_group_size=group)


def digits_encoding():
    """The encoding prepare fits, on all of the digits, with its target."""
    from workbench.ml.encoding import fit_encoding, fit_target

    frame = read_source("bundled:digits")
    encoding = fit_encoding([frame], target="label")
    encoding.target = fit_target([frame], "label")
    return encoding


def streamed_source(path: Path, device: torch.device, shuffle_buffer: int):
    from workbench.ml.streaming import StreamedSplit

    encoding = digits_encoding()
    return StreamedSplit(path, encoding, encoding.target, device, shuffle_buffer)


def small_val(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    frame = read_source("bundled:digits")
    x = digits_encoding().apply(frame)
    return torch.from_numpy(x).to(device), torch.from_numpy(frame.label.to_numpy(np.int64)).to(device)


def streamed_child(args: argparse.Namespace) -> None:
    """One epoch streamed from ``args.child`` (or loaded whole with --copies 0); prints peak RSS.
    A small MLP trains: the memory measured is the data's, and the epoch stays short."""
    device = torch.device(args.device)
    if args.copies == 0:
        split = streamed_source(Path(args.child), device, args.shuffle_buffer)
        xs, ys = zip(*split.batches(65_536), strict=True)
        train = (torch.cat(xs), torch.cat(ys))
    else:
        train = streamed_source(Path(args.child), device, args.shuffle_buffer)
    torch.manual_seed(0)
    model = MLP(64, 10, width=64).to(device)
    Trainer(model, FitSettings(epochs=1, batch_size=args.batch_size, lr=0.002, seed=0)).run(
        train, small_val(device), progress=False
    )
    print(json.dumps({"peak_rss_mb": peak_rss_mib()}))


def streamed(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    batch = args.batch_size
    with tempfile.TemporaryDirectory(prefix="workbench-bench-") as tmp:
        # samples/s: the same rows, in memory (index batches on the device) and streamed
        rows = 1797 * args.copies
        path = Path(tmp) / "train.parquet"
        write_split(path, rows)
        source = streamed_source(path, device, args.shuffle_buffer)
        xs, ys = zip(*source.batches(65_536), strict=True)
        whole = (torch.cat(xs), torch.cat(ys))
        val = small_val(device)
        make = MODELS[args.model]

        def run(train, epochs: int) -> None:
            torch.manual_seed(0)
            model = make().to(device)
            Trainer(model, FitSettings(epochs=epochs, batch_size=batch, lr=0.002, seed=0)).run(
                train, val, progress=False
            )

        loops = {"in memory": whole, "streamed": source}
        for train in loops.values():
            run(train, 1)  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in loops}
        for i in range(args.repeat):
            for name in list(loops) if i % 2 == 0 else list(reversed(loops)):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                run(loops[name], args.epochs)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                rates[name].append(rows * args.epochs / (time.perf_counter() - started))
        median = {name: statistics.median(r) for name, r in rates.items()}
        print(f"device {args.device}, model {args.model}, {rows:,} samples x {args.epochs} epochs, batch {batch}")
        for name, rate in median.items():
            print(f"  {name:<10} {rate:>10,.0f} samples/s")
        print(f"streamed / in memory: {median['streamed'] / median['in memory']:.3f}  (target >= 0.9)")

        # peak RSS of a fresh process training one epoch streamed, on N and 10N rows
        peaks = {}
        for n in (args.rows, 10 * args.rows):
            big = Path(tmp) / f"rows-{n}.parquet"
            write_split(big, n)
            command = [sys.executable, __file__, "--child", str(big), "--device", args.device, "--model", args.model]
            command += ["--batch-size", str(max(batch, 256)), "--shuffle-buffer", str(args.shuffle_buffer)]
            proc = subprocess.run(command, capture_output=True, text=True, check=True)
            peaks[n] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]
            big.unlink()
        command[3] = str(big := Path(tmp) / "in-memory.parquet")  # the same 10N rows loaded whole, for contrast
        write_split(big, 10 * args.rows)
        proc = subprocess.run([*command, "--copies", "0"], capture_output=True, text=True, check=True)
        whole_peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]
        small, large = peaks[args.rows], peaks[10 * args.rows]
        print(f"peak RSS in memory at {10 * args.rows:,} rows, for contrast: {whole_peak:,.0f} MB")
        print(f"peak RSS streamed: {small:,.0f} MB at {args.rows:,} rows, {large:,.0f} MB at {10 * args.rows:,} rows")
        print(f"streamed memory ratio ({10 * args.rows:,} vs {args.rows:,} rows): {large / small:.3f}  (target <= 1.2)")


if __name__ == "__main__":
    main()
