"""How good is a model on rows it never saw? Test metrics for classes and numbers, and one sentence
that compares them with baselines.

Written in numpy rather than called from scikit-learn, because the edge cases a held-out split
meets are answered here on purpose (tests check every metric against scikit-learn's own function
where both are defined):

- a class absent from the test rows has no recall: balanced accuracy averages recall over the
  classes present (as scikit-learn does), macro F1 over the classes present or predicted, and macro
  ROC AUC (one-vs-rest) over the classes present, where scikit-learn refuses to answer;
- ROC AUC and average precision need both outcomes among the rows: with a single class present they
  are left out and a note says why, never reported as 0 or 0.5;
- probabilities are taken in float64 and each row scaled to sum to 1, so float32 softmax outputs
  (rows summing to 0.9999999) are read as the distribution they stand for;
- MAPE divides by the actual value: it is given only when no test target is zero, and R² only when
  the test targets vary.

A metric that is undefined is absent from :attr:`Evaluation.metrics`, so a tracking database never
holds a made-up number. Names carry no prefix here; the caller adds ``test_`` and the baselines'
``baseline_test_`` / ``chance_test_``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

PREFIXES = {"model": "test_", "baseline": "baseline_test_", "chance": "chance_test_"}
BASELINE_NAMES = {"baseline": "gradient boosting", "chance": "chance"}


# --- classes ------------------------------------------------------------------------------------


def as_probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows of non-negative scores as float64 distributions summing to 1 (float32 softmax outputs
    sum to 1 only within rounding; a row of zeros becomes uniform)."""
    p = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    total = p.sum(axis=1, keepdims=True)
    return np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from a model's logits, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of (actual, predicted) class pairs: row = actual, column = predicted."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predicted)), 1)
    return matrix


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(predicted)))


def _counts(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: true positives, rows predicted as it, rows that are it."""
    matrix = confusion_matrix(labels, predicted, n_classes)
    return np.diag(matrix).astype(np.float64), matrix.sum(axis=0).astype(np.float64), matrix.sum(axis=1)


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present among the labels: a model that always answers the majority
    class scores 1 / (classes present), however imbalanced the rows."""
    hits, _, support = _counts(labels, predicted, n_classes)
    present = support > 0
    return float(np.mean(hits[present] / support[present]))


def per_class(labels: np.ndarray, predicted: np.ndarray, classes: list) -> pd.DataFrame:
    """Precision, recall, F1 and support per class. A value with nothing to divide by is NaN, not 0:
    precision of a class never predicted, recall of a class absent from the rows, F1 of a class
    neither present nor predicted."""
    hits, said, support = _counts(labels, predicted, len(classes))
    missed = support - hits
    false = said - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(said > 0, hits / said, np.nan)
        recall = np.where(support > 0, hits / support, np.nan)
        denominator = 2 * hits + false + missed
        f1 = np.where(denominator > 0, 2 * hits / denominator, np.nan)
    return pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)},
        index=pd.Index([str(c) for c in classes], name="class"),
    )


def f1_macro(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Mean F1 over the classes present or predicted (a class neither has no F1 to average)."""
    f1 = per_class(labels, predicted, list(range(n_classes)))["f1"].to_numpy()
    return float(np.nanmean(f1))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean negative log probability of the actual class, probabilities clipped to [eps, 1 - eps]."""
    p = as_probabilities(probabilities)
    eps = np.finfo(np.float64).eps
    picked = np.clip(p[np.arange(len(p)), np.asarray(labels)], eps, 1 - eps)
    return float(-np.mean(np.log(picked)))


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based positions start+1 .. end
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve: the chance that a positive row scores above a negative one (ties
    count half). None when the rows hold only one of the two outcomes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    ranks = _ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Binary: the AUC of the second class's probability. Several classes: the mean one-vs-rest
    AUC over the classes present among the labels. None with fewer than two classes present."""
    labels = np.asarray(labels)
    p = as_probabilities(probabilities)
    if p.shape[1] == 2:
        return binary_auc(labels == 1, p[:, 1])
    present = np.unique(labels)
    if len(present) < 2:
        return None
    return float(np.mean([binary_auc(labels == k, p[:, k]) for k in present]))


def average_precision(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Precision averaged over the recall gained at each distinct score threshold (the step-wise
    area under the precision-recall curve, no interpolation). None without a positive row."""
    positive = np.asarray(positive, dtype=bool)
    if not positive.any():
        return None
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    ordered, hit = scores[order], positive[order]
    last = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), len(ordered) - 1]  # the end of each tie group
    tp = np.cumsum(hit)[last]
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# --- numbers ------------------------------------------------------------------------------------


