"""Replay a saved frame line by line, as the microscope scanned it, at its own pace or faster.

Pacing follows an absolute schedule (line k is due `k / rate` seconds after the first), so a
slow consumer or a late wake-up never accumulates drift: later lines simply catch up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

from spmwatch.model import Line, Scan
from spmwatch.protocol import EndOfScan
from spmwatch.sources import Counters, Sink, SourceThread


def line_rate(scan: Scan, rate: float | None = None) -> float:
    """Lines per second to replay at: `rate`, else the recorded ScanRate; inf = no pacing.

    Asylum's ScanRate counts trace+retrace pairs per second, which is image lines per second.
    A scan without a recorded rate replays as fast as possible.
    """
    if rate is None:
        rate = scan.scan_rate
    if rate < 0 or math.isnan(rate):
        raise ValueError(f"replay rate must be >= 0 lines/s, got {rate}")
    return math.inf if rate == 0 else float(rate)


def replay_lines(
    scan: Scan,
    rate: float | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[Line]:
    """Yield the scan's lines in acquisition order, line k at `k / rate` s after the first."""
    interval = 1.0 / line_rate(scan, rate)
    start: float | None = None
    for k, line in enumerate(scan.lines()):
        if interval > 0:
            if start is None:
                start = clock()
            delay = start + k * interval - clock()
            if delay > 0:
                sleep(delay)
        yield line


def replay_items(
    scan: Scan,
    rate: float | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[Line | EndOfScan]:
    """`replay_lines`, then the `EndOfScan` a live producer would send."""
    yield from replay_lines(scan, rate, clock=clock, sleep=sleep)
    yield EndOfScan(scan.scan_id)


class ReplaySource(SourceThread):
    """A scan replayed into a sink from a thread, like the live sources (demos, `spmwatch demo`)."""

    name = "replay"

    def __init__(self, scan: Scan, sink: Sink, *, rate: float | None = None) -> None:
        super().__init__(sink)
        self.scan = scan
        self.rate = line_rate(scan, rate)
        self.counters = Counters("lines", "ends")

    def _run(self) -> None:
        # Sleeping on the stop event makes stop() interrupt a slow replay at once.
        for item in replay_items(self.scan, self.rate, sleep=self._stop.wait):
            if self._stop.is_set():
                return
            self._sink(item)
            self.counters.add("ends" if isinstance(item, EndOfScan) else "lines")
