"""Follow aespm's scope ring: Igor rewrites `Scope0.ibw .. Scope19.ibw` as the scan runs.

aespm's Igor user function `OverwriteZSensorScope()` runs on each image update: it bumps a
counter modulo 20 and saves the live scope waves as one `nop x 8` wave into `Scope<k>.ibw`.
Its columns are, in order: ZSensor, Amplitude, Phase and Height, each trace then retrace
(`DEFAULT_CHANNELS`; `[scope] channels` if your Igor function saves another set or order).

The files carry no line number, so the follower keeps its own: it reads the slots in ring
order, skips a rewrite whose data did not change (an image update without a new line),
counts and reports skipped slots as gaps (the line index jumps over them), and cuts the stream
into frames of `n_lines` lines (`[scope] lines`; scan ids `<scan_id>-1`, `<scan_id>-2`, ...).
A slot is read as soon as it is whole (its headers' sizes, then its stamp checked again after
the read), not after a settle time: waiting 50 ms for each let Igor lap the ring above ~20
lines/s. A follower that falls a whole lap (n_slots lines) behind Igor cannot tell; a slot is
read in about a millisecond. A slot still incomplete after `give_up` s is reported broken and
skipped, so one bad file holds the ring for seconds, not the 30 s a saved frame may take.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spmwatch.ibw import read_scan
from spmwatch.model import Line, Scan
from spmwatch.protocol import EndOfScan, valid_scan_id
from spmwatch.sources import Counters, Sink, SourceThread
from spmwatch.sources.readiness import Broken, Readiness, Stamp, stamp_of

DEFAULT_CHANNELS: tuple[str, ...] = (
    "ZSensorTrace",
    "ZSensorRetrace",
    "AmplitudeTrace",
    "AmplitudeRetrace",
    "PhaseTrace",
    "PhaseRetrace",
    "HeightTrace",
    "HeightRetrace",
)


def scope_channels(scan: Scan, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Split a scope wave (read as one channel of `len(names)` rows) into named lines."""
    shapes = {name: data.shape for name, data in scan.channels.items()}
    if len(scan.channels) != 1 or scan.n_lines != len(names):
        raise ValueError(
            f"expected one nop x {len(names)} scope wave, found channels {shapes} "
            "(set [scope] channels to the rows your Igor function saves)"
        )
    rows = next(iter(scan.channels.values()))
    return {name: rows[i] for i, name in enumerate(names)}


def digest(channels: dict[str, np.ndarray]) -> bytes:
    """A cheap fingerprint of a line's data, to spot a slot saved again without a new line."""
    h = hashlib.blake2b(digest_size=16)
    for data in channels.values():
        h.update(np.ascontiguousarray(data).tobytes())
    return h.digest()


class ScopeFollower(SourceThread):
    """Emits a `Line` for each new scope file, in ring order, with increasing line index."""

    name = "scope"

    def __init__(
        self,
        buffer_dir: str | Path,
        sink: Sink,
        *,
        scan_id: str = "scope",
        n_slots: int = 20,
        poll: float = 0.05,
        channel_names: Sequence[str] = DEFAULT_CHANNELS,
        n_lines: int = 256,
        settle: float = 0.0,
        give_up: float = 2.0,
    ) -> None:
        super().__init__(sink)
        self.buffer_dir = Path(buffer_dir)
        self.scan_id = valid_scan_id(scan_id)
        self.n_slots = n_slots
        self.poll = poll
        self.channel_names = tuple(channel_names)
        self.n_lines = n_lines
        # a slot is a samples x 8 table, whatever its columns are labelled
        self._readiness = Readiness(
            functools.partial(read_scan, table=True), settle=settle, give_up=give_up
        )
        self._stamps: list[Stamp | None] = [None] * n_slots
        self._expected: int | None = None
        self._last_digest: bytes | None = None
        self._frame = 1
        self._index = 0
        self.counters = Counters("lines", "frames", "duplicates", "gaps", "skipped", "broken")

    def slot(self, k: int) -> Path:
        return self.buffer_dir / f"Scope{k}.ibw"

    @property
    def current_scan_id(self) -> str:
        return f"{self.scan_id}-{self._frame}"

    def start(self) -> None:
        """Remember the ring as it is: only files written after start() are new lines."""
        if not self.buffer_dir.is_dir():
            self._emit_error(str(self.buffer_dir), "scope folder missing; waiting for it")
        stamps = [self._stamp(k) for k in range(self.n_slots)]
        self._stamps = stamps
        written = [k for k in range(self.n_slots) if stamps[k] is not None]
        if written:
            newest = max(written, key=lambda k: stamps[k][1])  # type: ignore[index]
            self._expected = (newest + 1) % self.n_slots
        super().start()

    def _stamp(self, k: int) -> Stamp | None:
        try:
            return stamp_of(self.slot(k).stat())
        except OSError:
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            while self._step():
                pass

    def _step(self) -> bool:
        """Handle the next slot in ring order if it is ready; True when there may be more."""
        changed = [k for k in range(self.n_slots) if self._changed(k)]
        if not changed:
            return False
        if self._expected is None:
            self._expected = min(changed, key=lambda k: (self._stamp(k) or (0, 0))[1])
        k = self._next_written(changed)
        result = self._readiness.poll(self.slot(k))
        if result is None:
            return False
        self._stamps[k] = result.stamp
        self._expected = (k + 1) % self.n_slots
        try:
            if isinstance(result, Broken):
                raise ValueError(result.reason)
            channels = scope_channels(result.scan, self.channel_names)
        except ValueError as exc:
            # Igor saved a line here that cannot be read: lost, like a skipped slot.
            self.counters.add("broken")
            self._emit_error(str(self.slot(k)), str(exc), self.current_scan_id)
            self._advance(1)
            return True
        self._line(k, channels)
        return True

    def _changed(self, k: int) -> bool:
        stamp = self._stamp(k)
        return stamp is not None and stamp != self._stamps[k]

    def _next_written(self, changed: list[int]) -> int:
        """The expected slot, or past a gap the first rewritten slot after it (gap counted)."""
        expected = self._expected
        assert expected is not None
        for skip in range(self.n_slots):
            k = (expected + skip) % self.n_slots
            if k in changed:
                if skip:
                    self._gap(skip, k)
                    self._expected = k
                return k
        raise AssertionError("a changed slot exists")

    def _gap(self, skipped: int, k: int) -> None:
        self.counters.add("gaps")
        self.counters.add("skipped", skipped)
        self._emit_error(
            str(self.slot(k)),
            f"gap: {skipped} scope slot(s) skipped before Scope{k}; {skipped} line(s) lost",
            self.current_scan_id,
        )
        self._advance(skipped)

    def _line(self, k: int, channels: dict[str, np.ndarray]) -> None:
        fingerprint = digest(channels)
        if fingerprint == self._last_digest:
            self.counters.add("duplicates")
            return
        self._last_digest = fingerprint
        self._sink(
            Line(
                scan_id=self.current_scan_id,
                index=self._index,
                position=self._index,
                n_lines=self.n_lines,
                channels=channels,
                meta={"ScopeSlot": k},
                source=self.name,
            )
        )
        self.counters.add("lines")
        self._advance(1)

    def _advance(self, lines: int) -> None:
        """Move the line index on; a full frame ends its scan and starts the next one."""
        self._index += lines
        while self._index >= self.n_lines:
            self._sink(EndOfScan(self.current_scan_id))
            self.counters.add("frames")
            self._frame += 1
            self._index -= self.n_lines
