"""What a model must beat: the majority class (or the mean), and gradient boosting with defaults.

Both are fitted on the same encoded training rows the model trained on and answer in the model's
terms (class probabilities, or the number in the target's units), so one evaluation scores all
three on the same test rows. Gradient boosting is scikit-learn's HistGradientBoosting with its
defaults and the run's seed: on tables it is the model a neural network has to justify itself
against, and it needs no tuning to be a fair bar.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

Answer = Callable[[np.ndarray], np.ndarray]  # encoded rows -> probabilities (n, classes) or numbers (n,)

# Below this many training values (rows x features) gradient boosting runs on one thread. Its OpenMP
# threads gain little on a small table, and on a machine busier than its cores they wait on each
# other for minutes: the digits' 1,259 x 64 took 6.8 s on one thread and 175 s on two, under load.
ONE_THREAD_BELOW = 2_000_000


@contextlib.contextmanager
def _threads(x: np.ndarray) -> Iterator[None]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1 if x.size < ONE_THREAD_BELOW else None, user_api="openmp"):
        yield


@dataclass(frozen=True)
class Baselines:
    chance: Answer
    boosting: Answer


def fit_classes(x: np.ndarray, labels: np.ndarray, n_classes: int, seed: int) -> Baselines:
    """Chance answers the training split's class shares for every row (so it always picks the
    majority class, and its log loss is the prior's); gradient boosting's probabilities are laid out
    over all ``n_classes`` columns, a class it never saw getting 0."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    prior = np.bincount(labels, minlength=n_classes) / len(labels)
    with _threads(x):
        model = HistGradientBoostingClassifier(random_state=seed).fit(x, labels)
    seen = model.classes_.astype(np.int64)

    def chance(rows: np.ndarray) -> np.ndarray:
        return np.tile(prior, (len(rows), 1))

    def boosting(rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), n_classes))
        with _threads(x):
            out[:, seen] = model.predict_proba(rows)
        return out

    return Baselines(chance, boosting)


def fit_numbers(x: np.ndarray, y: np.ndarray, seed: int) -> Baselines:
    """Chance answers the training mean; gradient boosting fits the targets as given."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    mean = float(np.mean(y, dtype=np.float64))
    with _threads(x):
        model = HistGradientBoostingRegressor(random_state=seed).fit(x, y)

    def boosting(rows: np.ndarray) -> np.ndarray:
        with _threads(x):
            return model.predict(rows).astype(np.float64)

    return Baselines(lambda rows: np.full(len(rows), mean), boosting)
