"""The ZeroMQ line socket: any producer PUSHes lines, the daemon PULLs them (docs/protocol.md).

The receiver checks every message with `protocol.decode_line_message`, drops lines it has
already seen in the current scan (so a restarted producer may safely resend its last lines),
rejects a line whose channels or size differ from the scan's first line, and refuses a scan
declared larger than `MAX_SCAN_BYTES` (the daemon keeps an open scan's lines). Nothing a
producer sends can stop it: bad messages become counted `SourceError`s.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import zmq

from spmwatch.model import Line, LineBlock
from spmwatch.protocol import (
    LINES_ENDPOINT,
    MAX_FRAME_BYTES,
    MAX_HEADER_BYTES,
    MAX_SCAN_BYTES,
    EndOfScan,
    ProtocolError,
    decode_line_message,
    encode_end,
    encode_line,
    encode_lines,
    valid_scan_id,
)
from spmwatch.sources import Counters, Sink, SourceThread

# Scans in progress at once (several producers); the oldest is forgotten beyond this.
MAX_OPEN_SCANS = 16
_POLL_MS = 100
RECEIVE_HWM = 256
# quoted values, standalone numbers (1-64 and 1..256 are one value) and Python's words for
# values (True, None, nan); digits inside a word (float32, utf-8) are part of the word and stay.
# So error texts quote the values they were given and nothing else.
_NUMBER = r"-?\d+(?:\.\d+)?"
_VALUES = re.compile(
    rf"'[^']*'|\"[^\"]*\"|(?<![\w.]){_NUMBER}(?:(?:-|\.\.){_NUMBER})?(?!\w)"
    r"|\b(?:True|False|None|nan|inf)\b"
)
REASON_CHARS = 80  # a reason key (a metrics label) is cut at a word boundary before this


def reason_key(text: str) -> str:
    """Reduce an error text to its kind, so counts group by reason rather than by value."""
    key = _VALUES.sub("?", text)
    if len(key) > REASON_CHARS:
        key = key[: REASON_CHARS - 4].rsplit(" ", 1)[0] + " ..."
    return key


def _scan_named(frames: list[bytes]) -> str | None:
    """The valid scan_id a refused message's header names, if it can be read: an operator
    must be able to tell which producer or scan misbehaves."""
    try:
        header = json.loads(frames[0])
        return valid_scan_id(header.get("scan_id"))
    except (IndexError, ValueError, AttributeError, ProtocolError):
        return None


@dataclass
class _OpenScan:
    channels: frozenset[str]
    points: int
    n_lines: int
    seen: bytearray
    last_position: int = -1


class LineReceiver(SourceThread):
    """PULL socket bound at `endpoint` (normally `LINES_ENDPOINT`), feeding `sink`.

    Delivers `Line`s, `LineBlock`s (a block message whose lines all passed the checks) and
    `EndOfScan`s; malformed or inconsistent messages become `SourceError`s.

    Bind happens in `start()`, so a busy port fails there; `endpoint` then holds the actual
    address (useful with `tcp://127.0.0.1:*`).
    """

    name = "socket"

    def __init__(self, endpoint: str, sink: Sink, *, context: zmq.Context | None = None) -> None:
        super().__init__(sink)
        self.endpoint = endpoint
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket: zmq.Socket | None = None
        self._scans: OrderedDict[str, _OpenScan] = OrderedDict()
        # Scans refused as too large, so their later lines are counted without a report each.
        self._refused: OrderedDict[str, None] = OrderedDict()
        self.counters = Counters(
            "received", "lines", "ends", "duplicates", "gaps", "orphan_ends", "evicted"
        )

    def start(self) -> None:
        socket = self._context.socket(zmq.PULL)
        socket.setsockopt(zmq.LINGER, 0)
        # A peer sending a frame larger than any valid one is disconnected before we allocate it.
        socket.setsockopt(zmq.MAXMSGSIZE, max(MAX_HEADER_BYTES, MAX_FRAME_BYTES))
        # Messages ZeroMQ queues for us before the producer is held back: with blocks of lines
        # a message can be large, and the daemon's own inbox is the buffer that matters.
        socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        try:
            socket.bind(self.endpoint)
        except zmq.ZMQError as exc:
            socket.close()
            raise OSError(f"cannot bind the line socket to {self.endpoint}: {exc}") from exc
        self.endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._socket = socket
        super().start()

    def _run(self) -> None:
        socket = self._socket
        assert socket is not None
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not dict(poller.poll(_POLL_MS)):
                    continue
                self._handle(socket.recv_multipart())
        finally:
            socket.close()
            if self._own_context:
                self._context.term()

    def _handle(self, frames: list[bytes]) -> None:
        self.counters.add("received")
        try:
            item = decode_line_message(frames, source=self.name)
        except ProtocolError as exc:
            self._reject(reason_key(str(exc)), f"malformed message: {exc}", _scan_named(frames))
            return
        if isinstance(item, EndOfScan):
            self._end(item)
        elif item.count == 1:
            [line] = item.lines()
            if self._accept(line):
                self._sink(line)
        else:
            self._block(item)

    def _end(self, end: EndOfScan) -> None:
        self._refused.pop(end.scan_id, None)  # after its end, the id may start a new scan
        if self._scans.pop(end.scan_id, None) is None:
            # A repeated end (idempotent resend) or an end for lines never seen: nothing to close.
            self.counters.add("orphan_ends")
            return
        self.counters.add("ends")
        self._sink(end)

    def _accept(self, line: Line) -> bool:
        """Check a line against its scan (consistency, duplicates, gaps) and count it."""
        scan = self._scan_for(line, f"line {line.index}")
        if scan is None:
            return False
        if scan.seen[line.index]:
            self.counters.add("duplicates")
            return False
        scan.seen[line.index] = 1
        self._arrived(scan, line.position, 1)
        return True

    def _block(self, block: LineBlock) -> None:
        """Hand on a block whole when none of its lines is here yet (the usual case); a resend
        overlapping lines already received goes line by line, so only the new ones pass."""
        where = f"lines {block.index}..{block.indices()[-1]}"
        scan = self._scan_for(block, where)
        if scan is None:
            return
        low = min(block.index, block.indices()[-1])
        if scan.seen.find(1, low, low + block.count) >= 0:
            for line in block.lines():
                if self._accept(line):
                    self._sink(line)
            return
        scan.seen[low : low + block.count] = b"\x01" * block.count
        self._arrived(scan, block.position, block.count)
        self._sink(block)

    def _arrived(self, scan: _OpenScan, position: int, count: int) -> None:
        if position > scan.last_position + 1:
            self.counters.add("gaps")
        scan.last_position = max(scan.last_position, position + count - 1)
        self.counters.add("lines", count)

    def _scan_for(self, lines: Line | LineBlock, where: str) -> _OpenScan | None:
        """The scan these lines belong to, opened on its first lines; None (rejected and
        reported) when their channels or size differ from its first lines' or it is refused."""
        scan = self._scans.get(lines.scan_id)
        if scan is None:
            return self._open(lines)
        if frozenset(lines.channels) != scan.channels:
            self._reject(
                "channels differ from the scan's first line",
                f"scan {lines.scan_id} {where}: channels {sorted(lines.channels)} "
                f"differ from the scan's first line {sorted(scan.channels)}",
                lines.scan_id,
            )
            return None
        if (lines.points, lines.n_lines) != (scan.points, scan.n_lines):
            self._reject(
                "size differs from the scan's first line",
                f"scan {lines.scan_id} {where}: {lines.points} points x {lines.n_lines} "
                f"lines differ from the scan's first line ({scan.points} x {scan.n_lines})",
                lines.scan_id,
            )
            return None
        return scan

    def _open(self, line: Line | LineBlock) -> _OpenScan | None:
        """Start following a scan, unless it is declared too large to hold (refused: None)."""
        size = line.n_lines * line.points * len(line.channels) * 4
        if size > MAX_SCAN_BYTES:
            key = f"scan larger than {MAX_SCAN_BYTES // 2**20} MiB"
            if line.scan_id in self._refused:
                self.counters.reject(key)  # reported with the scan's first line
                return None
            self._refused[line.scan_id] = None
            if len(self._refused) > MAX_OPEN_SCANS:
                self._refused.popitem(last=False)
            self._reject(
                key,
                f"scan {line.scan_id}: {line.n_lines} lines x {line.points} points x "
                f"{len(line.channels)} channels is {size / 2**20:.0f} MiB as float32, more than "
                f"{MAX_SCAN_BYTES // 2**20} MiB; its lines are refused",
                line.scan_id,
            )
            return None
        if len(self._scans) >= MAX_OPEN_SCANS:
            self._scans.popitem(last=False)
            self.counters.add("evicted")
        scan = _OpenScan(
            channels=frozenset(line.channels),
            points=line.points,
            n_lines=line.n_lines,
            seen=bytearray(line.n_lines),
        )
        self._scans[line.scan_id] = scan
        return scan

    def _reject(self, key: str, reason: str, scan_id: str | None = None) -> None:
        self.counters.reject(key)
        self._emit_error(self.endpoint, reason, scan_id)


