"""The digits model under BentoML: an onnxruntime service, ``batchable`` on or off.

Served by ``bentoml serve bento_service:Digits`` in its own environment (``benchmarks/serve_peers.py``
builds it and sets ``PEER_ONNX``, ``PEER_BATCHABLE`` and the batch limits), never imported by the
workbench package. ``POST /predict`` takes ``{"x": [[...], ...]}``, the already standardised matrix,
and answers the class probabilities (a batchable API returns one array).
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import onnxruntime as ort

BATCHABLE = os.environ.get("PEER_BATCHABLE") == "1"
API = (
    bentoml.api(
        batchable=True,
        batch_dim=0,
        max_batch_size=int(os.environ.get("PEER_MAX_BATCH", "64")),
        max_latency_ms=int(os.environ.get("PEER_MAX_LATENCY_MS", "10000")),
    )
    if BATCHABLE
    else bentoml.api
)


# its best set-up here: no access log line per request (as ours by default), no metrics (ours keeps them)
@bentoml.service(workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}}, metrics={"enabled": False})
class Digits:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        # the same thread settings as workbench serve's: every core, threads asleep when idle
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(os.environ["PEER_ONNX"], options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    @API
    def predict(self, x: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {self.input: x.astype(np.float32, copy=False)})[0]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
