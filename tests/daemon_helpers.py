"""Helpers for the daemon's tests and benchmarks: ports, polling, a subscriber, a daemon process.

Everything here uses real sockets on loopback and real subprocesses; waits are polls with a
deadline, never fixed sleeps.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from spmwatch import protocol
from tests.polling import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent


class Subscriber:
    """A SUB socket on its own thread collecting decoded (topic, payload, receive time)."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("",)) -> None:
        self.events: list[tuple[str, dict[str, Any], float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socket = zmq.Context.instance().socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self._socket.setsockopt_string(zmq.SUBSCRIBE, topic)
        self._socket.connect(endpoint)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._stop.is_set():
            if poller.poll(50):
                frames = self._socket.recv_multipart()
                now = time.perf_counter()
                topic, payload = protocol.decode_event(frames)
                with self._lock:
                    self.events.append((topic, payload, now))
        self._socket.close()

    def of(self, topic: str, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [
                p
                for t, p, _ in self.events
                if t == topic and all(p.get(k) == v for k, v in match.items())
            ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def assert_seq_increasing(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    assert all(b > a for a, b in itertools.pairwise(seqs)), seqs


class DaemonProcess:
    """`python -m spmwatch run --config PATH` as a subprocess, its JSON log lines collected."""

    def __init__(
        self,
        config: Path,
        extra_env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), **(extra_env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spmwatch", "run", "--config", str(config), *extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
            text=True,
            start_new_session=True,  # kill() takes its children along (a cold start's compiler)
        )
        self.logs: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            self.raw.append(text)
            try:
                self.logs.append(json.loads(text))
            except json.JSONDecodeError:
                continue

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [e for e in list(self.logs) if e.get("event") == event]

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        def ready() -> Any:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.stderr()}")
            found = self.logged("ready")
            return found[0] if found else None

        return wait_for(ready, timeout)

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def write_config(folder: Path, extra: str = "", **ports: int) -> tuple[Path, dict[str, str]]:
    """A daemon config on fresh loopback ports; returns (path, endpoints by name)."""
    p = {name: free_port() for name in ("publish", "lines", "control", "metrics")} | ports
    endpoints = {
        "publish": f"tcp://127.0.0.1:{p['publish']}",
        "lines": f"tcp://127.0.0.1:{p['lines']}",
        "control": f"tcp://127.0.0.1:{p['control']}",
        "metrics": f"127.0.0.1:{p['metrics']}",
    }
    text = (
        f'[publish]\nendpoint = "{endpoints["publish"]}"\nheartbeat_interval = 0.2\n'
        f'[lines]\nendpoint = "{endpoints["lines"]}"\n'
        f'[control]\nendpoint = "{endpoints["control"]}"\n'
        f'[metrics]\naddress = "{endpoints["metrics"]}"\n'
        f'[logging]\nlevel = "debug"\n'
    )
    path = folder / "spmwatch.toml"
    path.write_text(text + extra)
    return path, endpoints


def send_scan(endpoint: str, scan: Any, end: bool = True) -> int:
    """Push every line of `scan` (acquisition order) and its end; returns the lines sent."""
    return send_lines(endpoint, list(scan.lines(source="test")), scan.scan_id if end else None)


def send_lines(endpoint: str, lines: list, end: str | None = None) -> int:
    """Push `lines`, then the end of scan `end` if given, over one connection (so the end
    cannot overtake them); returns the lines sent."""
    from spmwatch.sources.linesocket import LineSender

    with LineSender(endpoint, linger=10.0) as sender:
        for line in lines:
            sender.send(line)
        if end is not None:
            sender.end(end)
    return len(lines)


def ctl(endpoint: str, command: str, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
    """`spmwatch ctl COMMAND --endpoint ENDPOINT` as a real subprocess."""
    args = ["ctl", command, "--endpoint", endpoint, "--timeout", str(timeout)]
    return subprocess.run(
        [sys.executable, "-m", "spmwatch", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=60,
    )
