"""Training samples/s: the workbench loop against a minimal hand-written PyTorch loop and Lightning.

All train the same model (the digits CNN, or with ``--model mlp`` a 64-2048-2048-10 MLP whose
weights dominate) on the same normalised data, batch size, epochs and optimiser (Adam, fused on
CUDA for both the workbench and the hand-written loop), each validating once per epoch; they take
turns within one process so machine noise hits all alike. Prints samples/s for each and the
ratios, once per batch size; targets: workbench at least 1.0 of the hand-written loop (first bar
0.97) at batch 64 to 2,048, and faster than Lightning.

    python benchmarks/train_throughput.py [--epochs 5] [--repeat 3] [--device cpu|cuda]
    python benchmarks/train_throughput.py --model mlp --batch-sizes 64,256,2048 --no-lightning
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import numpy as np
import torch
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
    "mlp": lambda: MLP(64, 10, hidden=2048),  # 64-2048-2048-10: weights dominate, as in larger tables
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
