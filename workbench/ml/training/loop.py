"""The optimisation loop and all the state a checkpoint must hold to continue exactly.

The splits are small enough to live on the device as whole tensors, so batches are index slices
rather than a DataLoader: no worker processes, no per-batch host-to-device copies.
A split larger than memory streams instead (:class:`workbench.ml.streaming.StreamedSplit`).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn

from workbench.config.schema import FitSettings  # the train keys that shape the optimisation, and the seed
from workbench.errors import ModelError
from workbench.ml.training.graphs import CapturedStep, capture_plan, schedule_on_device
from workbench.ml.training.objective import CLASSES, Objective
from workbench.progress import progress as progress_bar

if TYPE_CHECKING:
    from workbench.ml.streaming import StreamedSplit


def chance_accuracy(labels: torch.Tensor) -> float:
    """The accuracy of always predicting the most frequent class: what a model must beat."""
    return (torch.bincount(labels).max() / len(labels)).item()


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    amp: torch.dtype | None,
    objective: Objective = CLASSES,
) -> dict[str, float]:
    """The validation metrics over ``x`` (loss and accuracy, or loss, RMSE, MAE and R²), summed on
    the device and read back once."""
    model.eval()
    totals = torch.zeros(4, device=x.device)
    autocast = torch.autocast(x.device.type, dtype=amp) if amp else nullcontext()
    with torch.no_grad(), autocast:
        for start in range(0, len(x), batch):
            totals += objective.totals(model(x[start : start + batch]), y[start : start + batch])
    return objective.metrics(totals.tolist(), len(x), "val")


def to_device(array: Any, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


class Trainer:
    """The optimisation loop and all the state a checkpoint must hold to continue exactly.

    Under torch.distributed each rank takes its share of every global batch, so N processes
    take the same steps as one process with the same batch size.
    """

    def __init__(
        self,
        model: nn.Module,
        settings: FitSettings,
        amp: torch.dtype | None = None,
        compile: str = "off",
        objective: Objective = CLASSES,
    ) -> None:
        objective.check_monitor(settings.monitor)
        self.model, self.settings, self.amp, self.objective = model, settings, amp, objective
        device = next(model.parameters()).device
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        self.plan = capture_plan(compile, device, settings.clip_grad_norm, amp is torch.float16, 2 if ddp else 1)
        # fused Adam on CUDA: one kernel for the whole update instead of several per parameter
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=settings.lr, fused=device.type == "cuda", capturable=self.plan.captured
        )
        # cosine decay to zero: late epochs take small steps, so the final weights are not a lucky pick
        if settings.schedule == "cosine":
            self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=settings.epochs)
        else:
            self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        # fp16 needs loss scaling to keep small gradients; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
        self.generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        self.history: list[dict[str, float]] = []
        self.best, self.best_state, self.stale = float("inf"), None, 0  # best monitored value, as a loss

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def done(self) -> bool:
        stopped = self.settings.patience and self.stale >= self.settings.patience
        return self.epoch >= self.settings.epochs or bool(stopped)

    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": unwrap(self.model).state_dict(),
            "optimizer": _portable(self.optimizer.state_dict()),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "best": self.best,
            "best_state": self.best_state,
            "stale": self.stale,
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.history, self.best, self.best_state, self.stale = (
            state["history"],
            state["best"],
            state["best_state"],
            state["stale"],
        )

    def run(
        self,
        train: tuple[torch.Tensor, torch.Tensor] | StreamedSplit,
        val: tuple[torch.Tensor, torch.Tensor] | StreamedSplit,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        progress: bool = True,
        rank: int = 0,
        world: int = 1,
    ) -> pd.DataFrame:
        """Train until the epoch budget or early stopping; returns one history row per epoch.

        Raises :class:`ModelError` at the end of the first epoch whose train or validation loss is
        not finite, before that epoch reaches ``on_epoch``: the last good checkpoint stays.
        """
        bar = progress_bar(
            total=self.settings.epochs,
            initial=self.epoch,
            desc="training",
            unit="epoch",
            enabled=progress and rank == 0,
        )
        try:
            self._loop(train, val, bar, on_epoch, rank, world)
        finally:
            bar.close()
        if self.best_state is not None:  # early stopping keeps the best epoch's weights
            unwrap(self.model).load_state_dict(self.best_state)
        return pd.DataFrame(self.history)

    def _loop(
        self,
        train: tuple[torch.Tensor, torch.Tensor] | StreamedSplit,
        val: tuple[torch.Tensor, torch.Tensor] | StreamedSplit,
        bar: Any,
        on_epoch: Callable[[int, dict[str, float]], None] | None,
        rank: int,
        world: int,
    ) -> None:
        streamed = not isinstance(train, tuple)  # a StreamedSplit: batches come from its loader
        x, y = (train, None) if streamed else train
        device, cfg = x.device, self.settings
        autocast = torch.autocast(device.type, dtype=self.amp) if self.amp else nullcontext()
        graph, sync_lr = None, None
        if self.plan.captured and not self.done and not streamed and len(x) >= cfg.batch_size:
            # captured after any checkpoint was loaded: the graph holds the tensors it finds now
            sync_lr = schedule_on_device(self.optimizer)
            graph = CapturedStep(self.model, self.optimizer, self.objective.loss, autocast, x, y, cfg.batch_size)
        while not self.done:
            self.model.train()
            started = time.perf_counter()
            order = None if streamed else torch.randperm(len(x), generator=self.generator).to(device)
            # running totals stay on the device: no host tensor and no sync per step, read once an epoch
            loss_sum = torch.zeros((), device=device)
            hits = torch.zeros((), device=device)
            rows = 0
            if streamed:
                rows = self._streamed_epoch(train, autocast, rank, world, loss_sum, hits)
            for start in range(0, 0 if order is None else len(x), cfg.batch_size):
                idx = order[start : start + cfg.batch_size][rank::world]
                if graph is not None and len(idx) == cfg.batch_size:
                    loss, logits = graph.run(idx)
                    yb = graph.y
                else:
                    loss, logits, yb = self._eager_step(x[idx], y[idx], autocast, keep_grads=graph is not None)
                loss_sum += loss.detach() * len(idx)
                hits += self.objective.hits(logits.detach(), yb)
                rows += len(idx)
            totals = torch.stack([loss_sum, hits, loss_sum.new_tensor(float(rows))])
            if world > 1:
                torch.distributed.all_reduce(totals)
            seen = totals.tolist()
            val_metrics = evaluate_split(self.model, val, self.amp, self.objective)
            row = {
                "epoch": self.epoch + 1,
                "lr": float(self.schedule.get_last_lr()[0]),
                **self.objective.train_metrics(seen[0], seen[1], seen[2]),
                **val_metrics,
                "seconds": time.perf_counter() - started,
            }
            # checked once per epoch from the totals kept on the device (no per-step sync), and before
            # the epoch is recorded, so no NaN reaches the history, the checkpoint or the metrics
            self._stop_if_not_finite(row, x, val[0] if isinstance(val, tuple) else val)
            self.schedule.step()
            if sync_lr is not None:
                sync_lr()
            self.history.append(row)
            score = row[cfg.monitor] * (-1 if cfg.monitor == "val_accuracy" else 1)
            if score < self.best:
                self.best, self.stale = score, 0
                if cfg.patience:
                    self.best_state = {k: v.detach().clone() for k, v in unwrap(self.model).state_dict().items()}
            else:
                self.stale += 1
            bar.update(1)
            bar.set_postfix({self.objective.score: f"{row[self.objective.score]:.4g}"}, refresh=False)
            if on_epoch:
                on_epoch(row["epoch"], row)

    def _streamed_epoch(
        self, train: StreamedSplit, autocast: Any, rank: int, world: int, loss_sum: torch.Tensor, hits: torch.Tensor
    ) -> int:
        """One epoch over a streamed split, adding to the running totals in place; returns the rows.
        The loader's order is drawn from (seed, epoch), so a checkpoint's epoch is its whole position."""
        rows = 0
        cfg = self.settings
        for xb, yb in train.batches(cfg.batch_size, seed=cfg.seed, epoch=self.epoch, rank=rank, world=world):
            loss, logits, _ = self._eager_step(xb, yb, autocast, keep_grads=False)
            loss_sum += loss.detach() * len(yb)
            hits += self.objective.hits(logits.detach(), yb)
            rows += len(yb)
        return rows

    def _eager_step(
        self, xb: torch.Tensor, yb: torch.Tensor, autocast: Any, keep_grads: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step the usual way. Beside a captured step (a last partial batch), gradients are
        zeroed in place: the graph owns those buffers."""
        cfg = self.settings
        with autocast:
            logits = self.model(xb)
            loss = self.objective.loss(logits, yb)
        self.optimizer.zero_grad(set_to_none=not keep_grads)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, logits, yb

    def _stop_if_not_finite(self, row: dict[str, float], x_train: torch.Tensor, x_val: torch.Tensor) -> None:
        """A NaN or inf loss never recovers and would poison the checkpoint and the metrics; say
        whether the data (an inf in a split) or the optimisation (too large a step) is to blame."""
        for split, key, x in (("train", "train_loss", x_train), ("validation", "val_loss", x_val)):
            value = row[key]
            if math.isfinite(value):
                continue
            if hasattr(x, "bad_rows"):  # a StreamedSplit counts them row group by row group
                bad_rows = x.bad_rows()
            else:
                bad_rows = int((~torch.isfinite(x.reshape(len(x), -1))).any(dim=1).sum())
            if bad_rows:
                raise ModelError(
                    f"training stopped at epoch {row['epoch']}: {split} loss is {value} because the {split} split "
                    f"has {bad_rows} row(s) with inf or nan features; fix them in data.source and rerun prepare"
                )
            raise ModelError(
                f"training diverged at epoch {row['epoch']}: {split} loss is {value}; "
                f"try a lower train.lr (now {self.settings.lr:g})"
            )


def _portable(state: dict[str, Any]) -> dict[str, Any]:
    """An optimiser state whose learning rates are numbers (a captured step keeps them as device
    tensors), so a checkpoint resumes with or without train.compile."""
    for group in state["param_groups"]:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])
    return state


def evaluate_split(
    model: nn.Module,
    split: tuple[torch.Tensor, torch.Tensor] | StreamedSplit,
    amp: torch.dtype | None,
    objective: Objective = CLASSES,
) -> dict[str, float]:
    """The validation metrics of a split in memory (:func:`evaluate`) or streamed (in bounded memory)."""
    if isinstance(split, tuple):
        return evaluate(model, *split, 1024, amp, objective)
    return split.evaluate(model, amp, objective=objective)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def state_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
