"""`spmwatch run --config FILE`: the monitoring daemon in the foreground (systemd runs this)."""

from __future__ import annotations

import argparse
import sys

from spmwatch.config import ConfigError
from spmwatch.settings import Settings, load_settings

EXIT_CONFIG = 2  # also systemd's RestartPreventExitStatus: a bad config is not retried


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the monitoring daemon",
        description="Score scan lines and saved frames as they arrive and publish alerts.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML settings (default: built-in defaults)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config) if args.config else Settings()
    except ConfigError as exc:
        print(f"spmwatch run: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from spmwatch.daemon import LOG_FLUSH_INTERVAL, Daemon  # heavy: once the config is good
    from spmwatch.logs import setup_logging

    setup_logging(settings.logging.level, settings.logging.format, None, LOG_FLUSH_INTERVAL)
    return Daemon(settings, config_path=args.config).run()
