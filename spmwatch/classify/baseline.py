"""An ofdspm-like baseline, re-implemented for comparison: 22 whole-image statistics and a
random forest.

ofdspm used, per image, the standard deviation, range, a histogram measure and |mean - median|
of four channels, plus the mean absolute difference between each pair of channels. Here each
statistic is computed per channel over that channel's pixels (ofdspm used the wrong axis), the
histogram measure is a real Shannon entropy, and channels are standardised before they are
compared with each other (they carry different units).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from spmwatch.model import Scan, split_direction

N_CHANNELS = 4
BASELINE_NAMES: tuple[str, ...] = tuple(
    [f"{s}_{i}" for i in range(N_CHANNELS) for s in ("std", "range", "entropy", "mean_median")]
    + [f"absdiff_{a}_{b}" for a, b in combinations(range(N_CHANNELS), 2)]
)


def _entropy(values: np.ndarray, bins: int = 64) -> float:
    hist, _ = np.histogram(values, bins=bins)
    p = hist[hist > 0] / max(hist.sum(), 1)
    return float(-(p * np.log(p)).sum())


def baseline_vector(scan: Scan) -> np.ndarray:
    """The 22 statistics of the first four (retrace-first) channels; missing ones are zero."""
    names = sorted(scan.channels, key=lambda n: split_direction(n)[1] != "Retrace")
    stats: list[float] = []
    standardised = []
    for name in names[:N_CHANNELS]:
        data = np.asarray(scan.channels[name], dtype=float)
        values = data[np.isfinite(data)]
        if values.size == 0:
            values = np.zeros(1)
        stats += [
            float(values.std()),
            float(np.ptp(values)),
            _entropy(values),
            float(abs(values.mean() - np.median(values))),
        ]
        spread = values.std() or 1.0
        standardised.append(np.nan_to_num((data - values.mean()) / spread))
    stats += [0.0] * (4 * N_CHANNELS - len(stats))
    while len(standardised) < N_CHANNELS:
        standardised.append(np.zeros_like(standardised[0]) if standardised else np.zeros((1, 1)))
    for a, b in combinations(range(N_CHANNELS), 2):
        stats.append(float(np.abs(standardised[a] - standardised[b]).mean()))
    return np.asarray(stats, dtype=float)


def make_baseline(seed: int = 0) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=300, class_weight="balanced", random_state=seed)
