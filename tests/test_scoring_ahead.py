"""`ScanScorer.score_ahead` + `take_ahead`: lines scored in one kernel call and then taken
give the rows, events and alert (on the same line) of plain pushes; nothing else may score
while lines scored ahead wait to be taken."""

from __future__ import annotations

import numpy as np
import pytest

from spmwatch.scoring.scorer import ScanScorer, synthetic_scan
from tests import scoring_helpers as faults


def _planes(lines, names, dtype=np.float64) -> np.ndarray:
    """(channels, lines, points), the layout the daemon keeps its lines in."""
    return np.stack([[line.channels[n] for line in lines] for n in names]).astype(dtype)


@pytest.mark.parametrize("run", [1, 7, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
def test_scoring_ahead_gives_the_rows_events_and_alert_line_of_plain_pushes(
    run, dtype, order
) -> None:
    scan, _ = faults.tracking_loss(synthetic_scan(120, 96, seed=7), 70, 12)
    scan.channels = {name: a.astype(dtype) for name, a in scan.channels.items()}
    names = list(scan.channels)
    lines = list(scan.lines())
    plain = ScanScorer(scan.scan_id, names, scan.n_points, scan.expected_lines)
    for line in lines:
        plain.push(line)
        if plain.alert is not None and plain.alert.position == line.position:
            at_alert = plain.frame()
    expected = plain.finish()
    assert expected.alert is not None

    scorer = ScanScorer(scan.scan_id, names, scan.n_points, scan.expected_lines)
    taken = []
    compared = False
    for start in range(0, len(lines), run):
        part = lines[start : start + run]
        # all the lines so far, as the daemon stores them (read in place when C-contiguous;
        # a strided array is copied), the new ones from `start` on
        stored = np.asarray(_planes(lines[: start + len(part)], names, dtype), order=order)
        scorer.score_ahead(stored, [line.index for line in part], first=start)
        while len(taken) < start + len(part):
            step = scorer.take_ahead(len(part))
            taken += step
            if scorer.alert is not None and taken[-1].position == scorer.alert.position:
                # the step ended on the alert line: the frame so far is the one pushes gave
                got = scorer.frame()
                np.testing.assert_array_equal(got.features, at_alert.features)
                assert got.lines == at_alert.lines and got.events == at_alert.events
                compared = True
    assert compared and taken == expected.lines
    final = scorer.finish()
    np.testing.assert_array_equal(final.features, expected.features)
    assert final.events == expected.events and final.alert == expected.alert


def test_nothing_else_scores_while_lines_scored_ahead_wait() -> None:
    scan = synthetic_scan(20, 32, seed=1)
    names = list(scan.channels)
    lines = list(scan.lines())
    scorer = ScanScorer(scan.scan_id, names, scan.n_points, scan.expected_lines)
    scorer.score_ahead(_planes(lines[:4], names), [0, 1, 2, 3])
    with pytest.raises(RuntimeError, match="4 lines scored ahead wait"):
        scorer.push(lines[4])
    with pytest.raises(RuntimeError, match="scored ahead wait"):
        scorer.score_frame(scan.block(), range(4, 20))
    with pytest.raises(ValueError, match=r"lines 4\.\.\+3 outside the frame's 6"):
        scorer.score_ahead(_planes(lines[:6], names), [4, 5, 6], first=4)
    with pytest.raises(ValueError, match=r"frame shaped \(3, 2, 32\), not"):
        scorer.score_ahead(_planes(lines[4:6], names)[:3], [4, 5])
    assert [s.index for s in scorer.take_ahead(3)] == [0, 1, 2]
    assert [s.index for s in scorer.take_ahead(3)] == [3]
    scorer.push(lines[4])  # all taken: plain pushes again
    assert scorer.frame().n_lines == 5
