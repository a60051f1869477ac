"""Score a saved frame and decide it, as the daemon does for a finished frame, and its record.

`spmwatch score`, `spmwatch report` and `spmwatch demo` all go through here, so the offline
answer for a file is the one the daemon would have published live.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

from spmwatch.classify.classifier import Classifier
from spmwatch.classify.features import ChannelStatsAccumulator
from spmwatch.classify.watch import is_check, lines_to_next_check
from spmwatch.model import Alert, FrameScores, Scan, Verdict, reasons_list, reasons_text
from spmwatch.scoring.scorer import ScanScorer, ScoringSettings, score_scan
from spmwatch.settings import ModelSettings


class Assessment(NamedTuple):
    """A saved frame judged as the daemon would have judged it."""

    frame: FrameScores
    verdict: Verdict
    poor_image: tuple[Alert, Verdict] | None  # the frame watch's alert and its verdict


def assess(
    scan: Scan,
    model: Classifier,
    scoring: ScoringSettings | None = None,
    watching: ModelSettings | None = None,
) -> Assessment:
    """Score a whole saved frame and decide it, exactly as the daemon does for a finished frame.

    With `watching` (its frame watch on), also the poor_image alert the daemon would have raised
    while the scan came in line by line: the same checks on the same frames so far, made in the
    same scoring pass (the lines go to the scorer in steps that end on each check)."""
    watch = watching.frame_watch() if watching is not None else None
    if watch is None:
        frame = score_scan(scan, scoring)
        return Assessment(frame, model.verdict(frame, scan.channels, finished=True), None)
    scorer = ScanScorer(
        scan.scan_id, list(scan.channels), scan.n_points, scan.expected_lines, scoring
    )
    raised: tuple[Alert, Verdict] | None = None
    for so_far, verdict in watch_checks(scan, scorer, model):
        alert = watch.judge(so_far, verdict)
        if alert is not None:
            raised = (alert, verdict)
            break
    while scorer.take_ahead(scan.n_lines):  # the lines after the alert (each step ends on one)
        pass
    frame = scorer.finish()
    return Assessment(frame, model.verdict(frame, scan.channels, finished=True), raised)


def watch_checks(
    scan: Scan, scorer: ScanScorer, model: Classifier
) -> Iterator[tuple[FrameScores, Verdict]]:
    """Feed `scan` to a fresh `scorer` line by line as the daemon would, in one scoring pass,
    and yield the frame so far with its in-progress verdict at each frame-watch check. Lines
    past the last check taken stay ahead in the scorer (`take_ahead` them)."""
    order = scan.acquisition_order()
    arrived = {name: data[order] for name, data in scan.channels.items()}
    held = ChannelStatsAccumulator.of_frame(arrived)
    scorer.score_ahead(held.stored(), order.tolist())  # as the daemon: its lines, in place
    seen = 0
    while seen < len(order):
        seen += len(scorer.take_ahead(lines_to_next_check(seen)))  # stops at a line alert too
        if is_check(seen, scan.expected_lines):
            so_far = scorer.frame()
            yield so_far, model.verdict(so_far, held, finished=False)


def score_record(
    path: str,
    frame: FrameScores,
    verdict: Verdict,
    watched: tuple[Alert, Verdict] | None = None,
    problems: Sequence[str] = (),
) -> dict[str, object]:
    """The `spmwatch score --json` record of one file (also what `spmwatch report` writes);
    `watched`: the frame watch's alert, `Assessment.poor_image`; `problems`: what reading the
    file found (`Scan.problems`, as `spmwatch inspect` shows them)."""
    alert = frame.alert
    return {
        "file": path,
        "verdict": verdict.verdict,
        "probability": round(float(verdict.probability), 4),
        "threshold": round(float(verdict.threshold), 4),
        "model": verdict.model,
        "decided_by": verdict.decided_by,
        "reasons": reasons_list(verdict.reasons),
        "alert": None
        if alert is None
        else {
            "line": alert.line,
            "position": alert.position,
            "kind": alert.kind,
            "severity": alert.severity,
            "score": round(alert.score, 4),
        },
        # a flagged line's kind shows which rule of the alert it counted for
        "lines": [
            {"index": s.index, "score": round(s.score, 3), "flagged": s.flagged, "kind": s.kind}
            for s in frame.lines
        ],
        "events": [e.to_dict() for e in frame.events],
        # the frame watch: the line where the frame so far was judged a failure, if it was
        "poor_image": None
        if watched is None
        else {
            "line": watched[0].line,
            "position": watched[0].position,
            "severity": watched[0].severity,
            "probability": round(float(watched[1].probability), 4),
            "reasons": reasons_list(watched[1].reasons),
        },
        "channels": frame.channels,
        "dead_channels": frame.dead_channels,
        "problems": list(problems),
    }


def why_text(record: Mapping[str, object]) -> str:
    """Why a `score_record` was judged as it was, in one line: the rule that failed it, or
    the model and the features that moved it furthest toward failing."""
    decided = record.get("decided_by")
    alert = record.get("alert")
    stopped = [e for e in _events(record) if e["kind"] == "partial_frame"]
    early = ""
    if stopped:
        early = f"stopped early, after {stopped[0]['start']} of {stopped[0]['end'] + 1} lines"
    if decided == "alert" and isinstance(alert, Mapping):
        said = f"raised an alert ({alert['kind']} at line {alert['line']})"
        return f"the scan {said}{' and ' + early if early else ''}: fails by rule"
    if decided == "stopped_early":
        return f"the scan {early or 'stopped early'}: fails by rule"
    said = reasons_text(record.get("reasons"))
    if record.get("verdict") == "fail":
        return "the model" + (f", mostly for: {said}" if said else "")
    return "the model" + (f"; against it: {said}" if said else ": nothing counted against it")


def _events(record: Mapping[str, object]) -> list[Mapping[str, int]]:
    events = record.get("events")
    return events if isinstance(events, list) else []
