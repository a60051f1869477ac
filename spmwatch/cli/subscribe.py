"""`spmwatch subscribe`: print what a daemon (or responder, or proxy) publishes, and any gaps."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any

import zmq

from spmwatch import protocol
from spmwatch.cli import endpoint, endpoint_in_config
from spmwatch.config import ConfigError
from spmwatch.curve import CurveError, HandshakeWatch, configure_client
from spmwatch.model import reasons_text

_ENVELOPE = ("v", "seq", "time", "scan_id", "source")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "subscribe",
        help="print published events (alerts, frames, lines, heartbeats, actions)",
        description="Subscribe to a spmwatch PUB socket and print each event; seq gaps and "
        "daemon restarts (seq back to 0) are reported on stderr.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--endpoint", type=endpoint, help=f"PUB socket to read (default {protocol.PUB_ENDPOINT})"
    )
    where.add_argument(
        "--config", metavar="FILE", help="read the PUB socket this daemon config binds"
    )
    parser.add_argument(
        "--topic",
        action="append",
        choices=protocol.TOPICS,
        help="topic to follow (repeatable; default: all)",
    )
    parser.add_argument("--count", type=int, help="exit after this many events")
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="exit 1 if this many seconds pass idle"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--secret-key", help="CURVE: this subscriber's NAME.key_secret")
    parser.add_argument("--server-key", help="CURVE: the publisher's public NAME.key")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.secret_key is None) != (args.server_key is None):
        print("spmwatch subscribe: CURVE needs both --secret-key and --server-key", file=sys.stderr)
        return 2
    try:
        address = endpoint_in_config(args.config, "publish") if args.config else args.endpoint
        address = address or protocol.PUB_ENDPOINT
    except ConfigError as exc:
        print(f"spmwatch subscribe: config error: {exc}", file=sys.stderr)
        return 2
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    watch = None
    try:
        if args.secret_key:
            configure_client(socket, args.secret_key, args.server_key)
        watch = HandshakeWatch(socket, _say)  # with CURVE or without: a mismatch is told too
        for topic in args.topic or protocol.TOPICS:
            socket.subscribe(topic.encode())
        socket.connect(address)
        return _print_events(socket, args, watch, address)
    except (CurveError, zmq.ZMQError) as exc:
        print(f"spmwatch subscribe: {exc}", file=sys.stderr)
        return 2
    finally:
        if watch is not None:
            watch.close()
        socket.close(linger=0)
        context.term()


def _say(problem: str) -> None:
    print(f"spmwatch subscribe: {problem}", file=sys.stderr, flush=True)


def _silence(args: argparse.Namespace, watch: HandshakeWatch, endpoint: str) -> str:
    """Why --timeout passed idle, as far as this end can tell: the handshake failed (told above
    as it happened), no publisher ever answered at the endpoint (no daemon, or another port),
    or one did and sent nothing on these topics."""
    said = f"nothing for {args.timeout:g} s"
    if endpoint in watch.failed:
        return f"{said}: the handshake with {endpoint} failed, as said above"
    if not watch.answered:
        return (
            f"{said}: no publisher answered at {endpoint}. Is the daemon running, publishing "
            "there? (`spmwatch ctl status` asks it; `--config` takes the endpoint from its config)"
        )
    topics = ", ".join(args.topic) if args.topic else "any topic"
    return f"{said}: connected to {endpoint}, but nothing was published on {topics}"


def _print_events(
    socket: zmq.Socket, args: argparse.Namespace, watch: HandshakeWatch, endpoint: str
) -> int:
    seq = protocol.SeqTracker()
    seen = 0
    idle_since = time.monotonic()
    while args.count is None or seen < args.count:
        watch.check()
        if not socket.poll(100):
            if args.timeout is not None and time.monotonic() - idle_since > args.timeout:
                print(f"spmwatch subscribe: {_silence(args, watch, endpoint)}", file=sys.stderr)
                return 1
            continue
        idle_since = time.monotonic()
        try:
            topic, payload = protocol.decode_event(socket.recv_multipart())
        except protocol.ProtocolError as exc:
            print(f"spmwatch subscribe: bad message: {exc}", file=sys.stderr)
            continue
        restarted = seq.restarted(topic, payload)
        said = seq.gap(topic, payload)  # records the message
        if restarted:
            publisher = "the responder" if topic == protocol.TOPIC_ACTION else "the daemon"
            who = payload.get("daemon") or publisher
            said = f"seq back to {payload['seq']}: {who} restarted"
        if said:
            print(f"spmwatch subscribe: {topic}: {said}", file=sys.stderr, flush=True)
        print(_render(topic, payload, args.json), flush=True)
        seen += 1
    return 0


def _render(topic: str, payload: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps({"topic": topic, **payload}, separators=(",", ":"))
    stamp = payload.get("time")
    when = (
        datetime.fromtimestamp(stamp).strftime("%H:%M:%S.%f")[:-3]
        if isinstance(stamp, int | float)
        else "?"
    )
    rest = " ".join(
        f"{k}={reasons_text(v) if k == 'reasons' and v else _short(v)}"
        for k, v in payload.items()
        if k not in _ENVELOPE
    )
    return f"{when} {topic} #{payload['seq']} {payload.get('scan_id') or '-'} {rest}"


def _short(value: Any) -> str:
    """A value for the one-line view: words (reasons, problems) in full, structured values
    (per-line scores, counters) cut at 200 characters; --json has everything."""
    if isinstance(value, str):
        return value
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 200 else text[:197] + "..."
