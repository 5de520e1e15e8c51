"""Entry point of one torchrun worker: ``python -m torch.distributed.run ... -m workbench.run.train_worker JOB``.

Each worker joins the process group, opens the same run (store and DB) and runs the training loop
on its share of every batch; only rank 0 writes artifacts and metrics. A user error (a diverging
loss, a refused checkpoint) is reported as one line for the launcher to raise again.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from workbench.errors import WorkbenchError
from workbench.ml.training.job import WORKER_ERROR, WORKER_FAILED, TrainJob, run_job
from workbench.run.context import step_context


def main(payload: str) -> None:
    job = TrainJob.model_validate_json(payload)
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cuda = job.train.device != "cpu" and torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        ctx = step_context("train", run_id=job.run_id, store=job.store, db=job.db)
        run_job(ctx, job, rank=rank, world=world, local_rank=local_rank)
        dist.barrier()
    except WorkbenchError as exc:  # one line the launcher turns back into this error
        print(f"{WORKER_ERROR}{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except Exception as exc:  # a bug or a runtime fault: the traceback stays in the log, the line names the rank
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"{WORKER_FAILED}rank {rank}: {type(exc).__name__}: {first}", file=sys.stderr, flush=True)
        raise
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
