"""Frame watch: the classifier's judgement of a frame in progress, raised as an alert.

The line scorer sees changes within a scan. A scan that is bad from its first line (glitch
bands everywhere, a tip already blunt) or that degrades slowly shows it no change: 7 of the 9
labelled-bad real scans raise no line alert. The frame classifier, trained on whole good and
bad frames, knows what such frames look like. Asked about the frame so far every WATCH_EVERY
lines from WATCH_FROM on, it is noisier than on a finished frame (8 of 100 clean generated
scans reach 0.9 once), so the alert needs the probability at or above the threshold at
`checks` checks in a row: at 0.95 and 3 checks it names 4 of the 9 bad real scans while they
scan (3 of them without a line alert), 1 of the 38 good real scans (the one it also fails when
finished), the same one when a streak line is added to each, and none of 100 clean generated
ones (docs/classifier.md, "Frames in progress").

Its alert, kind `poor_image`, is a judgement on the image so far, not a located fault, so the
default policy only notifies a person (spmwatch.advice). The checks fall on fixed line counts,
so `spmwatch score` replays them exactly as the daemon made them live.
"""

from __future__ import annotations

from dataclasses import dataclass

from spmwatch.model import Alert, FrameScores, Verdict

WATCH_FROM = 32  # lines before the first check: as many as the line scorer's baseline window
WATCH_EVERY = 16  # lines between checks: ~0.5 ms each on a 512 x 512 x 8 frame in progress
HIGH_PROBABILITY = 0.99


def lines_to_next_check(seen: int) -> int:
    """How many more lines until the frame so far is judged again (> 0)."""
    if seen < WATCH_FROM:
        return WATCH_FROM - seen
    return WATCH_EVERY - (seen - WATCH_FROM) % WATCH_EVERY


def is_check(seen: int, expected_lines: int) -> bool:
    """Whether the frame of `seen` lines is judged; the finished frame gets its verdict anyway."""
    return seen >= WATCH_FROM and (seen - WATCH_FROM) % WATCH_EVERY == 0 and seen < expected_lines


@dataclass
class FrameWatch:
    """The checks of one scan: a poor_image alert, once, when `checks` checks in a row reach
    `threshold`."""

    threshold: float
    checks: int
    run: int = 0
    raised: bool = False

    def judge(self, frame: FrameScores, verdict: Verdict) -> Alert | None:
        """The alert for this check's frame so far and its in-progress verdict, placed on the
        frame's last line; None while the evidence is short of the rule (or after the alert)."""
        self.run = self.run + 1 if verdict.probability >= self.threshold else 0
        if self.raised or self.run < self.checks or not frame.lines:
            return None
        self.raised = True
        last = frame.lines[-1]
        severity = "high" if verdict.probability >= HIGH_PROBABILITY else "medium"
        return Alert(last.index, last.position, "poor_image", severity, float(verdict.probability))
