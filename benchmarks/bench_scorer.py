"""Scorer speed: 512-point lines, 4 trace/retrace pairs (8 channels). Prints figures only.

    NUMBA_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_scorer.py [--repeat 7]

Every figure is timed `--repeat` times; the best (the machine at its quietest) and the median
are printed, because the machine is shared. Input is float32 like real .ibw data. Figures:
numba per line (the kernel looping over the whole float32 frame of a written and read .ibw
file, read where it lies as score_scan does; one kernel call per line from Python;
ScanScorer.push with its Python bookkeeping), the numpy
reference per line and the speed-up, whole-frame score_scan lines/s on one core, allocations
kept per line in steady state (tracemalloc), and a per-kernel breakdown (each kernel looped
inside numba on the scan state after 64 lines, amortised per line by how often score_line
runs it).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numba import njit

from spmwatch.ibw import read_scan, write_scan
from spmwatch.scoring import kernels as K
from spmwatch.scoring import reference as R
from spmwatch.scoring.scorer import (
    ScanScorer,
    ScoringSettings,
    score_scan,
    synthetic_scan,
    warm_up,
)

LINES, POINTS, PAIRS = 512, 512, 4


def timed(fn: Callable[[], None], repeat: int) -> tuple[float, float]:
    """(best, median) seconds of fn() over `repeat` runs."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return min(runs), statistics.median(runs)


def us(pair: tuple[float, float], per: float) -> str:
    return f"best {pair[0] / per * 1e6:8.2f}  median {pair[1] / per * 1e6:8.2f} us"


# Kernel loops for the breakdown: each runs one kernel `reps` times inside numba, so the
# figure holds no Python call overhead.
@njit
def _loop_stats(x, units, hist, head, prev, reps):
    stats = np.empty(16)
    for _ in range(reps):
        for c in range(x.shape[0]):
            K.line_stats(x[c], units[c], hist[prev, c], hist[head, c], stats)


@njit
def _loop_scar(hist, grid, head, scar_ch, base_med, scratch, reps):
    acc = 0.0
    for _ in range(reps):
        for c in scar_ch:
            scale = math.exp(base_med[c * K.N_CH_RAW + K.CH_VDIFF])
            fraction = K.scar_fraction(
                hist, grid, head, K.HIST_DEPTH, c, scale, 0.666, 0.25, 16, scratch
            )
            acc += fraction[0]
    return acc


@njit
def _loop_residual(hist, head, pair_t, pair_r, lags, work, reps):
    for _ in range(reps):
        for p in range(pair_t.shape[0]):
            K.residual(hist[head, pair_t[p]], hist[head, pair_r[p]], lags[p], work[1])


@njit
def _loop_lag(hist, head, pair_t, pair_r, lags, reach, work, reps):
    acc = 0
    for _ in range(reps):
        for p in range(pair_t.shape[0]):
            t, r = hist[head, pair_t[p]], hist[head, pair_r[p]]
            acc += K.best_lag(t, r, lags[p] - reach, lags[p] + reach, work[8])
    return acc


@njit
def _loop_fft(x, tw, work, reps):
    m = tw.shape[1]
    for _ in range(reps):
        K.power_spectrum(x, tw, work[8], work[9], work[3, :m])


@njit
def _loop_peak(power, base, work, reps):
    acc = 0.0
    for _ in range(reps):
        acc += K.spectral_peak(power, base[0], 4, True, work[4, : power.shape[0]])
    return acc


@njit
def _loop_persist(logp, spec, work, reps):
    acc = 0.0
    for _ in range(reps):
        acc += K.persistent_peak(logp, spec, 4, work[2:4])
    return acc


@njit
def _loop_grid(hist, grid, head, scar_ch, reps):
    for _ in range(reps):
        for c in scar_ch:
            K.store_scar_grid(hist[head, c], grid[head, c], K.scar_grid_step(16)[0])


@njit
def _loop_window(rows, moves, reps):
    count = rows.shape[0] - 1
    for _ in range(reps):  # a value leaves each column and the same enters: the window stays
        moves[1, :] = moves[0, :]
        K.window_replace(rows, count, moves[0], moves[1], moves[2])


