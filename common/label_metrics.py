"""Label-correction metrics: how well corrected (or observed) labels match the clean labels.

The released MaskedOptim code computes none; the paper reports precision / recall / F1, so we use
sklearn-style macro averages plus accuracy (fidelity §3.8, an assumption). Counts are kept as a
confusion matrix so they can be summed over clients and rounds before the metrics are taken.
`metrics_from_confusion` gives exactly what `sklearn.metrics.accuracy_score` and
`precision_recall_fscore_support(average="macro", zero_division=0)` give on the same labels.
"""

from __future__ import annotations

import math

import numpy as np


def label_confusion(clean: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C, C] confusion counts: row = clean label, column = predicted label.

    Entries whose clean label is negative (unknown, e.g. Clothing1M samples without a clean label)
    are ignored. Raises ValueError for different lengths or labels outside [0, num_classes).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    clean = np.asarray(clean).reshape(-1)
    predicted = np.asarray(predicted).reshape(-1)
    if clean.shape != predicted.shape:
        raise ValueError(
            f"clean and predicted labels differ in length: {clean.size} vs {predicted.size}"
        )
    known = clean >= 0
    clean = clean[known].astype(np.int64)
    predicted = predicted[known].astype(np.int64)
    if clean.size and clean.max() >= num_classes:
        raise ValueError(f"clean label {clean.max()} is outside [0, {num_classes})")
    if predicted.size and (predicted.min() < 0 or predicted.max() >= num_classes):
        raise ValueError(f"predicted labels must lie in [0, {num_classes})")
    counts = np.bincount(clean * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def metrics_from_confusion(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1 from a [C, C] confusion (rows = true labels).

    As sklearn with ``average="macro", zero_division=0``: the macro average runs over the labels
    that occur in the true or the predicted labels (non-zero row or column); a label never predicted
    has precision 0, a label never true has recall 0, and F1 = 2 TP / (2 TP + FP + FN).
    Accuracy = trace / total. All values are nan for an empty confusion (total 0).
    """
    matrix = np.asarray(confusion, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion must be a square 2-D matrix, got shape {matrix.shape}")
    if np.any(matrix < 0):
        raise ValueError("confusion counts must be non-negative")
    total = matrix.sum()
    if total == 0:
        keys = ("accuracy", "macro_precision", "macro_recall", "macro_f1")
        return dict.fromkeys(keys, math.nan)
    true_positive = np.diag(matrix)
    true_count = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    present = (true_count > 0) | (predicted_count > 0)
    tp, n_true, n_pred = true_positive[present], true_count[present], predicted_count[present]
    precision = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    recall = np.divide(tp, n_true, out=np.zeros_like(tp), where=n_true > 0)
    f1 = 2 * tp / (n_true + n_pred)  # n_true + n_pred > 0 for every present label
    return {
        "accuracy": float(true_positive.sum() / total),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
    }
