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
from numba import njit
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


# Plain njit, no fast-math: the kernels reproduce numpy's arithmetic (medians, linear quantiles,
# histogram binning) operation for operation, so the shipped model's features do not move.
_JIT = {"cache": True, "nogil": True}


@njit(**_JIT)
def _select(buf, n, k):
    """The k-th smallest of buf[:n], partitioning buf in place (Hoare quickselect)."""
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        # median-of-three pivot keeps sorted and reversed lines linear
        a, b, c = buf[lo], buf[mid], buf[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        i, j = lo, hi
        while i <= j:
            while buf[i] < pivot:
                i += 1
            while buf[j] > pivot:
                j -= 1
            if i <= j:
                buf[i], buf[j] = buf[j], buf[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return buf[k]


@njit(**_JIT)
def _median(buf, n):
    """np.median of buf[:n] (the mean of the two middle values for even n); reorders buf."""
    half = n // 2
    upper = _select(buf, n, half)
    if n % 2:
        return upper
    lower = buf[0]
    for i in range(1, half):
        lower = max(lower, buf[i])
    return (lower + upper) / 2


@njit(**_JIT)
def _quantile(values, q):
    """np.quantile(values, q), linear method: the same index, weight and interpolation."""
    n = values.size
    buf = values.copy()
    virtual = (n - 1) * q
    if virtual >= n - 1:
        return buf.max()
    prev = int(np.floor(virtual))
    a = _select(buf, n, prev)
    b = buf[prev + 1]
    for i in range(prev + 2, n):
        b = min(b, buf[i])
    t = virtual - prev
    if t >= 0.5:
        return b - (b - a) * (1 - t)
    return a + (b - a) * t


@njit(**_JIT)
def _line_medians(good, stride):
    """Per line: median step along it, median step to the next line, median level.

    All three on every stride-th point, the values np.diff and np.median would give.
    """
    lines, points = good.shape
    along = np.empty(lines)
    steps = np.empty(lines - 1)
    level = np.empty(lines)
    buf = np.empty(points)
    for i in range(lines):
        m = 0
        for j in range(0, points - 1, stride):
            buf[m] = abs(good[i, j + 1] - good[i, j])
            m += 1
        along[i] = _median(buf, m)
        m = 0
        for j in range(0, points, stride):
            buf[m] = good[i, j]
            m += 1
        level[i] = _median(buf, m)
        if i + 1 < lines:
            m = 0
            for j in range(0, points, stride):
                buf[m] = good[i + 1, j] - good[i, j]
                m += 1
            steps[i] = abs(_median(buf, m))
    return along, steps, level


@njit(**_JIT)
def _histogram(sample, edges):
    """np.histogram(sample, bins=edges) for equal bins, with numpy's own binning rule."""
    bins = edges.size - 1
    first, last = edges[0], edges[-1]
    denom = last - first
    counts = np.zeros(bins, np.int64)
    for x in sample:
        if x < first or x > last:
            continue
        k = int((x - first) / denom * bins)
        if k == bins:
            k -= 1
        if x < edges[k]:
            k -= 1
        if x >= edges[k + 1] and k != bins - 1:
            k += 1
        counts[k] += 1
    return counts


def _entropy(sample: np.ndarray) -> float:
    """Shannon entropy of a 64-bin histogram over the 0.5-99.5 % range, normalised to [0, 1]."""
    lo, hi = _quantile(sample, 0.005), _quantile(sample, 0.995)
    hist = _histogram(sample, np.linspace(lo, hi if hi > lo else lo + 1.0, ENTROPY_BINS + 1))
    p = hist[hist > 0] / max(hist.sum(), 1)
    return float(-(p * np.log(p)).sum() / np.log(ENTROPY_BINS))


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
    along, steps, level = _line_medians(good, max(1, good.shape[1] // MEDIAN_POINTS))
    noise = float(np.median(along)) or typical_std
    steps /= noise
    # Band measure: a line's level against the running median of its neighbours, so a band
    # of several offset lines counts whole, not only at its two edges.
    width = min(BAND_WINDOW, len(level) - (1 - len(level) % 2))
    bands = np.abs(level - ndimage.median_filter(level, size=width, mode="nearest")) / noise
    ratio = line_std[~flat] / typical_std
    ratio_lo, ratio_hi = _quantile(ratio, 0.01), _quantile(ratio, 0.99)
    entropy = _entropy(good[:: max(1, len(good) // ENTROPY_LINES)].ravel())
    # Texture persistence: lines much rougher (ringing, noise bursts) or smoother (a blunt tip,
    # a flat-lined loop) than the channel's typical line, and a slow drift of the line texture
    # between the first and last third of the frame (gain drift, tip change). Texture, not the
    # line spread: a few large particles in one part of the frame change the spread, not this.
    third = max(1, len(good) // 3)
    drift = abs(np.log((np.median(along[-third:]) + 1e-30) / (np.median(along[:third]) + 1e-30)))
    return [
        float(_quantile(steps, 0.99)),
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
