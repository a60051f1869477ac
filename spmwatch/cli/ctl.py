"""`spmwatch ctl status|pause|resume|reload-model`: talk to a running daemon's control socket."""

from __future__ import annotations

import argparse
import json
import sys

from spmwatch import protocol
from spmwatch.cli import endpoint, endpoint_in_config
from spmwatch.config import ConfigError
from spmwatch.control import request


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ctl",
        help="query or steer a running daemon",
        description="Send one command to a running spmwatch daemon and print its JSON reply.",
    )
    parser.add_argument("command", choices=protocol.CONTROL_COMMANDS)
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--endpoint", type=endpoint, help=f"control socket (default {protocol.CONTROL_ENDPOINT})"
    )
    where.add_argument("--config", metavar="FILE", help="take the endpoint from this config")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to wait for a reply (default 5)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    endpoint = args.endpoint or protocol.CONTROL_ENDPOINT
    try:
        if args.config:
            endpoint = endpoint_in_config(args.config, "control")
        reply = request(endpoint, args.command, args.timeout)
    except ConfigError as exc:
        print(f"spmwatch ctl: config error: {exc}", file=sys.stderr)
        return 2
    except (TimeoutError, protocol.ProtocolError) as exc:
        print(f"spmwatch ctl: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2))
    if not reply.get("ok"):
        print(f"spmwatch ctl: {args.command} failed: {reply.get('error')}", file=sys.stderr)
        return 1
    return 0
