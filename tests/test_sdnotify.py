"""The hand-written systemd notify client against a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from spmwatch.sdnotify import Notifier


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with _receiver(path) as sock:
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}
        notifier = Notifier(env)
        assert notifier.enabled and notifier.watchdog_interval == 5.0
        assert notifier.ready("warm in 0.5 s")
        assert sock.recv(4096) == b"READY=1\nSTATUS=warm in 0.5 s"
        assert notifier.watchdog() and sock.recv(4096) == b"WATCHDOG=1"
        assert notifier.stopping() and sock.recv(4096) == b"STOPPING=1"


@pytest.mark.skipif(
    not hasattr(socket, "AF_UNIX") or os.uname().sysname != "Linux",
    reason="abstract sockets are Linux only",
)
def test_abstract_socket() -> None:
    name = f"spmwatch-test-{os.getpid()}"
    with _receiver("\0" + name) as sock:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("scoring")
        assert sock.recv(4096) == b"STATUS=scoring"


def test_outside_systemd_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.ready() is False


def test_watchdog_for_another_pid_is_ignored() -> None:
    env = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
    assert Notifier(env).watchdog_interval is None
    assert Notifier(env).notify("READY=1") is False  # unreachable socket: False, no exception