def rmse(actual: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(actual, np.float64) - np.asarray(predicted, np.float64)) ** 2)))


def mae(actual: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(actual, np.float64) - np.asarray(predicted, np.float64))))


def r2(actual: np.ndarray, predicted: np.ndarray) -> float | None:
    """1 - SSE / SST: the share of the targets' spread the predictions explain (0: as good as their
    mean). None when the targets do not vary."""
    actual = np.asarray(actual, np.float64)
    spread = float(((actual - actual.mean()) ** 2).sum())
    if spread == 0:
        return None
    return float(1.0 - ((actual - np.asarray(predicted, np.float64)) ** 2).sum() / spread)


def mape(actual: np.ndarray, predicted: np.ndarray) -> float | None:
    """Mean absolute error relative to the actual value, as a fraction (0.12 is 12%). None when a
    target is zero: the ratio is undefined there, and a tiny divisor would make it huge instead."""
    actual = np.asarray(actual, np.float64)
    if (actual == 0).any():
        return None
    return float(np.mean(np.abs((actual - np.asarray(predicted, np.float64)) / actual)))


# --- one evaluation ------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """A model's metrics on some rows (unprefixed names), why any were left out, and for classes the
    per-class table and the confusion matrix (rows actual, columns predicted)."""

    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)
    per_class: pd.DataFrame | None = None
    confusion: pd.DataFrame | None = None

    def prefixed(self, prefix: str) -> dict[str, float]:
        return {prefix + name: value for name, value in self.metrics.items()}


def _kept(values: dict[str, float | None]) -> dict[str, float]:
    return {name: value for name, value in values.items() if value is not None}


def evaluate_classes(labels: np.ndarray, probabilities: np.ndarray, classes: list) -> Evaluation:
    """Accuracy, balanced accuracy, macro F1, log loss, ROC AUC and (two classes) average precision
    of class probabilities against class indices ``labels``; ``classes`` names the columns."""
    labels = np.asarray(labels, dtype=np.int64)
    p = as_probabilities(probabilities)
    n = len(classes)
    predicted = p.argmax(axis=1)
    present = np.unique(labels)
    values: dict[str, float | None] = {
        "accuracy": accuracy(labels, predicted),
        "balanced_accuracy": balanced_accuracy(labels, predicted, n),
        "f1_macro": f1_macro(labels, predicted, n),
        "log_loss": log_loss(labels, p),
        "roc_auc": roc_auc(labels, p),
    }
    if n == 2:
        values["average_precision"] = average_precision(labels == 1, p[:, 1])
    notes = []
    if len(present) < 2:
        only = classes[int(present[0])] if len(present) else None
        notes.append(f"the rows hold one class ({only!r}): ROC AUC and average precision are undefined")
    absent = [str(classes[k]) for k in range(n) if k not in set(present.tolist())]
    if absent and len(present) >= 2:
        notes.append(
            f"class{'es' if len(absent) > 1 else ''} {', '.join(absent)} absent from the rows: "
            "left out of balanced accuracy and macro ROC AUC"
        )
    names = [str(c) for c in classes]
    confusion = pd.DataFrame(
        confusion_matrix(labels, predicted, n),
        index=pd.Index(names, name="actual"),
        columns=pd.Index(names, name="predicted"),
    )
    return Evaluation(_kept(values), notes, per_class(labels, predicted, classes), confusion)


def evaluate_numbers(actual: np.ndarray, predicted: np.ndarray) -> Evaluation:
    """RMSE, MAE, R² and (no target zero) MAPE of predicted numbers, in the target's own units."""
    values = {
        "rmse": rmse(actual, predicted),
        "mae": mae(actual, predicted),
        "r2": r2(actual, predicted),
        "mape": mape(actual, predicted),
    }
    notes = []
    if values["mape"] is None:
        notes.append(f"{int((np.asarray(actual) == 0).sum())} target(s) are zero: MAPE is undefined")
    if values["r2"] is None:
        notes.append("the targets do not vary: R² is undefined")
    return Evaluation(_kept(values), notes)


