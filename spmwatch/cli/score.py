"""`spmwatch score FILE... [--json]`: score saved scans line by line, as the daemon would live."""

from __future__ import annotations

import argparse
import json
import sys

from spmwatch.ibw import IbwError, read_scan
from spmwatch.model import FrameScores
from spmwatch.scoring.scorer import score_scan
from spmwatch.scoring.verdict import verdict


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("score", help="score .ibw scans line by line")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--json", action="store_true", help="one JSON object per file per line")
    parser.set_defaults(func=run)


def frame_json(path: str, frame: FrameScores) -> dict[str, object]:
    """The score record of one file (also written by `spmwatch report`)."""
    result, probability = verdict(frame)
    alert = frame.alert
    return {
        "file": path,
        "verdict": result,
        "probability": probability,
        "alert": None
        if alert is None
        else {"line": alert.line, "kind": alert.kind, "severity": alert.severity},
        "lines": [
            {"index": s.index, "score": round(s.score, 3), "flagged": s.flagged}
            for s in frame.lines
        ],
        "events": [e.to_dict() for e in frame.events],
        "channels": frame.channels,
    }


def _human(record: dict[str, object]) -> str:
    lines = record["lines"]
    assert isinstance(lines, list)
    flagged = sum(1 for line in lines if line["flagged"])
    alert = record["alert"]
    out = [
        f"{record['file']}: {record['verdict']} (p={record['probability']:.2f}), "
        f"{len(lines)} lines, {flagged} flagged, alert: "
        + ("none" if alert is None else f"line {alert['line']} {alert['kind']} {alert['severity']}")
    ]
    events = record["events"]
    assert isinstance(events, list)
    if events:
        out.append(f"  {'kind':<14}{'start':>6}{'end':>6}  {'severity':<8}{'score':>8}")
        for e in events:
            span = f"{e['start']:>6}{e['end']:>6}"
            out.append(f"  {e['kind']:<14}{span}  {e['severity']:<8}{e['score']:>8.2f}")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            frame = score_scan(read_scan(path))
        except (IbwError, OSError) as exc:
            print(f"spmwatch score: cannot read {path}: {exc}", file=sys.stderr)
            status = 2
            continue
        record = frame_json(path, frame)
        print(json.dumps(record) if args.json else _human(record), flush=True)
    return status
