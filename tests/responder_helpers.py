"""Small helpers for the responder, CURVE, subscribe and proxy tests: polls with deadlines."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import zmq

from spmwatch import protocol
from tests.polling import free_tcp_endpoint, wait_for  # noqa: F401 (re-exported for the tests)

T = TypeVar("T")


SCAN_STARTED = 1795323000.25  # one scan instance: alerts about it share its start


def alert_payload(
    seq: int,
    scan_id: str = "scanA",
    kind: str = "tip_change",
    severity: str = "high",
    age: float = 0.0,
    scan_started: float | None = SCAN_STARTED,
) -> dict[str, Any]:
    """A spmwatch.alert payload as the daemon publishes it (envelope + protocol.alert_fields);
    `scan_started=None` leaves the field out, as a publisher that does not know it would."""
    started = {} if scan_started is None else {"scan_started": scan_started}
    return {
        "v": protocol.PROTOCOL_VERSION,
        "seq": seq,
        "time": time.time() - age,
        "scan_id": scan_id,
        "source": "folder",
        "line": 100,
        "position": 100,
        "kind": kind,
        "severity": severity,
        "score": 7.5,
        "probability": 0.97,
        "threshold": 0.5,
        "model": "test",
        "action": "stop_scan",
        "origin": "live",
        "lines_seen": 101,
        "file": None,
        **started,
    }


class FakeDaemon:
    """The daemon's PUB side, as an XPUB so the test knows when a subscriber has subscribed."""

    def __init__(self, context: zmq.Context) -> None:
        self.socket = context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def wait_subscriber(self, timeout: float = 20.0) -> None:
        """Block until a SUB has subscribed to alerts (no slow-joiner guesswork)."""
        wanted = b"\x01" + protocol.TOPIC_ALERT.encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.poll(100) and wanted in self.socket.recv_multipart()[0]:
                return
        raise AssertionError(f"nobody subscribed to {protocol.TOPIC_ALERT} within {timeout} s")

    def send(self, payload: dict[str, Any], topic: str = protocol.TOPIC_ALERT) -> dict[str, Any]:
        self.socket.send_multipart(protocol.encode_event(topic, payload))
        return payload

    def heartbeat(self, seq: int, final: bool = False) -> None:
        """A daemon heartbeat with the fields the responder reads."""
        payload = {"v": protocol.PROTOCOL_VERSION, "seq": seq, "time": time.time()}
        payload |= {"scan_id": None, "source": "daemon", "daemon": "fake", "interval": 0.1}
        self.send(payload | ({"final": True} if final else {}), protocol.TOPIC_HEARTBEAT)

    def close(self) -> None:
        self.socket.close(linger=0)


class ActionListener:
    """A subscriber to the responder's actions socket."""

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.subscribe(b"")
        self.socket.connect(endpoint)

    def wait_heartbeat(
        self, final: bool = False, timeout: float = 20.0, **fields: Any
    ) -> dict[str, Any]:
        """The next live (or final) heartbeat with `fields`: a live one proves the actions
        socket is up and we are subscribed; the final one marks the end of a responder run."""

        def wanted(payload: dict[str, Any]) -> bool:
            return payload.get("final", False) == final and fields.items() <= payload.items()

        return self._next(protocol.TOPIC_HEARTBEAT, timeout, wanted)

    def actions(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        return [self._next(protocol.TOPIC_ACTION, timeout) for _ in range(count)]

    def _next(
        self,
        topic: str,
        timeout: float,
        wanted: Callable[[dict[str, Any]], bool] = lambda payload: True,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.poll(50):
                got, payload = protocol.decode_event(self.socket.recv_multipart())
                if got == topic and wanted(payload):
                    return payload
        raise AssertionError(f"no matching {topic} message within {timeout} s")

    def close(self) -> None:
        self.socket.close(linger=0)
