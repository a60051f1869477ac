"""The wire codecs in spmwatch.protocol: round trips and a named reason for every bad message."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spmwatch.model import Line, LineBlock
from spmwatch.protocol import (
    TOPIC_ALERT,
    EndOfScan,
    ProtocolError,
    decode_event,
    decode_line_message,
    decode_reply,
    decode_request,
    encode_end,
    encode_event,
    encode_line,
    encode_lines,
    encode_reply,
    encode_request,
)


def _line(points: int = 16, channels: tuple[str, ...] = ("HeightTrace", "HeightRetrace")) -> Line:
    rng = np.random.default_rng(points)
    return Line(
        scan_id="frame_0001",
        index=5,
        position=7,
        n_lines=64,
        channels={name: rng.normal(size=points).astype(np.float32) for name in channels},
        meta={"ScanRate": 1.0016, "ScanDown": 1, "ImagingMode": "AC Mode"},
    )


def _header(frames: list[bytes]) -> dict:
    return json.loads(frames[0])


@given(
    points=st.integers(1, 2048),
    dtype=st.sampled_from(["float32", "float64"]),
    n_channels=st.integers(1, 8),
)
@settings(max_examples=40, deadline=None)
def test_line_round_trip(points: int, dtype: str, n_channels: int) -> None:
    names = tuple(f"Ch{i}Retrace" for i in range(n_channels))
    line = _line(points, names)
    block = decode_line_message(encode_line(line, dtype))
    assert isinstance(block, LineBlock) and block.count == 1 and block.points == points
    [decoded] = block.lines()
    assert isinstance(decoded, Line) and decoded.source == "socket"
    assert (decoded.scan_id, decoded.index, decoded.position, decoded.n_lines) == (
        "frame_0001",
        5,
        7,
        64,
    )
    assert list(decoded.channels) == list(names)
    for name in names:
        np.testing.assert_array_equal(decoded.channels[name], line.channels[name])
    assert decoded.meta == {"ScanRate": 1.0016, "ScanDown": 1, "ImagingMode": "AC Mode"}


@given(
    count=st.integers(1, 40),
    step=st.sampled_from([1, -1]),
    dtype=st.sampled_from(["float32", "int16"]),
)
@settings(max_examples=30, deadline=None)
def test_block_round_trip_gives_the_same_lines_as_single_messages(
    count: int, step: int, dtype: str
) -> None:
    rng = np.random.default_rng(count)
    first = 20 if step == 1 else 60
    lines = [
        Line(
            scan_id="frame_0001",
            index=first + k * step,
            position=3 + k,
            n_lines=64,
            channels={c: (100 * rng.normal(size=32)).astype(np.float32) for c in ("AT", "AR")},
            meta={"ScanRate": 2.0},
        )
        for k in range(count)
    ]
    block = decode_line_message(encode_lines(lines, dtype))
    singles = [decode_line_message(encode_line(line, dtype)).lines()[0] for line in lines]
    assert isinstance(block, LineBlock) and block.count == count
    assert list(block.indices()) == [line.index for line in lines]
    for got, want in zip(block.lines(), singles, strict=True):
        assert (got.index, got.position, got.n_lines, got.meta) == (
            want.index,
            want.position,
            want.n_lines,
            want.meta,
        )
        for name in ("AT", "AR"):
            np.testing.assert_array_equal(got.channels[name], want.channels[name])


def test_a_block_must_be_consecutive_lines_of_one_scan() -> None:
    line = _line()
    skipped = Line(**{**line.__dict__, "index": line.index + 1, "position": line.position + 2})
    with pytest.raises(ProtocolError, match="consecutive positions"):
        encode_lines([line, skipped])
    other = Line(**{**line.__dict__, "scan_id": "frame_0002", "index": 6, "position": 8})
    with pytest.raises(ProtocolError, match="share scan_id"):
        encode_lines([line, other])
    jump = Line(**{**line.__dict__, "index": line.index + 2, "position": line.position + 1})
    with pytest.raises(ProtocolError, match="move by \\+1 or -1, not 2"):
        encode_lines([line, jump])


def test_end_of_scan_round_trip() -> None:
    assert decode_line_message(encode_end("frame_0001")) == EndOfScan("frame_0001")


def _with_header(frames: list[bytes], **changes: object) -> list[bytes]:
    header = _header(frames)
    header.update(changes)
    return [json.dumps(header).encode(), *frames[1:]]


GOOD = encode_line(_line())
BAD_MESSAGES = {
    "empty message": [],
    "not valid JSON": [b"{nope", *GOOD[1:]],
    "must be a JSON object": [b"[1, 2]", *GOOD[1:]],
    "protocol version": _with_header(GOOD, v=2),
    "scan_id": _with_header(GOOD, scan_id="../../etc/passwd"),
    "line must be an integer": _with_header(GOOD, line="5"),
    "outside n_lines": _with_header(GOOD, line=64),
    "points = 0": _with_header(GOOD, points=0),
    "dtype": _with_header(GOOD, dtype="complex128"),
    "channel name": _with_header(GOOD, channels=["Height Trace", "HeightRetrace"]),
    "channel names repeat": _with_header(GOOD, channels=["HeightTrace", "HeightTrace"]),
    "expected 1 header + 2 channels": GOOD[:2],
    "expected 64 (16 points of float32)": [GOOD[0], GOOD[1] * 10, GOOD[2]],
    "meta must be a JSON object": _with_header(GOOD, meta=[1]),
    "more than 65536": [b" " * 70_000, *GOOD[1:]],
    "count = 0": _with_header(GOOD, count=0),
    "count = 257": _with_header(GOOD, count=257),
    "step must be 1 or -1": _with_header(GOOD, count=2, step=0),
    "a block of 60 lines from line 5 (step 1) ends at line 64, outside 0..63": _with_header(
        GOOD, count=60
    ),
    "a block of 3 lines from line 1 (step -1) ends at line -1, outside 0..63": _with_header(
        GOOD, count=3, step=-1, line=1, position=1
    ),
    "expected 128 (2 x 16 points of float32)": _with_header(GOOD, count=2),
    "more than 524288": _with_header(GOOD, count=40, points=4096, n_lines=4096),
    "end must be true (an end-of-scan message), got 'yes'": [
        json.dumps({"v": 1, "scan_id": "T9", "end": "yes"}).encode()
    ],
}


@pytest.mark.parametrize("reason", list(BAD_MESSAGES))
def test_malformed_line_message_names_the_reason(reason: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(reason)):
        decode_line_message(BAD_MESSAGES[reason])


def test_nan_flood_decodes_so_the_scorer_can_flag_it() -> None:
    line = _line()
    flooded = Line(
        **{**line.__dict__, "channels": {k: v * np.nan for k, v in line.channels.items()}}
    )
    [decoded] = decode_line_message(encode_line(flooded)).lines()
    assert all(np.isnan(v).all() for v in decoded.channels.values())


def test_event_round_trip_and_checks() -> None:
    payload = {"v": 1, "seq": 3, "time": 1.5, "scan_id": "s", "kind": "streak", "line": np.int64(4)}
    topic, decoded = decode_event(encode_event(TOPIC_ALERT, payload))
    assert topic == TOPIC_ALERT
    assert decoded["line"] == 4 and decoded["seq"] == 3
    with pytest.raises(ProtocolError, match="unknown topic"):
        encode_event("spmwatch.nope", payload)
    with pytest.raises(ProtocolError, match="expected 2"):
        decode_event([b"spmwatch.alert"])
    with pytest.raises(ProtocolError, match="seq"):
        decode_event([b"spmwatch.alert", json.dumps({"v": 1, "seq": -1}).encode()])
    with pytest.raises(ValueError):
        encode_event(TOPIC_ALERT, {**payload, "score": float("nan")})


def test_control_request_and_reply() -> None:
    assert decode_request(encode_request("reload-model")) == "reload-model"
    with pytest.raises(ProtocolError, match="unknown control command 'reboot'"):
        decode_request(json.dumps({"v": 1, "cmd": "reboot"}).encode())
    reply = decode_reply(encode_reply(True, paused=False, lines=np.int64(12)))
    assert reply == {"v": 1, "ok": True, "paused": False, "lines": 12}


def test_encoder_refuses_an_unsafe_scan_id_before_it_reaches_the_wire() -> None:
    line = _line()
    unsafe = Line(**{**line.__dict__, "scan_id": "synth+tip change"})
    with pytest.raises(ProtocolError, match="scan_id 'synth\\+tip change'"):
        encode_line(unsafe)


def test_a_block_splits_into_its_head_and_rest() -> None:
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(5, 8)).astype(np.float32)
    block = LineBlock("s", 40, 10, 64, {"AT": rows, "AR": rows + 1}, step=-1)
    head, rest = block.split(2)
    assert list(head.indices()) == [40, 39] and list(rest.indices()) == [38, 37, 36]
    assert (head.position, rest.position, rest.count, rest.step) == (10, 12, 3, -1)
    np.testing.assert_array_equal(rest.channels["AR"], rows[2:] + 1)
    assert [line.position for line in rest.lines()] == [12, 13, 14]
