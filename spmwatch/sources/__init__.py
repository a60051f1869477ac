"""Ingest sources: everything that turns the microscope's output into items for the scorer.

Every source delivers items to one `sink(item)` callable from its own thread. The daemon passes
a bounded queue's `put`, so a slow scorer blocks the source instead of losing data. Items are
`spmwatch.model.Line`, `spmwatch.model.LineBlock` (consecutive lines of one scan that arrived
together), `spmwatch.protocol.EndOfScan`, `FrameFile` (a whole saved frame) and `SourceError`
(something the operator should hear about; the source keeps running).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spmwatch.model import Scan

Sink = Callable[[object], None]

# Distinct rejection reasons kept per source: a hostile producer cannot grow the dict forever.
MAX_REASONS = 32


def _no_acknowledgement(handled: bool) -> None:
    """For frames whose source keeps no record of them (tests, one-off readers)."""


@dataclass(frozen=True)
class FrameFile:
    """A complete frame file, read once: the folder watcher's unit of work.

    The consumer acknowledges each one, so the watcher records a file as handled only once its
    verdict is out: a crash before that means the file is handed over again after a restart
    (at least once), never that it is lost.
    """

    path: Path
    scan: Scan
    # how messages name the file: its path inside the watched folder ("day2/Image0001.ibw"),
    # since the file name alone does not tell two sub-folders apart
    name: str
    modified: float  # the version read: its mtime, Unix s (the scan instance of its events)
    acknowledge: Callable[[bool], None] = field(
        default=_no_acknowledgement, compare=False, repr=False
    )

    def done(self) -> None:
        """Its verdict (or its error) is published: the source may record it as handled."""
        self.acknowledge(True)

    def defer(self) -> None:
        """Not taken now (the daemon is paused): the source keeps it for `redeliver_deferred`."""
        self.acknowledge(False)


@dataclass(frozen=True)
class SourceError:
    """A problem a source met and survived: `subject` is the file, endpoint or slot concerned;
    `scan_id` the scan it is about, when there is one."""

    source: str
    subject: str
    reason: str
    scan_id: str | None = None


class Counters:
    """Thread-safe event counts of one source, read by the daemon's status and metrics."""

    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(names, 0)
        self._rejected: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def set(self, name: str, value: int) -> None:
        """Set a gauge (a level such as "pending", rather than a running count)."""
        with self._lock:
            self._counts[name] = value

    def reject(self, reason: str) -> None:
        """Count one rejected item under `reason` (reasons past MAX_REASONS fold into "other")."""
        with self._lock:
            if reason not in self._rejected and len(self._rejected) >= MAX_REASONS:
                reason = "other"
            self._rejected[reason] = self._rejected.get(reason, 0) + 1

    def snapshot(self) -> dict[str, object]:
        """`{name: count, ..., "rejected": {reason: count}}`, a copy safe to hand out."""
        with self._lock:
            return {**self._counts, "rejected": dict(self._rejected)}


class SourceThread:
    """Start/stop plumbing shared by the sources: one worker thread and a stop event."""

    name = "source"

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} source already started")
        self._thread = threading.Thread(
            target=self._main, name=f"spmwatch-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the worker to finish and wait up to `timeout` s; True when it has finished."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _main(self) -> None:
        try:
            self._run()
        except Exception as exc:
            # A bug, not bad input: say so loudly (running turns False) instead of dying mute.
            self._emit_error(self.name, f"source stopped: {type(exc).__name__}: {exc}")
            raise

    def _run(self) -> None:
        raise NotImplementedError

    def redeliver_deferred(self) -> None:
        """Hand over again what the consumer deferred (`FrameFile.defer`); most keep none."""

    def _emit_error(self, subject: str, reason: str, scan_id: str | None = None) -> None:
        self._sink(SourceError(self.name, subject, reason, scan_id))
