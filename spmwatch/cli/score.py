"""`spmwatch score FILE... [--json]`: score saved scans line by line, as the daemon would live."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from spmwatch.assess import assess, score_record, why_text
from spmwatch.classify.classifier import Classifier, ModelError, load_model
from spmwatch.cli import files_note
from spmwatch.config import ConfigError
from spmwatch.ibw import IbwError, NoImageChannelsError, read_problem, read_scan
from spmwatch.model import lines_text, ordinal, probability_text, reasons_text
from spmwatch.settings import Settings, load_settings

EXIT_UNREADABLE = 2
EXIT_BAD_MODEL = 3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score .ibw scans line by line",
        description="Score each Asylum .ibw file line by line, exactly as the daemon would have "
        "live, and judge the frame: verdict, probability, alert line, events. A wave that is no "
        "image (a force curve) is skipped, as the daemon skips it. Exit 0 when every image was "
        "scored, 2 when any file was unreadable (the others are still scored) or the config is "
        "bad, 3 when the model cannot be used.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help=".ibw files to score")
    parser.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per file per line; an unreadable file gets {"file", "error"}, '
        'a wave that is no image {"file", "skipped"}',
    )
    add_model_option(parser)
    parser.set_defaults(func=run)


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """--model and --config: what judges the file, so it can be judged as a given daemon would."""
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="classifier .skops file (default: the config's [model] path, else the shipped model)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a daemon's config (spmwatch.toml): score with its [scoring] and [model] settings, "
        "as that daemon would (default: the built-in settings)",
    )


def open_settings(args: argparse.Namespace, command: str) -> Settings | None:
    """The settings of --config (the defaults without it), or None after printing why not."""
    if not args.config:
        return Settings()
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(f"spmwatch {command}: {exc}", file=sys.stderr)
        return None


COMPILING_NOTE_AFTER = 5.0  # s before a first file still not scored is explained


@contextmanager
def compiling_note(command: str) -> Iterator[None]:
    """Say on stderr why the first file takes long when it does: on the first run after an
    install numba compiles the kernels into its cache (about a minute), which looked like a hang.
    Only when the cache lacks them: a busy machine is slow for other reasons."""
    from spmwatch.scoring.scorer import kernels_cached

    def note() -> None:
        if not kernels_cached():
            print(
                f"spmwatch {command}: still working: the first run after an install compiles "
                "the scoring kernels into numba's cache (about a minute); later runs take a "
                "second",
                file=sys.stderr,
                flush=True,
            )

    timer = threading.Timer(COMPILING_NOTE_AFTER, note)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def open_model(path: str | None, command: str) -> Classifier | None:
    """The classifier, or None after printing why it cannot be used."""
    try:
        return load_model(path)
    except ModelError as exc:
        print(f"spmwatch {command}: {exc}", file=sys.stderr)
        return None


def _human(record: dict[str, object]) -> str:
    lines = record["lines"]
    assert isinstance(lines, list)
    flagged = sum(1 for line in lines if line["flagged"])
    alert = record["alert"]
    p = probability_text(record["probability"], record["threshold"])
    said = "none"
    if alert is not None:
        scanned = ordinal(alert["position"] + 1)
        said = f"line {alert['line']} (the {scanned} scanned) {alert['kind']} {alert['severity']}"
    out = [
        f"{record['file']}: {record['verdict']} (p={p}, fail at >= {record['threshold']:.2f}, "
        f"model {record['model']}), {lines_text(len(lines))}, {flagged} flagged, alert: {said}"
    ]
    out.append(f"  why: {why_text(record)}")
    problems = record["problems"]
    assert isinstance(problems, list)
    out += [f"  ! {problem}" for problem in problems]
    watched = record["poor_image"]
    if isinstance(watched, dict):
        said = reasons_text(watched["reasons"])
        out.append(
            f"  poor image ({watched['severity']}): the frame so far was judged a failure at "
            f"line {watched['line']} (the {ordinal(watched['position'] + 1)} scanned, "
            f"p={watched['probability']:.2f}{', mostly for: ' + said if said else ''})"
        )
    dead, channels = record["dead_channels"], record["channels"]
    assert isinstance(dead, list) and isinstance(channels, list)
    if dead and len(dead) == len(channels):
        out.append("  every channel is constant in every line: no signal at all")
    elif dead:
        out.append(
            f"  constant in every line (not scored for dropouts; unconnected?): {', '.join(dead)}"
        )
    events = record["events"]
    assert isinstance(events, list)
    if events:
        out.append(f"  {'kind':<14}{'start':>6}{'end':>6}  {'severity':<8}{'score':>8}")
        for e in events:
            span = f"{e['start']:>6}{e['end']:>6}"
            score = f"{e['score']:>8.2f}"
            if e["kind"] == "partial_frame":  # positions of lines never scanned: no row has them
                span = f"{'-':>6}{'-':>6}"
                score = f"{e['score']:>8.0f} of {e['end'] + 1} lines never scanned"
            out.append(f"  {e['kind']:<14}{span}  {e['severity']:<8}{score}")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    settings = open_settings(args, "score")
    if settings is None:
        return EXIT_UNREADABLE
    model = open_model(args.model or settings.model.path or None, "score")
    if model is None:
        return EXIT_BAD_MODEL
    unreadable = skipped = 0
    for path in args.files:
        try:
            scan = read_scan(path)
        except NoImageChannelsError as exc:  # a force curve beside the images: not a frame
            skipped += 1
            print(f"spmwatch score: {path}: skipped: {exc.reason}", file=sys.stderr, flush=True)
            if args.json:
                print(json.dumps({"file": path, "skipped": read_problem(exc)}), flush=True)
            continue
        except (IbwError, OSError) as exc:
            unreadable += 1
            problem = read_problem(exc)
            print(f"spmwatch score: {path}: {problem}", file=sys.stderr, flush=True)
            if args.json:
                print(json.dumps({"file": path, "error": problem}), flush=True)
            continue
        with compiling_note("score"):
            frame, verdict, watched = assess(scan, model, settings.scoring, settings.model)
            record = score_record(path, frame, verdict, watched, scan.problems)
        print(json.dumps(record) if args.json else _human(record), flush=True)
    if skipped:
        print(files_note(skipped, len(args.files), "skipped: not an image"), file=sys.stderr)
    if unreadable:
        print(files_note(unreadable, len(args.files), "unreadable"), file=sys.stderr)
        return EXIT_UNREADABLE
    return 0
