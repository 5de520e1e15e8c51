"""The digits model under MLServer: a custom ``MLModel`` running the .onnx in onnxruntime.

Loaded by ``mlserver start`` in its own environment (``benchmarks/serve_peers.py`` builds it), never
by the workbench package. The request holds the already standardised matrix, one FP32 input
``[n, 64]``; the answer holds ``probabilities`` ``[n, 10]`` and ``predicted`` ``[n]``, as ours does.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxDigits(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        # the same thread settings as workbench serve's: every core, threads asleep when idle
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        logits = self._session.run(None, {self._input: x})[0]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output("predicted", p.argmax(axis=1)),
                NumpyCodec.encode_output("probabilities", p.astype(np.float32)),
            ],
        )
