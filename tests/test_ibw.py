"""The Asylum .ibw reader/writer and `spmwatch inspect`, on real scans and written fixtures."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ibw_fixtures import DART_CHANNELS, make_scan, write_fixture
from igorwriter import IgorWave5

from spmwatch.ibw import (
    HEADER_SIZE,
    MAX_PROBLEM_RUNS,
    MIN_UNNOTED_LINES,
    CorruptHeaderError,
    IbwError,
    IncompleteError,
    NoImageChannelsError,
    NotIbwError,
    UnsupportedVersionError,
    check_complete,
    read_scan,
)

REPO = Path(__file__).resolve().parents[1]
DNA_PAIRS = {
    "Height": ("HeightTrace", "HeightRetrace"),
    "ZSensor": ("ZSensorTrace", "ZSensorRetrace"),
    "UserIn0": ("UserIn0Trace", "UserIn0Retrace"),
    "UserIn1": ("UserIn1Trace", "UserIn1Retrace"),
}

# Fields of BinHeader5 + WaveHeader5 that are numbers, as (offset, struct code), to build a
# big-endian copy of a little-endian file.
_NUMERIC_HEADER_FIELDS = [
    (0, "h"),
    (2, "h"),
    *[(4 + 4 * i, "i") for i in range(15)],
    (68, "I"),
    (72, "I"),
    (76, "i"),
    (80, "h"),
    (90, "h"),
    *[(132 + 4 * i, "i") for i in range(4)],
    *[(148 + 8 * i, "d") for i in range(8)],
    (232, "h"),
    (236, "d"),
    (244, "d"),
]


def _fix_checksum(raw: bytearray, order: str = "<") -> bytearray:
    """Make the 16-bit word sum of the first 384 bytes zero again after an edit."""
    raw[2:4] = b"\x00\x00"
    total = sum(struct.unpack(f"{order}192h", bytes(raw[:HEADER_SIZE])))
    raw[2:4] = struct.pack(f"{order}H", (-total) & 0xFFFF)
    return raw


def _to_big_endian(raw: bytes) -> bytes:
    """The same float32 wave as Igor on a big-endian machine would have written it."""
    out = bytearray(raw)
    for offset, code in _NUMERIC_HEADER_FIELDS:
        (value,) = struct.unpack_from("<" + code, raw, offset)
        struct.pack_into(">" + code, out, offset, value)
    (wfm_size,) = struct.unpack_from("<i", raw, 4)
    end = HEADER_SIZE + wfm_size - 320
    out[HEADER_SIZE:end] = np.frombuffer(raw[HEADER_SIZE:end], "<f4").astype(">f4").tobytes()
    return bytes(_fix_checksum(out, ">"))


def _assert_same_scan(read, written) -> None:
    assert list(read.channels) == list(written.channels)
    for name, data in written.channels.items():
        assert read.channels[name].dtype == data.dtype
        np.testing.assert_array_equal(read.channels[name], data)
    assert read.meta == written.meta
    assert read.expected_lines == written.expected_lines
    assert read.scan_down == written.scan_down


# ---------------------------------------------------------------- real scans


def _real_scans(data_root: Path) -> list[Path]:
    paths = sorted(data_root.rglob("*.ibw"))
    assert paths, f"no .ibw files under {data_root}"
    return paths


@pytest.mark.data
def test_every_real_scan_reads_with_clean_names(data_root: Path) -> None:
    for path in _real_scans(data_root):
        assert check_complete(path).complete, path
        scan = read_scan(path)
        assert scan.scan_id == path.stem
        assert scan.channels, path
        for name, data in scan.channels.items():
            assert re.fullmatch(r"[A-Za-z0-9]+(Trace|Retrace)", name), (path, name)
            assert data.shape == (scan.n_lines, scan.n_points)
            assert data.dtype == np.float32
        assert scan.n_lines <= scan.expected_lines
        assert scan.meta["ScanPoints"] == scan.n_points
        assert scan.problems == [], (path, scan.problems)


@pytest.mark.data
def test_dna_scan_has_four_trace_retrace_pairs(dna_scan_path: Path) -> None:
    scan = read_scan(dna_scan_path)
    assert scan.pairs == DNA_PAIRS
    assert (scan.n_lines, scan.n_points, scan.expected_lines) == (512, 512, 512)
    assert scan.scan_down and scan.meta["ScanDown"] == 1
    assert scan.meta["ScanRate"] == pytest.approx(1.1161)
    assert scan.meta["ScanSize"] == pytest.approx(800e-9)
    assert not scan.partial
    # First line scanned is the last stored index when ScanDown is 1.
    assert next(scan.lines()).index == 511


@pytest.mark.data
def test_dna_scan_lines_run_along_wdata_dim_0(dna_scan_path: Path) -> None:
    """Neighbours along a line are closer than neighbours across lines (fast axis = points)."""
    scan = read_scan(dna_scan_path)
    for name in ("HeightTrace", "HeightRetrace"):
        image = scan.channels[name].astype(np.float64)
        along_points = np.sqrt(np.mean(np.diff(image, axis=1) ** 2))
        along_lines = np.sqrt(np.mean(np.diff(image, axis=0) ** 2))
        assert along_points / along_lines < 0.75, name


@pytest.mark.data
def test_other_real_scans_are_retrace_only(data_root: Path, dna_scan_path: Path) -> None:
    others = [path for path in _real_scans(data_root) if path != dna_scan_path]
    for path in others:
        pairs = read_scan(path).pairs
        assert all(trace is None and retrace for trace, retrace in pairs.values()), (path, pairs)


@pytest.mark.data
def test_partial_bad_scans_have_their_stored_line_counts(data_root: Path) -> None:
    partial = {}
    for path in sorted((data_root / "ofdspm" / "bad").glob("*.ibw")):
        scan = read_scan(path)
        if scan.partial:
            partial[path.name] = scan.n_lines
            assert scan.expected_lines == 256
    assert sorted(partial.values()) == [62, 64, 118, 232, 238], partial


@pytest.mark.data
def test_six_channel_dart_scans_read(data_root: Path) -> None:
    six = {}
    for path in sorted((data_root / "ofdspm" / "good").glob("*.ibw")):
        scan = read_scan(path)
        if len(scan.channels) == 6:
            six[path.name] = scan
    assert six, "expected at least one 6-channel DART scan in ofdspm/good"
    for name, scan in six.items():
        assert tuple(scan.channels) == DART_CHANNELS, name
        assert scan.meta["ImagingMode"] == "PFM Mode"
        assert scan.n_lines == scan.n_points == 256


@pytest.mark.data
def test_real_scan_round_trips_through_the_writer(dna_scan_path: Path, tmp_path: Path) -> None:
    scan = read_scan(dna_scan_path)
    copy = write_fixture(tmp_path, scan, "dna_copy")
    assert check_complete(copy).complete
    again = read_scan(copy)
    _assert_same_scan(again, scan)
    assert again.note == scan.note  # ~600 keys, latin-1 text included


# ---------------------------------------------------------------- written fixtures


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_written_scan_round_trips_exactly(tmp_path: Path, dtype: type) -> None:
    scan = make_scan(lines=24, points=48, dtype=dtype, note={"Comment": "tip 3 ä"})
    path = write_fixture(tmp_path, scan)
    completeness = check_complete(path)
    assert completeness.complete and completeness.reason is None
    assert completeness.on_disk == completeness.implied == path.stat().st_size
    again = read_scan(path)
    _assert_same_scan(again, scan)
    assert again.note["Comment"] == "tip 3 ä"
    assert again.scan_id == path.stem and again.path == str(path)


def test_scan_id_argument_wins_over_the_file_name(tmp_path: Path) -> None:
    path = write_fixture(tmp_path, make_scan(), "file_name")
    assert read_scan(path, scan_id="frame-7").scan_id == "frame-7"


def test_integer_data_is_read_as_float32(tmp_path: Path) -> None:
    wave = IgorWave5(np.arange(12, dtype=np.int16).reshape(4, 3, 1), name="counts")
    wave.set_dimlabel(2, 0, "CountsRetrace")
    wave.save(str(tmp_path / "counts.ibw"))
    scan = read_scan(tmp_path / "counts.ibw")
    data = scan.channels["CountsRetrace"]
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, np.arange(12).reshape(4, 3).T)


def test_partial_frame_and_scan_down_survive_the_round_trip(tmp_path: Path) -> None:
    scan = make_scan(lines=10, expected_lines=32, scan_down=True)
    again = read_scan(write_fixture(tmp_path, scan))
    assert again.partial and again.n_lines == 10 and again.expected_lines == 32
    assert [line.index for line in again.lines()] == list(range(9, -1, -1))


def _written_bytes(tmp_path: Path) -> tuple[bytes, Path]:
    path = write_fixture(tmp_path, make_scan(lines=16, points=32), "source")
    return path.read_bytes(), path


@pytest.mark.parametrize("keep", [1, 2, 63, 64, 200, 383, 384, 1000, -1])
def test_truncated_file_is_incomplete(tmp_path: Path, keep: int) -> None:
    raw, _ = _written_bytes(tmp_path)
    cut = tmp_path / "cut.ibw"
    cut.write_bytes(raw[:keep])
    completeness = check_complete(cut)
    assert not completeness.complete
    assert completeness.on_disk == len(raw[:keep]) < completeness.implied
    with pytest.raises(IncompleteError) as caught:
        read_scan(cut)
    assert caught.value.path == str(cut)
    assert str(caught.value).startswith(f"{cut}: ")


def test_truncated_file_reason_says_how_much_is_missing(tmp_path: Path) -> None:
    raw, _ = _written_bytes(tmp_path)
    cut = tmp_path / "cut.ibw"
    cut.write_bytes(raw[:1000])
    assert check_complete(cut).reason == f"truncated: 1000 of {len(raw)} bytes on disk"


def test_half_written_file_reads_once_completed(tmp_path: Path) -> None:
    raw, source = _written_bytes(tmp_path)
    growing = tmp_path / "growing.ibw"
    growing.write_bytes(raw[: len(raw) // 2])
    assert not check_complete(growing).complete
    with pytest.raises(IncompleteError):
        read_scan(growing)
    with growing.open("ab") as handle:
        handle.write(raw[len(raw) // 2 :])
    assert check_complete(growing).complete
    _assert_same_scan(read_scan(growing), read_scan(source))


def test_junk_appended_after_the_last_section_still_reads(tmp_path: Path) -> None:
    raw, source = _written_bytes(tmp_path)
    padded = tmp_path / "padded.ibw"
    padded.write_bytes(raw + b"\x00junk" * 1000)
    completeness = check_complete(padded)
    assert completeness.complete and completeness.on_disk > completeness.implied
    _assert_same_scan(read_scan(padded), read_scan(source))


def test_empty_file_is_not_an_ibw_but_not_yet_complete_either(tmp_path: Path) -> None:
    empty = tmp_path / "empty.ibw"
    empty.write_bytes(b"")
    assert check_complete(empty) == check_complete(empty)  # frozen, comparable
    assert not check_complete(empty).complete
    with pytest.raises(NotIbwError, match="empty"):
        read_scan(empty)


def test_random_bytes_are_not_an_ibw(tmp_path: Path) -> None:
    junk = tmp_path / "random.ibw"
    junk.write_bytes(np.random.default_rng(7).bytes(5000))
    with pytest.raises(NotIbwError, match="version field"):
        check_complete(junk)
    with pytest.raises(NotIbwError):
        read_scan(junk)


@pytest.mark.parametrize(
    ("version", "error"), [(2, UnsupportedVersionError), (3, UnsupportedVersionError)]
)
def test_other_igor_versions_are_unsupported(tmp_path: Path, version: int, error: type) -> None:
    raw, _ = _written_bytes(tmp_path)
    old = bytearray(raw)
    old[0:2] = struct.pack("<h", version)
    path = tmp_path / "old.ibw"
    path.write_bytes(bytes(_fix_checksum(old)))
    with pytest.raises(error, match=f"version {version}"):
        read_scan(path)
    with pytest.raises(error):
        check_complete(path)


@pytest.mark.parametrize("offset", [2, 3, 100, 300])
def test_flipped_header_byte_fails_the_checksum(tmp_path: Path, offset: int) -> None:
    raw, _ = _written_bytes(tmp_path)
    flipped = bytearray(raw)
    flipped[offset] ^= 0x40
    path = tmp_path / "flipped.ibw"
    path.write_bytes(bytes(flipped))
    assert "checksum" in (check_complete(path).reason or "")
    # whole length: corrupt, a kind of its own, not "still being written"
    with pytest.raises(CorruptHeaderError, match="checksum") as caught:
        read_scan(path)
    assert not isinstance(caught.value, IncompleteError)
    assert caught.value.kind == "corrupt_header"
    # cut short as well: being written, not corrupt
    path.write_bytes(bytes(flipped[: len(flipped) // 2]))
    with pytest.raises(IncompleteError) as caught:
        read_scan(path)
    assert caught.value.kind == "incomplete"


def test_big_endian_file_reads_the_same(tmp_path: Path) -> None:
    raw, source = _written_bytes(tmp_path)
    big = tmp_path / "big.ibw"
    big.write_bytes(_to_big_endian(raw))
    assert big.read_bytes()[:2] == b"\x00\x05"
    assert check_complete(big).complete
    again = read_scan(big)
    _assert_same_scan(again, read_scan(source))
    assert all(data.dtype.byteorder in "=|" for data in again.channels.values())


def test_absurd_dimensions_are_rejected_before_allocating(tmp_path: Path) -> None:
    raw, _ = _written_bytes(tmp_path)
    huge = bytearray(raw)
    struct.pack_into("<4i", huge, 132, 1_000_000, 1_000_000, 1, 0)
    path = tmp_path / "huge.ibw"
    path.write_bytes(bytes(_fix_checksum(huge)))
    with pytest.raises(NotIbwError, match="corrupt header"):
        read_scan(path)


def test_header_claiming_more_data_than_on_disk_is_incomplete(tmp_path: Path) -> None:
    raw, _ = _written_bytes(tmp_path)
    greedy = bytearray(raw)
    struct.pack_into("<i", greedy, 4, 2_000_000_000)
    path = tmp_path / "greedy.ibw"
    path.write_bytes(bytes(_fix_checksum(greedy)))
    completeness = check_complete(path)
    assert not completeness.complete and completeness.implied > 2_000_000_000
    with pytest.raises(IncompleteError, match="truncated"):
        read_scan(path)


def test_zero_stored_lines_give_an_empty_partial_scan(tmp_path: Path) -> None:
    scan = make_scan(lines=0, expected_lines=256)
    again = read_scan(write_fixture(tmp_path, scan))
    assert list(again.channels) == list(scan.channels)
    assert again.n_lines == 0 and again.n_points == 64
    assert again.partial and again.expected_lines == 256
    assert list(again.lines()) == [] and again.problems == []


def test_nan_and_inf_lines_are_reported_per_line_and_channel(tmp_path: Path) -> None:
    scan = make_scan(lines=20, points=16)
    scan.channels["HeightRetrace"][3:6] = np.nan
    scan.channels["HeightTrace"][10, 4] = np.inf
    again = read_scan(write_fixture(tmp_path, scan))
    assert again.problems == [
        "line 10 HeightTrace: 1 non-finite values",
        "lines 3-5 HeightRetrace: 48 non-finite values",
    ]
    assert np.isnan(again.channels["HeightRetrace"][3:6]).all()


def test_nan_flood_is_summarised_in_a_few_lines(tmp_path: Path) -> None:
    scan = make_scan(lines=200, points=8)
    scan.channels["HeightTrace"][::2] = np.nan
    scan.channels["HeightRetrace"][:] = np.nan
    problems = read_scan(write_fixture(tmp_path, scan)).problems
    assert len(problems) == MAX_PROBLEM_RUNS + 2
    assert problems[MAX_PROBLEM_RUNS] == "HeightTrace: 95 more runs of non-finite values (95 lines)"
    assert problems[-1] == "lines 0-199 HeightRetrace: 1600 non-finite values"


def test_retrace_only_scan_pairs_with_no_trace(tmp_path: Path) -> None:
    scan = make_scan(channels=("HeightRetrace", "PhaseRetrace"))
    pairs = read_scan(write_fixture(tmp_path, scan)).pairs
    assert pairs == {"Height": (None, "HeightRetrace"), "Phase": (None, "PhaseRetrace")}


def test_six_channel_dart_like_scan_round_trips(tmp_path: Path) -> None:
    scan = make_scan(channels=DART_CHANNELS, lines=8, points=16)
    again = read_scan(write_fixture(tmp_path, scan))
    _assert_same_scan(again, scan)
    assert len(again.pairs) == 6


def test_asylum_label_junk_after_the_terminator_is_cut(tmp_path: Path) -> None:
    """Asylum reuses its label buffer: old text follows the NUL (`UserIn0Retrace\\0trace`)."""
    path = write_fixture(tmp_path, make_scan(channels=("UserIn0Retrace", "PhaseRetrace")))
    clean = path.read_bytes()
    patched = clean.replace(b"UserIn0Retrace\x00\x00\x00\x00\x00\x00", b"UserIn0Retrace\x00trace")
    patched = patched.replace(b"PhaseRetrace\x00\x00\x00\x00\x00", b"PhaseRetrace\x00race")
    assert len(patched) == len(clean) and patched.count(b"\x00trace") == 1
    path.write_bytes(patched)
    assert list(read_scan(path).channels) == ["UserIn0Retrace", "PhaseRetrace"]


def test_two_dimensional_wave_is_named_by_the_wave(tmp_path: Path) -> None:
    image = np.arange(32, dtype=np.float32).reshape(4, 8)  # (points, lines)
    IgorWave5(image, name="HeightRetrace").save(str(tmp_path / "single.ibw"))
    scan = read_scan(tmp_path / "single.ibw")
    assert list(scan.channels) == ["HeightRetrace"]
    np.testing.assert_array_equal(scan.channels["HeightRetrace"], image.T)


def test_one_dimensional_wave_has_no_image_channels(tmp_path: Path) -> None:
    IgorWave5(np.arange(10, dtype=np.float32), name="trace1d").save(str(tmp_path / "1d.ibw"))
    with pytest.raises(NoImageChannelsError, match="1-D"):
        read_scan(tmp_path / "1d.ibw")


def test_a_force_curve_of_labelled_columns_is_no_image(tmp_path: Path) -> None:
    """Asylum saves a force curve as samples x labelled columns: read as an image it was a
    frame of 3 lines, which the classifier failed at p = 1.00."""
    wave = IgorWave5(np.zeros((200, 3), np.float32), name="Force0001")
    for column, label in enumerate(("Raw", "Defl", "ZSnsr")):
        wave.set_dimlabel(1, column, label)
    wave.save(str(tmp_path / "force.ibw"))
    with pytest.raises(NoImageChannelsError, match=r"\['Raw', 'Defl', 'ZSnsr'\]: a force curve"):
        read_scan(tmp_path / "force.ibw")
    table = read_scan(tmp_path / "force.ibw", table=True)  # what the scope follower asks
    assert table.channels["Force0001"].shape == (3, 200)


def test_a_small_wave_without_an_asylum_note_is_no_image(tmp_path: Path) -> None:
    """A 50 x 3 table saved from Igor passed as a 3-line image (p = 0.06) in score and the
    daemon; a stopped frame of 3 lines says ScanLines in its note and is still one."""
    IgorWave5(np.zeros((50, 3), np.float32), name="fc").save(str(tmp_path / "fc_0001.ibw"))
    with pytest.raises(NoImageChannelsError, match="3 rows x 50 points without an Asylum note"):
        read_scan(tmp_path / "fc_0001.ibw")
    stopped = IgorWave5(np.zeros((50, 3), np.float32), name="Image0001")
    stopped.set_note("ScanLines: 256\rScanPoints: 50")
    stopped.save(str(tmp_path / "Image0001.ibw"))
    stopped = read_scan(tmp_path / "Image0001.ibw")
    assert (stopped.n_lines, stopped.expected_lines) == (3, 256)
    big = np.zeros((50, MIN_UNNOTED_LINES), np.float32)  # as many rows as a baseline needs
    IgorWave5(big, name="plain").save(str(tmp_path / "plain.ibw"))
    assert read_scan(tmp_path / "plain.ibw").n_lines == MIN_UNNOTED_LINES


def test_three_dimensional_wave_without_labels_has_no_image_channels(tmp_path: Path) -> None:
    IgorWave5(np.zeros((4, 3, 2), np.float32), name="layers").save(str(tmp_path / "stack.ibw"))
    with pytest.raises(NoImageChannelsError, match="labels"):
        read_scan(tmp_path / "stack.ibw")


def test_every_ibw_error_names_the_file_and_reason(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ibw"
    junk.write_bytes(b"\x07\x07 not a wave")
    with pytest.raises(IbwError) as caught:
        read_scan(junk)
    assert caught.value.path == str(junk)
    assert caught.value.reason and str(caught.value) == f"{junk}: {caught.value.reason}"


@settings(max_examples=200, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 20_000), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 20_000),
    fix_checksum=st.booleans(),
)
def test_damaged_files_give_a_scan_or_a_typed_error(
    tmp_path_factory: pytest.TempPathFactory,
    edits: list[tuple[int, int]],
    cut: int,
    fix_checksum: bool,
) -> None:
    """Whatever bytes are flipped or cut, the reader never lets a raw exception escape."""
    folder = tmp_path_factory.mktemp("damaged")
    raw = bytearray(write_fixture(folder, make_scan(lines=8, points=16)).read_bytes())
    for offset, mask in edits:
        raw[offset % len(raw)] ^= mask
    raw = raw[: max(cut, 1)] if cut < len(raw) else raw
    if fix_checksum and len(raw) >= HEADER_SIZE:
        _fix_checksum(raw)
    path = folder / "damaged.ibw"
    path.write_bytes(bytes(raw))
    try:
        scan = read_scan(path)
    except IbwError as exc:
        assert exc.reason
    else:
        assert all(data.shape == (scan.n_lines, scan.n_points) for data in scan.channels.values())


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions"
)
def test_permission_error_propagates_so_the_caller_retries(tmp_path: Path) -> None:
    path = write_fixture(tmp_path, make_scan())
    path.chmod(0)
    try:
        with pytest.raises(PermissionError):
            check_complete(path)
    finally:
        path.chmod(0o644)


def test_writer_rejects_bad_channel_labels(tmp_path: Path) -> None:
    scan = make_scan(channels=("Height'Retrace",))
    with pytest.raises(ValueError, match="Height'Retrace"):
        write_fixture(tmp_path, scan)


# ---------------------------------------------------------------- spmwatch inspect


def _inspect(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "spmwatch", "inspect", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_inspect_exits_0_when_every_file_reads(tmp_path: Path) -> None:
    full = write_fixture(tmp_path, make_scan(), "full")
    part = write_fixture(tmp_path, make_scan(lines=5, expected_lines=32), "part")
    result = _inspect("--json", str(full), str(part))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["file"] for record in records] == [str(full), str(part)]
    assert records[0]["pairs"] == {"Height": ["HeightTrace", "HeightRetrace"]}
    assert (records[1]["lines"], records[1]["expected_lines"], records[1]["partial"]) == (
        5,
        32,
        True,
    )
    assert all(record["file_complete"] and record["errors"] == [] for record in records)


def test_inspect_exits_2_and_still_reports_the_readable_files(tmp_path: Path) -> None:
    good = write_fixture(tmp_path, make_scan(), "good")
    raw = good.read_bytes()
    cut = tmp_path / "cut.ibw"
    cut.write_bytes(raw[:2000])
    junk = tmp_path / "junk.ibw"
    junk.write_bytes(b"garbage" * 100)
    missing = tmp_path / "missing.ibw"
    result = _inspect("--json", str(cut), str(good), str(junk), str(missing))
    assert result.returncode == 2
    records = {Path(r["file"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert records["good.ibw"]["channels"] == ["HeightTrace", "HeightRetrace"]
    assert records["cut.ibw"]["file_complete"] is False
    assert records["cut.ibw"]["errors"][0].startswith("incomplete: truncated")
    assert records["junk.ibw"]["channels"] is None
    assert records["junk.ibw"]["errors"][0].startswith("not_ibw:")
    assert records["missing.ibw"]["errors"] == ["file not found"]
    assert "Traceback" not in result.stderr


def test_inspect_human_output_lists_files_problems_and_missing(tmp_path: Path) -> None:
    scan = make_scan(lines=6, points=8)
    scan.channels["HeightTrace"][2] = np.nan
    path = write_fixture(tmp_path, scan, "nan")
    cut = tmp_path / "cut.ibw"
    cut.write_bytes(path.read_bytes()[:500])
    result = _inspect(str(path), str(tmp_path / "missing.ibw"), str(cut))
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert lines[0].startswith(str(path)) and "6/6 lines" in lines[0] and "Height(T/R)" in lines[0]
    assert "line 2 HeightTrace: 8 non-finite values" in lines[1]
    assert lines[2].endswith("missing.ibw  UNREADABLE") and "file not found" in lines[3]
    assert lines[4] == f"{cut}  INCOMPLETE" and "truncated: 500 of" in lines[5]
    assert "2 of 3 files unreadable" in result.stderr


def test_inspect_says_a_force_curve_is_no_image_and_no_error(tmp_path: Path) -> None:
    IgorWave5(np.arange(10, dtype=np.float32), name="Defl").save(str(tmp_path / "force.ibw"))
    result = _inspect(str(tmp_path / "force.ibw"))
    assert result.returncode == 0, result.stderr
    head, why = result.stdout.splitlines()
    assert head == f"{tmp_path / 'force.ibw'}  NOT AN IMAGE (skipped by score and the daemon)"
    assert "a 1-D wave" in why
    record = json.loads(_inspect("--json", str(tmp_path / "force.ibw")).stdout)
    assert (record["image"], record["channels"]) == (False, None)
    good = json.loads(_inspect("--json", str(write_fixture(tmp_path, make_scan(), "g"))).stdout)
    assert good["image"] is True


def test_inspect_says_the_rate_is_unknown_without_an_asylum_note(tmp_path: Path) -> None:
    IgorWave5(np.zeros((16, 8), np.float32), name="Img0001").save(str(tmp_path / "plain.ibw"))
    head = _inspect(str(tmp_path / "plain.ibw")).stdout.splitlines()[0]
    assert "8/8 lines x 16 pts  rate unknown  up" in head  # it said "0 Hz"


@pytest.mark.data
def test_inspect_real_dna_scan(dna_scan_path: Path) -> None:
    result = _inspect("--json", str(dna_scan_path))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["pairs"] == {prefix: list(pair) for prefix, pair in DNA_PAIRS.items()}
    assert record["scan_down"] is True and record["lines"] == 512
