"""Fault injection for the scorer tests: copies of a Scan with one kind of fault added.

Faults are placed by acquisition position (what a live monitor sees first); each helper returns
the new scan and the stored indices of the faulty lines.
"""

from __future__ import annotations

import copy

import numpy as np

from spmwatch.model import Scan
from spmwatch.scoring import reference as R


def _faulty(scan: Scan, start: int, count: int) -> tuple[Scan, np.ndarray]:
    out = copy.deepcopy(scan)
    out.channels = {name: np.array(a, dtype=np.float64) for name, a in scan.channels.items()}
    rows = scan.acquisition_order()[start : start + count]
    return out, rows


def zero_lines(scan: Scan, start: int, count: int = 4) -> tuple[Scan, np.ndarray]:
    """Lines whose every channel reads exactly 0 (a stalled ADC or a dropped buffer)."""
    out, rows = _faulty(scan, start, count)
    for a in out.channels.values():
        a[rows] = 0.0
    return out, rows


def offset_bands(scan: Scan, width: int = 2, every: int = 16) -> tuple[Scan, np.ndarray]:
    """Bands of `width` lines every `every` lines raised by half the typical line spread: too
    weak for a line alert, a frame the model fails for its share of offset bands. (From 3
    lines on, a band's level holds long enough for the scorer's held-step rule to flag it.)"""
    out, rows = _faulty(scan, 0, scan.n_lines)
    rows = np.concatenate([rows[s : s + width] for s in range(every // 2, len(rows), every)])
    for a in out.channels.values():
        a[rows] += 0.5 * np.median(np.std(a, axis=1))
    return out, rows


def level_shift(
    scan: Scan, start: int, count: int, size: float, ramp: bool = False
) -> tuple[Scan, np.ndarray]:
    """Every channel raised by `size` typical line spreads on `count` lines (by k + 1 times
    that on the k-th line when `ramp`, the lines after it then staying at the top)."""
    out, rows = _faulty(scan, start, count)
    steps = np.arange(1, count + 1)[:, None] if ramp else np.ones((count, 1))
    after = scan.acquisition_order()[start + count :]
    for a in out.channels.values():
        shift = size * np.median(np.std(a, axis=1))
        a[rows] += shift * steps[: len(rows)]
        if ramp:
            a[after] += shift * count
    return out, rows


def raised(
    scan: Scan, start: int, size: float, lines: int = 1, columns: slice = slice(None)
) -> tuple[Scan, np.ndarray]:
    """`columns` of every channel raised by `size` typical line spreads from acquisition
    position `start` to the end of the scan, reaching that height over `lines` lines (a
    particle or terrace rising line by line under part of the line; a tip change over all)."""
    out, rows = _faulty(scan, start, scan.n_lines - start)
    share = np.minimum(np.arange(1, len(rows) + 1) / lines, 1.0)[:, None]
    for a in out.channels.values():
        a[rows, columns] += size * np.median(np.std(a, axis=1)) * share
    return out, rows


def tracking_loss(
    scan: Scan, start: int, count: int = 20, seed: int = 0
) -> tuple[Scan, np.ndarray]:
    """The tip leaves the surface: lines become uncorrelated noise at a tenth of the roughness."""
    out, rows = _faulty(scan, start, count)
    rng = np.random.default_rng(seed)
    for a in out.channels.values():
        level = np.median(a[rows], axis=1, keepdims=True)
        a[rows] = level + 0.1 * np.std(a) * rng.standard_normal((len(rows), a.shape[1]))
    return out, rows


def tip_change(scan: Scan, start: int, count: int = 30) -> tuple[Scan, np.ndarray]:
    """A tip change: every channel jumps by 40 line-RMS and the tip blurs (5-px box filter)."""
    out, rows = _faulty(scan, start, count)
    kernel = np.ones(5) / 5
    for a in out.channels.values():
        rms = np.median(np.std(a, axis=1))
        for r in rows:
            # edge-padded, so the blur does not pull the line ends towards zero
            a[r] = np.convolve(np.pad(a[r], 2, mode="edge"), kernel, mode="valid") + 40 * rms
    return out, rows


def streaks(scan: Scan, start: int, count: int = 24, every: int = 2) -> tuple[Scan, np.ndarray]:
    """Single-line scars on every `every`-th line: a half-line segment raised by 8 x RMS."""
    out, rows = _faulty(scan, start, count)
    rows = rows[::every]
    for a in out.channels.values():
        n = a.shape[1]
        step = 8 * np.median(np.std(np.diff(a, axis=0), axis=1))
        a[rows, n // 4 : n // 4 + n // 2] += step
    return out, rows


def ringing(scan: Scan, channel: str, start: int, count: int = 40) -> tuple[Scan, np.ndarray]:
    """Feedback oscillation: a sinusoid of period 8 px, 4 line-RMS high, on one channel."""
    out, rows = _faulty(scan, start, count)
    a = out.channels[channel]
    x = np.arange(a.shape[1])
    a[rows] += 4 * np.median(np.std(a, axis=1)) * np.sin(2 * np.pi * x / 8)
    return out, rows


def assert_line_stats_close(
    x: np.ndarray, unit: float, d: np.ndarray, stats: np.ndarray, prev: np.ndarray
) -> None:
    """kernels.line_stats' detrended row `d` and stats, in `unit`s, against the float64
    reference.

    The kernel measures in float32 after taking the line's first sample off, so its errors
    scale with the line's span (the largest minus the smallest finite sample), not with the
    values: ~1e-7 of it per sample, the sums ~1e-6. Where the values sit far from 0 against
    their span, the data's own float32 resolution is the bound (the fast-math flags let LLVM
    fold the pilot into the mean: [-668, -666 x 7] came out 5e-6 of the span off, a third of
    a float32 step at 666, on float32 data). The sample counts are exact.
    """
    d_ref, stats_ref = R.line_stats(x.astype(np.float64))
    d_ref, stats_ref[:4] = d_ref * unit, stats_ref[:4] * unit
    finite = x[np.isfinite(x)].astype(np.float64)
    span = float(finite.max() - finite.min()) * unit if len(finite) else 0.0
    coarse = x.dtype == np.float32 and len(finite) > 0  # float64 data keep their precision
    step = float(np.spacing(np.float32(np.abs(finite).max()))) * unit if coarse else 0.0
    n = len(x)
    tol = 1e-5 * span + step + 1e-30
    np.testing.assert_allclose(d, d_ref, rtol=0, atol=tol)
    np.testing.assert_allclose(stats[0], stats_ref[0], rtol=1e-12, atol=tol)  # level
    np.testing.assert_allclose(stats[1] * n, stats_ref[1] * n, rtol=0, atol=tol)  # slope
    np.testing.assert_allclose(stats[2:4], stats_ref[2:4], rtol=1e-4, atol=tol)  # rms
    np.testing.assert_array_equal(stats[4:6], stats_ref[4:6])  # bad, flat shares: counts
    # the consistency with the previous line, measured in the same pass, on the row it wrote
    corr, vdiff = R.line_pair(d.astype(np.float64), prev.astype(np.float64))
    scale = float(np.sqrt(np.mean(d.astype(np.float64) ** 2) + np.mean(prev**2)))
    np.testing.assert_allclose(stats[6], corr, rtol=0, atol=1e-5)
    np.testing.assert_allclose(stats[7], vdiff, rtol=1e-4, atol=1e-5 * scale + 1e-30)
