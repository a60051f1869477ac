"""`spmwatch subscribe` and `spmwatch proxy` as real subprocesses on loopback sockets."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import zmq
from responder_helpers import FakeDaemon, alert_payload, free_tcp_endpoint

ROOT = Path(__file__).resolve().parents[1]


def _spmwatch(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "spmwatch", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_subscribe_through_a_proxy_of_two_daemons_reports_gaps() -> None:
    context = zmq.Context()
    first, second = FakeDaemon(context), FakeDaemon(context)
    bind = free_tcp_endpoint()
    proxy = _spmwatch("proxy", "--connect", first.endpoint, second.endpoint, "--bind", bind)
    sub = _spmwatch(
        "subscribe",
        "--endpoint",
        bind,
        "--topic",
        "spmwatch.alert",
        "--count",
        "3",
        "--json",
        "--timeout",
        "30",
    )
    try:
        first.wait_subscriber()  # the subscription travelled subscriber -> proxy -> daemons
        second.wait_subscriber()
        first.send(alert_payload(0, scan_id="afm1_scan"))
        second.send({**alert_payload(0, scan_id="afm2_scan"), "daemon": "afm2"})
        first.send(alert_payload(2, scan_id="afm1_scan", kind="dropout"))
        out, err = sub.communicate(timeout=30)
        assert sub.returncode == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        # each daemon's events keep their order; the two streams may interleave either way
        assert {e["topic"] for e in events} == {"spmwatch.alert"}
        assert [(e["scan_id"], e["seq"]) for e in events if "daemon" not in e] == [
            ("afm1_scan", 0),
            ("afm1_scan", 2),
        ]
        assert [(e["scan_id"], e["seq"], e["daemon"]) for e in events if "daemon" in e] == [
            ("afm2_scan", 0, "afm2")
        ]
        assert err.count("seq gap") == 1  # afm2's seq 0 is its own stream, not a gap for afm1
        assert "expected 1, got 2 (1 missing)" in err
    finally:
        for process in (sub, proxy):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        proxy_out, _ = proxy.communicate(timeout=20)
        first.close()
        second.close()
        context.term()
    assert proxy.returncode == 0
    assert bind in proxy_out


def test_subscribe_prints_readable_lines_and_times_out() -> None:
    context = zmq.Context()
    daemon = FakeDaemon(context)
    sub = _spmwatch("subscribe", "--endpoint", daemon.endpoint, "--count", "1", "--timeout", "30")
    try:
        daemon.wait_subscriber()
        daemon.send(alert_payload(0, scan_id="scanX", kind="streak"))
        out, err = sub.communicate(timeout=30)
        assert sub.returncode == 0, err
        assert "spmwatch.alert #0 scanX" in out and "kind=streak" in out
        idle = _spmwatch("subscribe", "--endpoint", daemon.endpoint, "--timeout", "0.5")
        _, err = idle.communicate(timeout=30)
        assert idle.returncode == 1 and "nothing for 0.5 s" in err
    finally:
        daemon.close()
        context.term()


def test_proxy_refuses_to_republish_an_encrypted_stream_in_plain_text() -> None:
    proxy = _spmwatch(
        "proxy",
        "--connect",
        "tcp://127.0.0.1:5560",
        "--bind",
        "tcp://0.0.0.0:5570",
        "--secret-key",
        "proxy.key_secret",
        "--daemon-key",
        "daemon.key",
    )
    out, err = proxy.communicate(timeout=60)
    assert proxy.returncode == 2, out + err
    assert "plain text" in err and "--authorized-keys" in err


def test_a_proxy_open_beyond_the_machine_without_curve_warns() -> None:
    from tests.daemon_helpers import free_port

    port = free_port()
    proxy = _spmwatch(
        "proxy", "--connect", f"tcp://127.0.0.1:{free_port()}", "--bind", f"tcp://0.0.0.0:{port}"
    )
    try:
        assert proxy.stderr is not None
        ready, _, _ = select.select([proxy.stderr], [], [], 60)  # no hang if it never warns
        assert ready, "the proxy wrote nothing to stderr"
        warning = proxy.stderr.readline()  # the first line it writes to stderr
        assert "reachable beyond this machine without CURVE" in warning
    finally:
        proxy.terminate()
        proxy.communicate(timeout=30)
