"""`spmwatch demo`: daemon, responder (dry-run) and a replayed failing scan, start to finish."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from spmwatch.synth import FAULT_KINDS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the daemon and a dry-run responder on a generated scan whose tip fails",
        description="Start the daemon and the responder (dry-run, no microscope) on free "
        "loopback ports, replay a generated scan whose tip fails part-way, print the alert, the "
        "Igor commands the responder would send and the frame verdict, and write a report.",
    )
    parser.add_argument(
        "--out", type=Path, help="folder for the scan, logs and report (default: a new temp folder)"
    )
    parser.add_argument(
        "--fault",
        choices=FAULT_KINDS,
        default="tip_change",
        help="what goes wrong in the generated scan (default: tip_change); gain_drift builds "
        "too slowly for a line alert and is failed by the frame verdict",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated scan")
    parser.add_argument(
        "--rate", type=float, default=100.0, metavar="R", help="replay rate, lines/s (default 100)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: spmwatch.demo brings matplotlib (the report), which every other command,
    # `spmwatch run` among them, would otherwise load at start for nothing.
    from spmwatch.demo import DemoError, run_demo

    out = args.out or Path(tempfile.mkdtemp(prefix="spmwatch-demo-"))
    try:
        return run_demo(out, fault=args.fault, seed=args.seed, rate=args.rate)
    except DemoError as exc:
        print(f"spmwatch demo: {exc} (logs in {out})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.out is None:  # a folder of its own, half filled: nothing to keep
            shutil.rmtree(out, ignore_errors=True)
        raise
