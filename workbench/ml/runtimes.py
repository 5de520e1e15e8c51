"""Inference runtimes behind one signature: a function from a float32 batch to logits."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import ModelError
from workbench.storage.catalog import MODEL_STATE, ONNX_MODEL

if TYPE_CHECKING:
    import onnx


def top_class(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and softmax probability of each row's winning class."""
    best = logits.argmax(axis=1)
    top = logits[np.arange(len(best)), best][:, None]
    # softmax at the winning class is 1 / sum(exp(logit - top))
    return best, (1.0 / np.exp(logits - top).sum(axis=1)).astype(np.float32)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: runtimes put stack traces in their messages, and a
    reason must stay one line in ``parity.json``, the notebook and the CLI's error line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    said = next((line for line in lines if line.startswith("MXNetError:")), None)
    if said:  # MXNet's own line says what failed ("simple_bind error. Arguments:" above it does not)
        text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", said.removeprefix("MXNetError:").strip())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def onnx_file_check(onnx_bytes: bytes) -> onnx.ModelProto:
    """The parsed model, or a ModelError naming the fix when the file is not a model at all."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load_from_string(onnx_bytes)
    except DecodeError as exc:
        raise ModelError("the ONNX model is corrupt or truncated; rerun the export step") from exc


def mxnet_import_hint(proto: onnx.ModelProto) -> str:
    """What to change when MXNet's importer rejects a graph, from what the graph holds.

    The importer reads a Reshape's target shape from the initializers, so a shape computed at
    run time (``x.view(x.shape[0], ...)`` exports Shape, Gather, Concat, Reshape) fails inside it
    with a bare ``KeyError`` on the node that computes the shape. The export step makes such shapes
    constant for ``export.target=mxnet``, so a model that still has one was exported otherwise.
    """
    target = {p.key: p.value for p in proto.metadata_props}.get("target")
    if target and target != "mxnet":
        return f"the model was exported for {target}; export with export.target=mxnet"
    constants = {i.name for i in proto.graph.initializer}
    if any(n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] not in constants for n in proto.graph.node):
        return (
            "the model reshapes to a shape computed at run time, e.g. x.view(x.shape[0], ...): "
            "export it again with export.target=mxnet, which makes such shapes constant, or use x.view(-1, ...) "
            "or x.flatten(1), or export.target=onnxruntime to skip MXNet"
        )
    return "export with export.target=mxnet, or use export.target=onnxruntime to skip MXNet"


Predict = Callable[[np.ndarray], np.ndarray]


def fast_form(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose initializers are constants: no graph input shares an initializer's name.

    The MXNet export lists every initializer as a graph input too, as MXNet's importer needs. To
    onnxruntime such an input may be overridden at run time, so it neither folds constants nor
    fuses through the weights (and it warns once per weight at every load); the same model with
    the initializers as constants scores about twice as fast. The initializers themselves are kept,
    so the outputs are those of the file as exported, which stays the MXNet form on disk. A model of
    IR version below 4 must list every initializer among its inputs, so it is returned unchanged.
    """
    import onnx

    fast = onnx.ModelProto()
    fast.CopyFrom(proto)
    if fast.ir_version < 4:
        return fast
    constants = {i.name for i in fast.graph.initializer}
    inputs = [i for i in fast.graph.input if i.name not in constants]
    del fast.graph.input[:]
    fast.graph.input.extend(inputs)
    return fast


def load_onnxruntime(
    onnx_bytes: bytes, *, as_exported: bool = False, threads: int = 0, sleep_when_idle: bool = False
) -> Predict:
    """An onnxruntime session (:func:`onnxruntime_session`) as a function of a float32 batch."""
    return session_predict(
        onnxruntime_session(onnx_bytes, as_exported=as_exported, threads=threads, sleep_when_idle=sleep_when_idle)
    )


def session_predict(session: Any) -> Predict:
    """An onnxruntime session as a function of a float32 batch of its one input."""
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def onnxruntime_session(
    onnx_bytes: bytes, *, as_exported: bool = False, threads: int = 0, sleep_when_idle: bool = False
) -> Any:
    """An onnxruntime ``InferenceSession`` of the model (CUDA provider first when built in).

    It runs :func:`fast_form` of the model, with onnxruntime's own warnings shown: there are none
    to hide once the weights are constants. ``as_exported`` runs the file as it is, initializers as
    inputs, for parity to check that both forms agree; that form's warning per weight is expected
    and skipped. ``threads`` (0: onnxruntime's choice, one per core) and ``sleep_when_idle`` are for
    a process that shares the cores: a server (by default the threads spin a while after each call,
    taking the cores its event loop needs) or a Dask worker (its share of the host's cores).
    """
    import onnxruntime as ort

    proto = onnx_file_check(onnx_bytes)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if sleep_when_idle:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if as_exported:
        options.log_severity_level = 3  # errors only: the warning per weight is the point of this form
    else:
        onnx_bytes = fast_form(proto).SerializeToString()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(onnx_bytes, options, providers=providers)
    except Exception as exc:  # broad on purpose: onnxruntime's Fail, InvalidGraph, ... derive from Exception alone
        raise ModelError(f"onnxruntime cannot load the ONNX model ({one_line(exc)})") from exc


