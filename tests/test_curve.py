"""CURVE keys and sockets: real key files, real PUB/SUB on loopback, real ZAP authentication."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
import zmq
from responder_helpers import wait_for
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from spmwatch import curve


def test_keypair_files_round_trip_and_secret_is_private(tmp_path: Path) -> None:
    files = curve.write_keypair(tmp_path, "node1")
    assert files.public == tmp_path / "node1.key"
    assert stat.S_IMODE(files.secret.stat().st_mode) == 0o600
    public, secret = curve.read_secret_key(files.secret)
    assert curve.read_public_key(files.public) == public
    assert zmq.curve_public(secret) == public  # the secret really belongs to the public key
    assert "secret-key" not in files.public.read_text()
    # zmq.auth reads the same format
    assert zmq.auth.load_certificates(tmp_path) == {public: True}


def test_refuses_to_overwrite_and_bad_names(tmp_path: Path) -> None:
    curve.write_keypair(tmp_path, "a")
    with pytest.raises(curve.CurveError, match="already exists"):
        curve.write_keypair(tmp_path, "a")
    with pytest.raises(curve.CurveError, match="key name"):
        curve.write_keypair(tmp_path, "../escape")


def test_bad_key_files_name_the_file(tmp_path: Path) -> None:
    files = curve.write_keypair(tmp_path, "a")
    with pytest.raises(curve.CurveError, match=r"a\.key: holds no secret-key"):
        curve.read_secret_key(files.public)
    broken = tmp_path / "broken.key"
    broken.write_text('curve\n    public-key = "short"\n')
    with pytest.raises(curve.CurveError, match=r"broken\.key: public-key is not"):
        curve.authorized_keys(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(curve.CurveError, match=r"no \*\.key files"):
        curve.authorized_keys(empty)
    with pytest.raises(curve.CurveError, match="does not exist"):
        curve.authorized_keys(tmp_path / "missing")


def test_only_authorised_subscriber_receives(tmp_path: Path) -> None:
    server = curve.write_keypair(tmp_path / "server", "server")
    good = curve.write_keypair(tmp_path / "authorised", "good")
    bad = curve.write_keypair(tmp_path / "elsewhere", "bad")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    auth = curve.configure_server(pub, server.secret, tmp_path / "authorised")
    monitor = pub.get_monitor_socket()
    subs: dict[str, zmq.Socket] = {}
    try:
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        for name, pair in (("good", good), ("bad", bad), ("plain", None)):
            sub = ctx.socket(zmq.SUB)
            sub.subscribe(b"")
            if pair is not None:
                curve.configure_client(sub, pair.secret, server.public)
            sub.connect(f"tcp://127.0.0.1:{port}")
            subs[name] = sub

        seen: set[int] = set()

        def handshakes_done() -> bool:
            while monitor.poll(0):
                seen.add(recv_monitor_message(monitor)["event"])
            return {
                zmq.EVENT_HANDSHAKE_SUCCEEDED,
                zmq.EVENT_HANDSHAKE_FAILED_AUTH,  # the wrong key, refused by ZAP
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,  # the plain-text subscriber
            } <= seen

        wait_for(handshakes_done, timeout=10)

        def good_received() -> bool:
            pub.send_multipart([b"spmwatch.alert", b"{}"])
            return bool(subs["good"].poll(20))

        wait_for(good_received, timeout=10)
        assert subs["good"].recv_multipart() == [b"spmwatch.alert", b"{}"]
        pub.send_multipart([b"spmwatch.alert", b"last"])
        while subs["good"].recv_multipart()[1] != b"last":
            pass  # drain the earlier attempts up to the last message, which must arrive
        assert subs["bad"].poll(0) == 0
        assert subs["plain"].poll(0) == 0
    finally:
        for sub in subs.values():
            sub.close(linger=0)
        pub.disable_monitor()
        monitor.close(linger=0)
        pub.close(linger=0)
        auth.stop()
        ctx.term()


def test_keys_command_writes_a_pair(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "spmwatch", "keys", "--out", str(tmp_path), "--name", "resp"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "resp.key").is_file() and (tmp_path / "resp.key_secret").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert again.returncode == 2
    assert "already exists" in again.stderr


def test_a_refused_client_is_logged_once_a_minute() -> None:
    now = [0.0]
    # the authenticator hands keys over z85-encoded, as they stand in the .key files
    known = z85.encode(b"k" * 32)
    keys = curve._KeySet(frozenset({known}), clock=lambda: now[0])
    stranger = z85.encode(b"s" * 32)
    with structlog.testing.capture_logs() as logs:
        assert keys.callback("*", known) is True
        assert keys.callback("*", stranger) is False
        now[0] += 30.0
        assert keys.callback("*", stranger) is False  # retries within the minute: no new line
        now[0] += 31.0
        assert keys.callback("*", stranger) is False
    refused = [e for e in logs if e["event"] == "curve_client_refused"]
    assert len(refused) == 2
    assert refused[0]["client_key"] == stranger.decode("ascii")  # greppable in a key folder


def _curve_publisher(tmp_path: Path, ctx: zmq.Context):
    """A CURVE publisher on loopback that admits only the key pair in tmp_path/authorised."""
    server = curve.write_keypair(tmp_path / "server", "server")
    curve.write_keypair(tmp_path / "authorised", "good")
    pub = ctx.socket(zmq.PUB)
    auth = curve.configure_server(pub, server.secret, tmp_path / "authorised")
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    return pub, auth, server, f"tcp://127.0.0.1:{port}"


@pytest.mark.parametrize("mistake", ["client key not authorised", "wrong server key"])
def test_a_client_whose_handshake_fails_is_told_why(tmp_path: Path, mistake: str) -> None:
    ctx = zmq.Context()
    pub, auth, server, endpoint = _curve_publisher(tmp_path, ctx)
    stranger = curve.write_keypair(tmp_path / "elsewhere", "stranger")
    other_server = curve.write_keypair(tmp_path / "other", "other")
    now = [0.0]
    problems: list[str] = []
    sub = ctx.socket(zmq.SUB)
    watch = None
    try:
        if mistake == "client key not authorised":
            curve.configure_client(sub, stranger.secret, server.public)
        else:
            good = tmp_path / "authorised" / "good.key_secret"
            curve.configure_client(sub, good, other_server.public)
        watch = curve.HandshakeWatch(sub, problems.append, clock=lambda: now[0])
        sub.connect(endpoint)

        def told() -> bool:
            watch.check()
            return bool(problems)

        wait_for(told, timeout=10)
        if mistake == "client key not authorised":
            assert "refused this client's key (ZAP status 400)" in problems[0]
            # ZeroMQ gives up after a refusal; the watch connects again (the key may have
            # been added since), and the new refusal is reported a minute after the first
            now[0] += curve.REFUSED_LOG_INTERVAL
            wait_for(lambda: (watch.check(), len(problems) == 2)[1], timeout=10)
            assert "refused this client's key" in problems[1]
            return
        assert "check that the server key given is the server's own" in problems[0]
        # this client retries ~10 times a second: nothing more within the minute ...
        for _ in range(5):
            sub.poll(150)
            watch.check()
        assert len(problems) == 1
        now[0] += curve.REFUSED_LOG_INTERVAL  # ... and once more after it
        wait_for(lambda: (watch.check(), len(problems) == 2)[1], timeout=10)
    finally:
        if watch is not None:
            watch.close()
        sub.close(linger=0)
        pub.close(linger=0)
        auth.stop()
        ctx.term()


def test_subscribe_with_a_refused_key_says_so(tmp_path: Path) -> None:
    ctx = zmq.Context()
    pub, auth, server, endpoint = _curve_publisher(tmp_path, ctx)
    stranger = curve.write_keypair(tmp_path / "elsewhere", "stranger")
    cmd = [sys.executable, "-m", "spmwatch", "subscribe", "--endpoint", endpoint]
    cmd += ["--secret-key", str(stranger.secret), "--server-key", str(server.public)]
    cmd += ["--timeout", "3"]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120
        )
    finally:
        pub.close(linger=0)
        auth.stop()
        ctx.term()
    assert done.returncode == 1  # nothing received: the idle time-out
    assert "the server refused this client's key" in done.stderr
    assert done.stderr.count("refused this client's key") == 1  # not once per retry
    # and the time-out does not send the user looking for a daemon that is there
    assert f"nothing for 3 s: the handshake with {endpoint} failed, as said above" in done.stderr
    assert "no publisher answered" not in done.stderr


def test_subscribe_without_keys_to_a_curve_daemon_says_so(tmp_path: Path) -> None:
    """A plain subscriber of a daemon with [curve] on heard nothing and was told nothing."""
    ctx = zmq.Context()
    pub, auth, _, endpoint = _curve_publisher(tmp_path, ctx)
    cmd = [sys.executable, "-m", "spmwatch", "subscribe", "--endpoint", endpoint]
    try:
        done = subprocess.run(
            [*cmd, "--timeout", "3"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[1],
            timeout=120,
        )
    finally:
        pub.close(linger=0)
        auth.stop()
        ctx.term()
    assert done.returncode == 1  # nothing received: the idle time-out
    assert f"{endpoint}: the server and this client disagree on CURVE" in done.stderr
    assert done.stderr.count("disagree on CURVE") == 1  # not once per retry
