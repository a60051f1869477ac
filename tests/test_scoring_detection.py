"""Detection figures on generated failing scans (spmwatch.synth), a small slice of
benchmarks/detection.py: each persistent fault alerts within a few lines with its kind, and
clean generated scans raise nothing."""

from __future__ import annotations

import numpy as np
import pytest

from spmwatch import synth
from spmwatch.scoring import kernels as K
from spmwatch.scoring.scorer import ScoringSettings, score_scan

SEEDS = range(5)


def _delay_and_kind(kind: str, seed: int) -> tuple[int | None, str | None, set[str]]:
    scan, truth = synth.failing_scan(seed, fault=kind)
    frame = score_scan(scan)
    events = {e.kind for e in frame.events}
    if frame.alert is None:
        return None, None, events
    return frame.alert.position - int(truth.first_position or 0), frame.alert.kind, events


@pytest.mark.parametrize("seed", SEEDS)
def test_tip_change_alerts_within_4_lines_and_stays_an_event(seed: int) -> None:
    delay, kind, events = _delay_and_kind("tip_change", seed)
    assert delay is not None and 0 <= delay <= 4 and kind == "tip_change"
    assert events & {"tip_change", "streak"}


@pytest.mark.parametrize("seed", SEEDS)
def test_dropout_alerts_on_its_second_line(seed: int) -> None:
    delay, kind, _ = _delay_and_kind("dropout", seed)
    assert (delay, kind) == (1, "dropout")


@pytest.mark.parametrize("scan_down", [False, True])
def test_a_dropout_event_covers_the_dropped_lines_and_no_more(scan_down: bool) -> None:
    """The first line after a dropout run used to be flagged too (decorrelated from the last
    good line, several lines back), so the event reached one line past the run."""
    for seed in (7, 9, 10, 11):
        clean = synth.clean_scan(seed, 128, 256, traces=True, scan_down=scan_down)
        scan, truth = synth.inject(clean, "dropout", seed + 7, at=0.4)
        dropped = np.flatnonzero(truth.mask)
        frame = score_scan(scan)
        spans = [(e.start, e.end) for e in frame.events if e.kind == "dropout"]
        assert spans == [(int(dropped[0]), int(dropped[-1]))], (seed, spans)
        assert not any(s.flagged and not truth.mask[s.index] for s in frame.lines), seed


def test_tracking_loss_alerts_within_4_lines_and_is_not_called_a_dropout() -> None:
    results = [_delay_and_kind("tracking_loss", seed) for seed in SEEDS]
    assert all(d is not None and 0 <= d <= 4 for d, _, _ in results), results
    kinds = [k for _, k, _ in results]
    assert "dropout" not in kinds and kinds.count("tracking_loss") >= 3, kinds


def test_persistent_streaking_alerts_and_shows_streak_events() -> None:
    results = [_delay_and_kind("streak", seed) for seed in SEEDS]
    assert all(d is not None and d >= 0 for d, _, _ in results), results
    # a band running into the end of the frame cannot be told from a tip change
    assert sum("streak" in events for _, _, events in results) >= 4, results


def test_oscillation_alerts_on_some_generated_scans() -> None:
    # known gap (docs/scoring.md): weak bursts and edge ringing stay below the flag threshold
    results = [_delay_and_kind("oscillation", seed) for seed in SEEDS]
    hits = [(d, k) for d, k, _ in results if d is not None]
    assert len(hits) >= 2 and all(0 <= d <= 12 and k == "oscillation" for d, k in hits), results


@pytest.mark.parametrize("traces", [True, False])
def test_clean_generated_scans_raise_no_alert(traces: bool) -> None:
    for seed in range(6):
        scan = synth.clean_scan(2000 + seed, 128, 256, traces=traces, scan_down=seed % 2 == 1)
        assert score_scan(scan).alert is None, scan.scan_id


def test_weak_persistent_ringing_alerts_where_it_starts() -> None:
    """Seed 11 rings on every line from position 64 at a ringing z of ~10, below the flag:
    before the topography check its lines entered the ringing baseline and faded unflagged.
    Its peak stands out of the Height spectrum too, so it now alerts as oscillation."""
    scan, truth = synth.failing_scan(11, fault="oscillation")
    first = int(truth.first_position or 0)
    frame = score_scan(scan)
    assert frame.alert is not None and frame.alert.kind == "oscillation"
    assert 0 <= frame.alert.position - first <= 12
    flagged = [s.position for s in frame.lines if s.flagged]
    assert flagged and min(flagged) >= first  # nothing before the ringing
    # an oscillation event holds the ringing's first stored lines (here index = position)
    assert any(e.kind == "oscillation" and e.start <= first + 2 <= e.end for e in frame.events)
    # without the confirmation (never confirmed) the same scan is missed, as it was before
    assert score_scan(scan, ScoringSettings(topo_contrast=np.inf)).alert is None


def test_ringing_in_the_error_channel_alone_is_not_confirmed() -> None:
    """The same ringing left in the Amplitude channels only (Height and ZSensor clean) is no
    feedback loop ringing: no line is confirmed, every row equals the unconfirmed scorer's."""
    scan, _ = synth.failing_scan(11, fault="oscillation")
    clean = synth.clean_scan(11, 128, 256, traces=True)
    for name in scan.channels:
        if not name.startswith("Amplitude"):
            scan.channels[name] = clean.channels[name]
    rows = score_scan(scan).features
    assert (rows[:, K.F_RING] >= 6.0).sum() >= 10  # the check ran: the peak is a ringing hint
    np.testing.assert_array_equal(
        rows, score_scan(scan, ScoringSettings(topo_contrast=np.inf)).features
    )
