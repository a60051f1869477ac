"""Frame-level features for the pass/fail classifier: mostly channel statistics of the scan.

Every value describes how the *scan* behaves, not what the *sample* is: no absolute heights,
no channel-set indicators, and each statistic is pooled over channels by its median, so a
model cannot tell which channels were saved and one noisy channel cannot fail a frame alone.
They measure the extent and persistence of line faults (share of lines in offset bands, steps,
out-of-texture lines, flat lines, slow drift) rather than single-line peaks: one wild line is
common on good frames of rough samples, a fault that lasts is what makes a frame unusable.

From the scorer, one number: the share of lines it flagged (how much of the frame its online
detectors object to). Finer summaries of its per-line features (quantiles and means of every
column, event counts) generalised worse to never-seen families and moved with every scorer
revision (docs/classifier.md). The scorer also marks frames stopped early, which the
classifier fails by rule (`classifier.fail_probability`); its per-line features remain
available to the optional good-line memory bank.

Statistics are computed per channel, per line along the fast axis (axis 1 of a channel array,
the points), then aggregated over lines; ofdspm computed its statistics across the wrong axis.
The entropy is a real Shannon entropy of a histogram, normalised by its maximum. Everything
works on a frame in progress (the lines so far), because the daemon attaches a probability to
an online alert.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spmwatch.model import FrameScores

CHANNEL_STATS = (
    "scar_q99",
    "scar_frac",
    "band_frac",
    "line_std_hi",
    "line_std_lo",
    "flat_frac",
    "entropy",
    "rough_frac",
    "smooth_frac",
    "drift",
)
BANK_STATS = ("bank_max", "bank_q95", "bank_frac")
ENTROPY_BINS = 64
ENTROPY_LINES = 64  # lines sampled for the histogram: the entropy needs no more, and is cheaper
MEDIAN_POINTS = 64  # points per line the robust medians look at
BAND_WINDOW = 15  # lines in the running median a band is measured against
ROUGH = 3.0  # a line 3x rougher or smoother than the channel's typical line is out of texture
SCAR_STEP = 3.0  # a line step or band offset counts from 3x the pixel-to-pixel noise


def feature_names(bank: bool = False) -> tuple[str, ...]:
    """Names of the frame feature vector, in order."""
    names = ["flagged_frac", *(f"chan_{s}_median" for s in CHANNEL_STATS)]
    if bank:
        names += list(BANK_STATS)
    return tuple(names)


def _channel_stats(data: np.ndarray) -> list[float]:
    """Per-line statistics of one channel (lines, points), aggregated over lines.

    Scale-free: every measure is relative to the channel's own pixel-to-pixel noise or its
    typical line spread, so units and offsets do not matter.
    """
    data = np.asarray(data, dtype=float)
    finite_rows = np.isfinite(data).all(axis=1)
    line_std = np.zeros(len(data))
    line_std[finite_rows] = data[finite_rows].std(axis=1)
    typical_std = float(np.median(line_std[finite_rows])) if finite_rows.any() else 0.0
    flat = (~finite_rows) | (line_std <= 1e-6 * (typical_std or 1.0))
    good = data[~flat]
    if good.shape[0] < 3 or typical_std == 0:
        return [0.0, 0.0, 0.0, 0.0, 0.0, float(flat.mean()), 0.0, 0.0, 0.0, 0.0]
    # Scar measure: the median step between consecutive lines, against the pixel-to-pixel
    # noise along the line (the same idea as Gwyddion's scar marking, normalised per line).
    # Medians over every stride-th point: as robust, and the medians were most of the cost.
    stride = max(1, good.shape[1] // MEDIAN_POINTS)
    sampled = good[:, ::stride]
    along = np.median(np.abs(np.diff(good, axis=1))[:, ::stride], axis=1)
    noise = float(np.median(along)) or typical_std
    steps = np.abs(np.median(np.diff(sampled, axis=0), axis=1)) / noise
    # Band measure: a line's level against the running median of its neighbours, so a band
    # of several offset lines counts whole, not only at its two edges.
    level = np.median(sampled, axis=1)
    width = min(BAND_WINDOW, len(level) - (1 - len(level) % 2))
    bands = np.abs(level - ndimage.median_filter(level, size=width, mode="nearest")) / noise
    ratio = line_std[~flat] / typical_std
    ratio_lo, ratio_hi = np.quantile(ratio, [0.01, 0.99])
    sample = good[:: max(1, len(good) // ENTROPY_LINES)].ravel()
    lo, hi = np.quantile(sample, [0.005, 0.995])
    hist, _ = np.histogram(sample, bins=ENTROPY_BINS, range=(lo, hi if hi > lo else lo + 1))
    p = hist[hist > 0] / max(hist.sum(), 1)
    entropy = float(-(p * np.log(p)).sum() / np.log(ENTROPY_BINS))
    # Texture persistence: lines much rougher (ringing, noise bursts) or smoother (a blunt tip,
    # a flat-lined loop) than the channel's typical line, and a slow drift of the line texture
    # between the first and last third of the frame (gain drift, tip change). Texture, not the
    # line spread: a few large particles in one part of the frame change the spread, not this.
    third = max(1, len(good) // 3)
    drift = abs(np.log((np.median(along[-third:]) + 1e-30) / (np.median(along[:third]) + 1e-30)))
    return [
        float(np.quantile(steps, 0.99)),
        float((steps > SCAR_STEP).mean()),
        float((bands > SCAR_STEP).mean()),
        float(np.log(ratio_hi)),
        float(-np.log(max(ratio_lo, 1e-6))),
        float(flat.mean()),
        entropy,
        float((along > ROUGH * noise).mean()),
        float((along < noise / ROUGH).mean()),
        float(drift),
    ]


def channel_features(channels: Mapping[str, np.ndarray]) -> list[float]:
    """Channel statistics pooled over channels by their median (see the module docstring)."""
    if not channels:
        return [0.0] * len(CHANNEL_STATS)
    table = np.array([_channel_stats(data) for data in channels.values()])
    return [float(v) for v in np.median(table, axis=0)]


@dataclass(frozen=True)
class LineBank:
    """Standardised feature vectors of good lines, for nearest-neighbour distances.

    The PatchCore idea applied to lines: a line far from every good line seen in training is
    unusual whatever its kind. `radius` is the distance beyond which a line counts as far.
    """

    vectors: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    radius: float

    def distances(self, line_features: np.ndarray) -> np.ndarray:
        x = np.nan_to_num((np.asarray(line_features, dtype=float) - self.center) / self.scale)
        d2 = (x**2).sum(1)[:, None] - 2 * x @ self.vectors.T + (self.vectors**2).sum(1)[None, :]
        return np.sqrt(np.maximum(d2.min(axis=1), 0))

    def stats(self, line_features: np.ndarray) -> list[float]:
        if len(line_features) == 0 or len(self.vectors) == 0:
            return [0.0] * len(BANK_STATS)
        nearest = self.distances(line_features)
        return [
            float(nearest.max()),
            float(np.quantile(nearest, 0.95)),
            float((nearest > self.radius).mean()),
        ]


def frame_vector(
    frame: FrameScores,
    channels: Mapping[str, np.ndarray] | None = None,
    bank: LineBank | None = None,
) -> np.ndarray:
    """The full feature vector, in the order of `feature_names(bank)`.

    `channels` are the frame's lines so far, each (lines, points); without them (e.g. only
    line scores reached the classifier) the channel statistics are zero.
    """
    flagged = sum(line.flagged for line in frame.lines) / max(frame.n_lines, 1)
    values = [float(flagged), *channel_features(channels or {})]
    if bank is not None:
        values += bank.stats(frame.features)
    return np.nan_to_num(np.asarray(values, dtype=float), nan=0.0, posinf=1e6, neginf=-1e6)
