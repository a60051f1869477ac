"""Score a saved frame and decide it, as the daemon does for a finished frame, and its record.

`spmwatch score`, `spmwatch report` and `spmwatch demo` all go through here, so the offline
answer for a file is the one the daemon would have published live.
"""

from __future__ import annotations

import numpy as np

from spmwatch.classify.classifier import Classifier
from spmwatch.classify.features import ChannelStatsAccumulator
from spmwatch.classify.watch import is_check, lines_to_next_check
from spmwatch.model import Alert, FrameScores, Scan, Verdict
from spmwatch.scoring.scorer import ScanScorer, ScoringSettings, score_scan
from spmwatch.settings import ModelSettings


def assess(
    scan: Scan, model: Classifier, scoring: ScoringSettings | None = None
) -> tuple[FrameScores, Verdict]:
    """Score a whole saved frame and decide it, exactly as the daemon does for a finished frame."""
    frame = score_scan(scan, scoring)
    return frame, model.verdict(frame, scan.channels, finished=True)


def watch_replay(
    scan: Scan,
    model: Classifier,
    settings: ModelSettings | None = None,
    scoring: ScoringSettings | None = None,
) -> tuple[Alert, Verdict] | None:
    """The poor_image alert (with its verdict) the daemon's frame watch would have raised while
    this scan came in line by line: the same checks on the same frames so far."""
    watch = (settings or ModelSettings()).frame_watch()
    if watch is None:
        return None
    names = list(scan.channels)
    order = scan.acquisition_order()
    arrived = {name: data[order] for name, data in scan.channels.items()}
    held = ChannelStatsAccumulator.of_frame(arrived)
    scorer = ScanScorer(scan.scan_id, names, scan.n_points, scan.expected_lines, scoring)
    scorer.score_ahead(np.stack([arrived[name] for name in names], axis=1), order.tolist())
    seen = 0
    while seen < len(order):
        seen += len(scorer.take_ahead(lines_to_next_check(seen)))  # stops at a line alert too
        if is_check(seen, scan.expected_lines):
            frame = scorer.frame()
            verdict = model.verdict(frame, held, finished=False)
            alert = watch.judge(frame, verdict)
            if alert is not None:
                return alert, verdict
    return None


def score_record(
    path: str,
    frame: FrameScores,
    verdict: Verdict,
    watched: tuple[Alert, Verdict] | None = None,
) -> dict[str, object]:
    """The `spmwatch score --json` record of one file (also what `spmwatch report` writes);
    `watched`: the frame watch's alert, from `watch_replay`."""
    alert = frame.alert
    return {
        "file": path,
        "verdict": verdict.verdict,
        "probability": round(float(verdict.probability), 4),
        "threshold": round(float(verdict.threshold), 4),
        "model": verdict.model,
        "alert": None
        if alert is None
        else {
            "line": alert.line,
            "position": alert.position,
            "kind": alert.kind,
            "severity": alert.severity,
            "score": round(alert.score, 3),
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
        },
        "channels": frame.channels,
    }
