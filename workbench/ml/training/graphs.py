"""The whole training step captured in one CUDA graph: forward, backward and the fused Adam update.

Small models on a GPU are bound by kernel launches, not arithmetic: a step of the digits CNN is a
few hundred tiny kernels, each launched from Python. Captured once and replayed, the step costs one
launch (measured on an H100, bf16, batch 256: 9.1x the eager loop for the CNN, 8.5x for a
64-2048-2048-10 MLP; torch.compile's reduce-overhead mode reached 1.8x and 1.2x).

What a capture needs, and why:
- static tensors: the batch is copied into fixed input buffers (``index_select(..., out=)``), so
  every replay reads the same addresses; only full batches replay, the last partial batch of an
  epoch takes the eager step (no recapture per epoch);
- Adam with ``fused=True, capturable=True`` and the learning rate as a device tensor the schedule
  writes into, so a replay uses the current rate instead of the one seen at capture;
- warm-up steps on a side stream before capture (allocator and cuBLAS workspaces), whose updates
  to weights, buffers (BatchNorm) and optimiser state are undone afterwards, so the captured run
  takes the same steps as the eager one;
- gradients set to None once before capture and never inside it: the graph owns the gradient
  buffers from then on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

WARMUP_STEPS = 3


@dataclass(frozen=True)
class CapturePlan:
    """Whether a step can be captured, and if not, why (said once in the step's output)."""

    captured: bool
    reason: str


def capture_plan(
    requested: str, device: torch.device, clip_grad_norm: float, loss_scaling: bool, world: int
) -> CapturePlan:
    """``train.compile`` as it applies here.

    On CPU there are no launches to save. torch.compile's CPU backend was measured on the digits CNN
    (2 cores, batch 64): 1.19x per epoch once compiled, after 38 s of compiling, more than it saves
    in a run of these sizes (30 epochs take about 75 s eager), so the eager step is kept there.
    Gradient clipping and fp16 loss scaling read values back to the host inside the step, and
    DistributedDataParallel's bucketed all-reduce is not captured here: those keep the eager step.
    """
    if requested != "on":
        return CapturePlan(False, "train.compile is off")
    if device.type != "cuda":
        return CapturePlan(
            False,
            "train.compile: off on CPU (torch.compile measured 1.19x per epoch here, after 38 s of compiling)",
        )
    for blocked, why in (
        (clip_grad_norm > 0, "train.clip_grad_norm reads the gradient norm back each step"),
        (loss_scaling, "fp16 loss scaling checks for overflow each step (bf16 needs none)"),
        (world > 1, "DistributedDataParallel's all-reduce is not captured"),
    ):
        if blocked:
            return CapturePlan(False, f"train.compile: eager step, since {why}")
    return CapturePlan(True, "train.compile: the whole step is captured in a CUDA graph")


def split_batches(rows: int, batch: int) -> tuple[int, int]:
    """How an epoch of ``rows`` splits: full batches (replayed) and the rows of the last partial
    batch (eager), so the graph's shapes never change."""
    return rows // batch, rows % batch


def schedule_on_device(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """Give each parameter group its learning rate as a device tensor a captured step reads, and a
    function that copies the schedule's latest rate into it (call after every schedule step)."""
    rates = []
    for group in optimizer.param_groups:
        device = group["params"][0].device
        rates.append(torch.tensor(float(group["lr"]), device=device))
        group["lr"] = rates[-1]

    def sync() -> None:
        for group, rate in zip(optimizer.param_groups, rates, strict=True):
            if not isinstance(group["lr"], torch.Tensor):  # the scheduler wrote a float
                rate.fill_(float(group["lr"]))
                group["lr"] = rate

    return sync


class CapturedStep:
    """One training step (forward under autocast, loss, backward, optimiser update) as a CUDA graph.

    ``run(idx)`` copies the batch ``x[idx], y[idx]`` into the static inputs, replays the graph and
    returns the batch's loss and logits (device tensors, valid until the next replay).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        autocast: AbstractContextManager,
        x: torch.Tensor,
        y: torch.Tensor,
        batch: int,
    ) -> None:
        self.x_all, self.y_all = x, y
        self.x = torch.empty((batch, *x.shape[1:]), dtype=x.dtype, device=x.device)
        self.y = torch.empty((batch, *y.shape[1:]), dtype=y.dtype, device=y.device)
        torch.index_select(x, 0, torch.arange(batch, device=x.device) % len(x), out=self.x)
        torch.index_select(y, 0, torch.arange(batch, device=y.device) % len(y), out=self.y)
        weights = copy.deepcopy(model.state_dict())
        moments = copy.deepcopy(optimizer.state_dict())

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    warm = loss(model(self.x).float(), self.y)
                warm.backward()
                optimizer.step()
        torch.cuda.current_stream().wait_stream(side)
        del warm  # a live reference to the warm-up autograd graph breaks the capture

        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            with autocast:
                self.logits = model(self.x)
                self.loss = loss(self.logits.float(), self.y)
            self.loss.backward()
            optimizer.step()
        _restore(model, optimizer, weights, moments)

    def run(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        torch.index_select(self.x_all, 0, idx, out=self.x)
        torch.index_select(self.y_all, 0, idx, out=self.y)
        self.graph.replay()
        return self.loss, self.logits


def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, moments: dict) -> None:
    """Undo the warm-up's updates in place: the graph holds these very tensors."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(weights[name])
        saved = moments["state"]
        for index, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
            for key, value in optimizer.state.get(param, {}).items():
                before = saved.get(index, {}).get(key)
                if before is None:
                    value.zero_()  # a fresh optimiser had no state: its first real step starts from zero
                else:
                    value.copy_(before)
