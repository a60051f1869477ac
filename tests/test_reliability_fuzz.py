"""Reliability under bad input, in process: a fuzz slice of damaged .ibw files through the reader
and the scorer, and hostile producers on a real line socket.

The full fuzz run (>= 1,000 files, counts and timings) is benchmarks/fuzz_ibw.py; this is the
slice that runs with every test run. Per-file time is guarded by a hang alarm, not asserted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq
from fuzz_corpus import Outcome, answer, corpus, write_corpus
from ibw_fixtures import make_scan, write_fixture
from sources_helpers import Collector, test_line, wait_for

from spmwatch.ibw import MAX_NOTE_BYTES, inspect_file, read_scan
from spmwatch.model import Line
from spmwatch.protocol import MAX_POINTS, MAX_SCAN_BYTES, encode_line
from spmwatch.scoring.scorer import score_scan
from spmwatch.sources import MAX_REASONS
from spmwatch.sources.linesocket import LineReceiver, LineSender

SLICE = 200
MAX_BYTES_PER_FILE = 100 * 2**20  # no file may make the reader (or scorer) hold more than this
HANG_SECONDS = 20.0  # a guard against hangs, far above the ~ms a file takes (see the benchmark)


@pytest.fixture(scope="module")
def fuzz_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_corpus(corpus(SLICE), tmp_path_factory.mktemp("fuzz"))


# Cases of the slice that hit a known bug, each reproduced by its own strict-xfail test below;
# delete the entry when the bug is fixed (the xfail test then fails as XPASS to remind you).
KNOWN_BUGS: dict[str, str] = {}


def _known_bug(path: Path) -> bool:
    return any(fragment in path.name for fragment in KNOWN_BUGS)


def _judge(outcomes: list[Outcome]) -> None:
    bad = [o for o in outcomes if o.kind not in ("scan", "typed_error")]
    assert not bad, "\n".join(f"{o.case}: {o.kind}: {o.detail}" for o in bad)
    greedy = [o for o in outcomes if o.peak_bytes > MAX_BYTES_PER_FILE]
    assert not greedy, "\n".join(f"{o.case}: {o.peak_bytes / 2**20:.0f} MiB" for o in greedy)


def test_slice_covers_every_damage_family(fuzz_paths: list[Path]) -> None:
    families = {path.stem.split("_", 1)[1].rsplit("_", 1)[0] for path in fuzz_paths}
    names = "valid truncated flipped_header flipped_data absurd_dims version note_abuse nonfinite"
    for family in names.split():
        assert any(f.startswith(family) for f in families), family
    assert len(fuzz_paths) == SLICE


def test_every_damaged_file_gives_a_scan_or_a_typed_error(fuzz_paths: list[Path]) -> None:
    paths = [p for p in fuzz_paths if not _known_bug(p)]
    outcomes = [answer(path, read_scan, time_limit=HANG_SECONDS) for path in paths]
    _judge(outcomes)
    kinds = {o.kind for o in outcomes}
    assert kinds == {"scan", "typed_error"}  # the slice exercises both answers
    for outcome, path in zip(outcomes, paths, strict=True):
        if outcome.kind == "typed_error":
            reason = outcome.detail.split(": ", 1)[1]
            assert reason.strip(), f"{path.name}: empty reason"
        elif "_valid_" in path.name:
            assert outcome.detail.split()[0] != "0x0"


def test_inspect_answers_every_damaged_file_with_a_record(fuzz_paths: list[Path]) -> None:
    for path in fuzz_paths:
        if _known_bug(path):
            continue
        record = inspect_file(path)
        assert record["file"] == str(path)
        if record["channels"] is None:
            assert record["errors"] and all(isinstance(e, str) and e for e in record["errors"])


def test_every_readable_damaged_file_scores_in_bounded_memory(fuzz_paths: list[Path]) -> None:
    paths = [p for p in fuzz_paths if not _known_bug(p)]
    outcomes = [answer(p, read_scan, score_scan, time_limit=HANG_SECONDS) for p in paths]
    _judge(outcomes)
    assert sum(o.kind == "scan" for o in outcomes) >= 20


def test_absurd_scanlines_in_the_note_cannot_make_scoring_allocate(fuzz_paths: list[Path]) -> None:
    absurd = [p for p in fuzz_paths if "_scanlines" in p.name]
    assert len(absurd) >= 4
    _judge([answer(p, read_scan, score_scan, time_limit=HANG_SECONDS) for p in absurd])


def test_a_one_mib_note_cannot_make_the_reader_allocate_100_mib(fuzz_paths: list[Path]) -> None:
    (path,) = [p for p in fuzz_paths if "_note_1mib" in p.name]
    _judge([answer(path, read_scan, time_limit=HANG_SECONDS)])


def test_a_note_over_the_cap_is_skipped_with_a_reason_and_the_frame_still_reads(
    tmp_path: Path,
) -> None:
    # 1,310 settings of 200 characters: just over the cap once names and separators count.
    note = {f"Key{i}": "x" * 200 for i in range(MAX_NOTE_BYTES // 200)}
    scan = read_scan(write_fixture(tmp_path, make_scan(lines=4, points=16, note=note)))
    assert scan.n_lines == 4 and scan.meta == {} and scan.note == {}
    assert any("larger than 256 KiB" in problem for problem in scan.problems), scan.problems
    under = make_scan(lines=4, points=16, note={"Long": "y" * (MAX_NOTE_BYTES // 2)}, scan_id="u")
    scan = read_scan(write_fixture(tmp_path, under))
    assert scan.note["Long"] == "y" * (MAX_NOTE_BYTES // 2) and scan.meta["ScanRate"] == 1.0016


def test_unparseable_scan_rate_in_the_note_is_not_a_crash(tmp_path: Path) -> None:
    scan = make_scan(lines=4, points=16)
    scan.meta["ScanRate"] = "1.0F"  # one flipped byte in the note of a real file does this
    path = write_fixture(tmp_path, scan)
    record = inspect_file(path)
    assert record["scan_rate"] == 0.0 and any("ScanRate" in e for e in record["errors"])


# ---------------------------------------------------------------------------------------------
# Hostile producers on a real line socket
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[LineReceiver, Collector]]:
    sink = Collector()
    recv = LineReceiver("tcp://127.0.0.1:*", sink)
    recv.start()
    yield recv, sink
    assert recv.stop(timeout=5.0)


def _header(**fields: object) -> dict[str, object]:
    base = {
        "v": 1,
        "scan_id": "hostile",
        "line": 0,
        "n_lines": 8,
        "points": 16,
        "channels": ["HeightRetrace"],
        "dtype": "float32",
    }
    return {**base, **fields}


SIXTEEN = np.ones(16, "<f4").tobytes()
EIGHT_POINTS = np.ones(8, np.float32)

# name -> (frames, words the rejection reason must contain)
HOSTILE: dict[str, tuple[list[bytes], str]] = {
    "empty frame": ([b""], "not valid JSON"),
    "binary header": ([bytes(range(256)), SIXTEEN], "not valid JSON"),
    "JSON null": ([b"null", SIXTEEN], "JSON object"),
    "two extra frames": ([json.dumps(_header()).encode(), SIXTEEN, SIXTEEN, SIXTEEN], "frames"),
    "header only": ([json.dumps(_header()).encode()], "frames"),
    "ten times the points": ([json.dumps(_header()).encode(), SIXTEEN * 10], "bytes"),
    "odd byte count": ([json.dumps(_header()).encode(), SIXTEEN[:-1]], "bytes"),
    "points over the cap": (
        [json.dumps(_header(points=MAX_POINTS + 1)).encode(), SIXTEEN],
        "points",
    ),
    "negative line": ([json.dumps(_header(line=-1)).encode(), SIXTEEN], "line"),
    "boolean line": ([json.dumps(_header(line=True)).encode(), SIXTEEN], "line"),
    "float n_lines": ([json.dumps(_header(n_lines=8.5)).encode(), SIXTEEN], "n_lines"),
    "scan id with a path": (
        [json.dumps(_header(scan_id="../../etc/x")).encode(), SIXTEEN],
        "scan_id",
    ),
    "absolute scan id": ([json.dumps(_header(scan_id="/tmp/x")).encode(), SIXTEEN], "scan_id"),
    "scan id with NUL": ([json.dumps(_header(scan_id="a\x00b")).encode(), SIXTEEN], "scan_id"),
    "channel with a dot": ([json.dumps(_header(channels=["a.b"])).encode(), SIXTEEN], "channel"),
    "no channels": ([json.dumps(_header(channels=[])).encode()], "channels"),
    "header of 100 kB": (
        [json.dumps(_header(meta={"pad": "x" * 100_000})).encode(), SIXTEEN],
        "bytes",
    ),
    "meta not an object": ([json.dumps(_header(meta=[1])).encode(), SIXTEEN], "meta"),
    "NaN in the header": ([b'{"v": NaN}', SIXTEEN], "version"),
}


def test_hostile_messages_are_rejected_with_reasons_and_the_socket_keeps_serving(
    receiver: tuple[LineReceiver, Collector],
) -> None:
    recv, sink = receiver
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(recv.endpoint)
    try:
        for frames, _ in HOSTILE.values():
            push.send_multipart(frames)
        push.send_multipart(encode_line(test_line(0, scan_id="after", n_lines=4, points=8)))
    finally:
        push.close()
        context.term()
    assert wait_for(lambda: len(sink.lines) == 1 and len(sink.errors) == len(HOSTILE))
    assert sink.lines[0].scan_id == "after"
    for (name, (_, words)), error in zip(HOSTILE.items(), sink.errors, strict=True):
        assert words in error.reason, f"{name}: {error.reason}"
    counts = recv.counters.snapshot()
    assert sum(counts["rejected"].values()) == len(HOSTILE)
    assert counts["received"] == len(HOSTILE) + 1 and counts["lines"] == 1


def test_channel_set_changing_mid_scan_is_rejected_and_the_scan_carries_on(
    receiver: tuple[LineReceiver, Collector],
) -> None:
    recv, sink = receiver
    first = test_line(0, scan_id="morph", n_lines=6, points=8)
    extra = test_line(1, scan_id="morph", n_lines=6, points=8)
    renamed = test_line(2, scan_id="morph", n_lines=6, points=8)
    with LineSender(recv.endpoint) as sender:
        sender.send(first)
        sender.send(
            Line(**{**extra.__dict__, "channels": {**extra.channels, "Bogus": EIGHT_POINTS}})
        )
        channels = {"HeightRetrace": renamed.channels["HeightRetrace"], "AmpRetrace": EIGHT_POINTS}
        sender.send(Line(**{**renamed.__dict__, "channels": channels}))
        sender.send(test_line(3, scan_id="morph", n_lines=6, points=8))
    assert wait_for(lambda: len(sink.lines) == 2 and len(sink.errors) == 2)
    assert [line.index for line in sink.lines] == [0, 3]
    assert all("differ from the scan's first line" in e.reason for e in sink.errors)
    assert [e.scan_id for e in sink.errors] == ["morph", "morph"]  # the event names its scan


def test_nan_and_inf_floods_are_delivered_as_data_for_the_scorer_to_flag(
    receiver: tuple[LineReceiver, Collector],
) -> None:
    """Non-finite samples are what a dropout looks like: they must reach the scorer, not vanish."""
    recv, sink = receiver
    n = 200
    with LineSender(recv.endpoint) as sender:
        for index in range(n):
            line = test_line(index, scan_id="flood", n_lines=n, points=64)
            fill = (np.nan, np.inf, -np.inf)[index % 3]
            channels = {name: np.full(64, fill, np.float32) for name in line.channels}
            sender.send(Line(**{**line.__dict__, "channels": channels}))
    assert wait_for(lambda: len(sink.lines) == n)
    assert not sink.errors
    assert all(not np.isfinite(line.channels["HeightRetrace"]).any() for line in sink.lines)


def test_rejection_reasons_stay_bounded_under_a_flood_of_distinct_errors(
    receiver: tuple[LineReceiver, Collector],
) -> None:
    """A hostile producer inventing a new error text per message cannot grow the counter table."""
    recv, sink = receiver
    kinds = 5 * MAX_REASONS
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(recv.endpoint)
    try:
        for i in range(kinds):
            text = json.dumps({"v": 1, "scan_id": "x", "line": 0, f"k{i}": 1})[:-1]
            push.send_multipart([text.encode()])
        push.send_multipart(encode_line(test_line(0, scan_id="after", n_lines=2, points=8)))
    finally:
        push.close()
        context.term()
    assert wait_for(lambda: len(sink.lines) == 1 and len(sink.errors) == kinds)
    rejected = recv.counters.snapshot()["rejected"]
    assert sum(rejected.values()) == kinds
    assert len(rejected) <= MAX_REASONS


def test_a_scan_declared_over_the_size_cap_is_refused_once_and_each_line_counted(
    receiver: tuple[LineReceiver, Collector],
) -> None:
    recv, sink = receiver
    points = 4096
    n_lines = MAX_SCAN_BYTES // (4 * points) + 1  # one channel: just over the cap
    zeros = {"HeightRetrace": np.zeros(points, np.float32)}
    with LineSender(recv.endpoint) as sender:
        for index in range(3):
            sender.send(Line("big", index, index, n_lines, zeros, {}, "test"))
        sender.end("big")
        sender.send(test_line(0, scan_id="big", n_lines=4, points=8))  # the id, free again
    assert wait_for(lambda: len(sink.lines) == 1)
    (error,) = sink.errors
    assert error.scan_id == "big" and f"{n_lines} lines x {points} points" in error.reason
    rejected = recv.counters.snapshot()["rejected"]
    assert rejected == {f"scan larger than {MAX_SCAN_BYTES // 2**20} MiB": 3}
    assert sink.lines[0].n_lines == 4


def test_frame_over_the_size_cap_drops_that_peer_and_others_are_still_served(
    receiver: tuple[LineReceiver, Collector],
) -> None:
    recv, sink = receiver
    context = zmq.Context()
    hostile = context.socket(zmq.PUSH)
    hostile.setsockopt(zmq.LINGER, 0)
    hostile.connect(recv.endpoint)
    try:
        hostile.send_multipart([json.dumps(_header()).encode(), bytes(16 * 2**20)])
        with LineSender(recv.endpoint) as good:
            for index in range(3):
                good.send(test_line(index, scan_id="good", n_lines=3, points=8))
        assert wait_for(lambda: len(sink.lines) == 3)
    finally:
        hostile.close()
        context.term()
    assert [line.scan_id for line in sink.lines] == ["good"] * 3
    assert recv.counters.snapshot()["received"] == 3  # the 16 MB frame never reached the app
