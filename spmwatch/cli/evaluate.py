"""`spmwatch evaluate --good DIR --bad DIR [--model PATH] --out DIR`: measure a model.

Works on any labelled folders, so a lab can check the model on its own scans.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure the classifier on labelled folders (summary.csv, ROC/PR plot, per-file)",
        description="Apply the model to every .ibw in --good/--bad, refit its recipe and an "
        "ofdspm-like baseline on family-grouped splits, and measure per-kind detection on "
        "synthetic faults. Writes summary.csv, per_file.csv and roc_pr.png into --out.",
    )
    parser.add_argument("--good", type=Path, required=True, help="folder of good .ibw scans")
    parser.add_argument("--bad", type=Path, required=True, help="folder of failed .ibw scans")
    parser.add_argument(
        "--model", type=Path, metavar="PATH", help="classifier .skops file (default: the shipped)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--synthetic",
        type=int,
        default=None,
        metavar="N",
        help="synthetic scans added to the cross-validation data (default: as many as the "
        "model was trained with, else 400)",
    )
    parser.add_argument(
        "--per-kind",
        type=int,
        default=10,
        metavar="N",
        help="synthetic scans per fault kind for detection/delay (default 10)",
    )
    parser.add_argument("--no-cv", action="store_true", help="only apply the given model")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the generated scans and the estimators (default 0)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spmwatch.classify.classifier import Classifier, ModelError, load_default
    from spmwatch.classify.evaluate import run_evaluation

    try:
        classifier = Classifier.load(args.model) if args.model else load_default()
        rows, skipped = run_evaluation(
            args.good,
            args.bad,
            args.out,
            classifier,
            synthetic=args.synthetic
            if args.synthetic is not None
            else int(classifier.sidecar.get("training", {}).get("synthetic", 400)),
            per_kind=args.per_kind,
            seed=args.seed,
            cv=not args.no_cv,
            quiet=args.quiet,
        )
    except (ModelError, FileNotFoundError, ValueError) as exc:
        print(f"spmwatch evaluate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    shown = (
        "split",
        "model",
        "n_good",
        "n_bad",
        "auroc",
        "recall",
        "false_alarm",
        "latency_ms",
        "detection_rate",
        "median_delay_lines",
        "early_fail_rate",
    )
    # names left-aligned as wide as the longest (family names are the user's folder names)
    width = {k: max(len(k), *(len(str(row[k])) for row in rows)) for k in ("split", "model")}
    for row in [dict(zip(shown, shown, strict=True)), *rows]:
        cells = [f"{row[k]!s:<{width[k]}}" if k in width else f"{row[k]!s:>12}" for k in shown]
        print("  ".join(cells))
    also = ", skipped.txt" if skipped else ""
    print(f"wrote {args.out / 'summary.csv'}, per_file.csv, roc_pr.png{also}")
    return 0
