"""Log lines reach the stream: warnings at once, info lines at the flush interval or on
`flush()` (through a real pipe, as stdout is under systemd or a supervisor)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import pytest
import structlog

from spmwatch import logs


@pytest.fixture
def pipe() -> Iterator[tuple[int, object]]:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    with open(write_end, "w") as stream:  # block-buffered, like stdout into a pipe
        yield read_end, stream
    os.close(read_end)


def arrived(read_end: int) -> list[str]:
    try:
        return os.read(read_end, 1 << 16).decode().splitlines()
    except BlockingIOError:
        return []


def test_info_waits_for_the_interval_or_a_flush_and_warnings_go_at_once(pipe) -> None:
    read_end, stream = pipe
    writer = logs.LineWriter(stream, flush_interval=3600)
    writer.info("first")  # the first flush is an interval after the writer was made
    assert arrived(read_end) == []
    writer.warning("second")
    assert arrived(read_end) == ["first", "second"]
    writer.info("third")
    assert arrived(read_end) == []
    writer.flush()
    assert arrived(read_end) == ["third"]


def test_no_interval_writes_every_line_through(pipe) -> None:
    read_end, stream = pipe
    writer = logs.LineWriter(stream)
    writer.info("one")
    assert arrived(read_end) == ["one"]


def test_structlog_events_are_json_lines_through_the_writer(pipe) -> None:
    read_end, stream = pipe
    logs.setup_logging("info", "json", stream, flush_interval=3600)
    log = structlog.get_logger("test")
    log.info("frame", scan_id="a")
    log.debug("hidden")
    assert arrived(read_end) == []
    log.error("alert", scan_id="b")
    events = [json.loads(text) for text in arrived(read_end)]
    assert [(e["event"], e["scan_id"], e["level"]) for e in events] == [
        ("frame", "a", "info"),
        ("alert", "b", "error"),
    ]
    # back to structlog's and logging's defaults for the other tests
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_throttle_lets_a_burst_through_then_counts_what_it_holds_back() -> None:
    now = [0.0]
    throttle = logs.Throttle(burst=3, window=10.0, clock=lambda: now[0])
    assert [throttle.admit("bad json") for _ in range(5)] == [0, 0, 0, None, None]
    assert throttle.admit("other") == 0  # each key has its own budget
    now[0] = 10.0
    assert throttle.admit("bad json") == 2  # the next window says how many were held back
    assert throttle.admit("bad json") == 0
    for _ in range(4):
        throttle.admit("bad json")
    assert throttle.overdue() == []  # its window is still open
    now[0] = 20.0
    assert throttle.overdue() == [("bad json", 3)]  # a flood that stops is reported, once
    assert throttle.overdue() == []
