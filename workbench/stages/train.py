"""The training stage (notebook 02): a plain PyTorch loop with the production details built in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.ml.training.job import TrainJob, TrainResult, launch_distributed, run_job

if TYPE_CHECKING:
    from workbench.config.schema import TrainParams
    from workbench.run.context import StepContext


def train_model(ctx: StepContext, params: TrainParams, *, seed: int) -> TrainResult:
    """Train on the prepared splits, resuming from this run's last checkpoint when there is one.

    Saves ``model.pth`` (a state_dict), its config, ``checkpoints/last.pt`` after every epoch
    (model, optimiser, schedule and RNG states: a killed step loses at most the epoch in
    progress), the history and the curves. With ``params.processes`` > 1 the same loop runs under
    torchrun with DistributedDataParallel (gloo on CPU, NCCL on CUDA); rank 0 writes. With
    ``params.nodes`` > 1 this machine's workers meet the other nodes' (each started with
    ``workbench train-node RUN_ID``) at ``params.rdzv_endpoint``.
    """
    job = TrainJob(run_id=ctx.run_id, store=ctx.store.root, db=ctx.tracker.url, train=params, seed=seed)
    if params.processes > 1 or params.nodes > 1:
        return launch_distributed(ctx, job)
    result = run_job(ctx, job)
    assert result is not None  # rank 0 always returns its result
    return result
