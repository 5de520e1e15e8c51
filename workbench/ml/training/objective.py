"""What the loop minimises and reports: classes (cross-entropy, accuracy) or a number (MSE on the
standardised target; RMSE and MAE in the target's own units, and R²).

Every quantity is a sum kept on the device (:meth:`Objective.totals`), so the loop reads its metrics
once an epoch, whichever the task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from workbench.errors import ParameterError


@dataclass(frozen=True)
class Objective:
    """The task as the loop sees it; ``scale`` is the target's training std, which turns errors on the
    standardised target back into its own units."""

    regression: bool = False
    scale: float = 1.0

    @property
    def score(self) -> str:
        """The metric the progress bar shows and a reader looks at first."""
        return "val_rmse" if self.regression else "val_accuracy"

    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.regression:
            return nn.functional.mse_loss(out.float().reshape(len(out), -1)[:, 0], y, reduction=reduction)
        return nn.functional.cross_entropy(out.float(), y, reduction=reduction)

    def hits(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per batch, summed: correct classes, or absolute errors (standardised)."""
        if self.regression:
            return (out.float().reshape(len(out), -1)[:, 0] - y).abs().sum()
        return (out.argmax(1) == y).sum().to(torch.float32)

    def totals(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed loss, hits, target and squared target of one batch: enough for every metric."""
        yf = y.float()
        return torch.stack([self.loss(out, y, reduction="sum"), self.hits(out, y), yf.sum(), (yf * yf).sum()])

    def metrics(self, totals: list[float], rows: int, prefix: str) -> dict[str, float]:
        """The split's metrics from its :meth:`totals` summed over all batches."""
        loss, hits, y_sum, y2_sum = totals
        if not self.regression:
            return {f"{prefix}_loss": loss / rows, f"{prefix}_accuracy": hits / rows}
        spread = y2_sum - y_sum * y_sum / rows  # the sum of squares around the mean
        return {
            f"{prefix}_loss": loss / rows,
            f"{prefix}_rmse": math.sqrt(max(loss, 0.0) / rows) * self.scale,
            f"{prefix}_mae": hits / rows * self.scale,
            f"{prefix}_r2": 1.0 - loss / spread if spread > 0 else float("nan"),
        }

    def train_metrics(self, loss: float, hits: float, rows: float) -> dict[str, float]:
        """The training split's running figures of an epoch: loss and accuracy, or loss and MAE."""
        if self.regression:
            return {"train_loss": loss / rows, "train_mae": hits / rows * self.scale}
        return {"train_loss": loss / rows, "train_accuracy": hits / rows}

    def check_monitor(self, monitor: str) -> None:
        if self.regression and monitor == "val_accuracy":
            raise ParameterError(
                "train.monitor val_accuracy needs class labels, but the target is a number (regression); "
                "use train.monitor=val_loss"
            )


CLASSES = Objective()
