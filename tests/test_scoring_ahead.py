"""`ScanScorer.score_ahead`: lines scored in one kernel call and then pushed one by one give
the rows, events and alert (on the same line) of plain pushes; pushes that do not follow the
lines scored ahead are refused."""

from __future__ import annotations

import numpy as np
import pytest

from spmwatch.scoring.scorer import ScanScorer, synthetic_scan
from tests import scoring_helpers as faults


def _pushed_in_runs(scan, run: int, dtype) -> tuple[object, list]:
    names = list(scan.channels)
    scorer = ScanScorer(scan.scan_id, names, scan.n_points, scan.expected_lines)
    lines = list(scan.lines())
    alerts = []
    for start in range(0, len(lines), run):
        part = lines[start : start + run]
        # (channels, lines, points), the layout the daemon keeps its lines in
        planes = np.stack([[line.channels[n] for line in part] for n in names]).astype(dtype)
        scorer.score_ahead(planes.transpose(1, 0, 2), [line.index for line in part])
        for line in part:
            scorer.push(line)
            alerts.append(scorer.alert)
    return scorer.finish(), alerts


@pytest.mark.parametrize("run", [1, 7, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scoring_ahead_gives_the_rows_events_and_alert_line_of_plain_pushes(run, dtype) -> None:
    scan, _ = faults.tracking_loss(synthetic_scan(120, 96, seed=7), 70, 12)
    scan.channels = {name: a.astype(dtype) for name, a in scan.channels.items()}
    plain = ScanScorer(scan.scan_id, list(scan.channels), scan.n_points, scan.expected_lines)
    plain_alerts = []
    for line in scan.lines():
        plain.push(line)
        plain_alerts.append(plain.alert)
    expected = plain.finish()
    got, alerts = _pushed_in_runs(scan, run, dtype)
    assert expected.alert is not None
    np.testing.assert_array_equal(got.features, expected.features)
    assert got.lines == expected.lines and got.events == expected.events
    assert alerts == plain_alerts  # the alert appears on the push of the line that raised it


def test_a_push_out_of_step_with_the_lines_scored_ahead_is_refused() -> None:
    scan = synthetic_scan(20, 32, seed=1)
    names = list(scan.channels)
    scorer = ScanScorer(scan.scan_id, names, scan.n_points, scan.expected_lines)
    lines = list(scan.lines())
    planes = np.stack([[line.channels[n] for line in lines[:4]] for n in names])
    scorer.score_ahead(planes.transpose(1, 0, 2), [0, 1, 2, 3])
    scorer.push(lines[0])
    with pytest.raises(ValueError, match="pushed line 2 but line 1"):
        scorer.push(lines[2])
    with pytest.raises(ValueError, match="3 lines but 2 indices"):
        scorer.score_ahead(planes.transpose(1, 0, 2)[:3], [4, 5])


def test_a_whole_frame_waits_for_the_lines_scored_ahead() -> None:
    scan = synthetic_scan(20, 32, seed=2)
    names = list(scan.channels)
    scorer = ScanScorer(scan.scan_id, names, scan.n_points, scan.expected_lines)
    frame = np.stack([scan.channels[n] for n in names], axis=1)
    scorer.score_ahead(frame[:2], [0, 1])
    with pytest.raises(RuntimeError, match="scored ahead"):
        scorer.score_frame(frame[2:], list(range(2, 20)))
