"""SageMaker Batch Transform: the same container, run by the transform agent instead of an endpoint.

For a transform job SageMaker starts the image as for an endpoint (``docker run IMAGE serve``) and
sets ``SAGEMAKER_BATCH=true``. Before the first ``/invocations`` its agent asks ``GET
/execution-parameters`` how many requests to send at once and how large each may be, then splits the
input files into payloads of whole records (``SplitType: Line``) that fit the size. Large payloads
are then the normal case, and a 429 fails the job's record rather than prompting a retry, so in
batch mode a worker admits requests by the bytes they bring rather than by their number.

Where the job itself sets ``MaxPayloadInMB``, the agent passes it as ``SAGEMAKER_MAX_PAYLOAD_IN_MB``
and sends payloads that large whatever the container answered: the body limit is raised to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from workbench.errors import ParameterError

BATCH = "SAGEMAKER_BATCH"
MAX_PAYLOAD = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
LARGEST_PAYLOAD_MB = 100  # CreateTransformJob refuses a larger MaxPayloadInMB
MOST_CONCURRENT = 100  # and a larger MaxConcurrentTransforms


@dataclass(frozen=True)
class BatchMode:
    """Whether the container runs a transform job, and the body limit it serves with (MiB)."""

    on: bool
    max_body_mb: float


def batch_mode(environ: Mapping[str, str], max_body_mb: float) -> BatchMode:
    """Batch mode as SageMaker's environment sets it; ``max_body_mb`` is ``serve.max_body_mb``.

    The body limit is in MiB and the agent's payload limit in MB (10^6 or 2^20 bytes, it does not
    say): a limit of N MiB takes any payload of N MB either way.
    """
    on = environ.get(BATCH, "").strip().lower() == "true"
    if not on:
        return BatchMode(False, max_body_mb)
    text = environ.get(MAX_PAYLOAD, "").strip()
    if not text:
        return BatchMode(True, max(max_body_mb, 1.0))  # execution_parameters never says less than 1
    if not text.isdigit():
        raise ParameterError(f"{MAX_PAYLOAD} {text!r} is not a whole number of MB; set MaxPayloadInMB from 0 to 100")
    job = int(text)
    if job == 0:  # the agent streams an unbounded payload in chunks: the server's own limit holds
        return BatchMode(True, max_body_mb)
    return BatchMode(True, max(max_body_mb, float(job)))


def execution_parameters(workers: int, max_body_mb: float) -> dict[str, int | str]:
    """The answer to ``GET /execution-parameters``.

    ``MaxConcurrentTransforms`` is the worker processes (each takes a payload whole: the batcher
    splits it into backend calls of ``serve.max_batch`` rows). ``MaxPayloadInMB`` is the body limit
    in whole MB, at least 1 (0 would tell the agent that any size goes) and at most SageMaker's 100.
    ``BatchStrategy`` is spelt as this endpoint's contract spells it (the API's ``MultiRecord``).
    """
    return {
        "MaxConcurrentTransforms": max(1, min(workers, MOST_CONCURRENT)),
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": max(1, min(math.floor(max_body_mb), LARGEST_PAYLOAD_MB)),
    }
