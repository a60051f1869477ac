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

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy import ndimage

from spmwatch.model import FrameScores
from spmwatch.selection import kth_smallest, median_in_place
from spmwatch.sorting import sort_network

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
# What each frame feature measures, in words: a verdict names its reasons with these.
MEANINGS = {
    "flagged_frac": "lines flagged by the line scorer",
    "chan_scar_q99_median": "largest line-to-line steps",
    "chan_scar_frac_median": "many line-to-line steps",
    "chan_band_frac_median": "offset bands of lines",
    "chan_line_std_hi_median": "lines far noisier than typical",
    "chan_line_std_lo_median": "lines far flatter than typical",
    "chan_flat_frac_median": "flat or missing lines",
    "chan_entropy_median": "spread of the value histogram",
    "chan_rough_frac_median": "lines rougher than the texture",
    "chan_smooth_frac_median": "lines smoother than the texture (blur)",
    "chan_drift_median": "texture drift across the frame",
    "bank_max": "the line least like good lines",
    "bank_q95": "lines unlike good lines",
    "bank_frac": "share of lines unlike good lines",
}
ENTROPY_BINS = 64
# The accumulator computes per-line values for this many stored lines at once: one numba call
# instead of one per line, and a verdict mid-frame settles at most this many first.
SETTLE_LINES = 16
# Lines sampled for the entropy histogram (16-31 of them, >= 4,096 values at 256 points): the
# entropy of 64 bins needs no more, and this sample is most of an alert's verdict time (64 lines
# cost 0.7-1.2 ms of it, 16 lines 0.25-0.35 ms: docs/classifier.md).
ENTROPY_LINES = 16
TAIL_LO, TAIL_HI = 0.005, 0.995  # the histogram spans these quantiles of its sample
# The verdict's counting pass over the entropy sample: bins over the sample's range (uint16 bin
# numbers, and the counts stay in the first-level cache), and the smallest sample it is used on.
FINE_BINS = 4096
MEDIAN_POINTS = 64  # points per line the robust medians look at
BAND_WINDOW = 15  # lines in the running median a band is measured against
ROUGH = 3.0  # a line 3x rougher or smoother than the channel's typical line is out of texture
SCAR_STEP = 3.0  # a line step or band offset counts from 3x the pixel-to-pixel noise
# A tail statistic over lines (the 1st and 99th percentiles of line steps and spreads) rests on
# at least this many lines beyond it: the 97.5th percentile of a 256-line frame, the 99th from
# 652 lines on. Good frames have a few streak lines; at 2.55 (the 99th of 256 lines) two of
# them (four steps) were the tail, and 29 of 34 good real scans with two streak lines failed.
TAIL_LINES = 6.5


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
def _quantile(values, q):
    """np.quantile(values, q), linear method: the same index, weight and interpolation."""
    n = values.size
    buf = values.copy()
    virtual = (n - 1) * q
    if virtual >= n - 1:
        return buf.max()
    prev = int(np.floor(virtual))
    return _interpolate(buf, n, prev, virtual - prev)


@njit(**_JIT)
def _line_quantile(values, q):
    """_quantile of per-line values, moved inwards where the q-quantile would rest on fewer
    than TAIL_LINES lines beyond it (any frame under 256 lines): the median for the shortest."""
    top = values.size - 1
    inward = top > 2 * TAIL_LINES
    virtual = min(max(top * q, TAIL_LINES), top - TAIL_LINES) if inward else 0.5 * top
    prev = int(np.floor(virtual))
    return _interpolate(values.copy(), top + 1, prev, virtual - prev)


@njit(**_JIT)
def _interpolate(buf, n, k, t):
    """_lerp between the k-th and (k+1)-th smallest of buf[:n] (partitions buf in place)."""
    a = kth_smallest(buf, n, k)
    b = buf[k + 1]
    for i in range(k + 2, n):
        b = min(b, buf[i])
    return _lerp(a, b, t)


@njit(**_JIT)
def _lerp(a, b, t):
    """numpy's linear interpolation between neighbouring order statistics a <= b."""
    if t >= 0.5:
        return b - (b - a) * (1 - t)
    return a + (b - a) * t


# Per-line medians on every stride-th point, the values np.diff and np.median would give on the
# float64 copy of the frame; every value is widened to float64 before any arithmetic, so a
# float32 line gives the same numbers as its float64 copy.


# The values go into column `lane` of a (values, lanes) buffer: one column for a single median,
# one per median when a sorting network takes many at once (`_network_medians`).


@njit(**_JIT)
def _along_values(row, stride, out, lane):
    """The absolute steps along one line into out[:, lane]; their count."""
    m = 0
    for j in range(0, row.size - 1, stride):
        out[m, lane] = abs(np.float64(row[j + 1]) - np.float64(row[j]))
        m += 1
    return m


@njit(**_JIT)
def _level_values(row, stride, out, lane):
    """The levels of one line into out[:, lane]; their count."""
    m = 0
    for j in range(0, row.size, stride):
        out[m, lane] = row[j]
        m += 1
    return m


@njit(**_JIT)
def _step_values(row, following, stride, out, lane):
    """The steps from one line to the following one into out[:, lane]; their count."""
    m = 0
    for j in range(0, row.size, stride):
        out[m, lane] = np.float64(following[j]) - np.float64(row[j])
        m += 1
    return m


