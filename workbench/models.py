"""Model architectures, rebuilt from a small JSON config, never unpickled.

A saved model is ``model.pth`` (a ``state_dict``) plus ``model_config.json``: loading needs only
this module (or the user's own class), not the training code's pickled objects.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import torch
from torch import nn

from workbench.errors import ModelError


class MLP(nn.Module):
    """Two hidden layers; works on any numeric table."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitCNN(nn.Module):
    """A small CNN for square single-channel images given as flat rows (8x8 digits: 64 columns).

    Built from Conv/BatchNorm/ReLU/MaxPool/Linear only: ops MXNet's ONNX importer translates.
    """

    def __init__(self, in_features: int, num_classes: int, channels: int = 32) -> None:
        super().__init__()
        side = math.isqrt(in_features)
        if side * side != in_features or side < 4:
            raise ModelError(
                f"train.model 'cnn' needs square images (e.g. 64 features for 8x8); got {in_features} features; use 'mlp'"
            )
        self.side = side
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels * 2, 3, padding=1),
            nn.BatchNorm2d(channels * 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = channels * 2 * (side // 2) ** 2
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(-1, 1, self.side, self.side)))


BUILTIN: dict[str, type[nn.Module]] = {"cnn": DigitCNN, "mlp": MLP}


def model_config(spec: str, in_features: int, num_classes: int) -> dict[str, Any]:
    return {"model": spec, "in_features": in_features, "num_classes": num_classes}


def _user_class(spec: str) -> type[nn.Module]:
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"train.model {spec!r}: cannot import {module_name!r} ({exc}); is the package installed or on PYTHONPATH?"
        ) from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelError(f"train.model {spec!r}: {module_name} has no nn.Module subclass named {class_name!r}")
    return cls


def build_model(config: dict[str, Any]) -> nn.Module:
    """Instantiate from a config; a user class is called as ``Class(in_features=, num_classes=)``."""
    spec = config["model"]
    cls = BUILTIN.get(spec) or _user_class(spec)
    try:
        return cls(in_features=config["in_features"], num_classes=config["num_classes"])
    except TypeError as exc:
        raise ModelError(f"train.model {spec!r}: constructor must accept in_features and num_classes ({exc})") from None


def load_model(config: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild and load weights; a state from another architecture is a clear error, not a crash."""
    model = build_model(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(
            f"model weights do not match config {config['model']!r} ({first}); retrain or pick the matching run"
        ) from None
    return model.eval()
