"""When is a file that Igor is writing safe to read? Shared by the folder watcher and the scope.

A file is ready when its size and mtime have been stable for `settle` seconds, its headers say
it is whole (`ibw.check_complete`) and it reads. Windows' PermissionError (Igor still holds the
file) and a still-growing file mean "later", never an error. A file that stays incomplete
without changing for `give_up` seconds, or is whole but unreadable, is broken: reported once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from spmwatch.ibw import IbwError, IncompleteError, check_complete
from spmwatch.model import Scan

log = structlog.get_logger("spmwatch.sources")

Stamp = tuple[int, int]  # (size, mtime_ns): what "this version of the file" means


def stamp_of(stat: os.stat_result) -> Stamp:
    return (stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class Ready:
    path: Path
    stamp: Stamp
    scan: Scan


@dataclass(frozen=True)
class Broken:
    path: Path
    stamp: Stamp
    kind: str
    reason: str


@dataclass
class _Pending:
    stamp: Stamp
    stable_since: float
    told_incomplete: bool = False  # the wait was logged: once per file, not per chunk copied


class Readiness:
    """Tracks candidate files until each is ready (read once) or known broken."""

    def __init__(
        self,
        read: Callable[[Path], Scan],
        *,
        settle: float = 0.5,
        give_up: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self.settle = settle
        self.give_up = give_up
        self._clock = clock
        self._pending: dict[Path, _Pending] = {}
        self.busy = 0  # PermissionError retries, for the counters

    def add(self, path: Path) -> None:
        """Start (or keep) watching `path`; its settle time starts at its next change."""
        self._pending.setdefault(path, _Pending((-1, -1), self._clock()))

    def forget(self, path: Path) -> None:
        self._pending.pop(path, None)

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: Path) -> bool:
        return path in self._pending

    def poll_all(self) -> list[Ready | Broken]:
        """Check every candidate once; the ones returned (and vanished files) are dropped."""
        return [result for path in list(self._pending) if (result := self.poll(path))]

    def poll(self, path: Path) -> Ready | Broken | None:
        """Ready or Broken when `path` is settled (and stop tracking it), else None (later)."""
        self.add(path)
        try:
            outcome = self._check(path, self._pending[path])
        except FileNotFoundError:
            outcome = None
            self.forget(path)
        except PermissionError:
            self.busy += 1
            outcome = None
        if outcome is not None:
            self.forget(path)
        return outcome

    def _check(self, path: Path, pending: _Pending) -> Ready | Broken | None:
        now = self._clock()
        stamp = stamp_of(path.stat())
        if stamp != pending.stamp:
            pending.stamp, pending.stable_since = stamp, now
            if self.settle > 0:
                return None
        unchanged_for = now - pending.stable_since
        if unchanged_for < self.settle:
            return None
        try:
            completeness = check_complete(path)
            if not completeness.complete:
                raise completeness.error(path)
            scan = self._read(path)
        except IncompleteError as exc:
            if unchanged_for >= self.give_up:
                reason = f"still incomplete after {unchanged_for:.0f} s unchanged: {exc.reason}"
                return Broken(path, stamp, exc.kind, reason)
            if not pending.told_incomplete:  # said once, so a stuck copy is not a mystery
                pending.told_incomplete = True
                log.info(
                    "file_incomplete_waiting",
                    file=str(path),
                    reason=exc.reason,
                    broken_after_s=self.give_up,
                )
            return None
        except IbwError as exc:
            return Broken(path, stamp, exc.kind, exc.reason)
        if stamp_of(path.stat()) != stamp:
            return None  # rewritten while we read it: wait for the new version to settle
        return Ready(path, stamp, scan)
