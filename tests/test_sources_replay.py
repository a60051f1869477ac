"""Replay pacing (an injected clock, so the schedule is checked exactly) and the replay source."""

from __future__ import annotations

import math

import pytest
from ibw_fixtures import make_scan
from sources_helpers import Collector, wait_for

from spmwatch.model import Line
from spmwatch.protocol import EndOfScan
from spmwatch.sources.replay import ReplaySource, line_rate, replay_items, replay_lines


class FakeTime:
    """A clock that only moves when slept on (or when the test pushes it)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_lines_come_in_acquisition_order_on_an_absolute_schedule() -> None:
    scan = make_scan(lines=10, points=8, scan_down=True)
    fake = FakeTime()
    times, indices = [], []
    for line in replay_lines(scan, 4.0, clock=fake.clock, sleep=fake.sleep):
        times.append(fake.now - 100.0)
        indices.append(line.index)
    assert indices == list(range(9, -1, -1))
    assert times == pytest.approx([k / 4.0 for k in range(10)])


def test_a_slow_consumer_does_not_accumulate_drift() -> None:
    scan = make_scan(lines=6, points=8)
    fake = FakeTime()
    times = []
    for line in replay_lines(scan, 2.0, clock=fake.clock, sleep=fake.sleep):
        times.append(fake.now - 100.0)
        if line.position == 1:
            fake.now += 1.2  # the consumer stalls for more than two intervals
    # Lines 2 and 3 are overdue and come at once; then the original schedule resumes.
    assert times == pytest.approx([0.0, 0.5, 1.7, 1.7, 2.0, 2.5])


def test_default_rate_is_the_recorded_scan_rate() -> None:
    scan = make_scan(lines=3, points=8)
    assert line_rate(scan) == pytest.approx(scan.meta["ScanRate"])
    fake = FakeTime()
    list(replay_lines(scan, clock=fake.clock, sleep=fake.sleep))
    assert fake.now - 100.0 == pytest.approx(2 / scan.meta["ScanRate"])


@pytest.mark.parametrize("rate", [0.0, math.inf])
def test_rate_zero_or_inf_is_unpaced(rate: float) -> None:
    fake = FakeTime()
    lines = list(
        replay_lines(make_scan(lines=5, points=8), rate, clock=fake.clock, sleep=fake.sleep)
    )
    assert len(lines) == 5 and fake.sleeps == []


def test_scan_without_rate_is_unpaced_and_negative_rate_is_refused() -> None:
    scan = make_scan(lines=3, points=8)
    del scan.meta["ScanRate"]
    assert line_rate(scan) == math.inf
    with pytest.raises(ValueError, match="replay rate"):
        line_rate(scan, -1.0)


def test_items_end_with_end_of_scan() -> None:
    scan = make_scan(lines=4, points=8, scan_id="ends")
    items = list(replay_items(scan, 0))
    assert all(isinstance(item, Line) for item in items[:-1])
    assert items[-1] == EndOfScan("ends")


def test_replay_source_delivers_everything_then_stops_promptly() -> None:
    sink = Collector()
    fast = ReplaySource(make_scan(lines=20, points=8), sink, rate=0)
    fast.start()
    assert wait_for(lambda: len(sink.of(EndOfScan)) == 1)
    assert [line.position for line in sink.lines] == list(range(20))
    assert fast.stop(1.0)
    assert fast.counters.snapshot()["lines"] == 20

    slow_sink = Collector()
    slow = ReplaySource(make_scan(lines=20, points=8), slow_sink, rate=0.01)
    slow.start()
    assert wait_for(lambda: len(slow_sink.lines) == 1)
    assert slow.stop(1.0)  # interrupts a 100 s wait at once
    assert len(slow_sink.lines) == 1 and slow_sink.of(EndOfScan) == []