class LineSender:
    """PUSH side of the line socket, for producers (replay, tests, bridges to other software).

    `send` blocks while no receiver is connected or its queue is full (backpressure) or, with
    `send_timeout`, raises TimeoutError. `close` waits up to `linger` seconds (None: until
    delivered) for every queued message to reach the receiver: only then is a line
    "acknowledged".
    """

    def __init__(
        self,
        endpoint: str = LINES_ENDPOINT,
        *,
        dtype: str = "float32",
        linger: float | None = None,
        send_timeout: float | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._dtype = dtype
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        # Queue only to a receiver that is really connected: with none, send waits (or times
        # out) instead of filling a queue that close() would silently throw away.
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        self._socket.setsockopt(zmq.LINGER, -1 if linger is None else int(linger * 1000))
        if send_timeout is not None:
            self._socket.setsockopt(zmq.SNDTIMEO, int(send_timeout * 1000))
        self._send_timeout = send_timeout
        self._socket.connect(endpoint)

    def send(self, line: Line) -> None:
        self._send(encode_line(line, self._dtype), f"line {line.index} of {line.scan_id}")

    def send_lines(self, lines: Sequence[Line]) -> None:
        """Send consecutive lines of one scan as one block message (cheaper per line)."""
        first = lines[0]
        what = f"lines {first.index}..{lines[-1].index} of {first.scan_id}"
        self._send(encode_lines(lines, self._dtype), what)

    def end(self, scan_id: str) -> None:
        self._send(encode_end(scan_id), f"the end of {scan_id}")

    def _send(self, frames: list[bytes], what: str) -> None:
        try:
            self._socket.send_multipart(frames)
        except zmq.Again as exc:
            raise TimeoutError(
                f"no receiver at {self.endpoint} took {what} within {self._send_timeout} s "
                "(a daemon binds its line socket once warm: `spmwatch ctl status` says "
                "whether it runs and is serving)"
            ) from exc

    def close(self) -> None:
        """Close, waiting (up to `linger`) until everything sent has been handed over."""
        if self._socket.closed:
            return
        self._socket.close()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> LineSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