@njit(**_JIT)
def _along(row, stride, buf):
    """Median absolute step along one line."""
    return median_in_place(buf, _along_values(row, stride, buf.reshape((buf.size, 1)), 0))


@njit(**_JIT)
def _level(row, stride, buf):
    """Median level of one line."""
    return median_in_place(buf, _level_values(row, stride, buf.reshape((buf.size, 1)), 0))


@njit(**_JIT)
def _step(row, following, stride, buf):
    """Absolute median step from one line to the following one."""
    return abs(
        median_in_place(buf, _step_values(row, following, stride, buf.reshape((buf.size, 1)), 0))
    )


def _median_network(n: int) -> np.ndarray:
    """Batcher's odd-even merge sort of n (a power of two) values as (low, high) wire pairs,
    less the comparators that cannot reach the two middle wires (445 of 543 for 64)."""
    needed, kept = {n // 2 - 1, n // 2}, []
    for low, high in reversed(sort_network(n).tolist()):
        if low in needed or high in needed:
            kept.append((low, high))
            needed |= {low, high}
    return np.array(kept[::-1], dtype=np.int64).reshape(-1, 2)


NETWORK_VALUES = 64  # the sorting network's width: medians of up to this many values use it
_MEDIAN_PAIRS = _median_network(NETWORK_VALUES)


@njit(**_JIT)
def _network_medians(values, counts, lanes, pairs, out):
    """out[l] = np.median of values[:counts[l], l] for l < lanes, as `_median` gives it.

    A comparator network sorts every column at once: no data-dependent branch (quickselect
    on 64 values mispredicts most of its comparisons), and each comparator is one min and
    one max over a row of lanes, which vectorises. Each column is padded with -inf below and
    +inf above its values so its median lands on the middle wires; values (64, >= lanes) is
    overwritten. Sorting gives the order statistics quickselect gives: equal values are
    bit-identical but for the sign of a zero, and no statistic depends on that sign.
    """
    width = values.shape[0]
    for lane in range(lanes):
        m = counts[lane]
        below = (width - m) // 2
        for r in range(m, m + below):
            values[r, lane] = -np.inf
        for r in range(m + below, width):
            values[r, lane] = np.inf
    for c in range(pairs.shape[0]):
        low, high = values[pairs[c, 0]], values[pairs[c, 1]]
        for lane in range(lanes):
            a, b = low[lane], high[lane]
            low[lane] = b if b < a else a
            high[lane] = a if b < a else b
    mid = width // 2
    for lane in range(lanes):
        if counts[lane] % 2:
            out[lane] = values[mid - 1, lane]
        else:
            out[lane] = (values[mid - 1, lane] + values[mid, lane]) / 2


@njit(**_JIT)
def _line_medians(good, stride):
    """Per line: median step along it, median step to the next line, median level."""
    lines, points = good.shape
    along = np.empty(lines)
    steps = np.empty(lines - 1)
    level = np.empty(lines)
    buf = np.empty(points)
    for i in range(lines):
        along[i] = _along(good[i], stride, buf)
        level[i] = _level(good[i], stride, buf)
        if i + 1 < lines:
            steps[i] = _step(good[i], good[i + 1], stride, buf)
    return along, steps, level


@njit(**_JIT)
def _bin(x, edges, norm):
    """numpy's histogram bin of x for equal bins `edges` (norm = bins / their span): -1 below
    the first edge, `bins` above the last.

    The bin is the one the edges say (numpy's guess, corrected by one either way), so any
    guess within one bin gives numpy's counts: a multiplication instead of a division. It
    never decreases as x grows, which lets `_sample_histogram` bin whole ranges of values.
    """
    bins = edges.size - 1
    if x < edges[0]:
        return -1
    if x > edges[bins]:
        return bins
    guess = (x - edges[0]) * norm
    k = int(guess) if guess < bins else bins - 1  # also where no spread made norm 0 (inf * 0)
    if x < edges[k]:
        k -= 1
    elif x >= edges[k + 1] and k != bins - 1:
        k += 1
    return k


@njit(**_JIT)
def _bin_scale(bins, span):
    """bins / span, or 0.0 where that is no finite positive number (a span of 0, inf or a
    denormal): bin numbers are then no use, and nothing divides by zero."""
    if span > 0 and bins / span < np.inf:
        return bins / span
    return 0.0


@njit(**_JIT)
def _histogram(data, rows, edges):
    """np.histogram(data[rows].ravel(), bins=edges) for equal bins, numpy's binning rule;
    four interleaved count arrays so neighbouring equal bins do not wait on each other."""
    bins = edges.size - 1
    norm = _bin_scale(bins, edges[bins] - edges[0])
    counts = np.zeros((4, bins), np.int64)
    for r in rows:
        for j in range(data.shape[1]):
            k = _bin(np.float64(data[r, j]), edges, norm)
            if 0 <= k < bins:
                counts[j & 3, k] += 1
    return counts.sum(axis=0)


@njit(**_JIT)
def _edges(lo, hi):
    """np.linspace(lo, hi if hi > lo else lo + 1.0, ENTROPY_BINS + 1), numpy's arithmetic."""
    stop = hi if hi > lo else lo + 1.0
    delta = stop - lo
    step = delta / ENTROPY_BINS
    edges = np.empty(ENTROPY_BINS + 1)
    for i in range(ENTROPY_BINS + 1):
        # numpy's way around a step that underflows to zero
        edges[i] = (i / ENTROPY_BINS * delta if step == 0 else i * step) + lo
    edges[ENTROPY_BINS] = stop
    return edges


@njit(**_JIT)
def _shares(hist, out):
    """The shares of a histogram's non-empty bins into out[:k]; k. As numpy's
    hist[hist > 0] / max(hist.sum(), 1): both divide the two counts as float64."""
    total = max(hist.sum(), 1)
    k = 0
    for count in hist:
        if count > 0:
            out[k] = count / total
            k += 1
    return k


_LOG_BINS = np.log(ENTROPY_BINS)


@njit(**_JIT)
def _entropy(p):
    """Shannon entropy of a histogram from the shares of its non-empty bins (`_shares`),
    normalised to [0, 1] by that of ENTROPY_BINS equal bins."""
    total = 0.0
    for share in p:
        total += share * np.log(share)
    return -total / _LOG_BINS


@njit(**_JIT)
def _histogram_entropy(hist):
    """`_entropy` of a histogram's counts."""
    p = np.empty(len(hist))
    return _entropy(p[: _shares(hist, p)])


@njit(**_JIT)
def _entropy_step(n_good):
    """The entropy histogram samples every this-many good lines: about ENTROPY_LINES."""
    return max(1, n_good // ENTROPY_LINES)


@njit(**_JIT)
def _summary(parts, entropy, out):
    """The ten statistics of CHANNEL_STATS into `out` from a channel's parts (q99 of the
    steps, scar share, band share, 1 % and 99 % spread ratio, flat share, rough share,
    smooth share, texture of the first and last third) and entropy. One compiled function
    for the from-scratch and the incremental paths, so both round alike."""
    q99, scar, band, ratio_lo, ratio_hi, flat, rough, smooth, first, last = parts
    out[0] = q99
    out[1] = scar
    out[2] = band
    out[3] = np.log(ratio_hi)
    out[4] = -np.log(max(ratio_lo, 1e-6))
    out[5] = flat
    out[6] = entropy
    out[7] = rough
    out[8] = smooth
    out[9] = abs(np.log((last + 1e-30) / (first + 1e-30)))


@njit(**_JIT)
def _too_few_lines(flat_frac, out):
    """Statistics of a channel with fewer than three good lines: only the flat share."""
    out[:] = 0.0
    out[5] = flat_frac


@njit(**_JIT)
def _pool(table):
    """Pool per-channel statistics (channels x CHANNEL_STATS) by their median over channels,
    as np.median(table, axis=0) (NaN where a channel has one; zeros without channels)."""
    n, width = table.shape
    pooled = np.zeros(width)
    if n == 0:
        return pooled
    column = np.empty(n)
    for f in range(width):
        for c in range(n):  # insertion sort: a handful of channels
            v = table[c, f]
            j = c - 1
            while j >= 0 and column[j] > v:
                column[j + 1] = column[j]
                j -= 1
            column[j + 1] = v
        if np.isnan(table[:, f]).any():
            pooled[f] = np.nan
        elif n % 2:
            pooled[f] = column[n // 2]
        else:
            pooled[f] = (column[n // 2 - 1] + column[n // 2]) / 2
    return pooled


def _channel_stats(data: np.ndarray) -> np.ndarray:
    """Per-line statistics of one channel (lines, points), aggregated over lines.

    Scale-free: every measure is relative to the channel's own pixel-to-pixel noise or its
    typical line spread, so units and offsets do not matter. This is the definition, computed
    from scratch; `ChannelStatsAccumulator` gives the same numbers line by line.
    """
    data = np.asarray(data, dtype=float)
    finite_rows = np.isfinite(data).all(axis=1)
    line_std = np.zeros(len(data))
    line_std[finite_rows] = data[finite_rows].std(axis=1)
    typical_std = float(np.median(line_std[finite_rows])) if finite_rows.any() else 0.0
    flat = (~finite_rows) | (line_std <= 1e-6 * (typical_std or 1.0))
    good = data[~flat]
    stats = np.empty(len(CHANNEL_STATS))
    if good.shape[0] < 3 or typical_std == 0:
        _too_few_lines(float(flat.mean()), stats)
        return stats
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
    sample = good[:: _entropy_step(len(good))]
    pooled = sample.ravel()
    lo, hi = _quantile(pooled, TAIL_LO), _quantile(pooled, TAIL_HI)
    entropy = _histogram_entropy(_histogram(sample, np.arange(len(sample)), _edges(lo, hi)))
    # Texture persistence: lines much rougher (ringing, noise bursts) or smoother (a blunt tip,
    # a flat-lined loop) than the channel's typical line, and a slow drift of the line texture
    # between the first and last third of the frame (gain drift, tip change). Texture, not the
    # line spread: a few large particles in one part of the frame change the spread, not this.
    third = max(1, len(good) // 3)
    parts = np.array(
        [
            _line_quantile(steps, 0.99),
            (steps > SCAR_STEP).mean(),
            (bands > SCAR_STEP).mean(),
            _line_quantile(ratio, 0.01),
            _line_quantile(ratio, 0.99),
            flat.mean(),
            (along > ROUGH * noise).mean(),
            (along < noise / ROUGH).mean(),
            np.median(along[:third]),
            np.median(along[-third:]),
        ]
    )
    _summary(parts, entropy, stats)
    return stats


# The incremental path: per-line values cached as lines arrive, then aggregated. Columns of the
# per-line table (all float64; finiteness as 1.0/0.0, a missing step as NaN).
_FINITE, _STD, _ALONG, _LEVEL, _STEP, _MIN, _MAX = range(7)
_LINE_VALUES = 7
_PAIRWISE_BLOCK = 128  # numpy's pairwise-summation block


@njit(**_JIT)
def _block_sum(a, lo, n):
    """numpy's float64 sum of a short run a[lo:lo + n] (n <= 128): eight accumulators."""
    if n < 8:
        total = 0.0
        for i in range(lo, lo + n):
            total += a[i]
        return total
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = lo + 8
    end = lo + n - n % 8
    while i < end:
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < lo + n:
        total += a[i]
        i += 1
    return total


@njit(**_JIT)
def _half(n):
    """Where numpy's pairwise summation splits a run of n: the middle, down to a multiple of 8."""
    return n // 2 - (n // 2) % 8


@njit(**_JIT)
def _at_most_two_blocks(n):
    """A run numpy sums as one block or splits once into two."""
    return n <= _PAIRWISE_BLOCK or n - _half(n) <= _PAIRWISE_BLOCK


@njit(**_JIT)
def _two_blocks(a, lo, n):
    """numpy's sum of a[lo:lo + n] for a run of at most two blocks."""
    if n <= _PAIRWISE_BLOCK:
        return _block_sum(a, lo, n)
    half = _half(n)
    return _block_sum(a, lo, half) + _block_sum(a, lo + half, n - half)


@njit(**_JIT)
def _pairwise_sum(a, n, todo, sums):
    """np.add.reduce of float64 a[:n], so a line's std rounds as numpy's: runs of more than
    128 split in halves on multiples of eight, shorter ones summed by `_block_sum`.

    Up to four blocks (lines of 256 or 512 points) are summed directly; longer runs walk the
    halving with an explicit stack, not by recursion: numba's on-disk cache crashes on
    reloading recursive functions (the stack cost a 256-point line three times the sums).
    `todo` (128, 3) int64 and `sums` (64,) float64 are scratch space (the caller's, so a
    line costs no allocation).
    """
    if _at_most_two_blocks(n):
        return _two_blocks(a, 0, n)
    half = _half(n)
    if _at_most_two_blocks(half) and _at_most_two_blocks(n - half):
        return _two_blocks(a, 0, half) + _two_blocks(a, half, n - half)
    todo[0, 0], todo[0, 1], todo[0, 2] = 0, n, 0
    tasks = 1
    done = 0
    while tasks:
        tasks -= 1
        lo, m, split = todo[tasks, 0], todo[tasks, 1], todo[tasks, 2]
        if m <= _PAIRWISE_BLOCK:
            sums[done] = _block_sum(a, lo, m)
            done += 1
        elif split:
            done -= 1
            sums[done - 1] += sums[done]
        else:
            half = _half(m)
            todo[tasks, 2] = 1  # combine the two halves once both are summed
            todo[tasks + 1, 0], todo[tasks + 1, 1], todo[tasks + 1, 2] = lo + half, m - half, 0
            todo[tasks + 2, 0], todo[tasks + 2, 1], todo[tasks + 2, 2] = lo, half, 0
            tasks += 3
    return sums[0]


@njit(**_JIT)
def _extremes(x):
    """(min, max) of finite x. Four running minima and maxima, not one: each step waits on
    the one before, and four independent chains cost a 256-point line ~40 % less (not
    vectorised either way without fast-math)."""
    n = x.size
    l0 = l1 = l2 = l3 = h0 = h1 = h2 = h3 = x[0]
    i = 0
    while i + 4 <= n:
        a, b, c, d = x[i], x[i + 1], x[i + 2], x[i + 3]
        l0, l1, l2, l3 = min(l0, a), min(l1, b), min(l2, c), min(l3, d)
        h0, h1, h2, h3 = max(h0, a), max(h1, b), max(h2, c), max(h3, d)
        i += 4
    low, high = min(min(l0, l1), min(l2, l3)), max(max(h0, h1), max(h2, h3))
    for j in range(i, n):
        low, high = min(low, x[j]), max(high, x[j])
    return low, high


@njit(**_JIT)
def _settle_medians(values, counts, cells, lanes, pairs, medians, out):
    """The network medians of the first `lanes` columns into their cells of out (a channel's
    flattened table); the step column keeps the absolute value, as `_step` does."""
    _network_medians(values, counts, lanes, pairs, medians)
    for k in range(lanes):
        out[cells[k]] = abs(medians[k]) if cells[k] % _LINE_VALUES == _STEP else medians[k]


@njit(**_JIT)
def _line_values(lines, table, start, end, stride, pairs):
    """Each channel's per-line values for lines start..end-1 of lines (channels, lines,
    points) into table (channels, lines, _LINE_VALUES): finiteness, np.std, the strided
    medians along the line and of its level, the step from the line before it, and the
    line's extremes. The medians of up to NETWORK_VALUES values go through the sorting
    network (`pairs`), those of one channel and up to SETTLE_LINES lines together."""
    channels, _, points = lines.shape
    x = np.empty(points)
    buf = np.empty(points)
    todo, sums = np.empty((128, 3), np.int64), np.empty(64)  # _pairwise_sum's stacks
    network = (points - 1) // stride + 1 <= NETWORK_VALUES  # the level's count, the largest
    lanes = 3 * SETTLE_LINES
    values = np.empty((NETWORK_VALUES, lanes))
    counts = np.empty(lanes, np.int64)
    cells = np.empty(lanes, np.int64)  # line * _LINE_VALUES + column of each lane's median
    medians = np.empty(lanes)
    for c in range(channels):
        out_c = table[c].reshape(-1)
        used = 0
        for i in range(start, end):
            row = lines[c, i]
            infinite = 0
            for j in range(points):
                x[j] = row[j]
                infinite += not math.isfinite(x[j])
            out = table[c, i]
            out[_FINITE] = 0.0 if infinite else 1.0
            out[_STEP] = np.nan
            if infinite:
                out[_STD] = out[_ALONG] = out[_LEVEL] = 0.0
                out[_MIN] = out[_MAX] = np.nan  # never sampled: not a good line
                continue
            out[_MIN], out[_MAX] = _extremes(x)
            mean = (0.0 + _pairwise_sum(x, points, todo, sums)) / points
            for j in range(points):
                d = x[j] - mean
                buf[j] = d * d
            out[_STD] = math.sqrt((0.0 + _pairwise_sum(buf, points, todo, sums)) / points)
            stepped = i > 0 and table[c, i - 1, _FINITE] != 0
            if not network:
                out[_ALONG] = _along(row, stride, buf)
                out[_LEVEL] = _level(row, stride, buf)
                if stepped:
                    out[_STEP] = _step(lines[c, i - 1], row, stride, buf)
                continue
            cell = i * _LINE_VALUES
            counts[used] = _along_values(row, stride, values, used)
            counts[used + 1] = _level_values(row, stride, values, used + 1)
            cells[used], cells[used + 1] = cell + _ALONG, cell + _LEVEL
            used += 2
            if stepped:
                counts[used] = _step_values(lines[c, i - 1], row, stride, values, used)
                cells[used] = cell + _STEP
                used += 1
            if used > lanes - 3:
                _settle_medians(values, counts, cells, used, pairs, medians, out_c)
                used = 0
        _settle_medians(values, counts, cells, used, pairs, medians, out_c)


_BAND_WIRES = 1 << (BAND_WINDOW - 1).bit_length()  # a power of two >= BAND_WINDOW
_BAND_PAIRS = _median_network(_BAND_WIRES)


@njit(**_JIT)
def _band_count(level, width, noise):
    """Lines whose level lies more than SCAR_STEP noise from the running median of `width`
    (odd, <= BAND_WINDOW) lines around it: scipy's median_filter(mode="nearest") and the
    band test. Every line's window is one column of the median network."""
    n = level.size
    half = width // 2
    windows = np.empty((_BAND_WIRES, n))
    counts = np.full(n, width)
    for k in range(width):
        for i in range(n):
            windows[k, i] = level[min(max(i - half + k, 0), n - 1)]
    medians = np.empty(n)
    _network_medians(windows, counts, n, _BAND_PAIRS, medians)
    count = 0
    for i in range(n):
        count += abs(level[i] - medians[i]) / noise > SCAR_STEP
    return count


@njit(**_JIT)
def _aggregate(data, table, n, stride):
    """The statistics of one channel's first n lines from their cached per-line values.

    Returns (enough good lines, flat share, good line indices, parts), parts being the
    arguments of `_summary` but the entropy. "Flat" depends on the frame's typical spread, so
    the good lines are chosen here; a step is cached only between adjacent lines, so the step
    across flat lines between two good ones is computed here from the lines themselves.
    """
    spread = np.empty(n)
    finite = 0
    for i in range(n):
        if table[i, _FINITE] != 0:
            spread[finite] = table[i, _STD]
            finite += 1
    typical = median_in_place(spread, finite) if finite else 0.0
    floor = 1e-6 * (typical if typical != 0 else 1.0)
    good = np.empty(n, np.int64)
    g = 0
    for i in range(n):
        if table[i, _FINITE] != 0 and not table[i, _STD] <= floor:
            good[g] = i
            g += 1
    flat_frac = (n - g) / n
    parts = np.zeros(10)
    if g < 3 or typical == 0:
        return False, flat_frac, good[:g], parts
    along = np.empty(g)
    level = np.empty(g)
    ratio = np.empty(g)
    for k in range(g):
        along[k] = table[good[k], _ALONG]
        level[k] = table[good[k], _LEVEL]
        ratio[k] = table[good[k], _STD] / typical
    noise = median_in_place(along.copy(), g)
    if noise == 0:
        noise = typical
    steps = np.empty(g - 1)
    buf = np.empty(data.shape[1])
    scars = 0
    for k in range(g - 1):
        a, b = good[k], good[k + 1]
        step = table[b, _STEP] if b == a + 1 else _step(data[a], data[b], stride, buf)
        steps[k] = step / noise
        scars += steps[k] > SCAR_STEP
    rough = smooth = 0
    for k in range(g):
        rough += along[k] > ROUGH * noise
        smooth += along[k] < noise / ROUGH
    third = max(1, g // 3)
    parts[0] = _line_quantile(steps, 0.99)
    parts[1] = scars / (g - 1)
    parts[2] = _band_count(level, min(BAND_WINDOW, g - (1 - g % 2)), noise) / g
    parts[3] = _line_quantile(ratio, 0.01)
    parts[4] = _line_quantile(ratio, 0.99)
    parts[5] = flat_frac
    parts[6] = rough / g
    parts[7] = smooth / g
    parts[8] = median_in_place(along[:third].copy(), third)
    parts[9] = median_in_place(along[g - third :].copy(), third)
    return True, flat_frac, good[:g], parts


@njit(**_JIT)
def _rank_bins(counts, rank):
    """The bins holding the rank-th and (rank+1)-th smallest counted values, and how many
    values lie in the bins before the first."""
    below = 0
    first = 0
    while below + counts[first] <= rank:
        below += counts[first]
        first += 1
    last, through = first, below + counts[first]
    while through <= rank + 1:
        last += 1
        through += counts[last]
    return first, last, below


@njit(**_JIT)
def _fine_bounds(b, low, high, scale, margin):
    """Bounds of every value `_sample_histogram` puts in fine bin b, widened by margin (far
    past the rounding of the bin number and of these bounds)."""
    return max(low, low + b / scale - margin), min(high, low + (b + 1) / scale + margin)


@njit(**_JIT)
def _whole_bins(counts, edges, norm, low, high, scale, margin):
    """(histogram of the fine bins lying inside one histogram bin, fine bins that do not).

    `_bin` never decreases: fine bins b..last all lie in histogram bin k if the lower bound
    of b and the upper bound of last do, and a binary search finds each run of such bins.
    """
    hist = np.zeros(ENTROPY_BINS, np.int64)
    straddles = np.zeros(FINE_BINS, np.bool_)
    b = 0
    while b < FINE_BINS:
        below, above = _fine_bounds(b, low, high, scale, margin)
        k = _bin(below, edges, norm)
        if _bin(above, edges, norm) != k:
            straddles[b] = True
            b += 1
            continue
        last, beyond = b, FINE_BINS  # the run ends at last, before beyond
        while beyond - last > 1:
            mid = (last + beyond) // 2
            if _bin(_fine_bounds(mid, low, high, scale, margin)[1], edges, norm) == k:
                last = mid
            else:
                beyond = mid
        if 0 <= k < ENTROPY_BINS:
            hist[k] += counts[b : last + 1].sum()
        b = last + 1
    return hist, straddles


@njit(**_JIT)
def _sample_histogram(data, rows, table):
    """(lo, hi, histogram): the TAIL_LO and TAIL_HI quantiles of data[rows] (linear, as
    `_quantile`) and `_histogram` of those rows between them, exactly.

    A first pass puts every value in one of FINE_BINS equal bins over the rows' range (the
    extremes cached per line in `table`) and counts them; the bin number never decreases as
    the value grows, so each quantile's two order statistics are among the values of the bins
    up to the one its ranks fall in (low tail) or from it on (high tail): a pass over the bin
    numbers picks those few values (about 1 %). A fine bin lying inside one histogram bin
    counts whole; the values of the bins that straddle an edge (2-3 %) are binned one by one
    in a last pass over the bin numbers. Three passes, the last two reading the 2-byte bin
    numbers and taking a rarely taken branch; the values are read again only where picked.
    """
    points = data.shape[1]
    n = rows.size * points
    low, high = np.inf, -np.inf
    for r in rows:
        low, high = min(low, table[r, _MIN]), max(high, table[r, _MAX])
    scale = _bin_scale(FINE_BINS, high - low)
    if n < FINE_BINS or scale == 0:
        pooled = np.empty(n)
        for k in range(rows.size):
            pooled[k * points : (k + 1) * points] = data[rows[k]]
        lo, hi = _quantile(pooled, TAIL_LO), _quantile(pooled, TAIL_HI)
        return lo, hi, _histogram(data, rows, _edges(lo, hi))
    fine = np.empty(n, np.uint16)  # unsigned: indexing with it needs no wraparound test
    for k in range(rows.size):
        row, at = data[rows[k]], k * points
        for j in range(points):
            fine[at + j] = min(int((np.float64(row[j]) - low) * scale), FINE_BINS - 1)
    counts = np.zeros(FINE_BINS, np.int64)
    for k in range(n):
        counts[fine[k]] += 1
    # both quantiles are inside the sample (n is large): the ranks below n - 1
    v_lo, v_hi = (n - 1) * TAIL_LO, (n - 1) * TAIL_HI
    p_lo, p_hi = int(np.floor(v_lo)), int(np.floor(v_hi))
    lo_last = _rank_bins(counts, p_lo)[1]
    hi_first, _, hi_below = _rank_bins(counts, p_hi)
    lows = np.empty(counts[: lo_last + 1].sum())
    highs = np.empty(n - hi_below)
    n_low = n_high = 0
    for k in range(rows.size):
        row, at = data[rows[k]], k * points
        for j in range(points):
            b = fine[at + j]
            if b <= lo_last or b >= hi_first:
                if b <= lo_last:
                    lows[n_low] = row[j]
                    n_low += 1
                if b >= hi_first:
                    highs[n_high] = row[j]
                    n_high += 1
    lo = _interpolate(lows, n_low, p_lo, v_lo - p_lo)
    hi = _interpolate(highs, n_high, p_hi - hi_below, v_hi - p_hi)
    edges = _edges(lo, hi)
    norm = _bin_scale(ENTROPY_BINS, edges[ENTROPY_BINS] - edges[0])
    if norm == 0:
        return lo, hi, _histogram(data, rows, edges)
    margin = 1e-13 * (abs(low) + abs(high)) + 1e-300
    hist, straddles = _whole_bins(counts, edges, norm, low, high, scale, margin)
    for k in range(rows.size):
        row, at = data[rows[k]], k * points
        for j in range(points):
            if straddles[fine[at + j]]:
                b = _bin(np.float64(row[j]), edges, norm)
                if 0 <= b < ENTROPY_BINS:
                    hist[b] += 1
    return lo, hi, hist


@njit(**_JIT)
def _pooled_stats(lines, table, n, stride):
    """CHANNEL_STATS of every channel's first n lines, pooled over the channels, in one call:
    `_aggregate`, `_sample_histogram` and `_summary` per channel, then `_pool`."""
    channels = lines.shape[0]
    stats = np.empty((channels, len(CHANNEL_STATS)))
    shares = np.empty(ENTROPY_BINS)
    for c in range(channels):
        ok, flat, good, parts = _aggregate(lines[c], table[c], n, stride)
        if ok:
            rows = good[:: _entropy_step(good.size)]
            filled = _shares(_sample_histogram(lines[c], rows, table[c])[2], shares)
            _summary(parts, _entropy(shares[:filled]), stats[c])
        else:
            _too_few_lines(flat, stats[c])
    return _pool(stats)


def channel_features(channels: Mapping[str, np.ndarray]) -> list[float]:
    """Channel statistics pooled over channels by their median (see the module docstring)."""
    stats = [_channel_stats(data) for data in channels.values()]
    return _pool(np.array(stats).reshape(-1, len(CHANNEL_STATS))).tolist()


class ChannelStatsAccumulator:
    """The channel statistics of one scan, built a line at a time as the lines arrive.

    `push` stores a line and computes its own values once (finiteness, spread, the strided
    medians along it and of its level, the step from the line before); `features` aggregates
    those, so a verdict on a frame in progress costs a pass over cached numbers (plus the
    entropy's sample lines) instead of every pixel again. `features()` equals
    `channel_features(self.channels())` bit for bit, at every number of lines.
    """

    def __init__(self, names: Iterable[str], points: int, lines: int = 256) -> None:
        """`names`: the channels every pushed line carries; `points` per line; `lines`: the
        expected number of lines, the initial capacity (it grows when exceeded)."""
        self.names: tuple[str, ...] = tuple(names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"channel names repeat: {', '.join(self.names)}")
        if points < 2:
            raise ValueError(f"a line needs at least 2 points, got {points}")
        self.points = points
        self.n_lines = 0
        self._settled = 0  # lines whose per-line values are in the table
        self._shape = (points,)
        self._stride = max(1, points // MEDIAN_POINTS)
        # float32 until a pushed line needs more: values stay exact, as in np.stack's result
        self._lines = np.empty((len(self.names), 0, points), np.float32)
        self._table = np.empty((len(self.names), 0, _LINE_VALUES))
        self._reserve(max(1, lines), self._lines.dtype)

    @classmethod
    def of_frame(cls, channels: Mapping[str, np.ndarray]) -> ChannelStatsAccumulator:
        """An accumulator holding a whole frame, (lines, points) per channel, stored with one
        copy per channel in the dtype np.stack would give. Its `features()` equal
        `channel_features(channels)` at a third of the cost (the per-line values in one
        numba call); ValueError when the channels are not equal-shaped 2-D real arrays."""
        arrays = [np.asarray(data) for data in channels.values()]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"channels are not one (lines, points) shape: {sorted(shapes)}")
        lines, points = arrays[0].shape
        dtype = np.result_type(np.float32, *arrays)
        if dtype.kind != "f":
            raise ValueError(f"channels of dtype {dtype} are not real numbers")
        held = cls(channels, points, max(lines, 1))
        if dtype != held._lines.dtype:
            held._reserve(max(lines, 1), dtype)
        held._append(arrays, lines)
        return held

    def push(self, channels: Mapping[str, np.ndarray]) -> None:
        """Add the next line: `channels` maps each name to that line's 1-D array of points.

        ValueError, naming the channel, for a missing channel, a wrong shape or a non-real
        dtype; the line is then not added.
        """
        i = self.n_lines
        if i == self._lines.shape[1]:
            self._grow()
        dtype, planes = self._lines.dtype, self._planes
        for c, name in enumerate(self.names):
            row = channels.get(name)
            # the usual line (an array of the stored dtype) costs no conversion or check
            if (
                row.__class__ is not np.ndarray
                or row.dtype is not dtype
                or row.shape != self._shape
            ):
                row = self._checked(row, name, i)
                dtype, planes = self._lines.dtype, self._planes
            planes[c][i] = row
        self.n_lines = i + 1
        if self.n_lines - self._settled >= SETTLE_LINES:
            self._settle()

    def push_block(self, channels: Mapping[str, np.ndarray]) -> None:
        """Add consecutive lines given as (lines, points) per channel, one copy per channel.

        ValueError, adding nothing, unless every channel is there as an array of the stored
        dtype and that shape (push those lines one by one instead: `push` converts and
        checks each)."""
        blocks = [channels.get(name) for name in self.names]
        k = len(blocks[0]) if blocks and isinstance(blocks[0], np.ndarray) else 0
        shape, dtype = (k, self.points), self._lines.dtype
        for name, rows in zip(self.names, blocks, strict=True):
            if rows.__class__ is not np.ndarray or rows.dtype is not dtype or rows.shape != shape:
                raise ValueError(f"channel {name!r} is not ({k}, {self.points}) of {dtype}")
        self._append(blocks, k)
        if self.n_lines - self._settled >= SETTLE_LINES:
            self._settle()

    def _append(self, blocks: Sequence[np.ndarray], k: int) -> None:
        """Copy k lines, (k, points) per channel in `names` order, after the stored ones
        (already checked: numpy converts them to the stored dtype)."""
        i = self.n_lines
        if i + k > self._lines.shape[1]:
            self._reserve(max(2 * self._lines.shape[1], i + k), self._lines.dtype)
        for plane, rows in zip(self._planes, blocks, strict=True):
            plane[i : i + k] = rows
        self.n_lines = i + k

    def stored(self) -> np.ndarray:
        """The lines as stored, (channels, capacity, points), C-contiguous: lines 0..n_lines-1
        are filled. The array itself (the scorer reads it in place), valid until the next
        push."""
        return self._lines

    def _settle(self) -> None:
        """Compute the per-line values of the lines stored since the last time, in one call."""
        _line_values(
            self._lines, self._table, self._settled, self.n_lines, self._stride, _MEDIAN_PAIRS
        )
        self._settled = self.n_lines

    def channels(self) -> dict[str, np.ndarray]:
        """The lines so far, (lines, points) per channel: views, valid until the next push."""
        return {name: self._lines[c, : self.n_lines] for c, name in enumerate(self.names)}

    def features(self, lines: int | None = None) -> list[float]:
        """`channel_features` of the first `lines` lines (all so far when None), from the
        cached per-line values."""
        self._settle()
        n = self.n_lines if lines is None else max(0, min(lines, self.n_lines))
        if n == 0:  # the flat share of no lines is NaN, as numpy's mean of nothing
            stats = np.empty((len(self.names), len(CHANNEL_STATS)))
            for row in stats:
                _too_few_lines(np.nan, row)
            return _pool(stats).tolist()
        return _pooled_stats(self._lines, self._table, n, self._stride).tolist()

    def _grow(self) -> None:
        """Double the capacity (a scan longer than announced)."""
        self._reserve(2 * self.n_lines, self._lines.dtype)

    def _reserve(self, capacity: int, dtype: np.dtype) -> None:
        """New storage of `capacity` lines in `dtype`, holding the lines so far."""
        n, shape = self.n_lines, (len(self.names), capacity)
        lines = np.empty((*shape, self.points), dtype)
        table = np.empty((*shape, _LINE_VALUES))
        lines[:, :n] = self._lines[:, :n]
        table[:, :n] = self._table[:, :n]
        self._lines, self._table = lines, table
        self._planes = list(lines)  # one (capacity, points) view per channel

    def _checked(self, row: object, name: str, i: int) -> np.ndarray:
        """The line as an array of `points` values, the storage widened if its dtype needs it
        to hold them exactly (np.stack's rule); ValueError naming what is wrong."""
        if row is None:
            raise ValueError(f"line {i}: channel {name!r} is missing")
        row = np.asarray(row)
        if row.shape != self._shape:
            raise ValueError(
                f"line {i}: channel {name!r} has shape {row.shape}, expected ({self.points},)"
            )
        try:
            wider = np.result_type(self._lines.dtype, row.dtype)
        except TypeError:
            wider = np.dtype(object)
        if wider.kind != "f":
            raise ValueError(f"line {i}: channel {name!r} has dtype {row.dtype}, not real numbers")
        if wider != self._lines.dtype:
            self._reserve(self._lines.shape[1], wider)
        return row


def warm_up() -> None:
    """Compile (or load from numba's cache) the feature kernels for each input the daemon
    meets: a saved frame of float32 or float64 lines, and float32 lines as they arrive."""
    lines, points = 16, 64
    rng = np.random.default_rng(0)
    frame = {name: rng.normal(size=(lines, points)) for name in ("Height", "Amplitude")}
    for dtype in (np.float32, np.float64):
        ChannelStatsAccumulator.of_frame({k: v.astype(dtype) for k, v in frame.items()}).features()
    live = ChannelStatsAccumulator(frame, points, lines)
    for index in range(lines):
        live.push({k: v[index].astype(np.float32) for k, v in frame.items()})
    live.features()


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
    channels: Mapping[str, np.ndarray] | ChannelStatsAccumulator | None = None,
    bank: LineBank | None = None,
) -> np.ndarray:
    """The full feature vector, in the order of `feature_names(bank)`.

    `channels` are the frame's lines so far, each (lines, points), or the accumulator they
    were pushed to; without them (e.g. only line scores reached the classifier) the channel
    statistics are zero.
    """
    flagged = sum(line.flagged for line in frame.lines) / max(frame.n_lines, 1)
    if isinstance(channels, ChannelStatsAccumulator):
        stats = channels.features(frame.n_lines)  # it may hold lines received since
    else:
        try:  # the same numbers as channel_features, a third of the cost on a saved frame
            stats = ChannelStatsAccumulator.of_frame(channels or {}).features()
        except ValueError:  # odd shapes or dtypes: the definition copes and names them
            stats = channel_features(channels or {})
    values = [float(flagged), *stats]
    if bank is not None:
        values += bank.stats(frame.features)
    return np.nan_to_num(np.asarray(values, dtype=float), nan=0.0, posinf=1e6, neginf=-1e6)
