"""The PUB socket: every event the daemon tells the world goes out through here.

ZeroMQ sockets are not thread-safe, so whoever sends holds `_send_lock` (a lock is the full
memory barrier ZeroMQ asks for when a socket changes threads). A sender thread does most of
the sending; other threads hand it already-encoded messages through two queues:

- the priority queue (alerts, frames, errors, actions): unbounded, so our own code never drops
  an alert; it is emptied before any line score is sent;
- the line queue (`spmwatch.line`): bounded; when it is full the newest line score is shed and
  counted, because per-line scores are a convenience that must never delay an alert. The
  daemon also sheds them itself (`shed_lines`) while its inbox is backed up, so the time goes
  to scoring.

Each topic has its own `seq`, assigned when the event is handed over, so a subscriber sees a gap
for every event it did not get, whether we shed it or ZeroMQ dropped it.

An alert, error or action is sent by the thread that publishes it, when nothing is queued
ahead of it and the sender thread is not sending: waking a thread costs ~0.1 ms, and more when
both cores are busy, which is most of an alert's tail latency. Otherwise it is queued and
wakes the sender at once. Frames and line scores wake the sender only when it sleeps after a
quiet second; while events flow it looks every `POLL_INTERVAL` by itself. Every wake-up hands
the GIL to the sender thread, and waking it for each frame and line score was ~10 % of the
scoring thread's time in a burst.

What ZeroMQ PUB does with a slow subscriber: PUB never blocks. Each subscriber has its own
outgoing pipe of up to SNDHWM messages; once that pipe is full, further messages *for that
subscriber only* are silently discarded until it catches up. Other subscribers are unaffected.
We set SNDHWM high (`publish.hwm`) so short stalls do not lose alerts, and seq lets a subscriber
notice the rest.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import zmq

from spmwatch import protocol

log = structlog.get_logger("spmwatch.publish")

LINGER_MS = 2_000  # on close, give queued messages this long to reach subscribers
_LINE_BATCH = 64  # line scores sent between two looks at the priority queue
_PLAIN = (str, int, bool)  # exact types _finite passes through unchanged
POLL_INTERVAL = 0.01  # s between the sender's looks at the queues while events flow
QUIET_AFTER = 1.0  # s without events before the sender sleeps until it is woken
URGENT_TOPICS = frozenset({protocol.TOPIC_ALERT, protocol.TOPIC_ERROR, protocol.TOPIC_ACTION})


class Publisher:
    """Owns the PUB socket in its own thread; `publish` may be called from any thread."""

    def __init__(
        self,
        endpoint: str = protocol.PUB_ENDPOINT,
        *,
        hwm: int = 100_000,
        line_queue: int = 10_000,
        heartbeat_interval: float = 1.0,
        heartbeat: Callable[[], Mapping[str, Any]] = dict,
        curve: tuple[str | Path, str | Path] | None = None,
        context: zmq.Context | None = None,
        name: str = "",
        source: str = "daemon",
    ) -> None:
        """`heartbeat` returns the daemon's fields for each heartbeat; `curve` is
        (server secret key file, authorised client keys folder) or None for plain TCP.
        `name`, when given, goes into every payload as "daemon": it tells a subscriber behind a
        proxy which publisher's seq counter an event belongs to. `source` labels heartbeats."""
        self.endpoint = endpoint
        self._name = name
        self._source = source
        self._hwm = hwm
        self._line_capacity = line_queue
        self._interval = heartbeat_interval
        self._heartbeat = heartbeat
        self._curve = curve
        self._context = context or zmq.Context.instance()
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()  # held by whoever sends on the socket
        self._priority: deque[list[bytes]] = deque()
        self._lines: deque[list[bytes]] = deque()
        self._seq = dict.fromkeys(protocol.TOPICS, 0)
        self._sent = dict.fromkeys(protocol.TOPICS, 0)
        self._shed = 0
        self._polling = False  # the sender looks every POLL_INTERVAL: no need to wake it
        self._stopping = False
        self._final: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._socket: zmq.Socket | None = None
        self._auth: Any = None
        self.bound_endpoint = ""

    # -- any thread -------------------------------------------------------------------------

    def start(self) -> None:
        """Bind now (so a busy port fails here, in the caller) and start the sender thread."""
        socket = self._context.socket(zmq.PUB)
        socket.setsockopt(zmq.SNDHWM, self._hwm)
        socket.setsockopt(zmq.LINGER, LINGER_MS)
        try:
            if self._curve is not None:
                from spmwatch.curve import configure_server

                self._auth = configure_server(socket, *self._curve, context=self._context)
            socket.bind(self.endpoint)
        except Exception:
            socket.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            raise
        self.bound_endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._socket = socket  # handed to the thread below; Thread.start() is the memory fence
        self._thread = threading.Thread(target=self._run, name="spmwatch-publisher", daemon=True)
        self._thread.start()

    def publish(
        self, topic: str, scan_id: str | None, source: str, fields: Mapping[str, Any]
    ) -> int | None:
        """Queue (or send) one event; returns its seq, or None for a line score shed because
        of load."""
        if topic in URGENT_TOPICS and self._send_lock.acquire(blocking=False):
            try:
                sent = self._send_now(topic, scan_id, source, fields)
            finally:
                self._send_lock.release()
            if sent is not None:
                return sent
        with self._cond:
            payload = self._envelope(topic, scan_id, source, fields)
            idle = not self._priority and not self._lines  # else the sender is not waiting
            if topic == protocol.TOPIC_LINE:
                if len(self._lines) >= self._line_capacity:
                    self._shed += 1
                    return None
                self._lines.append(protocol.encode_event(topic, payload))
            else:
                self._priority.append(protocol.encode_event(topic, payload))
            # an urgent event wakes the sender even if it is about to poll: the line scores
            # queued before it must not make it wait for the next look
            if topic in URGENT_TOPICS or (idle and not self._polling):
                self._cond.notify()
            return payload["seq"]

    def _send_now(
        self, topic: str, scan_id: str | None, source: str, fields: Mapping[str, Any]
    ) -> int | None:
        """Caller holds the send lock: send the event from this thread and return its seq, or
        None (nothing done) when an event of that kind waits in the queue or the socket is
        closed, so that it does not overtake what came before it."""
        with self._cond:
            if self._priority or self._socket is None:
                return None
            payload = self._envelope(topic, scan_id, source, fields)
        frames = protocol.encode_event(topic, payload)
        self._socket.send_multipart(frames)  # PUB never blocks: a slow subscriber drops
        self._count(frames[0])
        return payload["seq"]

    def shed_lines(self, n: int = 1) -> None:
        """Count `n` line scores the caller chose not to publish (it is behind): their seq
        numbers are used up all the same, so subscribers see the gap."""
        with self._cond:
            self._seq[protocol.TOPIC_LINE] += n
            self._shed += n

    def stop(self, final: Mapping[str, Any] | None = None) -> None:
        """Send everything queued, then a last heartbeat (with `final` fields), then close."""
        with self._cond:
            self._stopping = True
            self._final = dict(final or {})
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def counters(self) -> dict[str, Any]:
        with self._cond:
            return {
                "published": dict(self._sent),
                "lines_shed": self._shed,
                "priority_queue": len(self._priority),
                "line_queue": len(self._lines),
            }

    # -- internals ----------------------------------------------------------------------------

    def _envelope(
        self, topic: str, scan_id: str | None, source: str, fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Caller holds the lock: seq is taken in the same step as the event is queued."""
        if topic not in self._seq:
            raise protocol.ProtocolError(f"unknown topic {topic!r}")
        seq = self._seq[topic]
        self._seq[topic] = seq + 1
        payload: dict[str, Any] = {"v": protocol.PROTOCOL_VERSION, "seq": seq, "time": time.time()}
        if self._name:
            payload["daemon"] = self._name
        payload["scan_id"] = scan_id
        payload["source"] = source
        payload.update(_finite(fields))
        return payload

    def _run(self) -> None:
        socket = self._socket
        assert socket is not None
        next_beat = time.monotonic()
        last_event = -math.inf
        try:
            while True:
                with self._cond:
                    while not self._priority and not self._lines and not self._stopping:
                        now = time.monotonic()
                        if now >= next_beat:
                            break
                        self._polling = now - last_event < QUIET_AFTER
                        wait = next_beat - now
                        self._cond.wait(min(wait, POLL_INTERVAL) if self._polling else wait)
                with self._send_lock:  # the queue is taken and sent as one step: in order
                    with self._cond:
                        if self._priority or self._lines:
                            last_event = time.monotonic()
                        batch = list(self._priority)
                        self._priority.clear()
                        if not batch:
                            for _ in range(min(_LINE_BATCH, len(self._lines))):
                                batch.append(self._lines.popleft())
                        done = self._stopping and not self._priority and not self._lines
                    for frames in batch:
                        socket.send_multipart(frames)
                        self._count(frames[0])
                    if time.monotonic() >= next_beat:
                        self._send_heartbeat(socket, {})
                        next_beat = time.monotonic() + self._interval
                    if done:
                        self._send_heartbeat(socket, {"final": True, **self._final})
                        return
        finally:
            with self._send_lock, self._cond:
                self._socket = None  # from now on publish() only queues
            socket.close(linger=LINGER_MS)
            if self._auth is not None:
                self._auth.stop()

    def _count(self, topic: bytes) -> None:
        name = topic.decode()
        with self._cond:
            self._sent[name] += 1

    def _send_heartbeat(self, socket: zmq.Socket, extra: Mapping[str, Any]) -> None:
        try:
            fields = {**self._heartbeat(), **self.counters(), **extra}
        except Exception as exc:  # a heartbeat must go out even if a counter is broken
            log.error("heartbeat_fields_failed", error=str(exc))
            fields = {**self.counters(), **extra}
        fields["interval"] = self._interval
        with self._cond:
            payload = self._envelope(protocol.TOPIC_HEARTBEAT, None, self._source, fields)
        frames = protocol.encode_event(protocol.TOPIC_HEARTBEAT, payload)
        socket.send_multipart(frames)
        self._count(frames[0])


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: send null rather than lose the event to an encoding error."""
    if value is None or type(value) in _PLAIN:  # the common case, checked first: it is per line
        return value
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
