"""Waiting without guessing: polls with a deadline, and loopback ports that are free now."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01) -> T:
    """Poll `predicate` until it returns something truthy and return that; TimeoutError after
    `timeout` seconds, naming the predicate."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_tcp_endpoint() -> str:
    """A ZeroMQ loopback endpoint on a port that was free a moment ago."""
    return f"tcp://127.0.0.1:{free_port()}"
