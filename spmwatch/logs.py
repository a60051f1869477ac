"""structlog set-up: one JSON object per line for journald and log shippers, colours for people.

Under systemd stdout is not a terminal, so "auto" picks JSON and journald stores each event as
one line that `jq` can read; on a terminal the same events render as aligned console text.
Standard-library `logging` records (from libraries) go through the same renderer.

Writing is line-buffered only for warnings and worse: an info or debug line is flushed when
`flush_interval` has passed since the last flush, or by `flush()` (the daemon calls it from its
main loop). A flush is a write system call, which releases the GIL; flushing every "frame" and
"scan_opened" line in a burst handed the GIL to the socket thread ~300 times a second.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Literal

import structlog

Format = Literal["auto", "json", "console"]


class LineWriter:
    """A structlog logger writing each rendered event as a line; warnings and worse are
    flushed at once, the rest at most every `flush_interval` seconds (0: every line)."""

    def __init__(self, stream: Any, flush_interval: float = 0.0) -> None:
        self._stream = stream
        self._interval = flush_interval
        self._lock = threading.Lock()
        self._flushed = time.monotonic()

    def _write(self, message: str, urgent: bool) -> None:
        with self._lock:
            self._stream.write(message + "\n")
            now = time.monotonic()
            if urgent or now - self._flushed >= self._interval:
                self._stream.flush()
                self._flushed = now

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()
            self._flushed = time.monotonic()

    def info(self, message: str) -> None:
        self._write(message, False)

    def warning(self, message: str) -> None:
        self._write(message, True)

    debug = msg = info
    warn = error = err = critical = exception = fatal = failure = log = warning


_writer: LineWriter | None = None


def flush() -> None:
    """Write out the log lines still buffered (cheap when there are none)."""
    if _writer is not None:
        _writer.flush()


def setup_logging(
    level: str = "info", fmt: Format = "auto", stream: Any = None, flush_interval: float = 0.0
) -> None:
    """Configure structlog and stdlib logging to write to `stream` (stdout by default);
    `flush_interval` > 0 buffers info and debug lines that long (see the module docstring)."""
    global _writer
    stream = stream or sys.stdout
    writer = _writer = LineWriter(stream, flush_interval)
    numeric = logging.getLevelName(level.upper())
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if fmt == "json" else _keep,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_args: writer,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))  # library debug output (numba) drowns ours


def _keep(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """ConsoleRenderer formats exceptions itself; this stands in for format_exc_info there."""
    return event


class Throttle:
    """At most `burst` reports per key in each `window` seconds; the rest are held back and
    counted, and the next report let through says how many. A broken producer repeating one
    bad message thousands of times a second must neither flood the journal and the
    subscribers nor hide that it happened."""

    MAX_KEYS = 1000  # keys from a flood of distinct ones: bound the memory

    def __init__(
        self, burst: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.window = window
        self._clock = clock
        self._keys: dict[Hashable, list[float]] = {}  # key -> [window start, reports, held]

    def admit(self, key: Hashable) -> int | None:
        """None to hold this report back; else how many were held back since the last one
        let through (0 as a rule)."""
        now = self._clock()
        entry = self._keys.get(key)
        if entry is None or now - entry[0] >= self.window:
            held = int(entry[2]) if entry is not None else 0
            if entry is None and len(self._keys) >= self.MAX_KEYS:
                self._keys.clear()
            self._keys[key] = [now, 1, 0]
            return held
        if entry[1] < self.burst:
            entry[1] += 1
            return 0
        entry[2] += 1
        return None

    def overdue(self) -> list[tuple[Hashable, int]]:
        """Keys whose window has ended with reports held back, and how many (counted once):
        a flood that simply stops is still reported."""
        now = self._clock()
        due = []
        for key, entry in list(self._keys.items()):
            if entry[2] and now - entry[0] >= self.window:
                due.append((key, int(entry[2])))
                del self._keys[key]
        return due
