"""The model's outputs for a batch, with what answers need worked out once per batch.

Softmax, argmax and the finiteness check cost a few microseconds per numpy call whatever the number
of rows, so they run once on the whole batch (in the backend's thread) and each request takes its
rows' slice, instead of every request paying them again for its one row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from workbench.ml.encoding import Target


@dataclass(frozen=True)
class Scored:
    """Per row: the raw outputs, whether they are finite, and the class probabilities and index
    (classification) or the number in the target's units (regression)."""

    logits: np.ndarray
    bad: np.ndarray  # outputs not finite (a number too large for float32): no prediction, as batch scoring
    probabilities: np.ndarray | None  # float64 softmax, as the archive's handler computes it
    best: np.ndarray | None
    values: np.ndarray | None

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, rows: slice) -> Scored:
        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[rows]

        return Scored(self.logits[rows], self.bad[rows], cut(self.probabilities), cut(self.best), cut(self.values))

    @staticmethod
    def join(parts: Sequence[Scored]) -> Scored:
        """A request split across backend calls, whole again."""

        def glue(arrays: list[np.ndarray | None]) -> np.ndarray | None:
            return None if arrays[0] is None else np.concatenate(arrays)  # type: ignore[arg-type]

        return Scored(
            np.concatenate([p.logits for p in parts]),
            np.concatenate([p.bad for p in parts]),
            glue([p.probabilities for p in parts]),
            glue([p.best for p in parts]),
            glue([p.values for p in parts]),
        )


def scorer(predict: Callable[[np.ndarray], np.ndarray], target: Target) -> Callable[[np.ndarray], Scored]:
    """``predict`` followed by the work every answer needs, as one call for the backend's thread."""

    def score(x: np.ndarray) -> Scored:
        logits = np.asarray(predict(x))
        bad = ~np.isfinite(logits).all(axis=1)
        safe = np.where(bad[:, None], 0.0, logits) if bad.any() else logits
        if target.regression:
            return Scored(logits, bad, None, None, target.predicted(safe))
        wide = safe.astype(np.float64)
        shifted = np.exp(wide - wide.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        if bad.any():
            probabilities[bad] = np.nan
        return Scored(logits, bad, probabilities, target.predicted(safe), None)

    return score
