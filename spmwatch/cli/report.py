"""`spmwatch report FILE --out DIR`: a PNG, the score JSON and a per-line mask for one scan."""

from __future__ import annotations

import argparse
import sys

from spmwatch.assess import assess, score_record
from spmwatch.cli.score import (
    EXIT_BAD_MODEL,
    EXIT_UNREADABLE,
    add_model_option,
    compiling_note,
    open_model,
    open_settings,
)
from spmwatch.ibw import IbwError, read_problem, read_scan

EXIT_WRITE_FAILED = 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a PNG, the score JSON and a flag mask for one .ibw scan",
        description="Score FILE as `spmwatch score` does and write <scan_id>.png, "
        "<scan_id>.json (the `score --json` record) and <scan_id>_mask.npy (True for each "
        "stored line inside an event) into DIR. Exit 0 when written, 1 when DIR cannot be "
        "written, 2 when FILE cannot be read or the config is bad.",
    )
    parser.add_argument("file", metavar="FILE", help="an Asylum .ibw scan")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the report")
    add_model_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: matplotlib would otherwise load with every command, `spmwatch run` too.
    from spmwatch.report import write_report

    settings = open_settings(args, "report")
    if settings is None:
        return EXIT_UNREADABLE
    model = open_model(args.model or settings.model.path or None, "report")
    if model is None:
        return EXIT_BAD_MODEL
    try:
        scan = read_scan(args.file)
    except (IbwError, OSError) as exc:
        print(f"spmwatch report: {args.file}: {read_problem(exc)}", file=sys.stderr)
        return EXIT_UNREADABLE
    with compiling_note("report"):
        frame, verdict, watched = assess(scan, model, settings.scoring, settings.model)
        record = score_record(args.file, frame, verdict, watched, scan.problems)
    try:
        paths = write_report(scan, frame, record, args.out)
    except OSError as exc:
        print(f"spmwatch report: cannot write the report into {args.out}: {exc}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    for path in paths.values():
        print(path)
    return 0
