"""The publisher on a real PUB socket: seq per topic, heartbeats, priority, shedding, drain."""

from __future__ import annotations

import math
import threading

import pytest
import zmq

from spmwatch import protocol
from spmwatch.publish import Publisher
from tests.daemon_helpers import Subscriber, assert_seq_increasing, free_port, wait_for


@pytest.fixture
def endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def _connected(sub: Subscriber) -> None:
    """The slow-joiner problem: a SUB sees nothing until its subscription reached the PUB."""
    wait_for(lambda: sub.of(protocol.TOPIC_HEARTBEAT), timeout=10)


def _drained(sub: Subscriber) -> None:
    """Wait for the final heartbeat `stop()` sends last: ZeroMQ keeps order on one pipe, so
    everything published before it has arrived too (an alert sent directly can overtake line
    scores still queued, so the last alert is no such marker)."""
    wait_for(lambda: any(b.get("final") for b in sub.of(protocol.TOPIC_HEARTBEAT)), timeout=10)


def test_envelope_seq_and_heartbeat(endpoint: str) -> None:
    pub = Publisher(endpoint, heartbeat_interval=0.05, heartbeat=lambda: {"model": "m1"})
    pub.start()
    sub = Subscriber(endpoint)
    try:
        _connected(sub)
        for i in range(5):
            pub.publish(protocol.TOPIC_ALERT, f"s{i}", "socket", {"line": i, "score": math.nan})
        pub.publish(protocol.TOPIC_FRAME, "s0", "folder", {"verdict": "pass"})
        wait_for(lambda: len(sub.of(protocol.TOPIC_ALERT)) == 5 and sub.of(protocol.TOPIC_FRAME))
    finally:
        pub.stop()
    _drained(sub)
    sub.close()
    alerts = sub.of(protocol.TOPIC_ALERT)
    assert [a["seq"] for a in alerts] == [0, 1, 2, 3, 4]
    assert [a["line"] for a in alerts] == [0, 1, 2, 3, 4]
    assert alerts[0]["scan_id"] == "s0" and alerts[0]["source"] == "socket"
    assert alerts[0]["score"] is None  # NaN cannot travel as JSON; the event still does
    assert isinstance(alerts[0]["time"], float) and alerts[0]["v"] == protocol.PROTOCOL_VERSION
    assert sub.of(protocol.TOPIC_FRAME)[0]["seq"] == 0
    beats = sub.of(protocol.TOPIC_HEARTBEAT)
    seqs = [b["seq"] for b in beats]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert beats[0]["model"] == "m1" and beats[0]["interval"] == 0.05
    assert beats[-1]["final"] is True  # stop() sends the closing counters
    assert beats[-1]["published"][protocol.TOPIC_ALERT] == 5


def test_lines_are_shed_alerts_never(endpoint: str) -> None:
    pub = Publisher(endpoint, line_queue=4, heartbeat_interval=0.05)
    pub.start()
    sub = Subscriber(endpoint)
    try:
        _connected(sub)
        accepted = 0
        for i in range(2_000):
            accepted += pub.publish(protocol.TOPIC_LINE, "s", "socket", {"line": i}) is not None
            if i % 20 == 0:
                pub.publish(protocol.TOPIC_ALERT, "s", "socket", {"line": i})
        counters = pub.counters()
    finally:
        pub.stop()
    _drained(sub)
    sub.close()
    alerts = sub.of(protocol.TOPIC_ALERT)
    assert [a["seq"] for a in alerts] == list(range(100))  # no gap: none lost
    assert counters["lines_shed"] > 0  # the tiny line queue had to shed
    lines = sub.of(protocol.TOPIC_LINE)
    assert len(lines) == accepted
    assert accepted + pub.counters()["lines_shed"] == 2_000
    assert_seq_increasing(lines)
    seqs = [line["seq"] for line in lines]
    missing = set(range(2_000)) - set(seqs)  # every shed line shows up as a seq gap
    assert len(missing) == pub.counters()["lines_shed"]


def test_a_line_shed_by_the_caller_leaves_a_seq_gap(endpoint: str) -> None:
    pub = Publisher(endpoint, heartbeat_interval=0.05)
    pub.start()
    sub = Subscriber(endpoint)
    try:
        _connected(sub)
        pub.publish(protocol.TOPIC_LINE, "s", "socket", {"line": 0})
        pub.shed_lines()
        pub.publish(protocol.TOPIC_LINE, "s", "socket", {"line": 2})
        wait_for(lambda: len(sub.of(protocol.TOPIC_LINE)) == 2, timeout=10)
        shed = pub.counters()["lines_shed"]
    finally:
        pub.stop()
        sub.close()
    assert [(e["seq"], e["line"]) for e in sub.of(protocol.TOPIC_LINE)] == [(0, 0), (2, 2)]
    assert shed == 1


