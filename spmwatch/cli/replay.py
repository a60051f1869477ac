"""`spmwatch replay FILE [--rate R | --fast] [--to [ENDPOINT] | --config FILE]`: play a saved
frame line by line.

With `--to` (or `--config`, the line socket a daemon config binds) the lines go out over the
line socket, so a running daemon sees a live scan (a producer for demos, tests and set-ups
without a live hook); without either, into the scorer in this process.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from spmwatch.classify.classifier import load_default
from spmwatch.cli import connect_to_bound, endpoint, scan_id, section_in_config
from spmwatch.config import ConfigError
from spmwatch.ibw import IbwError, read_scan
from spmwatch.model import Scan, ordinal, probability_text, reasons_text, span_text
from spmwatch.protocol import LINES_ENDPOINT, safe_scan_id
from spmwatch.scoring.scorer import ScanScorer
from spmwatch.sources.linesocket import LineSender
from spmwatch.sources.replay import line_rate, replay_lines

EXIT_FAILED = 1
EXIT_UNREADABLE = 2
EXIT_BAD_CONFIG = 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="play an .ibw frame line by line, to a running daemon or to the scorer",
        description="Play a saved Asylum .ibw frame line by line in acquisition order, at its "
        "recorded ScanRate (lines/s) unless told otherwise.",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="the .ibw frame to play")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=_positive(float), metavar="R", help="lines per second (> 0)")
    pace.add_argument("--fast", action="store_true", help="as fast as possible")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--to",
        metavar="ENDPOINT",
        nargs="?",
        const=LINES_ENDPOINT,
        type=endpoint,
        help=f"send the lines to a line socket (default endpoint {LINES_ENDPOINT})",
    )
    where.add_argument(
        "--config",
        metavar="FILE",
        help="send the lines to the line socket this daemon config (spmwatch.toml) binds",
    )
    parser.add_argument(
        "--scan-id", type=scan_id, help="scan id to use (default: the file name, made safe)"
    )
    parser.add_argument(
        "--every",
        type=_positive(int),
        default=32,
        metavar="N",
        help="print progress every N lines (default 32)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=10.0,
        metavar="S",
        help="give up when the receiver takes nothing for S seconds (default 10)",
    )
    parser.set_defaults(func=run)


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type: `kind` of the text, refused (exit 2, naming it) unless > 0."""

    def parse(text: str) -> float:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def run(args: argparse.Namespace) -> int:
    if args.config:
        try:
            args.to = _line_socket_of(args.config)
        except ConfigError as exc:
            print(f"spmwatch replay: config error: {exc}", file=sys.stderr)
            return EXIT_BAD_CONFIG
    try:
        scan = read_scan(args.file, scan_id=args.scan_id or safe_scan_id(args.file.stem))
    except IbwError as exc:
        print(f"spmwatch replay: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except OSError as exc:
        print(f"spmwatch replay: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        rate = line_rate(scan, 0.0 if args.fast else args.rate)
    except ValueError as exc:
        print(f"spmwatch replay: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(_describe(scan, rate), flush=True)
    if args.to:
        return _send(scan, rate, args)
    return _score(scan, rate, args)


def _line_socket_of(config: str) -> str:
    """Where the daemon of `config` takes live lines; ConfigError when it takes none."""
    lines = section_in_config(config, "lines")
    if not lines.enabled:
        raise ConfigError(f"{config}: [lines] enabled = false: that daemon takes no live lines")
    return connect_to_bound(config, "lines", lines.endpoint)


def _describe(scan: Scan, rate: float) -> str:
    pace = "as fast as possible" if math.isinf(rate) else f"{rate:g} lines/s"
    partial = f" (partial: {scan.n_lines} of {scan.expected_lines})" if scan.partial else ""
    return (
        f"{scan.scan_id}: {scan.n_lines} lines{partial} x {scan.n_points} points, "
        f"channels {', '.join(scan.channels)}; replaying {pace}"
    )


def _send(scan: Scan, rate: float, args: argparse.Namespace) -> int:
    started = time.monotonic()
    sent = 0
    try:
        with LineSender(args.to, send_timeout=args.timeout, linger=args.timeout) as sender:
            for line in replay_lines(scan, rate):
                sender.send(line)
                sent += 1
                if sent % args.every == 0:
                    print(f"sent {sent}/{scan.n_lines} lines (line {line.index})", flush=True)
            sender.end(scan.scan_id)
    except TimeoutError as exc:
        print(f"spmwatch replay: {exc}; {sent} lines sent", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if sent:  # the scan is open in the daemon, which cannot tell this from a stopped scan
            print(
                f"spmwatch replay: interrupted after {sent} of {scan.n_lines} lines, no end sent: "
                f"the daemon holds {scan.scan_id} open until [daemon] scan_timeout, then "
                "judges it a scan stopped early (fail)",
                file=sys.stderr,
            )
        raise
    elapsed = time.monotonic() - started
    print(f"sent {sent} lines and the end of {scan.scan_id} to {args.to} in {elapsed:.1f} s")
    return 0


def _score(scan: Scan, rate: float, args: argparse.Namespace) -> int:
    """Feed the in-process scorer, as the daemon would, and print what it sees as it sees it."""
    scorer = ScanScorer(scan.scan_id, list(scan.channels), scan.n_points, scan.expected_lines)
    flagged = 0
    for line in replay_lines(scan, rate):
        score = scorer.push(line)
        flagged += score.flagged
        if scorer.alert is not None and scorer.alert.position == score.position:
            alert = scorer.alert
            print(
                f"ALERT line {alert.line} (the {ordinal(alert.position + 1)} scanned): "
                f"{alert.kind}, {alert.severity}",
                flush=True,
            )
        if (score.position + 1) % args.every == 0:
            print(
                f"line {score.index:>5} (the {ordinal(score.position + 1)} scanned): score "
                f"{score.score:6.2f}, {flagged} flagged so far",
                flush=True,
            )
    frame = scorer.finish()
    print(f"{frame.n_lines} lines scored, {flagged} flagged, {len(frame.events)} events")
    for event in frame.events:
        print(
            f"  {event.kind} {span_text(event.kind, event.start, event.end)}, "
            f"{event.severity} (score {event.score:.2f})"
        )
    # the frame's verdict, as the daemon publishes it at the scan's end
    verdict = load_default().verdict(frame, scan.channels, finished=True)
    why = reasons_text(verdict.reasons) if verdict.decided_by == "model" else ""
    print(
        f"verdict: {verdict.verdict} (p={probability_text(verdict.probability, verdict.threshold)}"
        f", decided by {verdict.decided_by.replace('_', ' ')}{', for: ' + why if why else ''})"
    )
    return 0
