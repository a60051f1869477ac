"""`spmwatch train --good DIR --bad DIR [--synthetic N] --out models/NAME`: fit the pass/fail model.

Prints the leave-one-family-out figures before it writes `<NAME>.skops` and `<NAME>.json`.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the pass/fail classifier from labelled folders plus synthetic scans",
        description="Score every .ibw in --good and --bad, add synthetic labelled scans, "
        "cross-validate by sample family, choose the threshold and write the model. A scan's "
        "sample family is its file name without the trailing number (Asylum's BaseName: "
        "PTO_AC_0004 -> PTO_AC), so name files by sample: the cross-validation holds out one "
        "family at a time, and a model is only measured fairly on samples it never saw.",
    )
    parser.add_argument("--good", type=Path, required=True, help="folder of good .ibw scans")
    parser.add_argument("--bad", type=Path, required=True, help="folder of failed .ibw scans")
    parser.add_argument(
        "--synthetic",
        type=int,
        default=1000,
        metavar="N",
        help="synthetic labelled scans to add (default 1000)",
    )
    parser.add_argument("--out", type=Path, required=True, help="model path, e.g. models/NAME")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the generated scans and the estimators (default 0)",
    )
    parser.add_argument(
        "--false-alarm",
        type=float,
        default=0.05,
        help="target false-alarm rate on good frames (default 0.05)",
    )
    parser.add_argument(
        "--threshold-rule",
        choices=("auto", "false_alarm", "max_f1"),
        default="auto",
        help="which threshold ships; auto (default): the false-alarm one if it still fails "
        ">= 90%% of the held-out real bad frames, else max F1",
    )
    parser.add_argument(
        "--bank",
        action="store_true",
        help="add the good-line memory bank features (off by default: measured worse on "
        "never-seen families and 30x slower to cross-validate)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _fmt(value: float | None) -> str:
    """A metric, or "-" where it is undefined (the sidecar stores NaN as null: an AUROC of a
    split without good or without bad frames)."""
    return "  -  " if value is None or value != value else f"{value:5.3f}"


def run(args: argparse.Namespace) -> int:
    from spmwatch.classify.classifier import sidecar_path
    from spmwatch.classify.train import train_model

    command = "spmwatch " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        result = train_model(
            args.good,
            args.bad,
            args.out,
            synthetic=args.synthetic,
            seed=args.seed,
            use_bank=args.bank,
            false_alarm=args.false_alarm,
            rule=args.threshold_rule,
            quiet=args.quiet,
            command=command,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"spmwatch train: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    side = result.sidecar
    for line in result.skipped:
        print(f"skipped {line}", file=sys.stderr)
    print("leave-one-family-out (held-out family never seen in training):")
    print(f"  {'split':<24} {'good':>4} {'bad':>4}  auroc  recall false_alarm")
    for split, m in side["metrics"].items():
        if "auroc" not in m:
            continue
        print(
            f"  {split:<24} {m['n_good']:>4} {m['n_bad']:>4}  {_fmt(m['auroc'])}  "
            f"{_fmt(m['recall'])}  {_fmt(m['false_alarm'])}"
        )
    points = side["thresholds"]
    print(
        f"thresholds: max F1 {points['max_f1']:.4f}, "
        f"{points['false_alarm_target']:.0%} false alarms {points['false_alarm']:.4f}; "
        f"shipped: {side['threshold']:.4f} ({side['threshold_rule']})"
    )
    n_good, target = side["training"]["n_good"], points["false_alarm_target"]
    if target > 0 and n_good * target < 1:
        print(
            f"note: {n_good} real good frames cannot pin a {target:.0%} false-alarm rate "
            f"(that takes at least {math.ceil(1 / target)}): expect more false alarms on new "
            "scans; `spmwatch evaluate` with more good frames measures it",
            file=sys.stderr,
        )
    if not result.mixed_families:
        print(
            "note: no sample family has both good and bad frames, so the model may tell the "
            "samples apart rather than good from bad; add good frames of the failing samples",
            file=sys.stderr,
        )
    print(f"wrote {result.path} and {sidecar_path(result.path)}")
    return 0
