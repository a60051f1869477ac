"""How the daemon cuts a run of lines where a scan ends: blocks split exactly, nothing lost."""

from __future__ import annotations

import numpy as np
import pytest

from spmwatch.daemon import _split_run
from spmwatch.model import Line, LineBlock


def _block(index: int, count: int) -> LineBlock:
    rows = np.arange(count * 4, dtype=np.float32).reshape(count, 4) + 100 * index
    return LineBlock("s", index, index, 64, {"HeightRetrace": rows})


def _line(index: int) -> Line:
    return Line("s", index, index, 64, {"HeightRetrace": np.full(4, index, np.float32)})


def _indices(run) -> list[int]:
    indices: list[int] = []
    for _, item in run:
        indices += item.indices() if isinstance(item, LineBlock) else [item.index]
    return indices


@pytest.mark.parametrize("cut", [1, 3, 5, 6, 7, 10, 11, 12, 20])
def test_a_run_is_cut_after_exactly_that_many_lines(cut: int) -> None:
    run = [(1.0, _block(0, 5)), (2.0, _line(5)), (3.0, _block(6, 5)), (4.0, _line(11))]
    head, rest = _split_run(run, cut)
    assert _indices(head) == list(range(min(cut, 12)))
    assert _indices(rest) == list(range(min(cut, 12), 12))
    # a split block keeps its rows and its hand-over time on both sides
    origin = {1.0: _block(0, 5), 3.0: _block(6, 5)}
    for received, item in head + rest:
        if isinstance(item, LineBlock):
            whole = origin[received]
            offset = item.index - whole.index
            np.testing.assert_array_equal(
                item.channels["HeightRetrace"],
                whole.channels["HeightRetrace"][offset : offset + item.count],
            )
            assert [line.position for line in item.lines()] == list(item.indices())
