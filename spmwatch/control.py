"""The control socket: a REP socket in its own thread answering `spmwatch ctl`.

One request, one reply, JSON both ways (protocol.encode_request / encode_reply). The handler
runs in this thread, so it must be thread-safe; a bad request or a failing handler gets an
`ok: false` reply with the reason, never a dead socket (a REP socket that does not reply is
stuck for good).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog
import zmq

from spmwatch import protocol

log = structlog.get_logger("spmwatch.control")

Handler = Callable[[str], dict[str, Any]]
_POLL_MS = 100


class ControlServer:
    """Binds `endpoint` in `start()` (so a busy port fails there) and serves until `stop()`."""

    def __init__(self, endpoint: str, handler: Handler, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self._handler = handler
        self._context = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._socket: zmq.Socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        socket = self._context.socket(zmq.REP)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            socket.bind(self.endpoint)
        except zmq.ZMQError:
            socket.close()
            raise
        self.endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)  # port * made a number
        self._socket = socket
        self._thread = threading.Thread(target=self._run, name="spmwatch-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        socket = self._socket
        assert socket is not None
        try:
            while not self._stop.is_set():
                if socket.poll(_POLL_MS, zmq.POLLIN):
                    frames = socket.recv_multipart()
                    socket.send(self._answer(frames))
        finally:
            socket.close()

    def _answer(self, frames: list[bytes]) -> bytes:
        try:
            if len(frames) != 1:
                raise protocol.ProtocolError(f"request has {len(frames)} frames, expected 1")
            cmd = protocol.decode_request(frames[0])
        except protocol.ProtocolError as exc:
            log.warning("control_request_rejected", reason=str(exc))
            return protocol.encode_reply(False, error=str(exc))
        try:
            fields = self._handler(cmd)
        except Exception as exc:  # the reply must go out whatever happened
            log.exception("control_command_failed", cmd=cmd)
            return protocol.encode_reply(False, cmd=cmd, error=f"{type(exc).__name__}: {exc}")
        ok = bool(fields.pop("ok", True))
        return protocol.encode_reply(ok, cmd=cmd, **fields)


def request(endpoint: str, cmd: str, timeout: float = 5.0) -> dict[str, Any]:
    """Send one command and wait up to `timeout` s; TimeoutError when no daemon answers."""
    context = zmq.Context.instance()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(endpoint)
        socket.send(protocol.encode_request(cmd))
        if not socket.poll(int(timeout * 1000), zmq.POLLIN):
            raise TimeoutError(f"no spmwatch daemon answered at {endpoint} within {timeout:g} s")
        return protocol.decode_reply(socket.recv())
    finally:
        socket.close()