def load_mxnet(onnx_bytes: bytes) -> Predict:
    """The ONNX model imported into MXNet (GPU context when present), as a function of a batch."""
    proto = onnx_file_check(onnx_bytes)
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")  # else MXNet logs a banner on every bind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mxnet as mx
        from mxnet.contrib import onnx as onnx_mxnet

    ctx = mx.gpu(0) if mx.context.num_gpus() > 0 else mx.cpu()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, ONNX_MODEL.file)
        with open(path, "wb") as fh:
            fh.write(onnx_bytes)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the importer prints a deprecation banner
                sym, arg_params, aux_params = onnx_mxnet.import_model(path)
        except Exception as exc:  # broad on purpose: the importer fails in many ways (KeyError, MXNetError, ...)
            raise ModelError(
                f"MXNet cannot import the ONNX model ({one_line(exc)}); {mxnet_import_hint(proto)}"
            ) from exc
    data_name = next(n for n in sym.list_inputs() if n not in arg_params and n not in aux_params)
    module = mx.mod.Module(symbol=sym, data_names=[data_name], label_names=None, context=ctx)

    def predict(x: np.ndarray) -> np.ndarray:
        if not module.binded:
            module.bind(for_training=False, data_shapes=[(data_name, x.shape)])
            module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)
        elif module.data_shapes[0].shape != x.shape:
            module.reshape(data_shapes=[(data_name, x.shape)])
        module.forward(mx.io.DataBatch([mx.nd.array(x, ctx=ctx)]), is_train=False)
        return module.get_outputs()[0].asnumpy()

    return predict


def load_torch(config: dict[str, Any], state: bytes) -> Predict:
    """The PyTorch model itself (CPU), rebuilt from its config and ``state_dict`` bytes."""
    import torch

    from workbench.ml.models import load_model, read_state

    model = load_model(config, read_state(state, MODEL_STATE.file))

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return predict


def _no_torch_files() -> tuple[dict[str, Any], bytes]:
    raise ModelError("the torch backend needs the trained model (model.pth, model_config.json), not only model.onnx")


def weights_digest(state: bytes) -> str:
    """The sha256 of a ``state_dict``'s bytes, as the export records the weights it exported."""
    return hashlib.sha256(state).hexdigest()


def check_exported_weights(export_info: dict[str, Any], state: bytes, run: str) -> None:
    """A run trained again after its export (notebook 02 run once more) holds an ONNX file of the
    earlier weights: the backends would answer differently, onnxruntime and MXNet with the old
    model, torch with the new. Refuse both until the export has run again."""
    recorded = export_info.get("model_sha256")
    if recorded and recorded != weights_digest(state):
        raise ModelError(
            f"run {run} was trained again after its export, so its model.onnx holds the earlier weights; "
            "run its export step (notebook 03) again"
        )


@dataclass(frozen=True)
class ModelFiles:
    """Where a backend reads the model from, each read only by a backend that needs it: the ONNX
    file, or PyTorch's config and ``state_dict`` bytes."""

    onnx: Callable[[], bytes]
    torch: Callable[[], tuple[dict[str, Any], bytes]] = _no_torch_files

    @classmethod
    def of_onnx(cls, blob: bytes) -> ModelFiles:
        return cls(onnx=lambda: blob)


# The one registry of inference backends: a name (score.backend, the validate step's backends) to
# a loader from the model's files to a function of a float32 batch.
BACKENDS: dict[str, Callable[[ModelFiles], Predict]] = {
    "onnxruntime": lambda files: load_onnxruntime(files.onnx()),
    "mxnet": lambda files: load_mxnet(files.onnx()),
    "torch": lambda files: load_torch(*files.torch()),
}


# Backends that run a rewritten form of the file, each with a loader of the file as exported:
# parity runs both, so a rewrite that changes an answer is a FAIL rather than a silent difference.
AS_EXPORTED: dict[str, Callable[[ModelFiles], Predict]] = {
    "onnxruntime": lambda files: load_onnxruntime(files.onnx(), as_exported=True),
}


def load_backend(name: str, files: ModelFiles) -> Predict:
    """The backend ``name`` with the model of ``files`` loaded."""
    try:
        loader = BACKENDS[name]
    except KeyError as exc:
        raise ModelError(f"no inference backend {name!r}; use {', '.join(BACKENDS)}") from exc
    return loader(files)
