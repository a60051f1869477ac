"""`spmwatch subscribe` and `spmwatch proxy` as real subprocesses on loopback sockets."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import zmq
from responder_helpers import FakeDaemon, alert_payload, free_tcp_endpoint, wait_for

from spmwatch import protocol

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
        "6",
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
        first.send(alert_payload(0, scan_id="after_restart"))
        first.send(alert_payload(1, scan_id="after_restart"))
        first.send(alert_payload(1, scan_id="restarted_again"))  # its seq 0 never arrived
        out, err = sub.communicate(timeout=30)
        assert sub.returncode == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        # each daemon's events keep their order; the two streams may interleave either way
        assert {e["topic"] for e in events} == {"spmwatch.alert"}
        assert [(e["scan_id"], e["seq"]) for e in events if "daemon" not in e] == [
            ("afm1_scan", 0),
            ("afm1_scan", 2),
            ("after_restart", 0),
            ("after_restart", 1),
            ("restarted_again", 1),
        ]
        assert [(e["scan_id"], e["seq"], e["daemon"]) for e in events if "daemon" in e] == [
            ("afm2_scan", 0, "afm2")
        ]
        assert err.count("seq gap") == 1  # afm2's seq 0 is its own stream, not a gap for afm1
        assert "expected 1, got 2 (1 missing)" in err
        # afm1 going back, twice; afm2's first 0 is no restart
        assert err.count("restarted") == 2 and "went back" not in err
        assert "spmwatch.alert: seq back to 0: the daemon restarted" in err
        assert "spmwatch.alert: seq back to 1: the daemon restarted" in err
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
        reasons = [
            {"feature": "chan_band_frac_median", "log_odds": 1.75, "meaning": "offset bands"},
            {"feature": "chan_drift_median", "log_odds": 0.92, "meaning": "texture drift"},
        ]
        why = "a reason longer than a terminal line is worth reading to its end: " * 2
        alert = alert_payload(0, scan_id="scanX", kind="streak")
        daemon.send(alert | {"why": why, "reasons": reasons})
        out, err = sub.communicate(timeout=30)
        assert sub.returncode == 0, err
        assert "spmwatch.alert #0 scanX" in out and "kind=streak" in out
        # words are shown whole (they were cut at 80 characters), reasons in words
        assert f"why={why}" in out
        assert "reasons=offset bands (+1.8), texture drift (+0.9)" in out
        idle = _spmwatch("subscribe", "--endpoint", daemon.endpoint, "--timeout", "0.5")
        _, err = idle.communicate(timeout=30)
        assert idle.returncode == 1
        assert f"nothing for 0.5 s: connected to {daemon.endpoint}, but nothing was" in err
        # no publisher there at all: said so, with where to look (it only said "nothing")
        nobody = free_tcp_endpoint()
        lost = _spmwatch("subscribe", "--endpoint", nobody, "--timeout", "0.5")
        _, err = lost.communicate(timeout=30)
        assert lost.returncode == 1
        assert f"nothing for 0.5 s: no publisher answered at {nobody}. Is the daemon" in err
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


def test_a_refused_proxy_gets_in_once_its_key_is_added_and_the_daemon_restarted(
    tmp_path: Path,
) -> None:
    """The proxy stayed deaf after a daemon refused its key, even once the key was added."""
    from spmwatch import curve

    context = zmq.Context()
    server = curve.write_keypair(tmp_path / "daemon", "daemon")
    proxy_keys = curve.write_keypair(tmp_path / "proxy", "proxy")
    allowed = tmp_path / "authorized_keys"
    curve.write_keypair(allowed, "someone_else")  # the proxy's key is not there yet
    port = free_tcp_endpoint().rsplit(":", 1)[1]
    daemon_endpoint = f"tcp://127.0.0.1:{port}"

    class CurveDaemon:  # a daemon process's PUB side: its own context, as a new process has
        def __init__(self) -> None:
            self.context = zmq.Context()
            self.pub = self.context.socket(zmq.XPUB)
            self.pub.setsockopt(zmq.LINGER, 0)
            self.auth = curve.configure_server(self.pub, server.secret, allowed, self.context)
            self.pub.bind(daemon_endpoint)

        def stop(self) -> None:
            self.pub.close(linger=0)
            self.auth.stop()
            self.context.term()

    daemon = CurveDaemon()
    bind = free_tcp_endpoint()
    proxy = _spmwatch(
        "proxy", "--connect", daemon_endpoint, "--bind", bind,
        "--secret-key", str(proxy_keys.secret), "--daemon-key", str(server.public),
    )  # fmt: skip
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt_string(zmq.SUBSCRIBE, protocol.TOPIC_ALERT)
    sub.connect(bind)
    try:
        assert proxy.stderr is not None
        ready, _, _ = select.select([proxy.stderr], [], [], 60)
        refused = proxy.stderr.readline() if ready else ""
        assert f"{daemon_endpoint}: the server refused this client's key" in refused
        shutil.copy(proxy_keys.public, allowed)  # the key added, then the daemon restarted
        daemon.stop()
        daemon = CurveDaemon()
        pub = daemon.pub
        # the proxy connects again within curve.REFUSED_RETRY s, and the subscription reaches
        # the daemon through it: from then on what the daemon publishes comes through
        wait_for(lambda: pub.poll(100) and b"\x01" in pub.recv(), timeout=30)
        event = protocol.encode_event(protocol.TOPIC_ALERT, alert_payload(0))
        pub.send_multipart(event)
        assert sub.poll(10_000), "nothing came through the proxy"
        assert protocol.decode_event(sub.recv_multipart())[1]["seq"] == 0
        ready, _, _ = select.select([proxy.stderr], [], [], 10)  # and it says it got in
        assert ready and f"{daemon_endpoint}: connected" in proxy.stderr.readline()
    finally:
        sub.close(linger=0)
        proxy.terminate()
        proxy.communicate(timeout=30)
        daemon.stop()
        context.term()
    assert proxy.returncode == 0
