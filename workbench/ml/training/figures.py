"""How well the trained model fits a split (validation in training, test after export), drawn:
predicted against actual with the residuals for a number, the confusion matrix for classes. Looked
at rather than read."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from workbench.ml.encoding import Target

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_POINTS = 5_000  # a scatter of more points hides more than it shows
MAX_CLASSES_DRAWN = 30


def plot_fit(outputs: np.ndarray, labels: np.ndarray, target: Target, split: str = "validation") -> Figure:
    """``outputs``: the model's outputs on ``split``; ``labels``: class indices or the standardised number."""
    import matplotlib.pyplot as plt

    if target.regression:
        predicted = target.predicted(outputs)[:MAX_POINTS]
        actual = labels[:MAX_POINTS].astype(np.float64) * target.scale + target.mean
        residual = actual - predicted
        fig, (fit, spread) = plt.subplots(1, 2, figsize=(10, 3.8))
        fit.scatter(actual, predicted, s=6, alpha=0.5)
        low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
        fit.plot([low, high], [low, high], color="grey", lw=0.8)
        fit.set(title=f"{target.name} ({split}): predicted vs actual", xlabel="actual", ylabel="predicted")
        spread.scatter(predicted, residual, s=6, alpha=0.5)
        spread.axhline(0, color="grey", lw=0.8)
        spread.set(title="residuals", xlabel="predicted", ylabel="actual - predicted")
        for ax in (fit, spread):
            ax.grid(alpha=0.3)
    else:
        classes = list(target.classes or [])[:MAX_CLASSES_DRAWN]
        n = len(classes)
        best = outputs.argmax(axis=1)
        keep = (labels < n) & (best < n)
        matrix = np.zeros((n, n), dtype=np.int64)
        np.add.at(matrix, (labels[keep], best[keep]), 1)
        side = min(8.0, 2.5 + 0.45 * n)
        fig, ax = plt.subplots(figsize=(side, side * 0.85))
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(n), [str(c) for c in classes], rotation=45, ha="right")
        ax.set_yticks(range(n), [str(c) for c in classes])
        if n <= 15:
            for (i, j), count in np.ndenumerate(matrix):
                ax.text(
                    j,
                    i,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if count > matrix.max() / 2 else "black",
                )
        ax.set(title=f"{target.name}: {split} confusion matrix", xlabel="predicted", ylabel="actual")
    fig.tight_layout()
    plt.close(fig)
    return fig
