"""The scope-ring follower against a fake Igor writing Scope*.ibw files as aespm's function does."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from igorwriter import IgorWave5
from sources_helpers import Collector, wait_for

from spmwatch.model import Line
from spmwatch.protocol import EndOfScan
from spmwatch.sources import SourceError
from spmwatch.sources.scope import DEFAULT_CHANNELS, ScopeFollower

NOP = 32


def scope_data(k: int, columns: int = 8) -> np.ndarray:
    """Line k's scope wave as (columns, nop): every value says which line and column it is."""
    ramp = np.arange(NOP, dtype=np.float32) * np.float32(0.001)
    return np.stack([np.float32(k * 100 + c) + ramp for c in range(columns)])


def save_scope(
    path: Path, data: np.ndarray, pause: float = 0.0, labels: tuple[str, ...] = ()
) -> None:
    """Save like Igor's `Save/C/O`: the nop x 8 wave rewritten in place, here in two chunks;
    `labels` names its columns (Igor's dimension labels)."""
    buffer = io.BytesIO()
    wave = IgorWave5(np.ascontiguousarray(data.T), name="ZSensorFullScope")
    for column, label in enumerate(labels):
        wave.set_dimlabel(1, column, label)
    wave.save(buffer)
    blob = buffer.getvalue()
    with open(path, "wb") as handle:
        handle.write(blob[: len(blob) // 2])
        handle.flush()
        time.sleep(pause)
        handle.write(blob[len(blob) // 2 :])


def test_follows_the_ring_in_order_skipping_duplicates_and_counting_gaps(tmp_path: Path) -> None:
    for k in range(5):  # an old ring from a previous scan: Scope4 was written last
        save_scope(tmp_path / f"Scope{k}.ibw", scope_data(-1 - k))
    sink = Collector()
    follower = ScopeFollower(tmp_path, sink, poll=0.01, settle=0.02, n_lines=16)
    follower.start()

    # Igor's plan: lines 0-9 into slots 5-14, slot 15 skipped, line 15 saved twice.
    plan: list[tuple[int, int]] = []
    slot = 5
    for line in range(30):
        if line == 10:
            slot += 1  # the deliberate skip
        plan.append((slot % 20, line))
        slot += 1
        if line == 15:
            plan.append((slot % 20, line))  # the deliberate duplicate
            slot += 1

    def consumed() -> int:
        counts = follower.counters.snapshot()
        return counts["lines"] + counts["duplicates"]

    def igor() -> None:
        for n, (k, line) in enumerate(plan):
            # A real scan is far slower than the follower; never lap it.
            wait_for(lambda n=n: n - consumed() < 10)
            save_scope(tmp_path / f"Scope{k}.ibw", scope_data(line), pause=0.005 * (n % 3))

    writer = threading.Thread(target=igor)
    writer.start()
    writer.join()
    assert wait_for(lambda: len(sink.lines) == 30, timeout=20)
    assert follower.stop(2.0)

    lines: list[Line] = sink.lines
    for line, data_k in zip(lines, range(30), strict=True):
        for c, name in enumerate(DEFAULT_CHANNELS):
            np.testing.assert_array_equal(line.channels[name], scope_data(data_k)[c])
    absolute = [k if k < 10 else k + 1 for k in range(30)]  # the skipped slot is a lost line
    assert [(line.scan_id, line.index) for line in lines] == [
        (f"scope-{a // 16 + 1}", a % 16) for a in absolute
    ]
    assert all(line.n_lines == 16 and line.source == "scope" for line in lines)
    ends = [i for i, item in enumerate(sink.items) if isinstance(item, EndOfScan)]
    assert [sink.items[i] for i in ends] == [EndOfScan("scope-1")]
    assert sink.items[ends[0] - 1].index == 15 and sink.items[ends[0] + 1].scan_id == "scope-2"
    gaps = [e for e in sink.errors if "gap" in e.reason]
    assert len(gaps) == 1 and gaps[0].subject.endswith("Scope16.ibw")
    counts = follower.counters.snapshot()
    assert counts["duplicates"] == 1 and counts["gaps"] == 1 and counts["skipped"] == 1
    assert counts["lines"] == 30 and counts["frames"] == 1


def test_custom_channel_order_and_a_wrong_wave_is_reported(tmp_path: Path) -> None:
    names = ("HeightTrace", "HeightRetrace", "PhaseTrace", "PhaseRetrace")
    sink = Collector()
    follower = ScopeFollower(tmp_path, sink, poll=0.01, settle=0.02, channel_names=names)
    follower.start()
    try:
        # labelled columns, as a force curve has them, are still a scope slot
        save_scope(tmp_path / "Scope1.ibw", scope_data(7, columns=4), labels=names)
        assert wait_for(lambda: len(sink.lines) == 1)
        save_scope(tmp_path / "Scope2.ibw", scope_data(8, columns=6))
        assert wait_for(lambda: len(sink.errors) == 1)
        save_scope(tmp_path / "Scope3.ibw", scope_data(9, columns=4))
        assert wait_for(lambda: len(sink.lines) == 2)
    finally:
        assert follower.stop(2.0)
    first, second = sink.lines
    assert list(first.channels) == list(names)
    np.testing.assert_array_equal(first.channels["PhaseRetrace"], scope_data(7, 4)[3])
    assert (first.index, second.index) == (0, 2)  # the unreadable slot still took a line
    error: SourceError = sink.errors[0]
    assert error.subject.endswith("Scope2.ibw") and "nop x 4 scope wave" in error.reason


def test_scan_id_must_be_safe(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scan_id"):
        ScopeFollower(tmp_path, Collector(), scan_id="../x")


def test_a_fast_scan_loses_no_line(tmp_path: Path) -> None:
    """Igor writing 200 lines/s and never waiting: with a 50 ms settle per slot the follower
    took ~20 slots a second, Igor lapped the ring, and lines were lost without a count."""
    sink = Collector()
    follower = ScopeFollower(tmp_path, sink, n_lines=60)  # the defaults: poll 50 ms
    follower.start()
    try:
        for line in range(60):
            save_scope(tmp_path / f"Scope{line % 20}.ibw", scope_data(line))
            time.sleep(0.005)  # Igor's pace: a line every 5 ms
        assert wait_for(lambda: len(sink.lines) == 60, timeout=20), follower.counters.snapshot()
    finally:
        assert follower.stop(2.0)
    assert [line.index for line in sink.lines] == list(range(60))
    for line in sink.lines:
        np.testing.assert_array_equal(line.channels["ZSensorTrace"], scope_data(line.index)[0])
    assert follower.counters.snapshot()["gaps"] == 0


def test_a_missing_folder_is_reported_and_a_broken_slot_does_not_hold_the_ring(
    tmp_path: Path,
) -> None:
    ring = tmp_path / "ring"
    sink = Collector()
    follower = ScopeFollower(ring, sink, poll=0.01, n_lines=8, give_up=0.3)
    follower.start()
    try:
        assert wait_for(lambda: any("scope folder missing" in e.reason for e in sink.errors))
        ring.mkdir()
        save_scope(ring / "Scope0.ibw", scope_data(0))
        assert wait_for(lambda: len(sink.lines) == 1)
        whole = (ring / "Scope0.ibw").read_bytes()
        (ring / "Scope1.ibw").write_bytes(whole[: len(whole) // 2])  # never finished
        save_scope(ring / "Scope2.ibw", scope_data(2))
        assert wait_for(lambda: len(sink.lines) == 2, timeout=5)  # after give_up, not 30 s
    finally:
        assert follower.stop(2.0)
    broken = [e for e in sink.errors if e.subject.endswith("Scope1.ibw")]
    assert broken and "still incomplete" in broken[0].reason and broken[0].scan_id == "scope-1"
