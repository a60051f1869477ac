"""`spmwatch respond`: the responder service (alerts in, Igor actions and outcomes out)."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading

import zmq

from spmwatch.config import ConfigError
from spmwatch.curve import CurveError
from spmwatch.igor import IgorUnavailable
from spmwatch.logs import setup_logging
from spmwatch.respond import RespondSettings, load_respond_settings, serve


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "respond",
        help="act on alerts through aespm: stop the scan, withdraw, rescan (see docs/responder.md)",
        description="Subscribe to spmwatch.alert, apply the policy and publish each outcome on "
        "spmwatch.action. Without --config the built-in defaults apply.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="respond.toml (default: built-in defaults)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="log the exact Igor commands, send nothing"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_respond_settings(args.config) if args.config else RespondSettings()
    except ConfigError as exc:
        print(f"spmwatch respond: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        settings = dataclasses.replace(settings, dry_run=True)
    setup_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve(settings, stop)
    except zmq.ZMQError as exc:  # the actions socket's address in use: may pass, so exit 1
        print(
            f"spmwatch respond: actions_endpoint {settings.actions_endpoint}: "
            f"{zmq.strerror(exc.errno)}",
            file=sys.stderr,
        )
        return 1
    except (IgorUnavailable, CurveError, OSError) as exc:  # settings to fix: not retried
        print(f"spmwatch respond: {exc}", file=sys.stderr)
        return 2
    return 0
