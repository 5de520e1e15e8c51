"""Test metrics against scikit-learn's own functions on the same predictions, and the edge cases a
held-out split meets: a class absent, a single class, float32 probabilities, zero targets."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk
from sklearn.exceptions import UndefinedMetricWarning

from workbench.ml import evaluation as ev
from workbench.ml.baselines import fit_classes, fit_numbers

pytestmark = pytest.mark.unit


def _classes(n_rows: int, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and float32 softmax probabilities that are informative but not perfect."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_rows)
    logits = rng.normal(size=(n_rows, n_classes)) + 1.5 * np.eye(n_classes)[labels]
    return labels, ev.softmax(logits).astype(np.float32)


@pytest.mark.parametrize("n_classes", [2, 3, 10])
def test_classification_metrics_match_scikit_learn(n_classes):
    labels, p = _classes(500, n_classes)
    p64 = ev.as_probabilities(p)
    predicted = p64.argmax(1)
    result = ev.evaluate_classes(labels, p, list(range(n_classes))).metrics
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert result["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, predicted))
    assert result["f1_macro"] == pytest.approx(sk.f1_score(labels, predicted, average="macro"))
    assert result["log_loss"] == pytest.approx(sk.log_loss(labels, p64, labels=range(n_classes)))
    if n_classes == 2:
        assert result["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, p64[:, 1]))
        assert result["average_precision"] == pytest.approx(sk.average_precision_score(labels, p64[:, 1]))
    else:
        assert result["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, p64, multi_class="ovr", average="macro"))
        assert "average_precision" not in result


def test_ties_in_scores_are_ranked_as_scikit_learn_ranks_them():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) * 0.5 + 0.4 * labels, 1)  # few distinct values: many ties
    assert ev.binary_auc(labels == 1, scores) == pytest.approx(sk.roc_auc_score(labels, scores))
    assert ev.average_precision(labels == 1, scores) == pytest.approx(sk.average_precision_score(labels, scores))


def test_per_class_table_and_confusion_matrix_match_scikit_learn():
    labels, p = _classes(400, 4, seed=2)
    predicted = ev.as_probabilities(p).argmax(1)
    result = ev.evaluate_classes(labels, p, ["a", "b", "c", "d"])
    precision, recall, f1, support = sk.precision_recall_fscore_support(labels, predicted, labels=range(4))
    table = result.per_class
    assert list(table.index) == ["a", "b", "c", "d"]
    np.testing.assert_allclose(table["precision"], precision)
    np.testing.assert_allclose(table["recall"], recall)
    np.testing.assert_allclose(table["f1"], f1)
    np.testing.assert_array_equal(table["support"], support)
    np.testing.assert_array_equal(result.confusion.to_numpy(), sk.confusion_matrix(labels, predicted, labels=range(4)))
    assert result.confusion.index.name == "actual" and result.confusion.columns.name == "predicted"


def test_a_class_absent_from_the_rows_is_left_out_not_scored_zero():
    labels, p = _classes(300, 4, seed=3)
    keep = labels != 2  # class 2 never occurs among the test rows, though the model may predict it
    labels, p = labels[keep], p[keep]
    p64 = ev.as_probabilities(p)
    predicted = p64.argmax(1)
    result = ev.evaluate_classes(labels, p, ["w", "x", "y", "z"])
    m = result.metrics
    assert m["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, predicted))
    assert m["f1_macro"] == pytest.approx(sk.f1_score(labels, predicted, average="macro"))
    # scikit-learn's macro AUC with a class absent is NaN; ours is the mean over the classes present
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(sk.roc_auc_score(labels, p64, multi_class="ovr", labels=range(4)))
    expected = np.mean([sk.roc_auc_score(labels == k, p64[:, k]) for k in (0, 1, 3)])
    assert m["roc_auc"] == pytest.approx(expected)
    assert m["log_loss"] == pytest.approx(sk.log_loss(labels, p64, labels=range(4)))
    assert np.isnan(result.per_class.loc["y", "recall"]) and result.per_class.loc["y", "support"] == 0
    assert any("class y absent" in note for note in result.notes)


def test_a_single_class_has_no_auc_and_says_why():
    labels = np.zeros(20, dtype=np.int64)
    p = ev.softmax(np.random.default_rng(4).normal(size=(20, 2)))
    result = ev.evaluate_classes(labels, p, ["No", "Yes"])
    assert "roc_auc" not in result.metrics and "average_precision" not in result.metrics
    assert result.metrics["accuracy"] == pytest.approx(np.mean(p.argmax(1) == 0))
    assert result.metrics["balanced_accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert "the rows hold one class ('No')" in result.notes[0]
    assert np.isnan(result.per_class.loc["Yes", "recall"])


def test_float32_probabilities_that_do_not_sum_to_one_are_read_as_distributions():
    labels, p = _classes(200, 3, seed=5)
    off = (p * np.float32(1.0001)).astype(np.float32)  # rows sum to 1.0001: scikit-learn refuses them
    with pytest.raises(ValueError):
        sk.roc_auc_score(labels, off, multi_class="ovr")
    ours = ev.evaluate_classes(labels, off, [0, 1, 2]).metrics
    exact = ev.evaluate_classes(labels, p.astype(np.float64), [0, 1, 2]).metrics
    assert ours == pytest.approx(exact)
    sure = np.eye(3)[labels].astype(np.float32)  # probability 1 and 0: clipped, not log(0)
    assert np.isfinite(ev.log_loss((labels + 1) % 3, sure))


def test_regression_metrics_match_scikit_learn():
    rng = np.random.default_rng(6)
    actual = rng.normal(50, 10, 300)
    predicted = actual + rng.normal(0, 4, 300)
    m = ev.evaluate_numbers(actual, predicted).metrics
    assert m["rmse"] == pytest.approx(np.sqrt(sk.mean_squared_error(actual, predicted)))
    assert m["mae"] == pytest.approx(sk.mean_absolute_error(actual, predicted))
    assert m["r2"] == pytest.approx(sk.r2_score(actual, predicted))
    assert m["mape"] == pytest.approx(sk.mean_absolute_percentage_error(actual, predicted))


def test_mape_is_left_out_when_a_target_is_zero_and_r2_when_targets_do_not_vary():
    result = ev.evaluate_numbers(np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.0, 2.5]))
    assert "mape" not in result.metrics and "r2" in result.metrics
    assert result.notes == ["1 target(s) are zero: MAPE is undefined"]
    flat = ev.evaluate_numbers(np.full(4, 3.0), np.array([2.0, 3.0, 4.0, 3.0]))
    assert "r2" not in flat.metrics and flat.metrics["mape"] == pytest.approx(
        sk.mean_absolute_percentage_error(np.full(4, 3.0), [2, 3, 4, 3])
    )


def test_baselines_answer_in_the_models_terms():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    labels = (x[:, 0] > 0.5).astype(np.int64) * 2  # classes 0 and 2 only: class 1 never seen in training
    fitted = fit_classes(x, labels, 3, seed=0)
    chance, boosting = fitted.chance(x[:5]), fitted.boosting(x)
    assert chance.shape == (5, 3) and np.allclose(chance, [np.mean(labels == 0), 0, np.mean(labels == 2)])
    assert boosting.shape == (300, 3) and (boosting[:, 1] == 0).all()
    assert ev.accuracy(labels, boosting.argmax(1)) > 0.95
    y = 3 * x[:, 0] + 10
    numbers = fit_numbers(x, y, seed=0)
    assert np.allclose(numbers.chance(x[:3]), y.mean()) and ev.r2(y, numbers.boosting(x)) > 0.9


def test_the_comparison_sentence_and_the_flag_come_from_the_metrics_alone():
    metrics = {"classes": 2.0, "test_roc_auc": 0.81, "baseline_test_roc_auc": 0.843, "chance_test_roc_auc": 0.5}
    found = ev.comparison(metrics)
    assert found.line == "test ROC AUC 0.810; gradient boosting 0.843; chance 0.500"
    assert found.loses and "loses to gradient boosting" in found.warning
    assert not ev.comparison({**metrics, "test_roc_auc": 0.8432}).loses  # equal as shown: no flag
    numbers = ev.comparison({"test_rmse": 3.0, "test_r2": 0.7, "baseline_test_r2": 0.6})
    assert numbers.label == "R²" and not numbers.loses
    several = ev.comparison(
        {"classes": 10.0, "test_accuracy": 0.97, "test_roc_auc": 0.99, "baseline_test_accuracy": 0.95}
    )
    assert several.line.startswith("test accuracy 0.970; gradient boosting 0.950")
    rmse_only = ev.comparison({"test_rmse": 5.0, "baseline_test_rmse": 4.0})
    assert rmse_only.loses and not rmse_only.higher_is_better
    assert ev.comparison({"val_accuracy": 0.9}) is None


def test_gradient_boosting_on_a_small_table_runs_on_one_thread():
    """Its OpenMP threads spin-wait each other on a busy machine; one thread is enough for small tables."""
    import sklearn.ensemble  # noqa: F401  (loads scikit-learn's OpenMP runtime)
    from threadpoolctl import threadpool_info

    from workbench.ml.baselines import _threads

    with _threads(np.zeros((1259, 64))):
        assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"} == {1}
