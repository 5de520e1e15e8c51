"""The training stage: a plain PyTorch loop with the production details built in.

The splits are small enough to live on the device as whole tensors, so batches are index slices
rather than a DataLoader: no worker processes, no per-batch host-to-device copies.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import pickle
import platform
import struct
import sys
import time
import zipfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.data import load_split, prepared_bytes
from workbench.errors import ModelError
from workbench.models import build_model, model_config
from workbench.progress import progress as progress_bar

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
        "numpy": np.__version__,
        "pandas": pd.__version__,
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


# A model is "near chance" when its final validation accuracy closes less than this share of the
# gap from chance (always predicting the most frequent validation class) to a perfect score: 0.325
# on ten balanced digits, 0.625 on a balanced binary task, 0.9625 where one class is 95% of the rows.
# A share of the gap rather than a fixed margin, so an imbalanced split does not hide a useless model.
NEAR_CHANCE_SHARE = 0.25


def chance_accuracy(labels: torch.Tensor) -> float:
    """The accuracy of always predicting the most frequent class: what a model must beat."""
    return (torch.bincount(labels).max() / len(labels)).item()


def is_near_chance(accuracy: float, chance: float) -> bool:
    """Whether ``accuracy`` is not clearly above ``chance`` (see :data:`NEAR_CHANCE_SHARE`)."""
    return accuracy < chance + NEAR_CHANCE_SHARE * (1.0 - chance)


def training_warnings(metrics: dict[str, float]) -> list[str]:
    """What a reader of the run must not miss, rebuilt from the step's final metrics alone, so the
    notebook, a distributed run and the HTML report all say the same thing."""
    found = []
    if metrics.get("near_chance"):
        found.append(
            f"validation accuracy {metrics['val_accuracy']:.3f} is near chance: always predicting the most "
            f"frequent class scores {metrics['chance_accuracy']:.3f}; the model has learnt little "
            "(check train.lr, train.epochs and the learning curves)"
        )
    return found


@dataclass(frozen=True)
class WarningBanner:
    """Warnings drawn in a colour a notebook reader sees (and as ``WARNING:`` lines in plain text),
    so a useless model is not mistaken for a finished one in JupyterLab or the HTML report."""

    lines: tuple[str, ...]

    def _repr_html_(self) -> str:
        if not self.lines:
            return '<p style="color:#1a7f37">No training warnings.</p>'
        items = "".join(f"<p style='margin:0.2em 0'><b>WARNING:</b> {html.escape(line)}</p>" for line in self.lines)
        return (
            '<div style="background:#fff4e5;border-left:6px solid #d1242f;color:#8a1c1c;padding:0.5em 1em">'
            f"{items}</div>"
        )

    def __repr__(self) -> str:
        return "\n".join(f"WARNING: {line}" for line in self.lines) or "No training warnings."


@dataclass
class TrainResult:
    history: pd.DataFrame
    metrics: dict[str, float]
    environment: dict[str, Any]
    config: dict[str, Any]
    resumed_from: int = 0
    warnings: list[str] = field(default_factory=list)  # see training_warnings

    def warning_banner(self) -> WarningBanner:
        """The warnings for display: a notebook cell that ends with this shows them in colour."""
        return WarningBanner(tuple(self.warnings))


@dataclass(frozen=True)
class FitSettings:
    """Everything that shapes the optimisation; a checkpoint only resumes under the same settings."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    patience: int = 0  # epochs without a better monitored metric before stopping; 0 never stops early
    clip_grad_norm: float = 0.0  # max gradient L2 norm; 0 leaves gradients alone
    schedule: str = "cosine"  # cosine decay to zero, or constant
    monitor: str = "val_loss"  # what early stopping watches: val_loss (lower is better) or val_accuracy


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


class Trainer:
    """The optimisation loop and all the state a checkpoint must hold to continue exactly.

    Under torch.distributed each rank takes its share of every global batch, so N processes
    take the same steps as one process with the same batch size.
    """

    def __init__(self, model: nn.Module, settings: FitSettings, amp: torch.dtype | None = None) -> None:
        self.model, self.settings, self.amp = model, settings, amp
        self.optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
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
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
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
        _unwrap(self.model).load_state_dict(state["model"])
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
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
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
            _unwrap(self.model).load_state_dict(self.best_state)
        return pd.DataFrame(self.history)

    def _loop(
        self,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        bar: Any,
        on_epoch: Callable[[int, dict[str, float]], None] | None,
        rank: int,
        world: int,
    ) -> None:
        x, y = train
        device, cfg = x.device, self.settings
        autocast = torch.autocast(device.type, dtype=self.amp) if self.amp else nullcontext()
        while not self.done:
            self.model.train()
            started = time.perf_counter()
            order = torch.randperm(len(x), generator=self.generator).to(device)
            totals = torch.zeros(3, device=device)  # loss sum, correct, rows (this rank)
            for start in range(0, len(x), cfg.batch_size):
                idx = order[start : start + cfg.batch_size][rank::world]
                xb, yb = x[idx], y[idx]
                with autocast:
                    logits = self.model(xb)
                    loss = nn.functional.cross_entropy(logits.float(), yb)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if cfg.clip_grad_norm:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                totals += torch.stack(
                    [loss.detach() * len(idx), (logits.argmax(1) == yb).sum(), torch.tensor(len(idx), device=device)]
                )
            if world > 1:
                torch.distributed.all_reduce(totals)
            val_loss, val_acc = _evaluate(self.model, *val, batch=1024, amp=self.amp)
            row = {
                "epoch": self.epoch + 1,
                "lr": self.schedule.get_last_lr()[0],
                "train_loss": (totals[0] / totals[2]).item(),
                "train_accuracy": (totals[1] / totals[2]).item(),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "seconds": time.perf_counter() - started,
            }
            # checked once per epoch from the totals kept on the device (no per-step sync), and before
            # the epoch is recorded, so no NaN reaches the history, the checkpoint or the metrics
            self._stop_if_not_finite(row, x, val[0])
            self.schedule.step()
            self.history.append(row)
            score = row[cfg.monitor] * (-1 if cfg.monitor == "val_accuracy" else 1)
            if score < self.best:
                self.best, self.stale = score, 0
                if cfg.patience:
                    self.best_state = {k: v.detach().clone() for k, v in _unwrap(self.model).state_dict().items()}
            else:
                self.stale += 1
            bar.update(1)
            bar.set_postfix(val_accuracy=f"{val_acc:.3f}", refresh=False)
            if on_epoch:
                on_epoch(row["epoch"], row)

    def _stop_if_not_finite(self, row: dict[str, float], x_train: torch.Tensor, x_val: torch.Tensor) -> None:
        """A NaN or inf loss never recovers and would poison the checkpoint and the metrics; say
        whether the data (an inf in a split) or the optimisation (too large a step) is to blame."""
        for split, key, x in (("train", "train_loss", x_train), ("validation", "val_loss", x_val)):
            value = row[key]
            if math.isfinite(value):
                continue
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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _state_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


CHECKPOINT = "checkpoints/last.pt"
SET_ASIDE = "checkpoints/set-aside.pt"  # an interactive run's checkpoint from other settings, kept once

# What torch.load raises on bytes that are not a whole checkpoint (truncated, corrupted, foreign):
# the zip reader's RuntimeError, the unpickler's errors, a short read, a bad seek or a bad opcode.
_UNREADABLE = (
    RuntimeError,
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    LookupError,
    struct.error,
    zipfile.BadZipFile,
)
_CHECKPOINT_PARTS = {"config", "settings", "trainer"}


def _read_checkpoint(ctx: StepContext) -> tuple[dict[str, Any], bytes] | None:
    """This run's last checkpoint and its bytes, or None when there is none.

    Only a file that cannot be a checkpoint is reported as unreadable, with the advice to delete
    it: a store that cannot be reached or read (S3 down, no permission) raises its own error,
    because deleting a good checkpoint over a network fault would throw training away.
    """
    if not ctx.store.exists(ctx.key(CHECKPOINT)):
        return None
    data = ctx.load(CHECKPOINT, "train")
    reason = "not a training checkpoint"
    try:
        saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except _UNREADABLE as exc:
        saved, reason = None, type(exc).__name__
    if not (isinstance(saved, dict) and saved.keys() >= _CHECKPOINT_PARTS):
        raise ModelError(
            f"checkpoint {ctx.store.uri(ctx.key(CHECKPOINT))} is unreadable ({reason}); delete it to start over"
        )
    return saved, data


def _changed(ours: dict[str, dict[str, Any]], theirs: dict[str, Any]) -> list[str]:
    """The ``part.key`` names that differ between this step's config/settings and a checkpoint's."""
    return sorted(
        f"{part}.{key}"
        for part in ours
        for key in set(ours[part]) | set(theirs.get(part) or {})
        if ours[part].get(key) != (theirs.get(part) or {}).get(key)
    )


def _resume(ctx: StepContext, trainer: Trainer, config: dict[str, Any], rank: int = 0) -> int:
    """Continue from this run's last checkpoint, if any; returns the epochs already done.

    A checkpoint written under other settings or another config cannot be continued. Under
    `workbench run` that is refused (resuming must give the numbers an uninterrupted run gives);
    in an interactive run (JupyterLab, plain papermill, run id ``dev``) changing a parameter and
    rerunning is the point, so the old checkpoint is copied to :data:`SET_ASIDE` and training
    starts afresh, overwriting it after the first epoch.
    """
    found = _read_checkpoint(ctx)
    if found is None:
        return 0
    saved, data = found
    changed = _changed({"config": config, "settings": asdict(trainer.settings)}, saved)
    if changed:
        what = f"checkpoint {ctx.store.uri(ctx.key(CHECKPOINT))} was written with different {', '.join(changed)}"
        if not ctx.interactive:
            raise ModelError(f"{what}; start a new run, or delete the checkpoint to retrain this one")
        if rank == 0:  # every rank decides the same; one keeps the copy and says so
            ctx.store.write_bytes(ctx.key(SET_ASIDE), data)
            ctx.tracker.clear_history(ctx.run_id, ctx.step)  # the curves start again with the training
            print(f"{what}; training afresh (the old one is kept as {SET_ASIDE})", flush=True)
        return 0
    trainer.load_state_dict(saved["trainer"])
    return trainer.epoch


def train_model(
    ctx: StepContext,
    model: str,
    epochs: int,
    batch_size: int,
    lr: float,
    device: str,
    amp: bool,
    seed: int,
    patience: int = 0,
    clip_grad_norm: float = 0.0,
    schedule: str = "cosine",
    monitor: str = "val_loss",
    processes: int = 1,
) -> TrainResult:
    """Train on the prepared splits, resuming from this run's last checkpoint when there is one.

    Saves ``model.pth`` (a state_dict), its config, ``checkpoints/last.pt`` after every epoch
    (model, optimiser, schedule and RNG states: a killed step loses at most the epoch in
    progress), the history and the curves. With ``processes`` > 1 the same loop runs under
    torchrun with DistributedDataParallel (gloo on CPU, NCCL on CUDA); rank 0 writes.
    """
    job = TrainJob(
        ctx.run_id,
        ctx.store.root,
        ctx.tracker.url,
        model,
        FitSettings(epochs, batch_size, lr, seed, patience, clip_grad_norm, schedule, monitor),
        device,
        amp,
    )
    if processes > 1:
        return launch_distributed(ctx, job, processes)
    result = run_job(ctx, job)
    assert result is not None  # rank 0 always returns its result
    return result


@dataclass(frozen=True)
class TrainJob:
    """One training step, serialisable so torchrun workers can be handed it."""

    run_id: str
    store: str
    db: str
    model: str
    settings: FitSettings
    device: str
    amp: bool


def run_job(ctx: StepContext, job: TrainJob, rank: int = 0, world: int = 1, local_rank: int = 0) -> TrainResult | None:
    """The training loop of one process; under torch.distributed only rank 0 writes anything."""
    settings = job.settings
    torch.manual_seed(settings.seed)
    target = choose_device(job.device)
    if world > 1 and target.type == "cuda":
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    dtype = amp_dtype(target, job.amp)
    train, val = load_split(ctx, "train"), load_split(ctx, "val")
    schema = json.loads(prepared_bytes(ctx, "schema.json"))
    config = model_config(job.model, train.x.shape[1], len(schema["classes"]))
    net = build_model(config).to(target)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[local_rank] if target.type == "cuda" else None)
    trainer = Trainer(net, settings, dtype)
    resumed_from = _resume(ctx, trainer, config, rank)

    def checkpoint(epoch: int, row: dict[str, float]) -> None:
        # checkpoint first, metrics second: a kill between them repeats no logged epoch
        ctx.save(
            CHECKPOINT, _state_bytes({"config": config, "settings": asdict(settings), "trainer": trainer.state_dict()})
        )
        ctx.log_metrics({k: v for k, v in row.items() if k != "epoch"}, epoch=epoch)

    val_tensors = (_to_device(val.x, target), _to_device(val.y, target))
    trainer.run(
        (_to_device(train.x, target), _to_device(train.y, target)),
        val_tensors,
        on_epoch=checkpoint if rank == 0 else None,
        rank=rank,
        world=world,
    )
    env = environment(target, dtype) | {"processes": world}
    return _finish(ctx, trainer, val_tensors, config, env, resumed_from) if rank == 0 else None


# A worker that fails on a user error prints one line starting with this to stderr; the launcher
# raises the same error, so `train.processes: 2` fails with the message one process would give,
# not with torchrun's ChildFailedError.
WORKER_ERROR = "workbench worker error: "


def _raise_worker_error(stderr: str) -> None:
    """Re-raise the first user error a worker reported, as the same WorkbenchError class."""
    from workbench import errors

    for line in stderr.splitlines():
        if WORKER_ERROR in line:
            name, _, message = line.split(WORKER_ERROR, 1)[1].partition(": ")
            cls = getattr(errors, name, None)
            if not (isinstance(cls, type) and issubclass(cls, errors.WorkbenchError)):
                cls = ModelError
            raise cls(message)


def launch_distributed(ctx: StepContext, job: TrainJob, processes: int) -> TrainResult:
    """Run :func:`run_job` in ``processes`` torchrun workers and read back what rank 0 wrote."""
    import subprocess

    payload = json.dumps(asdict(job))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "workbench.distributed",
        payload,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(proc.stdout)  # rank 0's notes, e.g. a checkpoint set aside in an interactive run
    if proc.returncode:
        _raise_worker_error(proc.stderr)
        sys.stderr.write(proc.stderr[-4000:])
        errors = [line for line in proc.stderr.splitlines() if "Error" in line and not line.startswith(" ")]
        raise ModelError(
            f"distributed training with {processes} processes failed: {errors[-1] if errors else 'see the output above'}"
        )
    history = pd.read_csv(io.BytesIO(ctx.load("history.csv", "train")))
    metrics = ctx.load_json("metrics.json", "train")
    env, config = ctx.load_json("environment.json", "train"), ctx.load_json("model_config.json", "train")
    resumed_from = int(metrics["resumed_from_epoch"])
    return TrainResult(history, metrics, env, config, resumed_from, training_warnings(metrics))


def _finish(
    ctx: StepContext,
    trainer: Trainer,
    val: tuple[torch.Tensor, torch.Tensor],
    config: dict[str, Any],
    env: dict[str, Any],
    resumed_from: int,
) -> TrainResult:
    """Final evaluation and the step's outputs, from the weights the trainer ends with
    (the best epoch's under early stopping, so the last history row may not be them)."""
    history = pd.DataFrame(trainer.history)
    model = _unwrap(trainer.model)
    val_loss, val_acc = _evaluate(model, *val, 1024, trainer.amp)
    chance = chance_accuracy(val[1])
    metrics = {
        "val_accuracy": val_acc,
        "val_loss": val_loss,
        "chance_accuracy": chance,
        "near_chance": float(is_near_chance(val_acc, chance)),
        "epochs_run": float(len(history)),
        "resumed_from_epoch": float(resumed_from),
        "train_seconds": float(history.seconds.sum()),
    }
    ctx.log_metrics(metrics)
    ctx.save("model.pth", _state_bytes({k: v.cpu() for k, v in model.state_dict().items()}))
    ctx.save_json("model_config.json", config)
    ctx.save_json("environment.json", env)
    ctx.save_json("metrics.json", metrics)
    ctx.save("history.csv", history.to_csv(index=False).encode())
    ctx.save_figure("curves.png", plot_history(history))
    _sagemaker_outputs(ctx, config, env, metrics)
    return TrainResult(history, metrics, env, config, resumed_from, training_warnings(metrics))


def _sagemaker_outputs(
    ctx: StepContext, config: dict[str, Any], env: dict[str, Any], metrics: dict[str, float]
) -> None:
    """Inside a SageMaker training job, also leave the model where SageMaker collects it
    (SM_MODEL_DIR, packed as model.tar.gz) and the reports in SM_OUTPUT_DATA_DIR."""
    targets = {
        "SM_MODEL_DIR": ("model.pth", "model_config.json"),
        "SM_OUTPUT_DATA_DIR": ("history.csv", "curves.png", "environment.json", "metrics.json"),
    }
    for variable, names in targets.items():
        if folder := os.environ.get(variable):
            Path(folder).mkdir(parents=True, exist_ok=True)
            for name in names:
                (Path(folder) / name).write_bytes(ctx.load(name, "train"))


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
