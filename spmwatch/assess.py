"""Score a saved frame and decide it, as the daemon does for a finished frame, and its record.

`spmwatch score`, `spmwatch report` and `spmwatch demo` all go through here, so the offline
answer for a file is the one the daemon would have published live.
"""

from __future__ import annotations

from spmwatch.classify.classifier import Classifier
from spmwatch.model import FrameScores, Scan, Verdict
from spmwatch.scoring.scorer import score_scan


def assess(scan: Scan, model: Classifier) -> tuple[FrameScores, Verdict]:
    """Score a whole saved frame and decide it, exactly as the daemon does for a finished frame."""
    frame = score_scan(scan)
    return frame, model.verdict(frame, scan.channels, finished=True)


def score_record(path: str, frame: FrameScores, verdict: Verdict) -> dict[str, object]:
    """The `spmwatch score --json` record of one file (also what `spmwatch report` writes)."""
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
        "channels": frame.channels,
    }
