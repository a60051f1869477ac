"""CURVE keys and socket set-up, so alerts that cross a network are encrypted and authenticated.

Without CURVE anyone who reaches the port can subscribe to alerts or publish forged ones. Keys
are stored in ZeroMQ's certificate text format (the one czmq and `zmq.auth` read): a public file
`NAME.key` and a secret file `NAME.key_secret` created with mode 0600, z85 text only. A server
accepts only the clients whose public `*.key` files sit in its authorised-keys folder.
"""

from __future__ import annotations

import datetime
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from spmwatch.logs import Throttle

log = structlog.get_logger("spmwatch.curve")

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_Z85_KEY_LENGTH = 40
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_HANDSHAKE_EVENTS = _HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED


class CurveError(ValueError):
    """A key file or folder that cannot be used; the text names the file and the reason."""


@dataclass(frozen=True)
class KeyFiles:
    """Where `write_keypair` put a pair."""

    public: Path
    secret: Path


def write_keypair(out_dir: str | Path, name: str = "spmwatch") -> KeyFiles:
    """Generate and write a key pair; never overwrite, since a lost secret cannot be recovered."""
    if not _NAME.fullmatch(name):
        raise CurveError(f"key name {name!r} must be letters, digits, '.', '_' or '-'")
    if not zmq.has("curve"):
        raise CurveError("this libzmq was built without CURVE support")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = KeyFiles(out / f"{name}{PUBLIC_SUFFIX}", out / f"{name}{SECRET_SUFFIX}")
    for path in (files.public, files.secret):
        if path.exists():
            raise CurveError(f"{path}: already exists; not overwriting a key")
    public, secret = zmq.curve_keypair()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    _write_new(files.secret, _certificate(public, secret, stamp), mode=0o600)
    _write_new(files.public, _certificate(public, None, stamp), mode=0o644)
    return files


def read_public_key(path: str | Path) -> bytes:
    """The z85 public key in a certificate file (public or secret one)."""
    public, _ = _load(Path(path))
    return public


def read_secret_key(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a secret certificate file."""
    path = Path(path)
    public, secret = _load(path)
    if secret is None:
        raise CurveError(f"{path}: holds no secret-key (is this the public .key file?)")
    return public, secret


def authorized_keys(directory: str | Path) -> frozenset[bytes]:
    """Every public key in `directory/*.key`; an empty or missing folder is an error."""
    folder = Path(directory)
    if not folder.is_dir():
        raise CurveError(f"{folder}: authorised-keys folder does not exist")
    keys = frozenset(read_public_key(p) for p in sorted(folder.glob(f"*{PUBLIC_SUFFIX}")))
    if not keys:
        raise CurveError(f"{folder}: no *{PUBLIC_SUFFIX} files, so no client could connect")
    return keys


# s: a client with a wrong server key retries every ~0.1 s, a refused one every
# REFUSED_RETRY (HandshakeWatch); either is reported once a minute, on both sides
REFUSED_LOG_INTERVAL = 60.0
REFUSED_RETRY = 10.0


class _KeySet:
    """ZAP credentials provider: allow exactly the given client keys, and log who is refused
    (otherwise a subscriber with a wrong key just hears nothing, and nobody can tell why)."""

    def __init__(self, keys: frozenset[bytes], clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = keys
        self._refusals = Throttle(1, REFUSED_LOG_INTERVAL, clock)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        if self._refusals.admit(key) is not None:
            log.warning(
                "curve_client_refused",
                client_key=key.decode("ascii", "replace"),  # z85 already: as in its .key file
                reason="its public key is not in the authorised-keys folder",
            )
        return False


def configure_server(
    socket: zmq.Socket,
    secret_key_file: str | Path,
    authorized_keys_dir: str | Path,
    context: zmq.Context | None = None,
) -> ThreadAuthenticator:
    """Make `socket` a CURVE server that admits only authorised clients; call before bind.

    Returns the running authenticator (it must live in the socket's context); call its `stop()`
    when the socket closes.
    """
    public, secret = read_secret_key(secret_key_file)
    keys = authorized_keys(authorized_keys_dir)
    auth = ThreadAuthenticator(context or socket.context)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_KeySet(keys))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    return auth


def configure_client(
    socket: zmq.Socket, client_secret_key_file: str | Path, server_public_key_file: str | Path
) -> None:
    """Make `socket` a CURVE client of the server whose public key is given; call before connect."""
    public, secret = read_secret_key(client_secret_key_file)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = read_public_key(server_public_key_file)


class HandshakeWatch:
    """Why a client hears nothing: its socket's failed handshakes (read from a ZeroMQ monitor
    socket, CURVE or not), each message reported per endpoint at most once per
    REFUSED_LOG_INTERVAL with what to check (make it after configure_client). Without it a
    refused subscriber only waits: the refusal is logged on the server's side alone. ZeroMQ
    does not connect again after the server refuses a key, so the watch does, every
    REFUSED_RETRY s: once the key is in the server's folder (and the server restarted), a
    responder gets in without a restart of its own. `reconnect(endpoint)` does it when the
    socket is not the caller's to touch (the proxy's, while zmq.proxy runs);
    `recovered(endpoint)` hears of a handshake that succeeds after failures (default: report).
    Call `check()` from the thread that uses the socket, `close()` before closing it."""

    def __init__(
        self,
        socket: zmq.Socket,
        report: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        reconnect: Callable[[str], None] | None = None,
        recovered: Callable[[str], None] | None = None,
    ) -> None:
        self._socket = socket
        self._curve = socket.get(zmq.MECHANISM) == zmq.CURVE  # made after configure_client
        self._monitor = socket.get_monitor_socket(_HANDSHAKE_EVENTS)
        self._report = report
        self._clock = clock
        self._reconnect = reconnect or self._connect_again
        self._reports = Throttle(1, REFUSED_LOG_INTERVAL, clock)
        self._retry: dict[str, float] = {}  # refused endpoint -> when to connect again
        self.failed: set[str] = set()  # endpoints whose last handshake failed
        self.answered: set[str] = set()  # endpoints a handshake ever succeeded with
        self._recovered = recovered or (
            lambda endpoint: report(f"{endpoint}: connected, the handshake succeeded")
        )

    def check(self) -> None:
        """Report the failures that came since the last check (each naming its endpoint, at
        most once a minute per message and endpoint) and a success after them, and connect again
        to the endpoints that refused this client's key when their time comes (never blocks)."""
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            kind = event["event"]
            endpoint = event["endpoint"].decode()
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.answered.add(endpoint)
                if endpoint in self.failed:
                    self.failed.discard(endpoint)
                    self._recovered(endpoint)
                continue
            self.failed.add(endpoint)
            if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._retry.setdefault(endpoint, self._clock() + REFUSED_RETRY)
            problem = handshake_failure(kind, event["value"], self._curve)
            if self._reports.admit((endpoint, problem)) is not None:
                self._report(f"{endpoint}: {problem}")
        now = self._clock()
        for endpoint, due in list(self._retry.items()):
            if now >= due:
                del self._retry[endpoint]
                self._reconnect(endpoint)

    def _connect_again(self, endpoint: str) -> None:
        self._socket.disconnect(endpoint)
        self._socket.connect(endpoint)

    def close(self) -> None:
        self._socket.disable_monitor()
        self._monitor.close(linger=0)


