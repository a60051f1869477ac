"""Grouped splits and figures shared by training and evaluation.

Never split by random file: a family (see `train.family_of`) is always wholly on one side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold

# A predictor fits on the first records and returns failure probabilities for the second.
Predictor = Callable[[Sequence[Any], Sequence[Any]], np.ndarray]


def metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Threshold metrics plus the ranking metrics (NaN when one class is absent)."""
    labels = np.asarray(labels).astype(int)
    predicted = np.asarray(scores) >= threshold
    tp = int((predicted & (labels == 1)).sum())
    fp = int((predicted & (labels == 0)).sum())
    fn = int((~predicted & (labels == 1)).sum())
    n_good = int((labels == 0).sum())
    both = 0 < labels.sum() < len(labels)
    # undefined (NaN, an empty cell) when nothing was failed or there is nothing bad to fail
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {
        "n_good": n_good,
        "n_bad": int(labels.sum()),
        "accuracy": float((predicted == labels.astype(bool)).mean()) if len(labels) else np.nan,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarm": fp / n_good if n_good else float("nan"),
        "auroc": float(roc_auc_score(labels, scores)) if both else float("nan"),
        "pr_auc": float(average_precision_score(labels, scores)) if both else float("nan"),
    }


def leave_family_out(records: Sequence[Any], predict: Predictor) -> tuple[list[Any], np.ndarray]:
    """Held-out scores of every record, each from a model that never saw its family.

    A fold whose training part lacks one class (e.g. every bad frame is in the held-out
    family and no synthetic data was added) gets NaN scores rather than a fake figure.
    """
    held, scores = [], []
    for family in sorted({r.family for r in records}):
        train = [r for r in records if r.family != family]
        test = [r for r in records if r.family == family]
        if len({r.label for r in train}) < 2:
            scores.append(np.full(len(test), np.nan))
        else:
            scores.append(predict(train, test))
        held += test
    return held, np.concatenate(scores) if scores else np.array([])


def within_family(
    records: Sequence[Any], family: str, predict: Predictor, folds: int = 4, seed: int = 0
) -> tuple[list[Any], np.ndarray]:
    """Stratified folds inside one family; the rest of the data stays in every training set."""
    inside = [r for r in records if r.family == family and not r.synthetic]
    outside = [r for r in records if r.family != family]
    labels = np.array([r.label for r in inside])
    n_splits = min(folds, int(np.bincount(labels, minlength=2).min()))
    if n_splits < 2:
        return [], np.array([])
    scores = np.full(len(inside), np.nan)
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train_idx, test_idx in splitter.split(np.zeros(len(inside)), labels):
        train = outside + [inside[i] for i in train_idx]
        scores[test_idx] = predict(train, [inside[i] for i in test_idx])
    return inside, scores
