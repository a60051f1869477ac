"""Frame-level features for the pass/fail classifier.

Two sources: what the scorer found (flagged lines, events, line scores, its per-line feature
columns) and a few channel statistics. Every value is chosen to describe how the *scan* behaves,
not what the *sample* is: no absolute heights, no channel-set indicators, and channel statistics
are pooled over channels (median and max) so a model cannot tell which channels were saved.

Channel statistics are computed per channel, per line along the fast axis (axis 1 of a channel
array, the points), then aggregated over lines; ofdspm computed its statistics across the wrong
axis. The entropy is a real Shannon entropy of a histogram, normalised by its maximum.

Everything works on a frame in progress (the lines seen so far), because the daemon attaches
a probability to an online alert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from spmwatch.model import EVENT_KINDS, SEVERITIES, FrameScores

SCORE_STATS = ("max", "q99", "q95", "q90", "median")
COLUMN_STATS = ("q95", "max")
CHANNEL_STATS = (
    "scar_q99",
    "scar_frac",
    "line_std_hi",
    "line_std_lo",
    "flat_frac",
    "entropy",
)
BANK_STATS = ("bank_max", "bank_q95", "bank_frac")
ENTROPY_BINS = 64


def feature_names(line_feature_names: Sequence[str], bank: bool = False) -> tuple[str, ...]:
    """Names of the frame feature vector, in order, for a scorer with these line features."""
    names = [
        "flagged_frac",
        "longest_run_frac",
        "longest_run_log",
        "n_flagged_log",
        "missing_frac",
        "n_events_log",
    ]
    for kind in EVENT_KINDS:
        names += [f"events_{kind}", f"severity_{kind}"]
    names += [f"score_{s}" for s in SCORE_STATS]
    names += [f"line_{col}_{s}" for col in line_feature_names for s in COLUMN_STATS]
    names += [f"chan_{s}_{agg}" for s in CHANNEL_STATS for agg in ("median", "max")]
    if bank:
        names += list(BANK_STATS)
    return tuple(names)


def _longest_run(flags: np.ndarray) -> int:
    """Longest run of True values."""
    if not flags.any():
        return 0
    padded = np.concatenate(([0], flags.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


def _quantiles(values: np.ndarray, stats: Sequence[str]) -> list[float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [0.0] * len(stats)
    out = []
    for stat in stats:
        if stat == "max":
            out.append(float(values.max()))
        elif stat == "median":
            out.append(float(np.median(values)))
        else:
            out.append(float(np.quantile(values, int(stat[1:]) / 100)))
    return out


def scorer_features(frame: FrameScores, finished: bool = True) -> list[float]:
    """Features from the scorer's output: flags, runs, events, scores, line-feature columns.

    `finished` says the frame ended (a file, or a stopped scan): only then do missing lines
    count, since a frame in progress is not yet partial.
    """
    n = max(frame.n_lines, 1)
    flags = np.array([line.flagged for line in frame.lines], dtype=bool)
    run = _longest_run(flags)
    missing = 0.0
    if finished and frame.expected_lines > 0:
        missing = max(0.0, 1.0 - frame.n_lines / frame.expected_lines)
    out = [
        float(flags.mean()) if flags.size else 0.0,
        run / n,
        float(np.log1p(run)),
        float(np.log1p(flags.sum())),
        missing,
        float(np.log1p(len(frame.events))),
    ]
    for kind in EVENT_KINDS:
        events = [e for e in frame.events if e.kind == kind]
        severity = max((SEVERITIES.index(e.severity) + 1 for e in events), default=0)
        out += [float(np.log1p(len(events))), float(severity)]
    scores = np.array([line.score for line in frame.lines], dtype=float)
    out += _quantiles(scores, SCORE_STATS)
    columns = np.asarray(frame.features, dtype=float).reshape(-1, len(frame.feature_names))
    for j in range(columns.shape[1]):
        out += _quantiles(np.abs(columns[:, j]), COLUMN_STATS)
    return out


def _channel_stats(data: np.ndarray) -> list[float]:
    """Per-line statistics of one channel (lines, points), aggregated over lines."""
    data = np.asarray(data, dtype=float)
    finite_rows = np.isfinite(data).all(axis=1)
    line_std = np.where(finite_rows, np.nanstd(np.where(np.isfinite(data), data, 0), axis=1), 0)
    typical_std = float(np.median(line_std[finite_rows])) if finite_rows.any() else 0.0
    flat = (~finite_rows) | (line_std <= 1e-6 * (typical_std or 1.0))
    good = data[~flat]
    if good.shape[0] < 3 or typical_std == 0:
        return [0.0, 0.0, 0.0, 0.0, float(flat.mean()), 0.0]
    # Scar measure: the median step between consecutive lines, against the pixel-to-pixel
    # noise along the line (the same idea as Gwyddion's scar marking, normalised per line).
    along = np.median(np.abs(np.diff(good, axis=1)), axis=1)
    noise = float(np.median(along)) or typical_std
    steps = np.abs(np.median(np.diff(good, axis=0), axis=1)) / noise
    ratio = line_std[~flat] / typical_std
    lo, hi = np.quantile(good, [0.005, 0.995])
    hist, _ = np.histogram(np.clip(good, lo, hi), bins=ENTROPY_BINS, range=(lo, hi or lo + 1))
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log(p)).sum() / np.log(ENTROPY_BINS))
    return [
        float(np.quantile(steps, 0.99)),
        float((steps > 3.0).mean()),
        float(np.log(np.quantile(ratio, 0.99))),
        float(-np.log(max(np.quantile(ratio, 0.01), 1e-6))),
        float(flat.mean()),
        entropy,
    ]


def channel_features(channels: Mapping[str, np.ndarray]) -> list[float]:
    """Channel statistics pooled over channels (median, max): blind to which were saved."""
    if not channels:
        return [0.0] * (2 * len(CHANNEL_STATS))
    table = np.array([_channel_stats(data) for data in channels.values()])
    out = []
    for j in range(len(CHANNEL_STATS)):
        out += [float(np.median(table[:, j])), float(table[:, j].max())]
    return out


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
    finished: bool = True,
    bank: LineBank | None = None,
) -> np.ndarray:
    """The full feature vector, in the order of `feature_names(frame.feature_names, bank)`.

    `channels` are the frame's lines so far, each (lines, points); without them (e.g. only
    line scores reached the classifier) the channel statistics are zero.
    """
    values = scorer_features(frame, finished)
    values += channel_features(channels or {})
    if bank is not None:
        values += bank.stats(frame.features)
    return np.nan_to_num(np.asarray(values, dtype=float), nan=0.0, posinf=1e6, neginf=-1e6)
