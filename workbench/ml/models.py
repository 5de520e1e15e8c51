"""Model architectures, rebuilt from a small JSON config, never unpickled.

A saved model is ``model.pth`` (a ``state_dict``) plus ``model_config.json``: loading needs only
this module (or the user's own class), not the training code's pickled objects.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pickle
import re
import struct
import zipfile
from typing import Any

import torch
from torch import nn

from workbench.errors import ModelError
from workbench.ml.architectures import BUILTIN, MLP, DigitCNN

__all__ = ["BUILTIN", "MLP", "DigitCNN", "build_model", "check_outputs", "load_model", "model_config"]


def model_config(
    spec: str, in_features: int, num_classes: int, *, image: bool = False, width: int = 128, depth: int = 2
) -> dict[str, Any]:
    """What rebuilds the model: ``auto`` becomes the CNN for an image (:attr:`Encoding.image_side`), else the MLP;
    the MLP's width and depth are kept with it."""
    if spec == "auto":
        spec = "cnn" if image else "mlp"
    config: dict[str, Any] = {"model": spec, "in_features": in_features, "num_classes": num_classes}
    if spec == "mlp":
        config |= {"width": width, "depth": depth}
    return config


def _user_class(spec: str) -> type[nn.Module]:
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"train.model {spec!r}: cannot import {module_name!r} ({exc}); is the package installed or on PYTHONPATH?"
        ) from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelError(f"train.model {spec!r}: {module_name} has no nn.Module subclass named {class_name!r}")
    return cls


def build_model(config: dict[str, Any]) -> nn.Module:
    """Instantiate from a config; a user class is called as ``Class(in_features=, num_classes=)``."""
    spec = config["model"]
    cls = BUILTIN.get(spec) or _user_class(spec)
    arguments = {"in_features": config["in_features"], "num_classes": config["num_classes"]}
    arguments |= {k: config[k] for k in ("width", "depth") if k in config and spec == "mlp"}
    try:  # the signature first: a TypeError from inside the constructor is its own bug, not a wrong signature
        inspect.signature(cls).bind(**arguments)
    except TypeError as exc:
        raise ModelError(f"train.model {spec!r}: constructor must accept in_features and num_classes ({exc})") from exc
    except ValueError:  # no signature to inspect (a C-implemented class): let the call itself tell
        pass
    try:
        model = cls(**arguments)
    except ValueError as exc:  # the architecture's own check of the data's shape
        raise ModelError(str(exc)) from exc
    except Exception as exc:  # a user's constructor: its own bug (a TypeError inside, a missing driver, ...)
        raise ModelError(
            f"train.model {spec!r}: its constructor raised {type(exc).__name__}: {_first(exc)}; fix the class (the "
            "traceback with --traceback or WORKBENCH_DEBUG=1 shows where)"
        ) from exc
    check_outputs(model, config)
    return model


CHECK_ROWS = 2  # rows of the forward that checks a model's output (BatchNorm needs more than one)


def check_outputs(model: nn.Module, config: dict[str, Any]) -> None:
    """One forward on a small batch, in eval mode (no running statistics move), before any training:
    a model whose output does not fit the task (13 logits for 10 classes, one number per row for a
    classifier, a tuple) trained, exported and validated, and failed only when scoring read it."""
    spec, classes = config["model"], int(config["num_classes"])
    x = torch.zeros(CHECK_ROWS, int(config["in_features"]))
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # a user's forward: its own bug, named with the class
        raise ModelError(
            f"train.model {spec!r}: its forward on a batch of {CHECK_ROWS} rows of {x.shape[1]} features raised "
            f"{type(exc).__name__}: {_first(exc)}; fix the class (--traceback shows where)"
        ) from exc
    finally:
        model.train(training)
    regression = classes == 1
    needed = (
        f"one number per row, shape ({CHECK_ROWS}, 1) or ({CHECK_ROWS},)"
        if regression
        else (f"one logit per class, shape ({CHECK_ROWS}, {classes}) for the target's {classes} classes")
    )
    if not isinstance(out, torch.Tensor):
        kind = type(out).__name__
        raise ModelError(
            f"train.model {spec!r}: forward returned a {kind}, not a tensor; return {needed} (the logits alone)"
        )
    fits = (
        tuple(out.shape) in ((CHECK_ROWS, 1), (CHECK_ROWS,))
        if regression
        else tuple(out.shape) == (CHECK_ROWS, classes)
    )
    if not fits:
        raise ModelError(
            f"train.model {spec!r}: forward returned shape {tuple(out.shape)} for {CHECK_ROWS} rows; it must return {needed}"
        )


# What torch.load raises on bytes that are not a whole state_dict (cut short, damaged, foreign):
# the zip reader's RuntimeError, the unpickler's errors, a short read, a bad seek or a bad opcode.
UNREADABLE = (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, LookupError, struct.error, zipfile.BadZipFile)


def read_state(data: bytes, where: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` in ``data``, read with ``weights_only`` (a pickle's code never runs), or one
    line naming ``where`` and what is wrong: cut short or damaged, or holding objects that are no weights."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "GLOBAL" not in str(exc):
            raise ModelError(f"{where} is damaged ({_first(exc)}); export the model again") from exc
        found = re.search(r"GLOBAL (\S+)", str(exc))
        named = f" ({found.group(1)})" if found else ""
        raise ModelError(
            f"{where} holds objects that are not weights{named}, refused without running them; it is not a "
            "state_dict saved by workbench: use the run's own model.pth, or export the model again"
        ) from exc
    except UNREADABLE as exc:
        raise ModelError(
            f"{where} is cut short or damaged ({type(exc).__name__}: {_first(exc).split('. ')[0]}); copy it again or "
            "export the model again"
        ) from exc
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ModelError(f"{where} is not a state_dict (it holds a {type(state).__name__}); export the model again")
    return state


def _first(exc: BaseException) -> str:
    """The first line of an exception's message that says something (the class name when none does)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def load_model(config: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild and load weights; a state from another architecture is a clear error, not a crash."""
    model = build_model(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(
            f"model weights do not match config {config['model']!r} ({first}); retrain or pick the matching run"
        ) from exc
    return model.eval()
