"""SageMaker PyTorch inference handlers for a model exported by workbench.

The archive holds ``model.pth`` (a state_dict) at its top and, under ``code/``, this file, the
architectures it was trained with and ``model.json`` (architecture, input normalisation, classes).
Requests carry raw feature rows, as ``application/x-npy`` (a 2-D array) or ``application/json``
(``{"instances": [[...], ...]}`` or a bare list of rows); normalisation happens here.
"""

import io
import json
import os

import numpy as np
import torch
from architectures import BUILTIN

HERE = os.path.dirname(os.path.abspath(__file__))
NPY, JSON = "application/x-npy", "application/json"


def model_fn(model_dir):
    with open(os.path.join(HERE, "model.json")) as fh:
        meta = json.load(fh)
    model = BUILTIN[meta["model"]](in_features=meta["in_features"], num_classes=meta["num_classes"])
    state = torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    model.meta = meta
    return model


def input_fn(request_body, request_content_type):
    if request_content_type == NPY:
        rows = np.load(io.BytesIO(request_body), allow_pickle=False)
    elif request_content_type == JSON:
        payload = json.loads(request_body)
        rows = np.asarray(payload["instances"] if isinstance(payload, dict) else payload)
    else:
        raise ValueError(f"unsupported content type {request_content_type!r}; send {NPY} or {JSON}")
    rows = np.atleast_2d(rows).astype(np.float32)
    return rows


def normalize(rows, meta):
    """Normalised float32 model input, computed in float64 as in training.

    A copy of workbench.ml.features.Normalization.apply: this file runs without the workbench
    package, so it cannot import it. tests/test_sagemaker.py keeps the two equal (same input,
    same output); change both together.
    """
    mean = np.asarray(meta["mean"], dtype=np.float64)
    std = np.asarray(meta["std"], dtype=np.float64)
    return ((np.asarray(rows, dtype=np.float64) - mean) / std).astype(np.float32)


def predict_fn(input_data, model):
    meta = model.meta
    if input_data.shape[1] != meta["in_features"]:
        raise ValueError(f"expected rows of {meta['in_features']} features, got {input_data.shape[1]}")
    x = normalize(input_data, meta)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    return {"logits": logits.numpy(), "classes": meta["classes"]}


def output_fn(prediction, accept):
    logits = prediction["logits"]
    if accept == NPY:
        buf = io.BytesIO()
        np.save(buf, logits)
        return buf.getvalue()
    if accept == JSON:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        labels = [prediction["classes"][i] for i in logits.argmax(axis=1)]
        return json.dumps({"predictions": labels, "probabilities": probabilities.round(6).tolist()})
    raise ValueError(f"unsupported accept type {accept!r}; ask for {NPY} or {JSON}")
