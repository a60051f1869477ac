"""Honest figures for the classifier: grouped splits, a baseline, synthetic per-kind detection.

Splits never put one sample family on both sides. `lofo` refits the recipe once per real
family with that family held out (synthetic scans derived from its good scans are held out too)
and pools the held-out predictions; `lofo:<family>` is the slice of those predictions for one
family, e.g. the perovskite family where every real bad scan comes from. `within:<family>`
refits with stratified folds inside that family (the setting of ofdspm's within-family figure).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)
from sklearn.model_selection import StratifiedKFold

from spmwatch.classify.train import Dataset, Record, fit, with_bank

SUMMARY_FIELDS = (
    "split",
    "model",
    "n_good",
    "n_bad",
    "threshold",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "false_alarm",
    "auroc",
    "pr_auc",
    "latency_ms",
    "detection_rate",
    "median_delay_lines",
)

Predictor = Callable[[Sequence[Record], Sequence[Record]], np.ndarray]


@dataclass
class SplitResult:
    split: str
    model: str
    names: list[str]
    labels: np.ndarray
    scores: np.ndarray
    threshold: float
    latency_ms: float = float("nan")


def metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Threshold metrics plus the ranking metrics (NaN when one class is absent)."""
    labels = np.asarray(labels).astype(int)
    predicted = np.asarray(scores) >= threshold
    tp = int((predicted & (labels == 1)).sum())
    fp = int((predicted & (labels == 0)).sum())
    fn = int((~predicted & (labels == 1)).sum())
    n_good = int((labels == 0).sum())
    both = 0 < labels.sum() < len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return {
        "n_good": n_good,
        "n_bad": int(labels.sum()),
        "accuracy": float((predicted == labels.astype(bool)).mean()) if len(labels) else np.nan,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "false_alarm": fp / n_good if n_good else float("nan"),
        "auroc": float(roc_auc_score(labels, scores)) if both else float("nan"),
        "pr_auc": float(average_precision_score(labels, scores)) if both else float("nan"),
    }


def spmwatch_predictor(seed: int = 0, use_bank: bool = False) -> Predictor:
    def predict(train: Sequence[Record], test: Sequence[Record]) -> np.ndarray:
        estimator, bank = fit(train, seed=seed, use_bank=use_bank)
        return estimator.predict_proba(with_bank(test, bank))[:, 1]

    return predict


def baseline_predictor(seed: int = 0) -> Predictor:
    from spmwatch.classify.baseline import make_baseline

    def predict(train: Sequence[Record], test: Sequence[Record]) -> np.ndarray:
        labels = np.array([r.label for r in train])
        forest = make_baseline(seed).fit(np.array([r.baseline for r in train]), labels)
        return forest.predict_proba(np.array([r.baseline for r in test]))[:, 1]

    return predict


def leave_family_out(data: Dataset, predict: Predictor) -> tuple[list[Record], np.ndarray]:
    """Held-out scores of every real record, each from a model that never saw its family."""
    real = [r for r in data.records if not r.synthetic]
    held, scores = [], []
    for family in sorted({r.family for r in real}):
        train = [r for r in data.records if r.family != family]
        test = [r for r in real if r.family == family]
        if len({r.label for r in train}) < 2:
            scores.append(np.full(len(test), np.nan))
        else:
            scores.append(predict(train, test))
        held += test
    return held, np.concatenate(scores) if scores else np.array([])


def within_family(
    data: Dataset, family: str, predict: Predictor, folds: int = 4, seed: int = 0
) -> tuple[list[Record], np.ndarray]:
    """Stratified folds inside one family; the rest of the data stays in every training set."""
    inside = [r for r in data.records if r.family == family and not r.synthetic]
    outside = [r for r in data.records if r.family != family]
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


def summary_row(result: SplitResult, extra: dict[str, float] | None = None) -> dict[str, object]:
    row: dict[str, object] = {"split": result.split, "model": result.model}
    row.update(metrics(result.labels, result.scores, result.threshold))
    row["threshold"] = result.threshold
    row["latency_ms"] = result.latency_ms
    row.update(extra or {})
    return {k: _fmt(row.get(k, "")) for k in SUMMARY_FIELDS}


def _fmt(value: object) -> object:
    if isinstance(value, float):
        return "" if np.isnan(value) else round(value, 4)
    return value


def write_summary(rows: list[dict[str, object]], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_table(results: list[SplitResult], path: Path) -> Path:
    """Per-file table: one row per (split, model, file)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "model", "file", "label", "probability", "verdict"])
        for r in results:
            for name, label, score in zip(r.names, r.labels, r.scores, strict=True):
                verdict = "fail" if score >= r.threshold else "pass"
                row = [r.split, r.model, name, int(label), round(float(score), 4), verdict]
                writer.writerow(row)
    return path


def plot_curves(results: list[SplitResult], path: Path) -> Path:
    """ROC and precision-recall curves of every split with both classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.8))
    for r in results:
        ok = np.isfinite(r.scores)
        labels, scores = r.labels[ok], r.scores[ok]
        if not 0 < labels.sum() < len(labels):
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        precision, recall, _ = precision_recall_curve(labels, scores)
        tag = f"{r.split} / {r.model} (AUROC {roc_auc_score(labels, scores):.3f})"
        roc_ax.plot(fpr, tpr, label=tag)
        pr_ax.plot(recall, precision, label=f"{r.split} / {r.model}")
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    roc_ax.set(
        xlabel="false-positive rate (good frames failed)", ylabel="true-positive rate", title="ROC"
    )
    pr_ax.set(xlabel="recall (bad frames failed)", ylabel="precision", title="Precision-recall")
    roc_ax.legend(fontsize=7, loc="lower right")
    pr_ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of `fn` in milliseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))
