"""Scorer on the real scans (SPMWATCH_DATA): lag, no false alerts, faults found in real data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spmwatch.ibw import read_scan
from spmwatch.scoring import kernels as K
from spmwatch.scoring import reference as R
from spmwatch.scoring.scorer import ScanScorer, score_scan
from tests import scoring_helpers as faults
from tests.daemon_helpers import DaemonProcess, write_config
from tests.test_scoring import assert_fault_found

pytestmark = pytest.mark.data
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dna(dna_scan_path: Path):
    return read_scan(dna_scan_path)


def good_scans(root: Path) -> list[Path]:
    public = sorted((root / "public").glob("*.ibw"))
    return public + sorted((root / "ofdspm" / "good").glob("*.ibw"))


def test_dna_lag_and_residual(dna) -> None:
    scorer = ScanScorer(dna.scan_id, list(dna.channels), dna.n_points, dna.expected_lines)
    for line in dna.lines():
        scorer.push(line)
    lag = scorer.lags["Height"]
    assert 13 <= lag <= 15  # per-line best lags spread 11-15 px; the median of votes is kept
    trace, retrace = dna.channels["HeightTrace"], dna.channels["HeightRetrace"]
    rms0, rms14 = [], []
    for t, r in zip(trace, retrace, strict=True):
        dt, _ = R.line_stats(t.astype(np.float64))
        dr, _ = R.line_stats(r.astype(np.float64))
        rms0.append(R.residual(dt, dr, 0)[0])
        rms14.append(R.residual(dt, dr, 14)[0])
    # the published figures: 0.82 nm uncompensated, 0.36 nm compensated (per-line median)
    assert np.median(rms0) * 1e9 == pytest.approx(0.82, abs=0.02)
    assert np.median(rms14) * 1e9 == pytest.approx(0.36, abs=0.02)
    scored = [
        R.residual(*[R.line_stats(a.astype(np.float64))[0] for a in tr], lag)[0]
        for tr in zip(trace, retrace, strict=True)
    ]
    assert np.median(scored) * 1e9 < 0.40


def test_kernels_match_numpy_on_real_lines(dna) -> None:
    rows32 = dna.channels["HeightTrace"][::37]
    prev = np.zeros(rows32.shape[1], dtype=np.float32)
    unit = K.unit_of(rows32[0])
    assert unit > 1e6  # metres: the lines span nanometres
    for x32 in rows32:  # the float32 data as it is, as the scorer reads it
        d = np.empty(len(x32), dtype=np.float32)
        stats = np.empty(16)
        K.line_stats(x32, unit, prev, d, stats)
        faults.assert_line_stats_close(x32, unit, d, stats, prev)
        prev = d


def test_good_scans_raise_no_alert(data_root: Path) -> None:
    paths = good_scans(data_root)
    assert len(paths) == 38
    alerts = {p.name: score_scan(read_scan(p)).alert for p in paths}
    assert {name: a for name, a in alerts.items() if a is not None} == {}


def test_bad_scans_show_events(data_root: Path) -> None:
    results = {
        p.name: score_scan(read_scan(p)) for p in sorted((data_root / "ofdspm/bad").glob("*.ibw"))
    }
    partial = {
        name for name, f in results.items() if any(e.kind == "partial_frame" for e in f.events)
    }
    # the stopped frames (238, 232, 118, 64, 62 of 256 lines) and nothing else
    assert partial == {
        "Cs50MA50approx_0013.ibw",
        "Cs50MA50approx_0032.ibw",
        "H_90Cs10MA_0000.ibw",
        "H_90Cs10MA_0004.ibw",
        "PositionC_30Cs70M0000.ibw",
    }
    with_line_events = {
        n for n, f in results.items() if any(e.kind != "partial_frame" for e in f.events)
    }
    assert len(with_line_events) >= 6


@pytest.mark.parametrize(
    ("inject", "kind"),
    [
        (lambda s: faults.zero_lines(s, 200, 4), "dropout"),
        (lambda s: faults.tracking_loss(s, 200, 20), "tracking_loss"),
        (lambda s: faults.tip_change(s, 200, 30), "tip_change"),
        (lambda s: faults.streaks(s, 200, 40), "streak"),
    ],
)
def test_faults_injected_into_the_dna_scan(dna, inject, kind: str) -> None:
    scan, rows = inject(dna)
    # streaks must persist (AlertRule.slow_k of slow_m lines); the DNA scan's own scars (DNA
    # strands lying along the fast axis) keep the scar baseline high, so it takes longer
    within = 32 if kind == "streak" else 6
    assert_fault_found(score_scan(scan), rows, kind, start_position=200, within=within)


def test_ringing_injected_into_a_real_amplitude_channel(data_root: Path) -> None:
    scan = read_scan(data_root / "public" / "IgorIBWReader_P0089OP0027.ibw")
    scan, rows = faults.ringing(scan, "AmplitudeRetrace", 100, 40)
    assert_fault_found(score_scan(scan), rows, "oscillation", start_position=100, within=16)


def test_the_first_run_on_a_cold_cache_builds_what_every_later_process_runs(
    data_root: Path, tmp_path: Path
) -> None:
    # numba's fresh machine code rounds the float32 sums differently from the cached code
    # (this file's JSON differed by 0.005 in a line score): the first process on a cold cache
    # has a child fill the cache and loads from it, so it scores as every later process, to
    # the last digit (numba_build.cached_build)
    path = data_root / "ofdspm" / "good" / "approx5050compos_0018.ibw"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "spmwatch", "score", "--json", str(path)]
    runs = [subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)]
    assert any((tmp_path / "cache").rglob("*.nbi"))  # the child filled it
    runs.append(subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900))
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    # the child compiled the daemon's kernels too: its first start after a `score` compiled
    # the frame features for float64 frames and live lines itself (~12 s of warm-up, not ~2)
    config, _ = write_config(tmp_path)
    debug = {"NUMBA_CACHE_DIR": env["NUMBA_CACHE_DIR"], "NUMBA_DEBUG_CACHE": "1"}
    daemon = DaemonProcess(config, extra_env=debug)
    try:
        daemon.wait_ready(timeout=120)
    finally:
        assert daemon.stop() == 0
    cache_lines = [text for text in daemon.raw if text.startswith("[cache]")]
    assert any("data loaded" in text for text in cache_lines)
    assert not [text for text in cache_lines if "data saved" in text]
