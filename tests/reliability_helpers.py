"""A small real classifier model for reliability tests and benchmarks that need one of their own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from spmwatch.classify.classifier import expected_feature_names, save


def tiny_model(folder: Path) -> Path:
    """A loadable .skops model with its sidecar, for the features this spmwatch computes.

    A logistic regression on random rows: its verdicts mean nothing, which suits tests about
    loading, refusing and surviving rather than about classification.
    """
    names = expected_feature_names(False)
    rows = np.random.default_rng(0).normal(size=(40, len(names)))
    estimator = LogisticRegression().fit(rows, np.arange(40) % 2)
    return save(folder / "tiny.skops", estimator, {"feature_names": list(names), "threshold": 0.5})
