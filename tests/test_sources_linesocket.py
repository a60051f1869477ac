"""The ZeroMQ line socket with real sockets on loopback and real producer processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from sources_helpers import Collector, test_line, wait_for

from spmwatch.model import Line, LineBlock
from spmwatch.protocol import EndOfScan, ProtocolError, encode_line, valid_scan_id
from spmwatch.sources.linesocket import LineReceiver, LineSender, reason_key

TESTS = Path(__file__).resolve().parent
ANY_PORT = "tcp://127.0.0.1:*"


@pytest.fixture
def receiver() -> Iterator[tuple[LineReceiver, Collector]]:
    sink = Collector()
    recv = LineReceiver(ANY_PORT, sink)
    recv.start()
    yield recv, sink
    assert recv.stop(timeout=5.0)


def _assert_all_arrived_in_order(sink: Collector, n: int) -> None:
    """Lines 0..n-1 then the end arrived, in order, each (a sample of them checked) holding the
    samples `test_line` made for its index."""
    assert wait_for(lambda: len(sink.of(EndOfScan)) == 1, timeout=30)
    lines = sink.lines
    assert [line.index for line in lines] == list(range(n))
    for line in lines[:: max(n // 10, 1)]:
        np.testing.assert_array_equal(
            line.channels["HeightRetrace"], test_line(line.index).channels["HeightRetrace"]
        )
        assert line.source == "socket"


def test_ten_thousand_lines_arrive_in_order(receiver: tuple[LineReceiver, Collector]) -> None:
    recv, sink = receiver
    with LineSender(recv.endpoint) as sender:
        for index in range(10_000):
            sender.send(test_line(index))
        sender.end("restart")
    _assert_all_arrived_in_order(sink, 10_000)
    counts = recv.counters.snapshot()
    assert counts["lines"] == 10_000 and counts["ends"] == 1
    assert counts["duplicates"] == 0 and counts["rejected"] == {}


def test_blocks_arrive_as_lines_and_overlapping_blocks_are_deduplicated(
    receiver: tuple[LineReceiver, Collector],
) -> None:
    recv, sink = receiver
    with LineSender(recv.endpoint) as sender:
        sender.send_lines([test_line(i) for i in range(0, 100)])
        sender.send_lines([test_line(i) for i in range(90, 200)])  # a resend overlapping by 10
        sender.send(test_line(200))
        sender.end("restart")
    _assert_all_arrived_in_order(sink, 201)
    counts = recv.counters.snapshot()
    assert counts["received"] == 4 and counts["lines"] == 201 and counts["duplicates"] == 10
    # a new block is handed on whole, one overlapping lines already here line by line (only
    # the new ones), a line sent alone as a line
    assert [(item.index, item.count) for item in sink.of(LineBlock)] == [(0, 100)]
    assert [line.index for line in sink.of(Line)] == list(range(100, 201))


def _raw(header: dict, *arrays: bytes) -> list[bytes]:
    return [json.dumps(header).encode(), *arrays]


GOOD = {
    "v": 1,
    "scan_id": "bad",
    "line": 0,
    "n_lines": 4,
    "points": 8,
    "channels": ["HeightRetrace"],
    "dtype": "float32",
}
EIGHT = np.zeros(8, "<f4").tobytes()
MALFORMED = {
    "not json": [b"{not json", EIGHT],
    "wrong frame count": _raw(GOOD),
    "wrong length": _raw(GOOD, EIGHT[:-4]),
    "ten times the points": _raw(GOOD, EIGHT * 10),
    "unknown dtype": _raw({**GOOD, "dtype": "complex64"}, EIGHT),
    "bad channel name": _raw({**GOOD, "channels": ["../etc"]}, EIGHT),
    "bad scan id": _raw({**GOOD, "scan_id": "../../x"}, EIGHT),
    "old version": _raw({**GOOD, "v": 0}, EIGHT),
    "line outside scan": _raw({**GOOD, "line": 4}, EIGHT),
    "header not an object": [b"[1, 2]", EIGHT],
}


def test_malformed_messages_are_rejected_counted_and_survived(
    receiver: tuple[LineReceiver, Collector],
) -> None:
    recv, sink = receiver
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(recv.endpoint)
    try:
        for frames in MALFORMED.values():
            push.send_multipart(frames)
        good = test_line(0, scan_id="good", n_lines=4, points=8)
        push.send_multipart(encode_line(good))
        other = test_line(1, scan_id="good", n_lines=4, points=8)
        push.send_multipart(
            encode_line(
                type(other)(
                    **{
                        **other.__dict__,
                        "channels": {"HeightRetrace": other.channels["HeightRetrace"]},
                    }
                )
            )
        )
        push.send_multipart(encode_line(test_line(2, scan_id="good", n_lines=4, points=16)))
        push.send_multipart(encode_line(good))  # a duplicate of line 0
    finally:
        push.close()
        context.term()

    expected_errors = len(MALFORMED) + 2
    assert wait_for(lambda: len(sink.errors) == expected_errors and len(sink.lines) == 1)
    assert wait_for(lambda: recv.counters.snapshot()["duplicates"] == 1)
    assert [line.scan_id for line in sink.lines] == ["good"]
    reasons = [error.reason for error in sink.errors]
    assert all(reason for reason in reasons)
    assert any("not valid JSON" in r for r in reasons)
    assert any("frames" in r for r in reasons)
    assert sum("bytes, expected 32" in r for r in reasons) == 2  # short and 10x frames
    assert any("complex64" in r for r in reasons)
    assert any("channel name" in r for r in reasons)
    assert any("scan_id" in r for r in reasons)
    assert any("version" in r for r in reasons)
    assert any("channels ['HeightRetrace'] differ" in r for r in reasons)
    assert any("16 points" in r for r in reasons)
    assert {error.source for error in sink.errors} == {"socket"}
    # a refused message whose header names a valid scan says which scan it was
    outside = next(e for e in sink.errors if "outside" in e.reason)
    assert outside.scan_id == GOOD["scan_id"]
    assert next(e for e in sink.errors if "not valid JSON" in e.reason).scan_id is None
    counts = recv.counters.snapshot()
    assert sum(counts["rejected"].values()) == expected_errors
    assert counts["received"] == len(MALFORMED) + 4
    # Counted by kind, not by value: the short and the 10x frame share one reason.
    assert max(counts["rejected"].values()) >= 2


def _producer(endpoint: str, first: int, stop: int, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    done = subprocess.run(
        [
            sys.executable,
            str(TESTS / "sources_producer.py"),
            endpoint,
            str(first),
            str(stop),
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sent {first}..{stop - 1}"


def test_producer_restart_loses_nothing_and_drops_resent_lines(
    receiver: tuple[LineReceiver, Collector],
) -> None:
    recv, sink = receiver
    _producer(recv.endpoint, 0, 5_000)
    # Everything the first producer sent was acknowledged (sent, then closed with linger).
    assert wait_for(lambda: len(sink.lines) == 5_000, timeout=30)
    # The restarted producer resends its last 10 lines before carrying on.
    _producer(recv.endpoint, 4_990, 10_000, "--end")
    assert wait_for(lambda: len(sink.of(EndOfScan)) == 1, timeout=30)
    assert [line.index for line in sink.lines] == list(range(10_000))
    last = sink.lines[-1]
    np.testing.assert_array_equal(
        last.channels["PhaseRetrace"], test_line(9_999).channels["PhaseRetrace"]
    )
    counts = recv.counters.snapshot()
    assert counts["duplicates"] == 10
    assert counts["lines"] == 10_000 and counts["received"] == 10_011


def test_repeated_end_is_not_delivered_twice(receiver: tuple[LineReceiver, Collector]) -> None:
    recv, sink = receiver
    with LineSender(recv.endpoint) as sender:
        sender.send(test_line(0, scan_id="twice", n_lines=2))
        sender.end("twice")
        sender.end("twice")
        sender.send(test_line(0, scan_id="next", n_lines=2))
    assert wait_for(lambda: len(sink.lines) == 2)
    assert sink.of(EndOfScan) == [EndOfScan("twice")]
    assert recv.counters.snapshot()["orphan_ends"] == 1


def test_send_without_receiver_times_out() -> None:
    sender = LineSender("tcp://127.0.0.1:9", send_timeout=0.2, linger=0)
    try:
        with pytest.raises(TimeoutError, match=r"no receiver at tcp://127\.0\.0\.1:9"):
            sender.send(test_line(0))
    finally:
        sender.close()


def test_busy_port_fails_at_start(receiver: tuple[LineReceiver, Collector]) -> None:
    recv, _ = receiver
    other = LineReceiver(recv.endpoint, Collector())
    with pytest.raises(OSError, match="cannot bind the line socket"):
        other.start()


def test_reason_keys_group_by_kind_and_stay_readable() -> None:
    """Reasons are metrics labels: values out (so they group), whole words, a bounded length."""
    keys = []
    for bad in ("../etc", "x y"):
        with pytest.raises(ProtocolError) as info:
            valid_scan_id(bad)
        keys.append(reason_key(str(info.value)))
    # the values given go, the rule stays readable (it had been "? must be ? letters, ?, ? or ?")
    rule = "scan_id ? must be at most ? letters, digits, dots, underscores or hyphens, ..."
    assert keys == [rule, rule]
    with pytest.raises(ProtocolError) as info:
        encode_line(test_line(0), dtype="complex64")
    assert reason_key(str(info.value)) == "dtype ? is not one of float32, float64, int16, int32"
    # every value given is one: "got True" and "got nan" had each made a key of their own
    for given in ("'5'", "True", "None", "nan", "2.5"):
        assert reason_key(f"line must be an integer, got {given}") == (
            "line must be an integer, got ?"
        )
    dtype = reason_key("channel 'H' has 1024 bytes, expected 2048 (512 points of float32)")
    assert dtype == "channel ? has ? bytes, expected ? (? points of float32)"  # words stay whole
    # the channel is quoted, so producers' own names do not make a key each
    assert reason_key("channel 'Amp1' has 8 bytes, expected 16 (2 points of float64)") == (
        "channel ? has ? bytes, expected ? (? points of float64)"
    )
    # the field a message names stays: "? = ? is outside ?..?" told an operator nothing
    assert reason_key("count = 300 is outside 1..256") == "count = ? is outside ?"
    text = "meta: " + "values must be JSON numbers " * 5
    long = reason_key(text)
    assert len(long) <= 80 and long.endswith(" ...")
    assert text.startswith(long[: -len(" ...")] + " ")  # cut between words
