"""Tests for common/label_metrics.py against scikit-learn's metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from common.label_metrics import label_confusion, metrics_from_confusion

NUM_CLASSES = 6


def _sklearn(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0
    )
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "macro_precision": precision,
        "macro_recall": recall,
        "macro_f1": f1,
    }


def _labels(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Clean labels without class 5; predictions mostly right, never class 0, sometimes class 5."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, NUM_CLASSES - 1, size=n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, NUM_CLASSES, size=n))
    y_pred[y_pred == 0] = 1
    return y_true, y_pred


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_macro_metrics(seed):
    y_true, y_pred = _labels(seed)
    assert 0 not in y_pred and 0 in y_true  # a class never predicted
    assert 5 in y_pred and 5 not in y_true  # a class absent from the clean labels
    ours = metrics_from_confusion(label_confusion(y_true, y_pred, NUM_CLASSES))
    assert ours == pytest.approx(_sklearn(y_true, y_pred), abs=1e-12)


def test_classes_absent_from_both_do_not_count():
    y_true = np.array([0, 0, 1, 1, 1])
    y_pred = np.array([0, 1, 1, 1, 0])
    ours = metrics_from_confusion(label_confusion(y_true, y_pred, 10))  # classes 2..9 unused
    assert ours == pytest.approx(_sklearn(y_true, y_pred), abs=1e-12)
    assert ours["macro_recall"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_unknown_clean_labels_are_ignored():
    y_true, y_pred = _labels(7)
    unknown = np.random.default_rng(8).random(y_true.size) < 0.3
    masked = np.where(unknown, -1, y_true)
    confusion = label_confusion(masked, y_pred, NUM_CLASSES)
    assert confusion.dtype == np.int64
    assert confusion.sum() == (~unknown).sum()
    expected = _sklearn(y_true[~unknown], y_pred[~unknown])
    assert metrics_from_confusion(confusion) == pytest.approx(expected, abs=1e-12)


def test_confusion_layout_and_summing():
    confusion = label_confusion(np.array([0, 0, 1, 2]), np.array([0, 2, 2, 2]), 3)
    np.testing.assert_array_equal(confusion, [[1, 0, 1], [0, 0, 1], [0, 0, 1]])
    # confusions add up over clients: same metrics as pooling the labels
    a, b = _labels(9, 100), _labels(10, 150)
    pooled = label_confusion(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), 6)
    summed = label_confusion(*a, 6) + label_confusion(*b, 6)
    np.testing.assert_array_equal(pooled, summed)


def test_empty_confusion_is_nan():
    out = metrics_from_confusion(label_confusion(np.array([-1, -1]), np.array([0, 1]), 3))
    assert set(out) == {"accuracy", "macro_precision", "macro_recall", "macro_f1"}
    assert all(math.isnan(v) for v in out.values())


def test_invalid_labels_are_rejected():
    with pytest.raises(ValueError, match="length"):
        label_confusion(np.array([0, 1]), np.array([0]), 2)
    with pytest.raises(ValueError, match="clean label"):
        label_confusion(np.array([0, 2]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="predicted"):
        label_confusion(np.array([0, 1]), np.array([0, 2]), 2)
    with pytest.raises(ValueError, match="square"):
        metrics_from_confusion(np.zeros((2, 3)))
