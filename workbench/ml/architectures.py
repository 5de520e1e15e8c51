"""The built-in architectures, depending on torch alone.

This file is copied as it is into SageMaker model archives, next to their ``inference.py``: a
model served there is rebuilt by the same code that trained it, without the workbench package.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units; works on any encoded table."""

    def __init__(self, in_features: int, num_classes: int, width: int = 128, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(in_features if i == 0 else width, width), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width if depth else in_features, num_classes))

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
            raise ValueError(
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