def handshake_failure(event: int, value: int, curve: bool = True) -> str:
    """What a failed handshake (a monitor event and its value) of a client with or without
    CURVE means, and what to check. Without CURVE any failure is a server that wants it: the
    mechanism mismatch is reported as such only when this side parses the server's greeting
    first, and a server that hangs up first gives no detail."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"the server refused this client's key (ZAP status {value}): copy this client's "
            "public NAME.key into the server's authorized_keys folder and restart the server "
            "(it reads the folder when it starts)"
        )
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH or not curve:
        return (
            "the server and this client disagree on CURVE: one runs with it and the other "
            "without (a daemon with [curve] on needs this client's secret key and the "
            "server's public key; docs/responder.md, CURVE)"
        )
    return (
        "the CURVE handshake failed: check that the server key given is the server's own "
        "public NAME.key, and that the server runs with CURVE on"
    )


def _certificate(public: bytes, secret: bytes | None, stamp: str) -> str:
    kind = "Secret" if secret else "Public"
    text = (
        f"#   ZeroMQ CURVE {kind} Certificate, written by spmwatch keys at {stamp}\n"
        "#   Share only the public .key file; keep the .key_secret file private.\n\n"
        "metadata\n"
        "curve\n"
        f'    public-key = "{public.decode("ascii")}"\n'
    )
    if secret:
        text += f'    secret-key = "{secret.decode("ascii")}"\n'
    return text


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create `path` with `mode` from the start, so a secret is never readable by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)
    os.chmod(path, mode)  # O_CREAT's mode is filtered by the umask; make it exact


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveError(f"{path}: not a readable CURVE certificate ({exc})") from exc
    _check_key(path, "public-key", public)
    if secret is not None:
        _check_key(path, "secret-key", secret)
    return public, secret


def _check_key(path: Path, what: str, key: bytes) -> None:
    ok = len(key) == _Z85_KEY_LENGTH
    if ok:
        try:
            z85.decode(key)
        except (ValueError, KeyError, IndexError):
            ok = False
    if not ok:
        raise CurveError(f"{path}: {what} is not a {_Z85_KEY_LENGTH}-character z85 key")
