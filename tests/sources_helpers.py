"""Helpers for the ingest-source tests: polling with a deadline, a collecting sink, test lines."""

from __future__ import annotations

import threading

import numpy as np

from spmwatch.model import Line, LineBlock
from spmwatch.sources import SourceError
from tests.polling import wait_for  # noqa: F401 (re-exported for the tests)


class Collector:
    """A sink that keeps everything it is given, split by type, safe to call from a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[object] = []

    def __call__(self, item: object) -> None:
        with self._lock:
            self.items.append(item)

    def of(self, kind: type) -> list:
        with self._lock:
            return [item for item in self.items if isinstance(item, kind)]

    @property
    def lines(self) -> list[Line]:
        """Every line delivered, those that came in a `LineBlock` included, in order."""
        with self._lock:
            items = list(self.items)
        lines: list[Line] = []
        for item in items:
            if isinstance(item, LineBlock):
                lines.extend(item.lines())
            elif isinstance(item, Line):
                lines.append(item)
        return lines

    @property
    def errors(self) -> list[SourceError]:
        return self.of(SourceError)


def test_line(
    index: int, *, scan_id: str = "restart", n_lines: int = 10_000, points: int = 32
) -> Line:
    """Line `index` of a synthetic scan whose values encode the index (so order is checkable)."""
    ramp = np.arange(points, dtype=np.float32)
    return Line(
        scan_id=scan_id,
        index=index,
        position=index,
        n_lines=n_lines,
        channels={
            "HeightRetrace": ramp + np.float32(index),
            "PhaseRetrace": -ramp - np.float32(index),
        },
        meta={"ScanRate": 1.0},
        source="test",
    )


test_line.__test__ = False  # type: ignore[attr-defined]  # a builder, not a pytest test