# --- the sentence a reader takes away -----------------------------------------------------------

# (metric, how it reads, higher is better), first defined one wins; binary tasks lead with ROC AUC,
# several classes with accuracy (every decent model's macro AUC is near 1 there), numbers with R²
HEADLINES = {
    "binary": (("roc_auc", "ROC AUC", True), ("accuracy", "accuracy", True)),
    "classes": (("accuracy", "accuracy", True), ("roc_auc", "ROC AUC", True)),
    "numbers": (("r2", "R²", True), ("rmse", "RMSE", False)),
}


@dataclass(frozen=True)
class Comparison:
    """The model's headline test metric beside gradient boosting's and chance's on the same rows."""

    metric: str
    label: str
    higher_is_better: bool
    model: float
    baseline: float | None
    chance: float | None

    @staticmethod
    def _show(value: float) -> str:
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.4g}"

    @property
    def loses(self) -> bool:
        """Whether gradient boosting does better than the model, as the numbers are shown (3 decimals):
        a difference below that is noise on a test split."""
        if self.baseline is None:
            return False
        model, baseline = round(self.model, 3), round(self.baseline, 3)
        return baseline > model if self.higher_is_better else baseline < model

    @property
    def line(self) -> str:
        """``test ROC AUC 0.812; gradient boosting 0.843; chance 0.500``."""
        parts = [f"test {self.label} {self._show(self.model)}"]
        if self.baseline is not None:
            parts.append(f"{BASELINE_NAMES['baseline']} {self._show(self.baseline)}")
        if self.chance is not None:
            parts.append(f"{BASELINE_NAMES['chance']} {self._show(self.chance)}")
        return "; ".join(parts)

    @property
    def warning(self) -> str | None:
        if not self.loses:
            return None
        assert self.baseline is not None
        return (
            f"the model loses to gradient boosting on the test split: {self.label} {self._show(self.model)} against "
            f"{self._show(self.baseline)} (scikit-learn's defaults, fitted on the same encoded training rows); "
            "on this table the simpler model is the better one unless tuning train.* closes the gap "
            "(see the learning curves)"
        )

    def _repr_html_(self) -> str:
        color = "#cf222e" if self.loses else "#1a7f37"
        line = f'<div style="font-size:1.3em;font-weight:600;color:{color}">{html.escape(self.line)}</div>'
        return line + (f"<p><b>WARNING:</b> {html.escape(self.warning)}</p>" if self.warning else "")

    def __repr__(self) -> str:
        return self.line + (f"\nWARNING: {self.warning}" if self.warning else "")


def comparison(metrics: dict[str, float]) -> Comparison | None:
    """The comparison, rebuilt from a run's metrics alone (so the notebook and the report say the
    same); None when the run has no test metrics."""
    if "test_rmse" in metrics:
        kind = "numbers"
    elif "test_average_precision" in metrics or metrics.get("classes") == 2:  # prepare logs the class count
        kind = "binary"
    else:
        kind = "classes"
    for name, label, higher in HEADLINES[kind]:
        if PREFIXES["model"] + name in metrics:
            return Comparison(
                name,
                label,
                higher,
                metrics[PREFIXES["model"] + name],
                metrics.get(PREFIXES["baseline"] + name),
                metrics.get(PREFIXES["chance"] + name),
            )
    return None
