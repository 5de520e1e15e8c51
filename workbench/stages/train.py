"""The training stage (notebook 02): a plain PyTorch loop with the production details built in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.ml.training.job import TrainJob, TrainResult, launch_distributed, run_job
from workbench.ml.training.loop import FitSettings

if TYPE_CHECKING:
    from workbench.run.context import StepContext


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
