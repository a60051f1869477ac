"""The alert rule's naming of level evidence (events.EventTracker), line by line."""

from __future__ import annotations

import pytest

from spmwatch.scoring.events import EventTracker

QUIET = (1.0, None)  # an unflagged line: (score, kind)
TIP = (14.0, "tip_change")  # a line flagged by its level step


def first_alert(lines: list[tuple[float, str | None]]):
    tracker = EventTracker()
    for index, (score, kind) in enumerate(lines):
        alert = tracker.push(index, score, kind is not None, kind)
        if alert is not None:
            return alert
    return None


def test_a_tip_change_after_a_scar_line_is_named_tip_change() -> None:
    """A single scar line (streak, found by the scar test) is no level band: a tip change
    after it was named streak, and a streak alert only notifies."""
    alert = first_alert([QUIET] * 5 + [(14.0, "streak")] + [QUIET] * 6 + [TIP] * 3)
    assert alert is not None and alert.kind == "tip_change"


def test_a_level_run_after_a_level_band_that_came_back_is_named_streak() -> None:
    alert = first_alert([QUIET] * 5 + [TIP] * 2 + [QUIET] * 4 + [TIP] * 3)
    assert alert is not None and alert.kind == "streak"


@pytest.mark.parametrize(
    ("between", "kind"),
    [((11.7, None), "tip_change"), (QUIET, "streak")],
    ids=["still-stepped", "came-back"],
)
def test_an_unflagged_line_inside_the_evidence_breaks_it_only_if_the_level_came_back(
    between: tuple[float, str | None], kind: str
) -> None:
    """Bands on alternate lines are streaks; a line just under the flag between flagged
    level steps is the same step, not a return."""
    alert = first_alert([QUIET] * 5 + [TIP, between, TIP, TIP])
    assert alert is not None and alert.kind == kind
