"""Synthetic scans: ground truth marks exactly the lines a fault touched, seeds reproduce,
and generated scans survive a round trip through a real .ibw file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spmwatch import synth
from spmwatch.ibw import read_scan

LINE_FAULTS = [k for k in synth.FAULT_KINDS if k != "partial_frame"]


@pytest.fixture(scope="module")
def base():
    return synth.clean_scan(7, lines=64, points=96)


def changed_lines(before, after) -> np.ndarray:
    """Stored lines where any channel differs (NaN counts as a change)."""
    out = np.zeros(before.n_lines, bool)
    for name, data in before.channels.items():
        new = after.channels[name]
        same = (data == new) | (np.isnan(data) & np.isnan(new))
        out |= ~same.all(axis=1)
    return out


def test_clean_scan_has_paired_channels_and_differing_directions(base):
    assert set(base.channels) == {f"{c}{d}" for c in synth.CHANNELS for d in ("Trace", "Retrace")}
    assert base.n_lines == 64 and base.n_points == 96 and not base.partial
    trace, retrace = base.channels["HeightTrace"], base.channels["HeightRetrace"]
    assert np.isfinite(trace).all()
    # The feedback loop lags in opposite directions, so trace and retrace are not equal ...
    assert np.abs(trace - retrace).mean() > 0.01 * trace.std()
    # ... but they image the same surface.
    assert np.corrcoef(trace.ravel(), retrace.ravel())[0, 1] > 0.6


def test_retrace_only_variant():
    scan = synth.clean_scan(3, lines=32, points=64, traces=False)
    assert all(name.endswith("Retrace") for name in scan.channels)


@pytest.mark.parametrize("kind", LINE_FAULTS)
def test_truth_mask_is_exactly_the_changed_lines(base, kind):
    faulty, truth = synth.inject(base, kind, seed=11, at=0.3)
    changed = changed_lines(base, faulty)
    np.testing.assert_array_equal(truth.mask, changed)
    assert truth.bad and truth.kind == kind
    assert all(truth.kinds[i] == kind for i in np.flatnonzero(truth.mask))
    assert truth.first_position == min(f.start for f in truth.faults)
    assert not changed_lines(base, synth.clean_scan(7, lines=64, points=96)).any()


def test_fault_follows_acquisition_order_on_scan_down_frames():
    scan = synth.clean_scan(5, lines=40, points=64, scan_down=True)
    _faulty, truth = synth.inject(scan, "tip_change", seed=1, at=0.25)
    # Scanned top-down: position 0 is the last stored line, so the fault covers low indices.
    assert truth.mask[0] and not truth.mask[-1]
    assert truth.mask.sum() == 40 - truth.first_position


def test_partial_frame_keeps_the_lines_scanned_first(base):
    faulty, truth = synth.inject(base, "partial_frame", seed=2, at=0.5)
    assert faulty.n_lines == 32 and faulty.expected_lines == 64 and faulty.partial
    assert truth.partial and truth.bad and not truth.mask.any()
    np.testing.assert_array_equal(
        faulty.channels["HeightRetrace"], base.channels["HeightRetrace"][:32]
    )


def test_faults_stack_and_keep_earlier_truth(base):
    first, truth = synth.inject(base, "dropout", seed=3, at=0.1)
    _second, truth2 = synth.inject(first, "streak", seed=4, at=0.6, truth=truth)
    assert truth2.mask.sum() >= truth.mask.sum()
    assert truth2.mask[truth.mask].all()
    assert {f.kind for f in truth2.faults} == {"dropout", "streak"}


def test_seeded_generation_is_deterministic():
    a, ta = synth.failing_scan(seed=9, lines=48, points=64, fault="oscillation", at=0.5)
    b, tb = synth.failing_scan(seed=9, lines=48, points=64, fault="oscillation", at=0.5)
    for name in a.channels:
        np.testing.assert_array_equal(a.channels[name], b.channels[name])
    np.testing.assert_array_equal(ta.mask, tb.mask)
    c, _ = synth.failing_scan(seed=10, lines=48, points=64, fault="oscillation", at=0.5)
    assert not np.array_equal(a.channels["HeightRetrace"], c.channels["HeightRetrace"])


def test_failing_scan_fails_part_way():
    scan, truth = synth.failing_scan(seed=1, lines=128, points=256, fault="tip_change", at=0.5)
    assert scan.n_lines == 128 and truth.first_position == 64
    assert not truth.mask[:64].any() and truth.mask[64:].all()


def test_unknown_kind_is_refused(base):
    with pytest.raises(ValueError, match="unknown fault kind 'smudge'"):
        synth.inject(base, "smudge", seed=0)


def test_synthetic_set_labels_and_groups():
    batch = synth.synthetic_set(12, seed=1, lines=32, points=48)
    assert len(batch.scans) == len(batch.truths) == len(batch.groups) == 12
    assert {t.bad for t in batch.truths} == {True, False}
    assert set(batch.groups) == {"synthetic"}


def test_round_trip_through_ibw(tmp_path: Path):
    scan, _truth = synth.failing_scan(seed=4, lines=40, points=64, fault="dropout", at=0.4)
    path = synth.write(scan, tmp_path / "failing.ibw")
    back = read_scan(path)
    assert list(back.channels) == list(scan.channels)
    for name, data in scan.channels.items():
        np.testing.assert_allclose(back.channels[name], data, equal_nan=True)
    assert back.n_lines == 40 and back.scan_down == scan.scan_down


@pytest.mark.data
def test_faults_inject_into_a_real_good_scan(data_root: Path):
    real = read_scan(data_root / "ofdspm" / "good" / "PTO_AC_0002.ibw")
    for kind in LINE_FAULTS:
        faulty, truth = synth.inject(real, kind, seed=5, at=0.4)
        np.testing.assert_array_equal(truth.mask, changed_lines(real, faulty))
        assert faulty.scan_id != real.scan_id and real.path is not None
