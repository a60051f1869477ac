"""`spmwatch inspect FILE... [--json]`: what spmwatch sees in each .ibw file.

Every file gets a record, so one broken file in a batch does not hide the others; the exit
code (2) still tells a script that something was unreadable. A wave that reads but is no
image (a force curve) is said to be one, and is no error: `score` and the daemon skip it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable

from spmwatch.cli import files_note
from spmwatch.ibw import inspect_file

EXIT_UNREADABLE = 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show channels, pairs, lines and completeness of .ibw files",
        description="Read each Asylum .ibw file and report what spmwatch sees in it. "
        "Exit 0 when every file reads (a wave that is no image, such as a force curve, reads), "
        "2 when any is unreadable.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help=".ibw files to inspect")
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON record per line: `partial` is a frame with fewer lines than it was set "
        "up for, `file_complete` false a file not (yet) fully written, `image` false a wave "
        "that is no image",
    )
    parser.set_defaults(func=run)


def _directions(pair: Iterable[str | None]) -> str:
    trace, retrace = pair
    return "/".join(tag for tag, name in (("T", trace), ("R", retrace)) if name)


def format_record(record: dict[str, object]) -> str:
    """A compact human line (plus indented error lines) for one record."""
    if record["channels"] is None:
        status = "UNREADABLE"
        if record["file_complete"] is False:
            status = "INCOMPLETE"
        elif record["image"] is False:
            status = "NOT AN IMAGE (skipped by score and the daemon)"
        head = f"{record['file']}  {status}"
    else:
        pairs = record["pairs"]
        assert isinstance(pairs, dict)
        channels = " ".join(f"{prefix}({_directions(pair)})" for prefix, pair in pairs.items())
        status = "partial" if record["partial"] else "complete"
        down = "down" if record["scan_down"] else "up"
        rate = record["scan_rate"]  # 0 when the wave has no Asylum note to tell it
        rate_text = f"{rate:g} Hz" if rate else "rate unknown"
        head = (
            f"{record['file']}  {record['lines']}/{record['expected_lines']} lines x "
            f"{record['points']} pts  {rate_text}  {down}  {status}  {channels}"
        )
    errors = record["errors"]
    assert isinstance(errors, list)
    return "\n".join([head, *(f"    ! {error}" for error in errors)])


def run(args: argparse.Namespace) -> int:
    unreadable = 0
    for path in args.files:
        record = inspect_file(path)
        unreadable += record["channels"] is None and record["image"] is not False
        print(json.dumps(record) if args.json else format_record(record), flush=True)
    if unreadable and not args.json:
        print(files_note(unreadable, len(args.files), "unreadable"), file=sys.stderr)
    return EXIT_UNREADABLE if unreadable else 0