@njit
def _loop_median_mad(rows, floors, med, scale, moves, reps):
    for _ in range(reps):
        K.window_median_mad(rows, rows.shape[0] - 1, floors, med, scale, moves[2:5])


def breakdown(frame: np.ndarray, names: list[str], repeat: int) -> list[tuple[str, float, float]]:
    """(kernel, best us per call set, amortised us per line) on the state after 64 lines."""
    settings = ScoringSettings()
    scorer = ScanScorer("breakdown", names, POINTS, LINES)
    scorer.score_frame(frame, range(64))
    st, lay = scorer._state, scorer.layout
    head = int(st.state[K.I_HIST_HEAD])
    prev = (head - 1) % K.HIST_DEPTH
    m = st.fft_tw.shape[1]
    osc = st.hist[head, lay.osc_ch]
    power = np.abs(np.fft.rfft(osc[: 2 * m]))[:m] ** 2
    n_init = settings.lag_votes
    moves = st.base_moves.copy()
    moves[0] = st.base_sorted[settings.window // 2]  # values the window holds
    cases = [
        (
            "line_stats (+ consistency) x channels",
            _loop_stats,
            (np.ascontiguousarray(frame[:, 64]), st.units, st.hist.copy(), head, prev),
            1.0,
        ),
        (
            "store_scar_grid x channels",
            _loop_grid,
            (st.hist, st.scar_grid.copy(), head, lay.scar_ch),
            1.0,
        ),
        (
            "scar_fraction x channels",
            _loop_scar,
            (st.hist, st.scar_grid, head, lay.scar_ch, st.base_med, st.iwork.copy()),
            1.0,
        ),
        (
            "residual x pairs",
            _loop_residual,
            (st.hist, head, lay.pair_t, lay.pair_r, st.lags, st.work.copy()),
            1.0,
        ),
        (
            f"lag search +-{settings.lag_max} x pairs",
            _loop_lag,
            (st.hist, head, lay.pair_t, lay.pair_r, st.lags * 0, settings.lag_max, st.work.copy()),
            n_init / LINES,  # the first lag_votes lines of a LINES-line frame
        ),
        (
            f"lag re-check +-{settings.lag_recheck} x pairs",
            _loop_lag,
            (st.hist, head, lay.pair_t, lay.pair_r, st.lags, settings.lag_recheck, st.work.copy()),
            1.0 / settings.lag_every,
        ),
        (
            "power_spectrum (1 channel)",
            _loop_fft,
            (osc, st.fft_tw, st.work.copy()),
            1.0,
        ),
        ("spectral_peak (logs)", _loop_peak, (power, st.spec_base, st.work.copy()), 1.0),
        (
            "persistent_peak",
            _loop_persist,
            (np.log(power + 1.0), st.spec_base.copy(), st.work.copy()),
            1.0,
        ),
        ("sorted window: a line in, one out", _loop_window, (st.base_sorted.copy(), moves), 1.0),
        (
            "median/MAD refresh",
            _loop_median_mad,
            (st.base_sorted, lay.floors, st.base_med.copy(), st.base_scale.copy(), moves.copy()),
            1.0 / settings.refresh,
        ),
    ]
    rows = []
    for name, loop, args, share in cases:
        loop(*args, 1)  # compile
        reps = 20 if "+-32" in name else 2000
        best, _ = timed(lambda loop=loop, args=args, reps=reps: loop(*args, reps), repeat)
        per_call = best / reps * 1e6
        rows.append((name, per_call, per_call * share))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timings per figure")
    repeat = parser.parse_args().repeat

    print(f"warm-up (compile or load cache): {warm_up():.2f} s")
    with tempfile.TemporaryDirectory() as folder:  # a real file: score_scan reads it in place
        path = Path(folder) / "bench.ibw"
        made = synthetic_scan(LINES, POINTS, PAIRS, seed=1, lag=14)
        made.channels = {name: a.astype(np.float32) for name, a in made.channels.items()}
        write_scan(made, path)  # float32, as Asylum saves
        scan = read_scan(path)
    names = list(scan.channels)
    frame32 = scan.block()  # (channels, lines, points), as read_scan holds a file's data
    frame = frame32.astype(np.float64)  # for the numpy reference
    order = np.arange(LINES)
    lines = list(scan.lines())

    def kernel_frame(data: np.ndarray) -> Callable[[], None]:
        def run() -> None:
            scorer = ScanScorer("k", names, POINTS, LINES)
            K.score_frame(data, order, 0, *scorer._args, scorer._features)

        return run

    def kernel_calls() -> None:
        scorer = ScanScorer("c", names, POINTS, LINES)
        args, rows = scorer._args, scorer._features
        for k in range(LINES):
            K.score_frame(frame32, order[k : k + 1], k, *args, rows)

    def push() -> None:
        scorer = ScanScorer("p", names, POINTS, LINES)
        for line in lines:
            scorer.push(line)

    t_frame = timed(kernel_frame(frame32), repeat)
    t_calls = timed(kernel_calls, repeat)
    t_push = timed(push, repeat)

    layout = ScanScorer("n", names, POINTS, LINES).layout
    m = 1 << (int(math.log2(POINTS)) - 1)
    lags = np.full(PAIRS, 14)
    n_numpy = 64

    def numpy_lines() -> None:
        for k in range(1, n_numpy + 1):
            R.line_features(
                frame[:, k], frame[:, k - 1], layout.pair_t, layout.pair_r, lags, layout.osc_ch, m
            )

    t_numpy = timed(numpy_lines, max(3, repeat // 2))
    t_scan = timed(lambda: score_scan(scan), repeat)

    # allocations kept in steady state: the kernel alone, then push (sized for its lines)
    scorer = ScanScorer("alloc", names, POINTS, 4 * LINES)
    for line in lines[:64]:
        scorer.push(line)
    args, rows = scorer._args, scorer._features
    n_alloc = LINES - 64
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for k in range(64, LINES):
        K.score_frame(frame32, order[k : k + 1], k, *args, rows)
    middle = tracemalloc.take_snapshot()
    for line in lines[64:]:
        scorer.push(line)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    kernel_kept = sum(max(d.count_diff, 0) for d in middle.compare_to(before, "filename"))
    push_diff = after.compare_to(middle, "filename")
    push_blocks = sum(max(d.count_diff, 0) for d in push_diff)
    push_bytes = sum(max(d.size_diff, 0) for d in push_diff)

    print(
        f"lines: {POINTS} points x {len(names)} channels ({PAIRS} trace/retrace pairs), "
        "float32 input"
    )
    print(f"numba score_frame, float32 frame  : {us(t_frame, LINES)}/line (.ibw data, in place)")
    print(f"numba kernel, one call per line   : {us(t_calls, LINES)}/line")
    print(f"numba ScanScorer.push (total)     : {us(t_push, LINES)}/line")
    print(f"numpy reference features          : {us(t_numpy, n_numpy)}/line")
    kernel_speedup = t_numpy[0] / n_numpy / (t_frame[0] / LINES)
    print(f"speed-up kernel vs numpy (best)   : {kernel_speedup:8.1f} x")
    print(
        f"speed-up push vs numpy (best)     : {t_numpy[0] / n_numpy / (t_push[0] / LINES):8.1f} x"
    )
    print(
        f"whole frame score_scan, one core  : best {LINES / t_scan[0]:10.0f}  "
        f"median {LINES / t_scan[1]:10.0f} lines/s"
    )
    print(
        f"kept per line in steady state      : kernel {kernel_kept / n_alloc:.3f} blocks; push "
        f"{push_blocks / n_alloc:.2f} blocks, {push_bytes / n_alloc:.0f} B "
        "(the LineScore record that frame() returns)"
    )
    print("per-kernel breakdown (best us per call set; amortised us per line):")
    rows = breakdown(frame32, names, repeat)
    for name, per_call, per_line in rows:
        print(f"  {name:38s} {per_call:9.2f} {per_line:9.2f}")
    print(
        f"  {'sum (hot caches; the rest of a line: see profile_score_line.py)':38s} "
        f"{'':9s} {sum(r[2] for r in rows):9.2f}"
    )


if __name__ == "__main__":
    main()
