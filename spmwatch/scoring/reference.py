"""Plain numpy twins of the numba kernels, written for clarity, used by tests and the benchmark.

Each function computes what its namesake in `kernels.py` computes, with whole-array numpy
operations instead of loops, so a disagreement points at a bug in one of the two.
"""

from __future__ import annotations

import numpy as np

from spmwatch.scoring import kernels as K


def line_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(detrended line, [level, slope, rms, diff_rms, bad_fraction, flat_fraction])."""
    n = len(x)
    finite = np.isfinite(x)
    xs = x[finite]
    if len(xs) < 2 or xs.max() == xs.min():
        level = xs.mean() if len(xs) else 0.0
        return np.zeros(n), np.array([level, 0.0, 0.0, 0.0, 1.0, 1.0])
    xc = np.arange(n) - 0.5 * (n - 1)
    level = xs.mean()
    slope = np.sum(xs * xc[finite]) / np.sum(xc[finite] ** 2)
    d = np.where(finite, x - level - slope * xc, 0.0)
    diff = np.diff(d)
    bad = max(n - finite.sum(), (xs == 0).sum())
    flat = max((xs == xs.max()).sum(), (xs == xs.min()).sum())
    rms = np.sqrt(np.mean(d**2))
    return d, np.array([level, slope, rms, np.sqrt(np.mean(diff**2)), bad / n, flat / n])


def paired_median(d: np.ndarray, ref: np.ndarray, dslope: float) -> float:
    """Median of the raw difference of two detrended lines whose slopes differ by dslope,
    less the difference of their means."""
    t = np.arange(len(d)) - 0.5 * (len(d) - 1)
    return float(np.median(d.astype(np.float64) - ref + dslope * t))


def line_pair(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(correlation, RMS of a - b)."""
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    corr = float(np.sum(a * b) / denom) if denom > 0 else 0.0
    return corr, float(np.sqrt(np.mean((a - b) ** 2)))


def residual(trace: np.ndarray, retrace: np.ndarray, lag: int) -> np.ndarray:
    """[rms, max |r|, correlation] of trace[i + lag] - retrace[i], detrended over the overlap."""
    n = len(trace)
    i = np.arange(max(0, -lag), min(n, n - lag))
    if len(i) < 4:
        return np.array([0.0, 0.0, 1.0])
    t, r = trace[i + lag], retrace[i]
    d = t - r
    xc = np.arange(len(i)) - 0.5 * (len(i) - 1)
    slope = np.sum(d * xc) / np.sum(xc**2)
    d = d - d.mean() - slope * xc
    denom = np.sqrt(np.sum(t * t) * np.sum(r * r))
    corr = np.sum(t * r) / denom if denom > 0 else 0.0
    return np.array([np.sqrt(np.mean(d**2)), np.abs(d).max(), corr])


def best_lag(trace: np.ndarray, retrace: np.ndarray, lo: int, hi: int) -> int:
    """The lag in [lo, hi] with the smallest residual RMS (the first on ties)."""
    lags = np.arange(lo, hi + 1)
    rms = [residual(trace, retrace, int(lag))[0] for lag in lags]
    return int(lags[int(np.argmin(rms))])


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def scar_fraction(
    lines: np.ndarray, scale: float, hard: float, soft: float, min_len: int
) -> tuple[float, int]:
    """lines: (k, points), oldest first, newest last. Same answer as kernels.scar_fraction."""
    n = lines.shape[1]
    best, best_w = 0.0, 0
    if scale <= 0:
        return best, best_w
    for w in range(1, K.SCAR_MAX_WIDTH + 1):
        if len(lines) < w + 2:
            break
        band = lines[-1 - w : -1]
        newest, old = lines[-1], lines[-2 - w]
        excess_up = band.min(axis=0) - np.maximum(newest, old)
        excess_down = np.minimum(newest, old) - band.max(axis=0)
        marked = 0
        for excess in (excess_up, excess_down):
            for a, b in _runs(excess >= soft * scale):
                if b - a >= min_len and np.any(excess[a:b] >= hard * scale):
                    marked += b - a
        if marked / n > best:
            best, best_w = marked / n, w
    return best, best_w


def power_spectrum(x: np.ndarray, m: int) -> np.ndarray:
    """|rfft(x[:2m])|^2 at bins 0..m-1."""
    return np.abs(np.fft.rfft(x[: 2 * m]))[:m] ** 2


def spectral_peak(power: np.ndarray, base: np.ndarray, klo: int) -> float:
    pooled = np.log(power[klo:-1] + power[klo + 1 :] + K.TINY)
    return float(max(0.0, np.max(pooled - base[klo:-1])))


def persistent_peak(log_pooled: np.ndarray, spec: np.ndarray, klo: int) -> float:
    """max over bins of the smallest excess over spec[0] of this line (log_pooled) and the
    previous lines (spec[1:], their excesses, newest first). Does not shift the history."""
    excess = log_pooled[klo:-1] - spec[0, klo:-1]
    low = np.min(np.vstack([excess, spec[1:, klo:-1]]), axis=0)
    return float(max(0.0, low.max()))


def peak_bin(log_pooled: np.ndarray, base: np.ndarray, klo: int) -> int:
    """The bin in klo..M-2 where log_pooled most exceeds base (the first on ties)."""
    return klo + int(np.argmax(log_pooled[klo:-1] - base[klo:-1]))


def local_contrast(log_pooled: np.ndarray, k: int, klo: int) -> float:
    """max of log_pooled over bins k-1..k+1 minus the value at k of the least-squares line
    through bins k+-4..16, all within klo..M-2 (0 with fewer than 2 such bins)."""
    bins = np.arange(len(log_pooled))
    valid = (bins >= klo) & (bins < len(log_pooled) - 1)
    near = log_pooled[valid & (np.abs(bins - k) <= 1)]
    side = valid & (np.abs(bins - k) >= 4) & (np.abs(bins - k) <= 16)
    if side.sum() < 2:
        return 0.0
    at_k = np.polyfit(bins[side] - k, log_pooled[side], 1)[1]
    return float(near.max() - at_k)


def robust_baseline(ring: np.ndarray, floors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(median, max(1.4826 MAD, floor)) of each column."""
    med = np.median(ring, axis=0)
    mad = np.median(np.abs(ring - med), axis=0)
    return med, np.maximum(1.4826 * mad, floors)


def line_features(
    data: np.ndarray,
    prev: np.ndarray,
    pair_t: np.ndarray,
    pair_r: np.ndarray,
    lags: np.ndarray,
    osc_ch: int,
    m: int,
) -> np.ndarray:
    """The per-line raw measurements of one line with numpy (the benchmark's numpy path).

    data, prev: (channels, points). Mirrors the kernel work per line: statistics of every
    channel, consistency with the previous line, residual of every pair, one spectrum.
    """
    out = []
    detrended = []
    for c in range(len(data)):
        d, stats = line_stats(data[c])
        detrended.append(d)
        corr, vd = line_pair(d, prev[c])
        out.extend([stats[0], np.log(stats[2]), stats[3] / stats[2], 1 - corr, np.log(vd)])
    for t, r, lag in zip(pair_t, pair_r, lags, strict=True):
        out.extend(residual(detrended[t], detrended[r], int(lag)))
    if osc_ch >= 0:
        out.append(float(np.max(np.log(power_spectrum(detrended[osc_ch], m) + K.TINY))))
    return np.array(out)
