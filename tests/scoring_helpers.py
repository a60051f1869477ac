"""Fault injection for the scorer tests: copies of a Scan with one kind of fault added.

Faults are placed by acquisition position (what a live monitor sees first); each helper returns
the new scan and the stored indices of the faulty lines.
"""

from __future__ import annotations

import copy

import numpy as np

from spmwatch.model import Scan


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
