"""Provisional frame verdict from the scorer alone, until the classifier replaces it.

The ONE place that turns FrameScores into pass/fail: `verdict(frame)`. Fail when the online
alert fired or the frame was stopped early (partial_frame). The probability is a monotone map
of the strongest evidence, 1 - exp(-score / 12) (12 = default flag_z), and is NOT calibrated.
"""

from __future__ import annotations

import math

from spmwatch.model import FrameScores


def verdict(frame: FrameScores) -> tuple[str, float]:
    """("pass" | "fail", provisional probability of failure)."""
    partial = any(e.kind == "partial_frame" for e in frame.events)
    score = frame.alert.score if frame.alert is not None else 0.0
    if frame.alert is None and frame.lines:
        score = max(line.score for line in frame.lines) / 2  # evidence that did not alert
    probability = 1.0 - math.exp(-score / 12.0)
    failed = frame.alert is not None or partial
    return ("fail" if failed else "pass"), round(max(probability, 0.9 if partial else 0.0), 4)
