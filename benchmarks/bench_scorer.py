"""Scorer speed: 512-point lines, 4 trace/retrace pairs (8 channels). Prints figures only.

numba per line (ScanScorer.push and the kernel alone), the numpy reference per line, the
speed-up, whole-frame lines/s (score_scan, one core) and allocations per line in steady state.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

from spmwatch.scoring import kernels as K
from spmwatch.scoring import reference as R
from spmwatch.scoring.scorer import ScanScorer, score_scan, synthetic_scan, warm_up

LINES, POINTS, PAIRS = 512, 512, 4


def per_line(fn, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    print(f"warm-up (compile or load cache): {warm_up():.2f} s")
    scan = synthetic_scan(LINES, POINTS, PAIRS, seed=1, lag=14)
    names = list(scan.channels)
    frame = np.stack([scan.channels[n] for n in names], axis=1)  # (lines, channels, points)
    lines = list(scan.lines())

    scorer = ScanScorer("bench", names, POINTS, LINES)
    for line in lines[:64]:
        scorer.push(line)
    args = scorer._state.args(scorer.layout)
    row = np.zeros(K.N_FEATURES)
    us_kernel = per_line(lambda i: K.score_line(frame[64 + i % 400], *args, row), 4000)
    scorer2 = ScanScorer("bench2", names, POINTS, 10**6)
    us_push = per_line(lambda i: scorer2.push(lines[i % LINES]), 4000)

    layout = scorer.layout
    m = len(scorer._state.fft_bitrev)
    lags = np.full(PAIRS, 14)
    us_numpy = per_line(
        lambda i: R.line_features(
            frame[i % LINES],
            frame[i % LINES - 1],
            layout.pair_t,
            layout.pair_r,
            lags,
            layout.osc_ch,
            m,
        ),
        500,
    )
    score_scan(scan)
    started = time.perf_counter()
    reps = 20
    for _ in range(reps):
        score_scan(scan)
    lines_per_s = reps * LINES / (time.perf_counter() - started)

    tracemalloc.start()
    K.score_line(frame[10], *args, row)
    before = tracemalloc.take_snapshot()
    for i in range(1000):
        K.score_line(frame[i % LINES], *args, row)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.count_diff for s in after.compare_to(before, "filename") if s.count_diff > 0)

    print(f"lines: {POINTS} points x {len(names)} channels ({PAIRS} trace/retrace pairs)")
    print(f"numba kernel score_line      : {us_kernel:8.2f} us/line")
    print(f"numba ScanScorer.push (total): {us_push:8.2f} us/line")
    print(f"numpy reference features     : {us_numpy:8.2f} us/line")
    print(f"speed-up kernel vs numpy     : {us_numpy / us_kernel:8.1f} x")
    print(f"whole frame score_scan       : {lines_per_s:10.0f} lines/s (one core)")
    print(f"allocations kept per 1000 kernel calls (tracemalloc): {grown}")


if __name__ == "__main__":
    main()