def test_busy_port_fails_in_start(endpoint: str) -> None:
    first = Publisher(endpoint)
    first.start()
    try:
        with pytest.raises(zmq.ZMQError):
            Publisher(endpoint).start()
    finally:
        first.stop()


def test_unknown_topic_is_refused(endpoint: str) -> None:
    pub = Publisher(endpoint)
    pub.start()
    try:
        with pytest.raises(protocol.ProtocolError, match="unknown topic"):
            pub.publish("spmwatch.nope", None, "daemon", {})
    finally:
        pub.stop()


def test_named_publisher_stamps_every_event(endpoint: str) -> None:
    """Behind `spmwatch proxy` the "daemon" field keeps each publisher's seq counter apart."""
    pub = Publisher(endpoint, heartbeat_interval=0.05, name="afm-2", source="responder")
    pub.start()
    sub = Subscriber(endpoint)
    try:
        _connected(sub)
        pub.publish(protocol.TOPIC_ALERT, "s0", "socket", {"line": 3})
        wait_for(lambda: sub.of(protocol.TOPIC_ALERT))
    finally:
        pub.stop()
        sub.close()
    assert sub.of(protocol.TOPIC_ALERT)[0]["daemon"] == "afm-2"
    beat = sub.of(protocol.TOPIC_HEARTBEAT)[0]
    assert (beat["daemon"], beat["source"]) == ("afm-2", "responder")


def test_frames_go_out_whether_the_sender_sleeps_or_polls(endpoint: str) -> None:
    # a long heartbeat interval: nothing but the frames themselves wakes the sender
    pub = Publisher(endpoint, heartbeat_interval=3600)
    pub.start()
    sub = Subscriber(endpoint)
    try:

        def joined() -> bool:  # the first beat went before the subscriber: knock until heard
            pub.publish(protocol.TOPIC_ERROR, None, "test", {"reason": "knock"})
            return bool(sub.of(protocol.TOPIC_ERROR))

        wait_for(joined, timeout=10)
        wait_for(lambda: not pub._polling, timeout=10)  # asleep after a quiet second
        for i in range(3):
            wait_for(lambda: not pub.counters()["priority_queue"], timeout=10)
            # the first frame wakes the sleeping sender; the next ones find it polling
            pub.publish(protocol.TOPIC_FRAME, f"s{i}", "socket", {"verdict": "pass"})
            wait_for(lambda n=i + 1: len(sub.of(protocol.TOPIC_FRAME)) == n, timeout=10)
            assert pub._polling
    finally:
        pub.stop()
        sub.close()
    assert [f["scan_id"] for f in sub.of(protocol.TOPIC_FRAME)] == ["s0", "s1", "s2"]


def test_events_from_many_threads_arrive_all_and_in_seq_order(endpoint: str) -> None:
    # alerts go out from the publishing threads themselves when the way is clear, otherwise
    # through the sender thread: either way no alert overtakes one with a lower seq
    pub = Publisher(endpoint, heartbeat_interval=0.05)
    pub.start()
    sub = Subscriber(endpoint)
    per_thread = 300

    def produce(k: int) -> None:
        for i in range(per_thread):
            pub.publish(protocol.TOPIC_ALERT, f"t{k}", "test", {"line": i})
            pub.publish(protocol.TOPIC_FRAME, f"t{k}", "test", {"verdict": "pass"})
            pub.publish(protocol.TOPIC_LINE, f"t{k}", "test", {"index": i})

    try:
        _connected(sub)
        threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_for(lambda: len(sub.of(protocol.TOPIC_ALERT)) == 4 * per_thread, timeout=30)
        wait_for(lambda: len(sub.of(protocol.TOPIC_FRAME)) == 4 * per_thread, timeout=30)
    finally:
        pub.stop()
        sub.close()
    for topic in (protocol.TOPIC_ALERT, protocol.TOPIC_FRAME):
        assert [e["seq"] for e in sub.of(topic)] == list(range(4 * per_thread)), topic
    for k in range(4):  # each thread's alerts in its own order
        lines = [e["line"] for e in sub.of(protocol.TOPIC_ALERT) if e["scan_id"] == f"t{k}"]
        assert lines == list(range(per_thread))
