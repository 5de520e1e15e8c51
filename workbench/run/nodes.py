"""Training across machines: the nodes beyond the first join a run's train step.

The first node runs ``workbench run`` as usual (it holds the run and writes its record); every
other node runs ``workbench train-node RUN_ID`` with the same ``db``. Each starts torchrun with
the run's own parameters, and all meet at ``train.rdzv_endpoint``; global rank 0, wherever it
lands, writes the model to the run's store, which every node must reach (S3, or a shared folder).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from workbench.config.parameters import Parameters, of_run
from workbench.errors import ParameterError, TrackingError, WorkbenchError
from workbench.ml.training.job import TrainJob, run_workers
from workbench.tracking.tracker import Tracker


def _train_step_started(tracker: Tracker, run_id: str) -> dict | None:
    """The run, once its train step runs; None while it is still to come."""
    try:
        run = tracker.get_run(run_id)
    except TrackingError:  # the first node has not created the run yet
        return None
    step = next((s for s in run["steps"] if s["name"] == "train"), None)
    if step is None:
        raise ParameterError(f"run {run_id} has no train step; nothing to join")
    if step["status"] in ("finished", "failed"):
        raise WorkbenchError(f"run {run_id}: its train step has {step['status']}; nothing to join")
    return run if step["status"] == "running" else None


def join_training(run_id: str, given: Parameters, wait: float, say: Callable[[str], None], poll: float = 1.0) -> None:
    """Wait (at most ``wait`` seconds) for the run's train step to start on the first node, then
    run this node's workers in it to the end."""
    tracker = Tracker(given["db"])
    deadline = time.monotonic() + wait
    say(f"run {run_id}: waiting for its train step to start on the first node")
    while (run := _train_step_started(tracker, run_id)) is None:
        if time.monotonic() > deadline:
            raise WorkbenchError(
                f"run {run_id}: its train step did not start within {wait:g} s; start `workbench run` "
                "on the first node with the same db, or give --wait more seconds"
            )
        time.sleep(poll)
    params = of_run(run_id, run["parameters"], given).model
    if params.train.nodes < 2:
        raise ParameterError(f"run {run_id} trains on one node (train.nodes: 1); nothing to join")
    say(f"run {run_id}: joining at {params.train.rdzv_endpoint} as one of {params.train.nodes} nodes")
    run_workers(TrainJob(run_id=run_id, store=run["store"], db=given["db"], train=params.train, seed=params.seed))
