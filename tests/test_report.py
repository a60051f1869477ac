"""`spmwatch report` as a real subprocess on .ibw fixtures, plus the report's pure maths."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spmwatch import synth
from spmwatch.ibw import write_scan
from spmwatch.report import (
    UNKNOWN_UNIT,
    display_unit,
    level_lines,
    pair_lags,
    render_png,
    residual_map,
    robust_limits,
)
from spmwatch.scoring.scorer import score_scan, synthetic_scan
from tests import scoring_helpers as faults
from tests.ibw_fixtures import make_scan, write_fixture

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def spmwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spmwatch", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def check_report(path: Path, out: Path, stem: str) -> dict:
    """Run report and score on `path`; check the three files agree with `score --json`."""
    done = spmwatch("report", str(path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    png, record_path, mask_path = (out / f"{stem}{end}" for end in (".png", ".json", "_mask.npy"))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (png, record_path, mask_path)
    )
    width, height = png_size(png)
    assert png.stat().st_mode & 0o444 == 0o444 & ~_umask()  # readable as any new file
    assert width >= 1000 and height >= 300
    scored = spmwatch("score", "--json", str(path))
    assert scored.returncode == 0, scored.stderr
    record = json.loads(record_path.read_text())
    assert record == json.loads(scored.stdout)
    mask = np.load(mask_path, allow_pickle=False)
    assert mask.dtype == np.bool_
    assert len(mask) == len(record["lines"])
    inside = {
        i
        for e in record["events"]
        if e["kind"] != "partial_frame"
        for i in range(e["start"], e["end"] + 1)
    }
    assert np.flatnonzero(mask).tolist() == sorted(inside)
    return record


def test_the_mask_marks_a_streak_band_not_the_line_that_confirmed_it(tmp_path: Path) -> None:
    scan, rows = faults.streaks(synthetic_scan(96, 128, seed=5, scan_id="band"), 40, 2)
    path = tmp_path / "band.ibw"
    write_scan(scan, path)
    record = check_report(path, tmp_path / "out", "band")
    mask = np.load(tmp_path / "out" / "band_mask.npy")
    flagged = [line["index"] for line in record["lines"] if line["flagged"]]
    assert np.flatnonzero(mask).tolist() == rows.tolist() == [40]  # the band line itself
    assert 41 in flagged  # flagged too: the line after shows the band ended


def test_report_of_a_failing_synthetic_scan(tmp_path: Path) -> None:
    scan, truth = synth.failing_scan(seed=3, lines=96, points=128, fault="dropout", at=0.4)
    path = synth.write(scan, tmp_path / f"{scan.scan_id}.ibw")
    assert "+" in path.stem  # an unsafe character the output names must not carry
    out = tmp_path / "out"
    record = check_report(path, out, path.stem.replace("+", "_"))
    assert record["verdict"] == "fail" and record["alert"]["kind"] == "dropout"
    mask = np.load(out / f"{path.stem.replace('+', '_')}_mask.npy")
    assert len(mask) == scan.n_lines
    assert (mask & truth.mask).any()  # the report marks lines of the injected fault


def test_a_corrupt_sample_is_named_in_the_record_and_the_report_warns_of_nothing(
    tmp_path: Path,
) -> None:
    """A walkthrough's corrupted file: `report` leaked numpy's "invalid value encountered in
    cast" (a signalling NaN widened for the panels), and only `inspect` named the bad line."""
    scan = synthetic_scan(64, 64, seed=1, scan_id="snan")
    for name, data in scan.channels.items():  # float32 as Asylum saves: the sNaN stays one
        scan.channels[name] = data.astype(np.float32)
    scan.channels["Ch0Retrace"][20, 5] = np.array([0x7FA00000], np.uint32).view(np.float32)[0]
    path = tmp_path / "snan.ibw"
    write_scan(scan, path)
    strict = [sys.executable, "-W", "error::RuntimeWarning", "-m", "spmwatch", "report"]
    done = subprocess.run(
        [*strict, str(path), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    record = check_report(path, tmp_path / "out", "snan")
    assert record["problems"] == ["line 20 Ch0Retrace: 1 non-finite values"]
    human = spmwatch("score", str(path))
    assert "\n  ! line 20 Ch0Retrace: 1 non-finite values\n" in human.stdout


def test_report_of_a_partial_trace_retrace_fixture(tmp_path: Path) -> None:
    scan = make_scan(lines=48, points=96, expected_lines=64, scan_down=True, scan_id="fix")
    path = write_fixture(tmp_path, scan)
    record = check_report(path, tmp_path / "out", "fix")
    assert [e["kind"] for e in record["events"]][-1] == "partial_frame"
    assert len(record["lines"]) == 48


def test_report_exit_codes_for_broken_input_and_unwritable_output(tmp_path: Path) -> None:
    broken = tmp_path / "broken.ibw"
    broken.write_bytes(b"\x05\x00" + b"not an igor wave" * 4)
    out = tmp_path / "out"
    done = spmwatch("report", str(broken), "--out", str(out))
    assert done.returncode == 2
    assert "broken.ibw" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
    good = write_fixture(tmp_path, make_scan(scan_id="good"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    done = spmwatch("report", str(good), "--out", str(blocker))
    assert done.returncode == 1
    assert "a_file" in done.stderr and "Traceback" not in done.stderr


def test_residual_map_cancels_at_the_scorers_lag() -> None:
    scan = synthetic_scan(lines=48, points=96, pairs=1, lag=5, noise=0.01)
    assert pair_lags(scan) == {"Ch0": 5}
    trace, retrace = scan.channels["Ch0Trace"], scan.channels["Ch0Retrace"]
    matched = residual_map(trace, retrace, 5)
    unmatched = residual_map(trace, retrace, 0)
    assert np.isnan(matched[:, -5:]).all() and np.isfinite(matched[:, :-5]).all()
    assert np.nanstd(matched) < 0.05 < np.nanstd(unmatched)


def test_level_lines_and_robust_limits() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(20, 50)) + np.arange(20)[:, None] * 100.0
    image[3] = np.nan  # a dropout line stays NaN and does not break the others
    levelled = level_lines(image)
    assert np.isnan(levelled[3]).all()
    assert np.allclose(np.nanmedian(np.delete(levelled, 3, axis=0), axis=1), 0.0)
    levelled[0, 0] = 1e6  # a spike does not stretch the colour scale
    lo, hi = robust_limits(levelled)
    assert -4.0 < lo < 0.0 < hi < 4.0
    assert robust_limits(np.full((3, 3), np.nan)) == (-1.0, 1.0)


def test_pair_lags_is_empty_without_a_pair() -> None:
    scan = make_scan(channels=("HeightRetrace", "PhaseRetrace"))
    assert pair_lags(scan) == {}


@pytest.mark.parametrize("lag", [-4, 7])
def test_residual_map_of_identical_shifted_lines_is_zero(lag: int) -> None:
    base = np.sin(np.linspace(0, 12, 80))[None, :].repeat(3, axis=0)
    trace = np.roll(base, lag, axis=1)  # trace[i + lag] == retrace[i] away from the wrap
    residual = residual_map(trace, base, lag)
    finite = residual[np.isfinite(residual)]
    assert finite.size == 3 * (80 - abs(lag))
    assert np.abs(finite).max() < 1e-9


def test_a_retrace_only_report_says_why_it_has_no_residual_map() -> None:
    scan = synthetic_scan(lines=40, points=64, pairs=2)
    scan.channels = {n.replace("Ch0", "UserIn0"): a for n, a in scan.channels.items()}
    scan.channels = {n: a for n, a in scan.channels.items() if n.endswith("Retrace")}
    frame = score_scan(scan)
    record = {"file": "x.ibw", "verdict": "pass", "probability": 0.1, "alert": None}
    fig = render_png(scan, frame, record, {}, 12.0)
    texts = [t.get_text() for t in fig.texts]
    assert any("one direction saved: no trace − retrace map" in t for t in texts)
    assert any("no line alert" in t for t in texts)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert not any(line.flagged for line in frame.lines)
    assert "flagged line" not in legend  # no marker for what the plot does not show
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert not any("trace − retrace" in t for t in titles)
    bar_labels = {ax.get_xlabel() for ax in fig.axes} - {"", "fast axis (µm)", "point"}
    assert "V" in bar_labels  # UserIn0, by Asylum convention
    assert UNKNOWN_UNIT in bar_labels  # Ch1: no unit known, and the bar says so
    assert display_unit("PhaseTrace", np.ones(3))[1] == "deg"
    assert display_unit("HeightTrace", np.full(3, 2e-9)) == (1e9, "nm")


@pytest.mark.parametrize("lines,expected", [(64, 64), (24, 64)])
def test_image_panels_are_as_tall_as_a_full_frame_is_wide(lines: int, expected: int) -> None:
    """The height left to the panels depends on fonts and bars; guessed, a square frame drew
    panels a tenth taller than wide. A partial frame keeps the whole frame's square."""
    scan = synthetic_scan(lines=lines, points=64, pairs=2)
    scan.expected_lines = expected
    record = {"file": "x.ibw", "verdict": "pass", "probability": 0.1, "alert": None}
    fig = render_png(scan, score_scan(scan), record, {"Ch0": 0}, 12.0)
    fig.draw_without_rendering()  # as savefig lays it out
    width_in, height_in = fig.get_size_inches()
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 3  # the trace channels and the first pair's residual map
    for ax in images:
        box = ax.get_position()
        assert box.height * height_in == pytest.approx(box.width * width_in, abs=2 / 100)


@pytest.mark.parametrize("scan_down", [False, True])
def test_a_partial_frame_is_drawn_where_it_lies_with_the_rest_marked_not_scanned(
    scan_down: bool,
) -> None:
    """64 of 256 lines filled a panel drawn like a whole frame's (walkthrough). A scan from
    the bottom up stopped below the missing lines; one from the top down above them."""
    scan = synthetic_scan(lines=64, points=64, pairs=1)
    scan.expected_lines, scan.scan_down = 256, scan_down
    record = {"file": "x.ibw", "verdict": "fail", "probability": 1.0, "alert": None}
    fig = render_png(scan, score_scan(scan), record, {"Ch0": 0}, 12.0)
    fig.draw_without_rendering()
    expected = (-192.5, 63.5) if scan_down else (-0.5, 255.5)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2  # the trace channel and the residual map: each names the gap
    for ax in images:
        assert ax.get_ylim() == pytest.approx(expected)
        said = [t.get_text() for t in ax.texts]
        assert said == ["not scanned: stopped after 64 of 256 lines"]
        assert all(0 <= tick <= 63 for tick in ax.get_yticks())  # no line numbers there


def test_level_lines_takes_out_each_lines_tilt_and_offset() -> None:
    x = np.arange(40, dtype=float)
    bump = np.where((x > 15) & (x < 25), 5.0, 0.0)
    image = np.stack([3.0 * i + 0.5 * x + bump for i in range(6)])
    image[2, 7] = np.nan  # a missing sample is left out of the fit, not spread over the line
    image[4] = np.nan  # a dropout line stays NaN
    levelled = level_lines(image)
    assert np.isnan(levelled[4]).all()
    assert np.isnan(levelled[2]).sum() == 1 and abs(levelled[2, 8] - levelled[0, 8]) < 0.1
    whole = levelled[[0, 1, 3, 5]]
    assert np.allclose(whole - whole[0], 0.0, atol=1e-9)  # the offsets are gone...
    assert np.ptp(levelled[0][x < 15]) < 1.0  # ...and the tilt (0.5 x 40 = 20 before)


def test_the_title_says_why_and_fits_a_long_name_an_alert_and_a_poor_image() -> None:
    """On a figure of one channel, the headline ran off both edges; it is shrunk to fit."""
    scan = synthetic_scan(lines=64, points=64, pairs=1)
    scan.channels = {n: a for n, a in scan.channels.items() if n.endswith("Retrace")}
    record = {
        "file": "A_Very_Long_Sample_Name_With_Its_Conditions_25C_0001.ibw",
        "verdict": "fail",
        "probability": 1.0,
        "threshold": 0.6,
        "decided_by": "alert",
        "reasons": [],
        "alert": {"line": 40, "position": 40, "kind": "tip_change", "severity": "high"},
        "poor_image": {"line": 48, "position": 48, "severity": "high", "probability": 1.0},
        "events": [],
    }
    fig = render_png(scan, score_scan(scan), record, {}, 12.0)
    renderer = fig.canvas.get_renderer()
    for text in fig.texts:
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width, text.get_text()
    why = [t.get_text() for t in fig.texts if t.get_text().startswith("why: ")]
    assert why and "alert (tip_change at line 40): fails by rule" in why[0]
    assert "poor image: the frame so far judged failed at line 48" in why[0]
