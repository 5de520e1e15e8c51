"""The training stage: a plain PyTorch loop with the production details built in.

The splits are small enough to live on the device as whole tensors, so batches are index slices
rather than a DataLoader: no worker processes, no per-batch host-to-device copies.
"""

from __future__ import annotations

import io
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from workbench.data import load_split
from workbench.errors import ModelError
from workbench.models import build_model, model_config

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from workbench.context import StepContext


def choose_device(name: str) -> torch.device:
    """``auto`` takes the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"train.device {name!r}: no CUDA device is visible here; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(
                f"train.device {name!r}: only {torch.cuda.device_count()} CUDA device(s); pick a lower index"
            )
    return device


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it (no loss scaling needed), else fp16; none on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def environment(device: torch.device, amp: torch.dtype | None) -> dict[str, Any]:
    """What a reader needs to reproduce the numbers: device, GPU, library versions."""
    info: dict[str, Any] = {
        "device": str(device),
        "amp": str(amp).replace("torch.", "") if amp else "off",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info |= {
            "gpu": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return info


@dataclass
class TrainResult:
    history: pd.DataFrame
    metrics: dict[str, float]
    environment: dict[str, Any]
    config: dict[str, Any]


def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, amp: torch.dtype | None
) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    autocast = torch.autocast(x.device.type, dtype=amp) if amp else nullcontext()
    with torch.no_grad(), autocast:
        for start in range(0, len(x), batch):
            logits = model(x[start : start + batch]).float()
            loss_sum += nn.functional.cross_entropy(logits, y[start : start + batch], reduction="sum").item()
            correct += (logits.argmax(1) == y[start : start + batch]).sum().item()
    return loss_sum / len(x), correct / len(x)


def _to_device(array: Any, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    amp: torch.dtype | None = None,
    on_epoch: Any = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train in place and return one history row per epoch; ``on_epoch(epoch, row)`` may save."""
    x, y = train
    device = x.device
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # cosine decay to zero: late epochs take small steps, so the final weights are not a lucky pick
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    # fp16 needs loss scaling to keep small gradients; bf16 has fp32's range and does not.
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    autocast = torch.autocast(device.type, dtype=amp) if amp else nullcontext()
    rows = []
    bar = tqdm(
        range(1, epochs + 1), desc="training", unit="epoch", file=sys.stderr, disable=not progress, mininterval=2
    )
    for epoch in bar:
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(x), generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            with autocast:
                logits = model(xb)
                loss = nn.functional.cross_entropy(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == yb).sum()
        val_loss, val_acc = _evaluate(model, *val, batch=1024, amp=amp)
        row = {
            "epoch": epoch,
            "lr": schedule.get_last_lr()[0],
            "train_loss": loss_sum.item() / len(x),
            "train_accuracy": correct.item() / len(x),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "seconds": time.perf_counter() - started,
        }
        schedule.step()
        rows.append(row)
        bar.set_postfix(val_accuracy=f"{val_acc:.3f}", refresh=False)
        if on_epoch:
            on_epoch(epoch, row)
    return pd.DataFrame(rows)


def _state_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def train_model(
    ctx: StepContext, model: str, epochs: int, batch_size: int, lr: float, device: str, amp: bool, seed: int
) -> TrainResult:
    """Train on the prepared splits; save ``model.pth``, its config, a checkpoint per epoch, curves."""
    torch.manual_seed(seed)
    target = choose_device(device)
    dtype = amp_dtype(target, amp)
    train, val = load_split(ctx, "train"), load_split(ctx, "val")
    schema = ctx.load_json("schema.json", "prepare")
    config = model_config(model, train.x.shape[1], len(schema["classes"]))
    net = build_model(config).to(target)

    def checkpoint(epoch: int, row: dict[str, float]) -> None:
        ctx.log_metrics({k: v for k, v in row.items() if k != "epoch"}, epoch=epoch)
        ctx.save(
            f"checkpoints/epoch_{epoch:03d}.pt",
            _state_bytes({"config": config, "epoch": epoch, "model": net.state_dict()}),
        )

    history = fit(
        net,
        (_to_device(train.x, target), _to_device(train.y, target)),
        (_to_device(val.x, target), _to_device(val.y, target)),
        epochs,
        batch_size,
        lr,
        seed,
        dtype,
        on_epoch=checkpoint,
    )
    env = environment(target, dtype)
    final = history.iloc[-1]
    metrics = {
        "val_accuracy": float(final.val_accuracy),
        "val_loss": float(final.val_loss),
        "train_seconds": float(history.seconds.sum()),
    }
    ctx.log_metrics(metrics)
    ctx.save("model.pth", _state_bytes({k: v.cpu() for k, v in net.state_dict().items()}))
    ctx.save_json("model_config.json", config)
    ctx.save_json("environment.json", env)
    ctx.save("history.csv", history.to_csv(index=False).encode())
    ctx.save_figure("curves.png", plot_history(history))
    return TrainResult(history, metrics, env, config)


def plot_history(history: pd.DataFrame) -> Figure:
    """Loss and accuracy per epoch, train against validation."""
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_ax.plot(history.epoch, history.train_loss, label="train")
    loss_ax.plot(history.epoch, history.val_loss, label="validation")
    loss_ax.set(title="loss", xlabel="epoch", yscale="log")
    acc_ax.plot(history.epoch, history.train_accuracy, label="train")
    acc_ax.plot(history.epoch, history.val_accuracy, label="validation")
    acc_ax.set(title="accuracy", xlabel="epoch", ylim=(min(0.8, history.val_accuracy.min()), 1.0))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig
