"""One training job: the loop of one process (or of each torchrun worker) and its outputs."""

from __future__ import annotations

import os
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from workbench.config.schema import TrainParams
from workbench.errors import ModelError
from workbench.ml.dataset import load_split, prepared_encoding, prepared_target
from workbench.ml.encoding import Target
from workbench.ml.models import build_model, model_config
from workbench.ml.streaming import (
    IN_MEMORY,
    STREAMED,
    StreamedSplit,
    memory_budget,
    open_split,
    parquet_shape,
    plan,
    split_file,
)
from workbench.ml.training.checkpoint import checkpoint_data, resume
from workbench.ml.training.device import amp_dtype, check_processes, choose_device, environment
from workbench.ml.training.figures import plot_fit
from workbench.ml.training.loop import (
    FitSettings,
    Trainer,
    chance_accuracy,
    evaluate_split,
    state_bytes,
    to_device,
    unwrap,
)
from workbench.ml.training.objective import Objective
from workbench.ml.training.verdict import NEAR_CHANCE_SHARE, WarningBanner, is_near_chance, training_warnings
from workbench.storage.catalog import (
    CHECKPOINT,
    CURVES,
    ENVIRONMENT,
    FIT_PLOT,
    HISTORY,
    MODEL_CONFIG,
    MODEL_STATE,
    TRAIN_METRICS,
    encode,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from workbench.run.context import StepContext


@dataclass
class TrainResult:
    history: pd.DataFrame
    metrics: dict[str, float]
    environment: dict[str, Any]
    config: dict[str, Any]
    resumed_from: int = 0
    warnings: list[str] = field(default_factory=list)  # see training_warnings
    fit_png: bytes = b""  # the validation fit drawn (see workbench.ml.training.figures)

    def fit_plot(self) -> Any:
        """The validation split's fit as an image a notebook shows: predicted against actual and the
        residuals for a number, the confusion matrix for classes."""
        from IPython.display import Image

        return Image(data=self.fit_png) if self.fit_png else None

    def warning_banner(self) -> WarningBanner:
        """The warnings for display: a notebook cell that ends with this shows them in colour."""
        return WarningBanner(tuple(self.warnings))


@dataclass(frozen=True)
class TrainJob(BaseModel):
    """One training step: where it runs (run, store, db) and its validated parameters; JSON, so
    torchrun workers can be handed it (``model_dump_json`` / ``model_validate_json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    store: str
    db: str
    train: TrainParams
    seed: int

    @property
    def settings(self) -> FitSettings:
        return self.train.fit_settings(self.seed)


def run_job(ctx: StepContext, job: TrainJob, rank: int = 0, world: int = 1, local_rank: int = 0) -> TrainResult | None:
    """The training loop of one process; under torch.distributed only rank 0 writes anything."""
    settings = job.settings
    torch.manual_seed(settings.seed)
    target = choose_device(job.train.device)
    if world > 1 and target.type == "cuda":
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    dtype = amp_dtype(target, job.train.amp)
    encoding = prepared_encoding(ctx)
    task = prepared_target(encoding)
    objective = Objective(task.regression, task.scale)
    data, train_source, val_source = _sources(ctx, job.train, job.seed, target, rank, len(encoding.features))
    train = job.train
    image = encoding.image_side is not None
    config = model_config(
        train.model, len(encoding.features), task.outputs, image=image, width=train.width, depth=train.depth
    )
    net = build_model(config).to(target)
    if world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[local_rank] if target.type == "cuda" else None)
    trainer = Trainer(net, settings, dtype, compile=job.train.compile, objective=objective)
    if job.train.compile == "on" and rank == 0:
        print(trainer.plan.reason, flush=True)
    resumed_from = resume(ctx, trainer, config, rank)
    if resumed_from and trainer.done and written_from_checkpoint(ctx):
        if rank:
            return None
        print(
            f"training is done: this run's checkpoint is at epoch {resumed_from} of {settings.epochs}, and its "
            "model and reports were written from it; nothing trained, nothing rewritten",
            flush=True,
        )
        result = recorded_result(ctx)
        _sagemaker_outputs(ctx, result.config, result.environment, result.metrics)
        return result

    def checkpoint(epoch: int, row: dict[str, float]) -> None:
        # checkpoint first, metrics second: a kill between them repeats no logged epoch
        ctx.save_artifact(
            CHECKPOINT,
            state_bytes(
                {"config": config, "settings": settings.model_dump(), "trainer": trainer.state_dict(), "data": data}
            ),
        )
        ctx.log_metrics({k: v for k, v in row.items() if k != "epoch"}, epoch=epoch)

    trainer.run(
        train_source,
        val_source,
        on_epoch=checkpoint if rank == 0 else None,
        rank=rank,
        world=world,
    )
    env = environment(target, dtype) | {"processes": world, "step": "CUDA graph" if trainer.plan.captured else "eager"}
    env |= {"train_data": data["train"], "val_data": data["val"]}
    return _finish(ctx, trainer, val_source, config, env, resumed_from, task) if rank == 0 else None


def _sources(
    ctx: StepContext, params: TrainParams, seed: int, device: torch.device, rank: int, features: int
) -> tuple[dict[str, str], Any, Any]:
    """The train and val splits as the trainer takes them, whole on the device when they fit in
    ``train.max_memory_gb`` (or half the free memory), else streamed from their Parquet row groups;
    with the mode of each (``in memory`` / ``streamed``)."""
    shapes = {name: parquet_shape(split_file(ctx, name), features) for name in ("train", "val")}
    budget = memory_budget(params.max_memory_gb, device)
    data = plan(shapes["train"], shapes["val"], budget)
    earlier = checkpoint_data(ctx, params.fit_settings(seed).model_dump())
    if earlier and earlier.get("train") in (IN_MEMORY, STREAMED):
        # a resumed run batches as the checkpoint's epochs did, so it ends with the same weights
        data["train"] = earlier["train"]
    sources = []
    for name in ("train", "val"):
        if data[name] == STREAMED:
            sources.append(open_split(ctx, name, device, params.shuffle_buffer))
        else:
            split = load_split(ctx, name)
            sources.append((to_device(split.x, device), to_device(split.y, device)))
    if rank == 0 and STREAMED in data.values():
        said = ", ".join(f"{name} {mode} ({shapes[name][0]:,} rows)" for name, mode in data.items())
        print(f"splits: {said}; memory budget {budget / 2**30:.3g} GiB (train.max_memory_gb)", flush=True)
    return data, sources[0], sources[1]


FIT_ROWS = 20_000  # validation rows the fit figure draws on

# A worker that fails on a user error prints one line starting with this to stderr; the launcher
# raises the same error, so `train.processes: 2` fails with the message one process would give,
# not with torchrun's ChildFailedError.
WORKER_ERROR = "workbench worker error: "
# Any other failure of a worker: the rank and its exception's first line, before its traceback.
WORKER_FAILED = "workbench worker failed: "


def raise_worker_error(stderr: str) -> None:
    """Re-raise the first user error a worker reported, as the same WorkbenchError class."""
    from workbench import errors

    for line in stderr.splitlines():
        if WORKER_ERROR in line:
            name, _, message = line.split(WORKER_ERROR, 1)[1].partition(": ")
            cls = getattr(errors, name, None)
            if not (isinstance(cls, type) and issubclass(cls, errors.WorkbenchError)):
                cls = ModelError
            raise cls(message)


def failed_rank(stderr: str) -> str:
    """The failing rank's own error line, from the workers' output or torchrun's failure summary.

    torchrun's last line is an empty ``ChildFailedError:``; what went wrong is earlier.
    """
    for line in stderr.splitlines():
        if WORKER_FAILED in line:
            return line.split(WORKER_FAILED, 1)[1]
    rank = re.search(r"^\s*rank\s*:\s*(\d+)", stderr, re.M)
    code = re.search(r"^\s*exitcode\s*:\s*(-?\d+)", stderr, re.M)
    if rank and code:
        died = int(code.group(1))
        how = (
            f"killed by signal {-died}" + (" (out of memory?)" if died == -9 else "")
            if died < 0
            else f"exit code {died}"
        )
        return f"rank {rank.group(1)}: the worker died ({how}); its output is above"
    return "see the output above"


def torchrun_command(job: TrainJob) -> list[str]:
    """The torchrun line of this machine: standalone on one node, else the c10d rendezvous every
    node of the job meets at (the run id names the rendezvous, so two jobs never mix)."""
    train = job.train
    if train.nodes == 1:
        where = ["--standalone"]
    else:
        where = [
            f"--nnodes={train.nodes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={train.rdzv_endpoint}",
            f"--rdzv_id={job.run_id}",
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        f"--nproc_per_node={train.processes}",
        "-m",
        "workbench.run.train_worker",
        job.model_dump_json(),
    ]


def run_workers(job: TrainJob) -> None:
    """This node's torchrun workers, to the end; a failure is one line naming the failing rank."""
    import subprocess

    check_processes(job.train.processes, job.train.device, torch.cuda.device_count())
    proc = subprocess.run(torchrun_command(job), capture_output=True, text=True)
    sys.stdout.write(proc.stdout)  # rank 0's notes, e.g. a checkpoint set aside in an interactive run
    if proc.returncode:
        raise_worker_error(proc.stderr)
        sys.stderr.write(proc.stderr[-4000:])
        workers = job.train.processes * job.train.nodes
        where = f" on {job.train.nodes} nodes" if job.train.nodes > 1 else ""
        raise ModelError(f"distributed training with {workers} processes{where} failed: {failed_rank(proc.stderr)}")


def launch_distributed(ctx: StepContext, job: TrainJob) -> TrainResult:
    """Run :func:`run_job` in torchrun workers (on this node, and with the other nodes when there
    are several) and read back what global rank 0 wrote to the run's store."""
    run_workers(job)
    return recorded_result(ctx)


# What a training writes when it ends (see _finish), from the weights it ends with.
OUTPUTS = (MODEL_STATE, MODEL_CONFIG, ENVIRONMENT, TRAIN_METRICS, HISTORY, CURVES, FIT_PLOT)


def written_from_checkpoint(ctx: StepContext) -> bool:
    """Whether this run's training outputs were all recorded after its last checkpoint and are still
    in the store: a finished training, which a rerun (a second Run All, a scheduler's retry) must
    neither redo nor rewrite, so the steps after it stay current."""
    recorded = ctx.tracker.step_outputs(ctx.run_id, ctx.step)
    last = recorded.get(ctx.key(CHECKPOINT))
    if last is None:
        return False
    return all(
        ctx.key(item) in recorded and recorded[ctx.key(item)][0] > last[0] and ctx.has_artifact(item)
        for item in OUTPUTS
    )


def recorded_result(ctx: StepContext) -> TrainResult:
    """The result of this run's training as its outputs in the store record it."""
    history = ctx.load_artifact(HISTORY)
    metrics = ctx.load_artifact(TRAIN_METRICS)
    env, config = ctx.load_artifact(ENVIRONMENT), ctx.load_artifact(MODEL_CONFIG)
    resumed_from = int(metrics["resumed_from_epoch"])
    fit = ctx.load(FIT_PLOT) if ctx.has_artifact(FIT_PLOT) else b""
    return TrainResult(history, metrics, env, config, resumed_from, training_warnings(metrics), fit)


def _validation_outputs(
    model: nn.Module, val: tuple[torch.Tensor, torch.Tensor] | StreamedSplit, amp: torch.dtype | None
) -> tuple[np.ndarray, np.ndarray]:
    """The model's outputs and the labels of the first :data:`FIT_ROWS` validation rows, on the host."""
    batches = (
        ((val[0][i : i + 4096], val[1][i : i + 4096]) for i in range(0, len(val[0]), 4096))
        if isinstance(val, tuple)
        else val.batches(4096)
    )
    outputs, labels, rows = [], [], 0
    autocast = torch.autocast(next(model.parameters()).device.type, dtype=amp) if amp else nullcontext()
    model.eval()
    with torch.no_grad(), autocast:
        for xb, yb in batches:
            outputs.append(model(xb).float().cpu().numpy())
            labels.append(yb.cpu().numpy())
            rows += len(yb)
            if rows >= FIT_ROWS:
                break
    return np.concatenate(outputs)[:FIT_ROWS], np.concatenate(labels)[:FIT_ROWS]


def _finish(
    ctx: StepContext,
    trainer: Trainer,
    val: tuple[torch.Tensor, torch.Tensor] | StreamedSplit,
    config: dict[str, Any],
    env: dict[str, Any],
    resumed_from: int,
    task: Target,
) -> TrainResult:
    """Final evaluation and the step's outputs, from the weights the trainer ends with
    (the best epoch's under early stopping, so the last history row may not be them)."""
    history = pd.DataFrame(trainer.history)
    model = unwrap(trainer.model)
    objective = trainer.objective
    metrics = evaluate_split(model, val, trainer.amp, objective)
    if objective.regression:  # near chance: explaining less than a quarter of the variance
        metrics["near_chance"] = float(not metrics["val_r2"] >= NEAR_CHANCE_SHARE)
    else:
        chance = chance_accuracy(val[1]) if isinstance(val, tuple) else val.chance_accuracy()
        metrics["chance_accuracy"] = chance
        metrics["near_chance"] = float(is_near_chance(metrics["val_accuracy"], chance))
    metrics |= {
        "epochs_run": float(len(history)),
        "resumed_from_epoch": float(resumed_from),
        "train_seconds": float(history.seconds.sum()),
    }
    ctx.log_metrics(metrics)
    ctx.save_artifact(MODEL_STATE, state_bytes({k: v.cpu() for k, v in model.state_dict().items()}))
    ctx.save_artifact(MODEL_CONFIG, config)
    ctx.save_artifact(ENVIRONMENT, env)
    ctx.save_artifact(TRAIN_METRICS, metrics)
    ctx.save_artifact(HISTORY, history)
    ctx.save_artifact(CURVES, plot_history(history))
    outputs, labels = _validation_outputs(model, val, trainer.amp)
    fit = encode(FIT_PLOT, plot_fit(outputs, labels, task))
    ctx.save_artifact(FIT_PLOT, fit)
    _sagemaker_outputs(ctx, config, env, metrics)
    return TrainResult(history, metrics, env, config, resumed_from, training_warnings(metrics), fit)


def _sagemaker_outputs(
    ctx: StepContext, config: dict[str, Any], env: dict[str, Any], metrics: dict[str, float]
) -> None:
    """Inside a SageMaker training job, also leave the model where SageMaker collects it
    (SM_MODEL_DIR, packed as model.tar.gz) and the reports in SM_OUTPUT_DATA_DIR."""
    targets = {
        "SM_MODEL_DIR": (MODEL_STATE, MODEL_CONFIG),
        "SM_OUTPUT_DATA_DIR": (HISTORY, CURVES, ENVIRONMENT, TRAIN_METRICS),
    }
    for variable, items in targets.items():
        if folder := os.environ.get(variable):
            Path(folder).mkdir(parents=True, exist_ok=True)
            for item in items:
                (Path(folder) / item.file).write_bytes(ctx.load(item))


def plot_history(history: pd.DataFrame) -> Figure:
    """Loss and accuracy (or mean absolute error, for a number) per epoch, train against validation."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_ax.plot(history.epoch, history.train_loss, label="train")
    loss_ax.plot(history.epoch, history.val_loss, label="validation")
    loss_ax.set(title="loss", xlabel="epoch", yscale="log")
    if "val_mae" in history:
        acc_ax.plot(history.epoch, history.train_mae, label="train")
        acc_ax.plot(history.epoch, history.val_mae, label="validation")
        acc_ax.set(title="mean absolute error (target units)", xlabel="epoch")
    else:
        acc_ax.plot(history.epoch, history.train_accuracy, label="train")
        acc_ax.plot(history.epoch, history.val_accuracy, label="validation")
        acc_ax.set(title="accuracy", xlabel="epoch", ylim=(min(0.8, history.val_accuracy.min()), 1.0))
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a short run has no epoch 1.5
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig
