"""Scorer: numba kernels against their numpy twins, streaming == batch, faults found and placed."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from spmwatch.ibw import read_scan, write_scan
from spmwatch.model import Line
from spmwatch.numba_build import python_child
from spmwatch.scoring import kernels as K
from spmwatch.scoring import reference as R
from spmwatch.scoring.scorer import (
    FEATURE_NAMES,
    ScanScorer,
    ScoringSettings,
    _fft_tables,
    score_scan,
    synthetic_scan,
    warm_up,
)
from spmwatch.sorting import sort_network
from tests import scoring_helpers as faults
from tests.polling import wait_for

# 0 or 1e-20..1e3 in size: any two distinct values then differ by more than ~1e-36, inside
# the spans the float32 scorer measures (kernels.unit_of)
finite = st.one_of(st.just(0.0), st.floats(1e-20, 1e3), st.floats(-1e3, -1e-20))
lines = arrays(np.float64, st.integers(8, 300), elements=finite)
SCAR_SCRATCH = np.zeros(3 * K.SCAR_MAX_WIDTH + 128, dtype=np.int64)


def kernel_scar(history: np.ndarray, min_len: int = 16) -> tuple[float, int]:
    """kernels.scar_fraction on a history ring whose last slot is the newest line, with its
    grid stored line by line as score_line does."""
    step = K.scar_grid_step(min_len)[0]
    grid = np.zeros_like(history)
    for slot in range(len(history)):
        K.store_scar_grid(history[slot, 0], grid[slot, 0], step)
    head = K.HIST_DEPTH - 1  # newest slot; kernel reads the ring backwards from it
    return K.scar_fraction(
        history, grid, head, K.HIST_DEPTH, 0, 1.0, 0.666, 0.25, min_len, SCAR_SCRATCH
    )


def kernel_stats(x: np.ndarray) -> None:
    """kernels.line_stats against the reference, in the line's unit (the scorer fixes one per
    channel), with the consistency against a previous line (a float32 row, as the scan
    history holds) measured on the way."""
    d = np.empty(len(x), dtype=np.float32)
    prev = np.cos(np.arange(len(x)) * 0.3).astype(np.float32)
    stats = np.empty(16)
    unit = K.unit_of(x)
    K.line_stats(x, unit, prev, d, stats)
    faults.assert_line_stats_close(x, unit, d, stats, prev)


@settings(max_examples=150, deadline=None)
@given(lines)
def test_line_stats_matches_numpy(x: np.ndarray) -> None:
    kernel_stats(x)
    kernel_stats(x.astype(np.float32))  # what the scorer reads


@settings(max_examples=100, deadline=None)
@given(lines, st.integers(0, 2**32 - 1))
def test_line_stats_with_non_finite_samples_matches_numpy(x: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = x.copy()
    x[rng.random(len(x)) < 0.1] = rng.choice([np.nan, np.inf, -np.inf])
    kernel_stats(x)
    kernel_stats(x.astype(np.float32))


@settings(max_examples=100, deadline=None)
@given(st.integers(16, 200), st.integers(-20, 20), st.integers(0, 2**32 - 1))
def test_residual_and_lag_match_numpy(n: int, lag: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t, r = rng.standard_normal(n), rng.standard_normal(n)
    out = np.empty(3)
    t32, r32 = t.astype(np.float32), r.astype(np.float32)  # the history's rows
    K.residual(t32, r32, lag, out)
    # float32 arithmetic: ~1e-6 of the values (~1 here), in each sum
    np.testing.assert_allclose(out, R.residual(t32.astype(float), r32, lag), rtol=0, atol=2e-5)
    corr, rms = K.line_pair(t, r)
    np.testing.assert_allclose((corr, rms), R.line_pair(t, r), rtol=1e-9)
    scratch = np.full(K.lag_scratch_size(n, 22), np.nan)  # what it reads, it writes first
    assert K.best_lag(t, r, -8, 8, scratch) == R.best_lag(t, r, -8, 8)
    assert K.best_lag(t, r, lag - 2, lag + 2, scratch) == R.best_lag(t, r, lag - 2, lag + 2)
    # a real shift: a smooth profile, the retrace `lag` px behind, a little noise each
    profile = np.cumsum(rng.standard_normal(n + 40))
    t = profile[20 : 20 + n] + 0.1 * rng.standard_normal(n)
    r = profile[20 - lag : 20 - lag + n] + 0.1 * rng.standard_normal(n)
    assert K.best_lag(t, r, -20, 20, scratch) == R.best_lag(t, r, -20, 20)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(32, 128))
def test_scar_fraction_matches_numpy(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    history = rng.standard_normal((K.HIST_DEPTH, 1, n))
    width = int(rng.integers(1, 5))
    start, length = rng.integers(0, n // 2), rng.integers(12, n // 2)  # runs near 16 px too
    history[-1 - width : -1, 0, start : start + length] += rng.uniform(0.5, 3.0)  # a band
    got = kernel_scar(history)
    want = R.scar_fraction(history[:, 0, :], 1.0, 0.666, 0.25, 16)
    assert got[0] == pytest.approx(want[0]) and got[1] == want[1]


def test_scar_fraction_finds_a_band() -> None:
    history = np.zeros((K.HIST_DEPTH, 1, 100))
    history[-3:-1, 0, 10:60] = 1.0  # a 2-line band, 50 px long
    assert kernel_scar(history) == (0.5, 2)


@pytest.mark.parametrize("points", [32, 64, 128, 256, 512, 300, 1024])
def test_power_spectrum_matches_numpy_fft(points: int) -> None:
    rng = np.random.default_rng(points)
    x = rng.standard_normal(points)
    tw = _fft_tables(points)
    m = tw.shape[1]
    power = np.empty(m)
    K.power_spectrum(x, tw, np.empty(2 * m), np.empty(2 * m), power)
    np.testing.assert_allclose(power, R.power_spectrum(x, m), rtol=1e-9, atol=1e-9)
    base = rng.standard_normal(m)
    peak = K.spectral_peak(power, base, 4, True, np.empty(m))
    assert peak == pytest.approx(R.spectral_peak(power, base, 4))


@pytest.mark.parametrize("k", [4, 5, 8, 19, 40, 61, 62])
def test_peak_bin_and_local_contrast_match_numpy(k: int) -> None:
    rng = np.random.default_rng(k)
    m, klo = 64, 4
    logp = rng.standard_normal(m)
    base = rng.standard_normal(m)
    logp[k] += 8.0  # the peak, at the range's ends too (k = klo, k = M - 2)
    assert K.peak_bin(logp, base, klo) == R.peak_bin(logp, base, klo) == k
    got = K.local_contrast(logp, k, klo)
    assert got == pytest.approx(R.local_contrast(logp, k, klo), rel=1e-12)
    assert got > 4.0


def test_local_contrast_of_a_smooth_spectrum_is_small() -> None:
    """A 1/f^2-like topography spectrum has no peak: what confirms ringing is a bump on it."""
    m = 128
    logp = -2.0 * np.log(np.arange(1, m + 1))
    # from 8 cycles per line (topo_kmin: the slowest peak that can confirm ringing) up
    assert all(abs(K.local_contrast(logp, k, 4)) < 0.5 for k in range(8, m - 1))
    logp[50:52] += 3.0
    assert K.local_contrast(logp, 50, 4) > 2.5


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_persistent_peak_matches_numpy_and_keeps_the_history(depth: int) -> None:
    rng = np.random.default_rng(depth)
    m, klo = 64, 4
    spec = rng.standard_normal((depth, m))
    history = spec.copy()
    for _ in range(6):  # a few lines in a row, the history shifting
        logp = rng.standard_normal(m) + 2.0
        logp[20] += 5.0  # a steady peak
        want = R.persistent_peak(logp, history, klo)
        got = K.persistent_peak(logp, spec, klo, np.empty((2, m)))
        assert got == pytest.approx(want, rel=1e-12)
        history[2:] = history[1:-1].copy()
        if depth > 1:
            history[1] = logp - history[0]
        np.testing.assert_allclose(spec[:, klo:-1], history[:, klo:-1], rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 80), st.integers(0, 2**32 - 1))
def test_sorted_window_follows_the_ring(lines: int, seed: int) -> None:
    # lines enter a ring of 32 slots, each replacing the oldest once it is full; the window
    # kept sorted, median and MAD must be those of the ring's values as float32
    rng = np.random.default_rng(seed)
    window, width = 32, 16
    values = rng.standard_normal((lines, width))
    values[:, 3] = np.round(values[:, 3])  # ties
    values[:, 4] = 0.0  # a constant column
    floors = np.linspace(0.0, 1.0, 5)
    rows = np.full((window + 1, width), np.inf, dtype=np.float32)
    moves = np.zeros((5, width), dtype=np.float32)
    ring = np.zeros((window, width))
    med, scale = np.empty(5), np.empty(5)
    for n, line in enumerate(values):
        count = min(n, window)
        moves[0] = ring[n % window]
        moves[1] = line
        ring[n % window] = line
        K.window_replace(rows, count, moves[0], moves[1], moves[2])
    count = min(lines, window)
    held = ring[:count].astype(np.float32)
    np.testing.assert_array_equal(rows[:count], np.sort(held, axis=0))
    assert np.all(np.isinf(rows[count:]))
    K.window_median_mad(rows, count, floors, med, scale, moves[2:5])
    med_ref, scale_ref = R.robust_baseline(held[:, :5].astype(np.float64), floors)
    # the middle pair is averaged in float32, as the window holds it
    np.testing.assert_allclose(med, med_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scale, scale_ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13, 16])
def test_sort_network_sorts_every_zero_one_input(n: int) -> None:
    # the 0-1 principle: a comparator network sorting every 0/1 input sorts every input
    net = sort_network(n)
    size = 1 << (n - 1).bit_length()
    inputs = (np.arange(2**size)[:, None] >> np.arange(size)) & 1
    rows = inputs.T.astype(np.float64).copy()
    for i, j in net:
        rows[i], rows[j] = np.minimum(rows[i], rows[j]), np.maximum(rows[i], rows[j])
    assert np.all(np.diff(rows, axis=0) >= 0)
    assert np.array_equal(rows.sum(axis=0), inputs.sum(axis=1))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 600), st.floats(-0.1, 0.1), st.integers(0, 2**32 - 1))
def test_paired_median_matches_numpy(n: int, dslope: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = rng.standard_normal(n).astype(np.float32)
    ref = rng.standard_normal(n).astype(np.float32)
    if n > 2:
        d[: n // 3] = ref[: n // 3]  # ties: a part of the line that did not move
    got = K.paired_median(d, ref, dslope, np.zeros(n))
    assert got == pytest.approx(R.paired_median(d, ref, dslope), abs=1e-9)


def test_fast_log_matches_numpy() -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate(
        [np.exp(rng.uniform(-690, 700, 5000)), [1.0, 2.0, 0.5, np.sqrt(2), 1e-300, 1e308]]
    )
    got = np.array([K.fast_log(v) for v in x])
    np.testing.assert_allclose(got, np.log(x), rtol=1e-15, atol=1e-13)
    assert K.fast_log(np.inf) == np.inf and np.isnan(K.fast_log(np.nan))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_streaming_equals_batch_and_is_causal(dtype) -> None:
    # float32 (.ibw data): the batch copies it into float64 chunks, push into a float64 row
    # (and the kernel could read it as it is); all must give the same bits
    scan, _ = faults.tracking_loss(synthetic_scan(160, 128, seed=3), 100, 12)
    scan.channels = {name: a.astype(dtype) for name, a in scan.channels.items()}
    batch = score_scan(scan)
    scorer = ScanScorer(scan.scan_id, list(scan.channels), scan.n_points, scan.expected_lines)
    alerts_seen = []
    for line in scan.lines():
        scorer.push(line)
        alerts_seen.append(scorer.alert)
    live = scorer.finish()
    np.testing.assert_array_equal(live.features, batch.features)
    assert live.lines == batch.lines and live.events == batch.events and live.alert == batch.alert
    assert batch.alert is not None
    # alert changes exactly once, from None to the final alert
    assert alerts_seen.index(batch.alert) == batch.alert.position
    assert all(a is None for a in alerts_seen[: batch.alert.position])
    assert all(a == batch.alert for a in alerts_seen[batch.alert.position :])
    # causal: scoring only the first 110 lines gives the same first 110 rows
    head = score_scan(_first_lines(scan, 110))
    np.testing.assert_array_equal(head.features, batch.features[:110])


def test_float32_frame_read_as_it_is_gives_the_rows_of_the_float64_frame() -> None:
    # the scorer works at float32 resolution: a float64 frame of the same values is narrowed
    scan, _ = faults.streaks(synthetic_scan(96, 128, seed=5), 40, 20)
    names = list(scan.channels)
    frame32 = scan.block().astype(np.float32)
    rows = []
    for frame in (frame32, frame32.astype(np.float64)):
        scorer = ScanScorer(scan.scan_id, names, scan.n_points, scan.expected_lines)
        scorer.score_frame(frame, range(scan.n_lines))
        rows.append(scorer.finish())
    # bit for bit when both specialisations come from one build (tests/conftest.py)
    np.testing.assert_array_equal(rows[0].features, rows[1].features)
    assert rows[0].events == rows[1].events and any(rows[0].events)


@pytest.mark.parametrize("exponent", [-90, -30, 30, 90])
def test_a_scan_in_any_unit_gives_the_same_rows(exponent: int) -> None:
    # each channel is measured in a unit of its own (kernels.unit_of): data in units 2^90
    # times smaller or larger give the rows of the data as they were, bit for bit, where
    # float32 squares would underflow (or overflow) without it
    scan, _ = faults.tip_change(synthetic_scan(96, 128, seed=3), 50, 4)
    expected = score_scan(scan)
    assert expected.alert is not None and expected.alert.kind == "tip_change"
    scan.channels = {name: a * 2.0**exponent for name, a in scan.channels.items()}
    got = score_scan(scan)
    np.testing.assert_array_equal(got.features, expected.features)
    assert got.events == expected.events and got.alert == expected.alert


def test_a_read_file_is_scored_where_it_lies(tmp_path) -> None:
    path = tmp_path / "frame.ibw"
    saved = synthetic_scan(48, 64, seed=2)
    saved.channels = {name: a.astype(np.float32) for name, a in saved.channels.items()}
    write_scan(saved, path)  # float32, as Asylum saves
    scan = read_scan(path)
    block = scan.block()  # the one array read_scan holds the channels in: no copy
    assert block.dtype == np.float32 and block.flags.c_contiguous and block.shape == (4, 48, 64)
    assert scan.block() is block
    assert all(np.shares_memory(block, a) for a in scan.channels.values())
    expected = score_scan(scan)
    scan.channels["Ch0Trace"] = scan.channels["Ch0Trace"].copy()  # no longer one array
    stacked = scan.block()
    assert stacked is not block and not np.shares_memory(stacked, block)
    np.testing.assert_array_equal(stacked, block)
    np.testing.assert_array_equal(score_scan(scan).features, expected.features)
    scorer = ScanScorer(scan.scan_id, list(scan.channels), 64, 48)
    with pytest.raises(ValueError, match="rows outside the frame's 48 lines"):
        scorer.score_frame(block, [0, 48])
    block.flags.writeable = False  # copied for the kernel (one machine code for all frames)
    scorer.score_frame(block, scan.acquisition_order())
    np.testing.assert_array_equal(scorer.finish().features, expected.features)


def test_values_beyond_float32_are_non_finite_samples() -> None:
    # the scorer narrows float64 input to float32: a channel of 1e300 becomes inf, a bad
    # line, without a numpy overflow warning on the way
    scan = synthetic_scan(40, 64)
    scorer = ScanScorer("huge", list(scan.channels), 64, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for line in scan.lines():
            channels = dict(line.channels)
            if line.position == 20:
                channels["Ch0Trace"] = np.full(64, 1e300)
            result = scorer.push(Line("huge", line.index, line.position, 40, channels))
            assert result.flagged == (line.position == 20)
            if line.position == 20:
                assert result.kind == "dropout"


def test_a_channel_constant_from_the_start_is_left_out_of_the_dropout_test() -> None:
    # an input left unconnected reads one value in every line: not a failing tip
    scan = synthetic_scan(96, 64, seed=6)
    scan.channels["Ch1Retrace"] = np.full((96, 64), 0.25)
    frame = score_scan(scan)
    assert frame.dead_channels == ["Ch1Retrace"]
    assert not any(line.flagged for line in frame.lines) and frame.alert is None
    scorer = ScanScorer(scan.scan_id, list(scan.channels), 64, 96)  # live: the same
    for line in scan.lines():
        scorer.push(line)
    live = scorer.finish()
    assert live.dead_channels == ["Ch1Retrace"] and live.lines == frame.lines
    # it counts from its first line with a span on: dying again later is a dropout
    scan.channels["Ch1Retrace"] = synthetic_scan(96, 64, seed=7).channels["Ch1Retrace"].copy()
    scan.channels["Ch1Retrace"][:30] = 0.25
    scan.channels["Ch1Retrace"][60:64] = 0.0
    frame = score_scan(scan)
    assert frame.dead_channels == []
    assert [line.index for line in frame.lines if line.flagged] == [60, 61, 62, 63]
    assert frame.alert is not None and frame.alert.kind == "dropout"
    # with no channel alive, every line is a dropout as before, and every channel is named
    scan.channels = {name: np.zeros((96, 64)) for name in scan.channels}
    frame = score_scan(scan)
    assert frame.dead_channels == list(scan.channels)
    assert all(line.kind == "dropout" for line in frame.lines)


@pytest.mark.parametrize(
    "inject",
    [
        lambda s: faults.streaks(s, 60, 40, every=3),
        lambda s: faults.tip_change(s, 60, 5),
        lambda s: faults.ringing(s, "Ch0Trace", 60, 30),
    ],
)
def test_whole_frame_events_equal_line_by_line(inject) -> None:
    # score_scan takes unflagged stretches in one go (EventTracker.push_quiet)
    scan, _ = inject(synthetic_scan(160, 128, seed=4))
    batch = score_scan(scan)
    scorer = ScanScorer(scan.scan_id, list(scan.channels), scan.n_points, scan.expected_lines)
    for line in scan.lines():
        scorer.push(line)
    live = scorer.finish()
    assert any(e.kind != "partial_frame" for e in batch.events)
    assert live.lines == batch.lines and live.events == batch.events and live.alert == batch.alert


def _first_lines(scan, n):
    order = scan.acquisition_order()[:n]
    cut = synthetic_scan(1, scan.n_points)
    cut.channels = {k: v[np.sort(order)] for k, v in scan.channels.items()}
    cut.expected_lines = scan.expected_lines
    cut.scan_down = scan.scan_down
    return cut


def test_feature_matrix_shape_and_names() -> None:
    frame = score_scan(synthetic_scan(40, 64))
    assert frame.features.shape == (40, len(FEATURE_NAMES))
    assert frame.feature_names == FEATURE_NAMES
    assert np.all(np.isfinite(frame.features))


def test_malformed_lines_are_dropouts_not_crashes() -> None:
    scan = synthetic_scan(40, 64)
    scorer = ScanScorer("bad", list(scan.channels), 64, 40)
    for line in scan.lines():
        channels = dict(line.channels)
        if 20 <= line.position < 23:
            channels.pop("Ch0Trace")
            channels["Ch1Trace"] = channels["Ch1Trace"][:10]
        result = scorer.push(Line("bad", line.index, line.position, 40, channels))
        if 20 <= line.position < 23:
            assert result.flagged and result.kind == "dropout"
    assert scorer.alert is not None and scorer.alert.kind == "dropout"
    assert scorer.alert.position == 21  # two consecutive dropout lines


def test_partial_frame_event() -> None:
    scan = synthetic_scan(30, 64)
    scan.expected_lines = 64
    frame = score_scan(scan)
    partial = [e for e in frame.events if e.kind == "partial_frame"]
    assert len(partial) == 1 and (partial[0].start, partial[0].end) == (30, 63)


def test_warm_up_compiles() -> None:
    assert warm_up() >= 0.0


def test_clean_simulated_scans_do_not_alert() -> None:
    for seed in range(4):
        assert score_scan(synthetic_scan(256, 256, seed=seed)).alert is None


@pytest.mark.parametrize(
    ("inject", "kind"),
    [
        (lambda s: faults.zero_lines(s, 120, 4), "dropout"),
        (lambda s: faults.tracking_loss(s, 120, 20), "tracking_loss"),
        (lambda s: faults.tip_change(s, 120, 30), "tip_change"),
        (lambda s: faults.streaks(s, 120, 40), "streak"),
        (lambda s: faults.ringing(s, "Ch0Trace", 120, 40), "oscillation"),
    ],
)
def test_simulated_fault_is_found_and_placed(inject, kind: str) -> None:
    scan, rows = inject(synthetic_scan(256, 256, seed=7))
    # streaks and ringing need slow_k of slow_m lines (AlertRule), the rest k of m
    within = 16 if kind in ("streak", "oscillation") else 6
    assert_fault_found(score_scan(scan), rows, kind, start_position=120, within=within)


def _level_shift(count: int, size: float = 0.1, ramp: bool = False):
    """synthetic_scan(256, 256, seed=7) with every channel raised by `size` line spreads on
    `count` lines from acquisition position 120 (by k + 1 times that on the k-th line of a
    ramp, which then stays at its top)."""
    scan, rows = faults.level_shift(synthetic_scan(256, 256, seed=7), 120, count, size, ramp)
    return score_scan(scan), rows


def test_a_level_step_below_the_flag_threshold_that_persists_alerts_as_a_tip_change() -> None:
    frame, _ = _level_shift(136)
    flag_z = ScoringSettings().flag_z
    # the premise: the step alone scores between half the threshold and the threshold
    assert flag_z / 2 <= frame.features[120, K.F_LEVEL] < flag_z
    assert frame.alert is not None and frame.alert.kind == "tip_change"
    assert 120 <= frame.alert.position <= 120 + ScoringSettings().step_lines + 2
    assert not any(s.flagged for s in frame.lines[:120])


def test_a_step_the_level_flags_on_its_own_keeps_its_z() -> None:
    """The held-step boost raised a flagged step's lines by 5 more, turning medium alerts
    high (the demo's suggestion went from stop_scan to withdraw)."""
    frame, _ = _level_shift(136, size=0.2)
    level = frame.features[120:130, K.F_LEVEL]
    assert level[0] >= ScoringSettings().flag_z  # the premise: the step flags by itself
    assert level.max() < level[0] + 2.0, level
    assert frame.alert is not None and frame.alert.severity == "medium"


@pytest.mark.parametrize(("count", "ramp"), [(1, False), (2, False), (30, True)])
def test_a_level_step_that_comes_back_or_keeps_moving_is_no_tip_change(
    count: int, ramp: bool
) -> None:
    """A single odd line and a 2-line band go back to the level before them; a ramp (a
    sloping feature of the sample) steps on every line: none of them settles at a held step."""
    frame, _ = _level_shift(count, ramp=ramp)
    assert frame.features[120, K.F_LEVEL] >= ScoringSettings().flag_z / 2  # the same step
    assert not any(s.flagged for s in frame.lines), [s for s in frame.lines if s.flagged]


MIDDLE_THIRD = slice(85, 171)  # of synthetic_scan(256, 256)'s lines


def test_a_level_built_up_under_part_of_the_line_is_no_tip_change() -> None:
    """A particle or terrace rising line by line under part of the line raised the mean, and
    with it the level step, on every line: on clean generated scans the main false alert."""
    scan, _ = faults.raised(synthetic_scan(256, 256, seed=7), 120, 2.4, 4, MIDDLE_THIRD)
    frame = score_scan(scan)
    flag_z = ScoringSettings().flag_z
    assert frame.features[120, K.F_LEVEL] >= flag_z  # the premise: its first line flags
    assert frame.features[124:, K.F_LEVEL].max() < flag_z / 2
    assert frame.alert is None, frame.alert


@pytest.mark.parametrize(
    ("size", "lines", "columns"),
    [(0.8, 4, slice(None)), (2.4, 1, MIDDLE_THIRD)],
    ids=["over-the-whole-line", "at-once"],
)
def test_a_level_that_moved_the_whole_line_or_at_once_counts_in_full(
    size: float, lines: int, columns: slice
) -> None:
    """The same rise of the mean over the whole line (a tip change over 4 lines), or under
    part of it in one line (a tracking loss, a jump from mid-line), stays a tip change."""
    scan, _ = faults.raised(synthetic_scan(256, 256, seed=7), 120, size, lines, columns)
    frame = score_scan(scan)
    assert frame.alert is not None and frame.alert.kind == "tip_change"
    assert 120 <= frame.alert.position <= 122
    assert frame.features[123:, K.F_LEVEL].min() >= ScoringSettings().flag_z


def test_a_tip_change_stays_in_view_while_the_sample_rises_under_part_of_the_line() -> None:
    """The reference line of a held step is older than the history holds (its slot is
    reused after HIST_DEPTH lines): the whole-line step is measured against it still, and
    the rise under part of the line does not add to it."""
    scan, _ = faults.raised(synthetic_scan(256, 256, seed=7), 120, 0.4)
    level = score_scan(scan).features[:, K.F_LEVEL]
    scan, _ = faults.raised(scan, 128, 2.4, 4, MIDDLE_THIRD)
    with_rise = score_scan(scan).features[:, K.F_LEVEL]
    settings = ScoringSettings()
    assert level[121:140].min() >= settings.flag_z  # the premise: a held step
    # measured against a newer line it would fall below the flag; with the mean (the
    # particle's rise too), or against no reference row, it would reach the clip
    assert with_rise[121:140].min() >= settings.flag_z
    assert np.all(np.abs(with_rise[132:140] - level[132:140]) < 8), with_rise[128:140]
    assert with_rise[132:140].max() < settings.z_clip


def assert_fault_found(frame, rows, kind: str, start_position: int, within: int = 12) -> None:
    assert frame.alert is not None, f"no alert for {kind}"
    assert frame.alert.kind == kind
    assert start_position <= frame.alert.position <= start_position + within
    hits = [e for e in frame.events if e.kind == kind]
    assert hits, frame.events
    covered = {i for e in hits for i in range(e.start, e.end + 1)}
    assert len(covered & set(rows.tolist())) >= min(3, len(rows))
    # no event of the fault's kind far from the fault
    assert all(e.end >= rows.min() - 6 and e.start <= rows.max() + 6 for e in hits)


def test_settings_defaults_are_consistent() -> None:
    s = ScoringSettings()
    assert s.min_baseline <= s.window and 0 < s.scar_soft < s.scar_hard
    assert len(s.as_array()) == K.N_SETTINGS


@pytest.mark.parametrize("seed", range(3))
def test_after_a_gap_the_next_line_is_not_compared_with_the_last_one(seed: int) -> None:
    """Lines skipped (a pause, lines lost in transit): compared with a line 60 lines back, the
    next one was flagged. The jump in position tells the scorer; the scores keep the lines'
    places in acquisition order, and the lines missing in between make no partial frame."""
    from spmwatch import synth

    scan = synth.clean_scan(seed, 192, 128)
    lines = list(scan.lines())
    frames = []
    for known in (False, True):
        scorer = ScanScorer("gap", list(scan.channels), scan.n_points, scan.expected_lines)
        for line in lines[:60]:
            scorer.push(line)
        for k, line in enumerate(lines[120:]):
            scorer.push(line if known else dataclasses.replace(line, position=60 + k))
        frames.append(scorer.finish())
    flagged = [[s.index for s in frame.lines if s.flagged] for frame in frames]
    assert flagged[0] == [120]  # the premise: numbered on, the first line after is flagged
    assert flagged[1] == []
    assert [s.position for s in frames[1].lines] == [*range(60), *range(120, 192)]
    assert not [e for e in frames[1].events if e.kind == "partial_frame"]
    # numbered on, the frame looks 60 lines short at its end
    assert [(e.start, e.end) for e in frames[0].events if e.kind == "partial_frame"] == [(132, 191)]


def test_the_cache_filling_child_imports_this_spmwatch_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # started beside a clone (a folder named spmwatch holding config/), `python -c` imported
    # the clone's folders as the package, and the child that fills numba's cache failed
    (tmp_path / "spmwatch" / "config").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    said = tmp_path / "imported.txt"
    code = (
        "import pathlib, spmwatch.scoring.scorer as s; "
        f"pathlib.Path({str(said)!r}).write_text(s.__file__)"
    )
    assert python_child(code, timeout=120).returncode == 0
    assert Path(said.read_text()) == Path(K.__file__).with_name("scorer.py")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_cache_filling_child_dies_with_its_parent(tmp_path: Path) -> None:
    """A daemon killed (SIGKILL) during a first start's compile left the child compiling on,
    orphaned."""
    child_pid = tmp_path / "child.pid"
    child = (
        f"import os, pathlib, time; pathlib.Path({str(child_pid)!r})"
        ".write_text(str(os.getpid())); time.sleep(120)"
    )
    script = tmp_path / "parent.py"
    script.write_text(
        f"from spmwatch.numba_build import python_child\npython_child({child!r}, timeout=300)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], cwd=Path(K.__file__).parents[2])
    try:
        pid = int(wait_for(lambda: child_pid.exists() and child_pid.read_text(), timeout=60))
        parent.kill()
        parent.wait(timeout=10)

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # reaped soon

        assert wait_for(gone, timeout=10)
    finally:
        parent.kill()
