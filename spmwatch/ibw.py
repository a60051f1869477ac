"""Read and write Asylum Research `.ibw` image files (Igor binary wave, version 5).

Asylum saves one file per finished frame: `wData` shaped (points, lines, channels) with the
channel names as dimension-2 labels and ~600 `key: value` settings in the wave note. The folder
watcher sees files while Igor is still writing them, so completeness is a cheap header check
that callers poll, and every way a file can be wrong ends in a typed `IbwError`, never a bare
traceback from the parser.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import igor2.binarywave
import numpy as np
from igorwriter import IgorWave5
from igorwriter.errors import InvalidNameError, RenameWarning

from spmwatch.model import Scan, clean_channel_name, pair_channels

BIN_HEADER_SIZE = 64
HEADER_SIZE = 384  # BinHeader5 + WaveHeader5: the span the header checksum covers
WAVE_HEADER_SIZE = HEADER_SIZE - BIN_HEADER_SIZE
KNOWN_VERSIONS = (1, 2, 3, 5, 7)
MAX_PROBLEM_RUNS = 5  # per channel, so a NaN-flooded file gives a few lines of text
# A 2-D wave whose note does not say ScanLines needs this many rows to be taken for an
# image: below it the scorer has no baseline (min_baseline) and a verdict says nothing.
MIN_UNNOTED_LINES = 8
# Largest wave note whose settings are read: 8x the largest real Asylum note (31.7 kB). The note
# is parsed here, not by igor2, which holds ~180 bytes per note byte (1 MiB of note: ~185 MiB).
MAX_NOTE_BYTES = 256 * 1024

# BinHeader5: version, checksum, wfmSize, formulaSize, noteSize, dataEUnitsSize,
# dimEUnitsSize[4], dimLabelsSize[4], sIndicesSize, optionsSize1, optionsSize2.
_BIN_HEADER = "hhiiii4i4iiii"
# Offsets inside the 384-byte header (TN003 WaveHeader5 after the 64-byte BinHeader5).
_NPNTS_AT, _TYPE_AT, _NOTE_ENCODING_AT, _NDIM_AT = 76, 80, 89, 132
_NOTE_SIZE_AT = 12  # BinHeader5 noteSize
_UTF8_ENCODING = 1

# Igor number types: 2 float32, 4 float64, 8 int8, 16 int16, 32 int32, +64 unsigned, +1 complex.
_NUMBER_TYPES = {2: "f4", 4: "f8", 8: "i1", 16: "i2", 32: "i4", 72: "u1", 80: "u2", 96: "u4"}
_ITEM_SIZES = {code: int(kind[1]) for code, kind in _NUMBER_TYPES.items()}
_WFM_SIZE_AT = 4  # BinHeader5 wfmSize
_COMPLEX = 1

META_KEYS: tuple[str, ...] = (
    "ScanRate",
    "ScanLines",
    "ScanPoints",
    "ScanSize",
    "FastScanSize",
    "SlowScanSize",
    "ScanSpeed",
    "ScanDown",
    "ScanAngle",
    "ImagingMode",
    "IntegralGain",
    "ProportionalGain",
    "AmplitudeSetpointVolts",
    "DeflectionSetpointVolts",
    "DriveAmplitude",
    "DriveFrequency",
    "MicroscopeModel",
    "Version",
    "Date",
    "Time",
)
# Text settings that merely look numeric in some files (`ImagingMode: 0`, `Version: 19.17`).
_TEXT_KEYS = frozenset({"ImagingMode", "MicroscopeModel", "Version", "Date", "Time"})
_INT = re.compile(r"[+-]?\d+")


class IbwError(Exception):
    """A file that cannot become a `Scan`; `reason` says why in words a user can act on."""

    kind = "unreadable"

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class IncompleteError(IbwError):
    """Shorter than its headers imply or the checksum fails: usually still being written."""

    kind = "incomplete"


class CorruptHeaderError(IbwError):
    """As long as its header says, but the header's checksum fails: corrupt. Reported once the
    file has settled; a rewrite is a new version, read again."""

    kind = "corrupt_header"


class NotIbwError(IbwError):
    """Not an Igor binary wave at all (bad version field, random bytes, empty, corrupt)."""

    kind = "not_ibw"


class UnsupportedVersionError(IbwError):
    """An Igor binary wave, but not version 5 (the only one Asylum writes)."""

    kind = "unsupported_version"


class NoImageChannelsError(IbwError):
    """A valid wave that is not a 2-D/3-D image with channel names."""

    kind = "no_image_channels"


@dataclass(frozen=True)
class Completeness:
    """Whether a file on disk holds everything its header promises (see `check_complete`)."""

    complete: bool
    on_disk: int
    implied: int
    reason: str | None = None
    corrupt: bool = False  # whole length, but the header checksum fails

    def error(self, path: str | Path) -> IbwError:
        """The error a file that is not (yet) whole is reported with."""
        kind = CorruptHeaderError if self.corrupt else IncompleteError
        return kind(path, self.reason or "incomplete")


@dataclass(frozen=True)
class _Header:
    """The header fields the reader needs, decoded in the file's own byte order."""

    order: str
    section_sizes: tuple[int, ...]
    npnts: int
    type: int
    dims: tuple[int, int, int, int]
    note_encoding: int

    @property
    def wfm_size(self) -> int:
        return self.section_sizes[0]

    @property
    def implied(self) -> int:
        return BIN_HEADER_SIZE + sum(self.section_sizes)

    @property
    def note_span(self) -> tuple[int, int]:
        """Where the note lies in the file: after the wave and the dependency formula."""
        start = BIN_HEADER_SIZE + self.section_sizes[0] + self.section_sizes[1]
        return start, start + self.section_sizes[2]


def _byte_order(head: bytes, path: str | Path) -> tuple[str, int] | None:
    """Return (struct byte order, version) from the version field, None when not written yet."""
    if len(head) < 2 or head[:2] == b"\x00\x00":
        return None
    little, big = struct.unpack("<h", head[:2])[0], struct.unpack(">h", head[:2])[0]
    if little in KNOWN_VERSIONS:
        order, version = "<", little
    elif big in KNOWN_VERSIONS:
        order, version = ">", big
    else:
        raise NotIbwError(path, f"not an Igor binary wave: version field is {head[:2].hex()}")
    if version != 5:
        raise UnsupportedVersionError(
            path, f"Igor binary wave version {version}; only version 5 (Asylum) is supported"
        )
    return order, version


def _checksum(head: bytes, order: str) -> int:
    return sum(struct.unpack(f"{order}192h", head[:HEADER_SIZE])) & 0xFFFF


def _parse_header(head: bytes, order: str) -> _Header:
    fields = struct.unpack(order + _BIN_HEADER, head[:BIN_HEADER_SIZE])
    (npnts,) = struct.unpack_from(order + "i", head, _NPNTS_AT)
    (type_,) = struct.unpack_from(order + "h", head, _TYPE_AT)
    dims = struct.unpack_from(order + "4i", head, _NDIM_AT)
    return _Header(
        order=order,
        section_sizes=tuple(fields[2:]),
        npnts=npnts,
        type=type_,
        dims=dims,
        note_encoding=head[_NOTE_ENCODING_AT],
    )


def _completeness(
    head: bytes, on_disk: int, path: str | Path
) -> tuple[Completeness, _Header | None]:
    """Judge completeness from the first 384 bytes and the size on disk: pure, no I/O."""
    found = _byte_order(head, path)
    if found is None:
        reason = "file is empty" if on_disk == 0 else "header not written yet"
        return Completeness(False, on_disk, HEADER_SIZE, reason), None
    if len(head) < HEADER_SIZE:
        reason = f"truncated: {on_disk} bytes, the header alone needs {HEADER_SIZE}"
        return Completeness(False, on_disk, HEADER_SIZE, reason), None
    header = _parse_header(head, found[0])
    total = _checksum(head, header.order)
    if total != 0:
        implied = max(header.implied, HEADER_SIZE)
        whole = on_disk >= implied
        checksum = f"checksum fails (word sum {total:#06x}, expected 0)"
        reason = f"corrupt header: {checksum}" if whole else f"header {checksum}"
        return Completeness(False, on_disk, implied, reason, whole), header
    if min(header.section_sizes) < 0 or header.wfm_size < WAVE_HEADER_SIZE:
        raise NotIbwError(path, f"corrupt header: impossible section sizes {header.section_sizes}")
    if on_disk < header.implied:
        reason = f"truncated: {on_disk} of {header.implied} bytes on disk"
        return Completeness(False, on_disk, header.implied, reason), header
    return Completeness(True, on_disk, header.implied), header


def check_complete(path: str | Path) -> Completeness:
    """Cheaply tell whether a file (possibly still being written) is a whole version-5 wave.

    Reads only the first 384 bytes. Asylum appends bytes after the last section, so a file
    counts as complete when it is at least as long as its headers imply, not exactly as long.
    Raises `NotIbwError`/`UnsupportedVersionError` when the file can never become a readable
    wave; `PermissionError` (Igor holding the file open on Windows) propagates so callers retry.
    """
    with open(path, "rb") as handle:
        head = handle.read(HEADER_SIZE)
        on_disk = max(os.fstat(handle.fileno()).st_size, len(head))
    return _completeness(head, on_disk, path)[0]


def _validate_layout(header: _Header, path: str | Path) -> tuple[int, ...]:
    """Check the data block matches the dimensions before anything is allocated."""
    if header.type == 0:
        raise NoImageChannelsError(path, "text wave, not an image")
    if header.type & _COMPLEX:
        raise NoImageChannelsError(path, "complex wave, not an image")
    item = _ITEM_SIZES.get(header.type)
    if item is None:
        raise NotIbwError(path, f"corrupt header: unknown number type {header.type}")
    points, lines, layers, chunks = header.dims
    data_bytes = header.wfm_size - WAVE_HEADER_SIZE
    if header.npnts == 0 and data_bytes == 0 and points > 0 and lines == 0 and chunks == 0:
        # Saved with zero lines: Igor's "0 ends the dimensions" rule does not apply here.
        return (points, 0, layers) if layers > 0 else (points, 0)
    shape: list[int] = []
    for n in header.dims:
        if n <= 0:
            break
        shape.append(n)
    if math.prod(shape) != header.npnts or header.npnts * item != data_bytes:
        raise NotIbwError(
            path,
            f"corrupt header: dimensions {header.dims} and {header.npnts} points do not match "
            f"{data_bytes} bytes of data",
        )
    if len(shape) not in (2, 3):
        raise NoImageChannelsError(path, f"a {len(shape)}-D wave, not a 2-D or 3-D image")
    return tuple(shape)


def _load_igor(raw: bytes, header: _Header, path: str | Path) -> dict:
    """Parse the wave's headers and dimension labels with igor2, turning anything it raises
    into a typed error.

    igor2 gets a copy without the data and the note (`_wave_data` maps the data in place,
    `_read_note` reads the note): copying and unpacking a frame's data through igor2 took
    most of the time a 16 MB frame took to read. igor2 does not check the header checksum,
    so the copy only needs its sizes zeroed (and the dimensions, which describe no data now).
    """
    start, end = header.note_span
    formula = start - header.section_sizes[1]
    patched = bytearray(memoryview(raw)[:HEADER_SIZE])
    patched += memoryview(raw)[formula:start]
    patched += memoryview(raw)[end:]
    struct.pack_into(header.order + "i", patched, _WFM_SIZE_AT, WAVE_HEADER_SIZE)
    struct.pack_into(header.order + "i", patched, _NOTE_SIZE_AT, 0)
    struct.pack_into(header.order + "i", patched, _NPNTS_AT, 0)
    patched[_NDIM_AT : _NDIM_AT + 16] = bytes(16)
    try:
        return igor2.binarywave.load(io.BytesIO(patched))["wave"]
    except Exception as exc:
        raise NotIbwError(
            path, f"igor2 cannot parse the wave: {type(exc).__name__}: {exc}"
        ) from exc


def _wave_data(raw: bytes, header: _Header) -> np.ndarray:
    """The data block as a read-only array of the file's bytes (1-D, `npnts` values).

    `_validate_layout` has checked that the block and the dimensions agree."""
    dtype = np.dtype(header.order + _NUMBER_TYPES[header.type])
    return np.frombuffer(raw, dtype=dtype, count=header.npnts, offset=HEADER_SIZE)


def _decode(value: bytes, utf8: bool) -> str:
    return value.decode("utf-8", errors="replace") if utf8 else value.decode("latin-1")


def _read_note(raw: bytes, header: _Header) -> tuple[dict[str, str], list[str]]:
    """The note's `key: value` pairs; an oversized note is skipped with a problem line, so
    the frame is still scored, only without its settings."""
    start, end = header.note_span
    if end - start > MAX_NOTE_BYTES:
        limit = f"{MAX_NOTE_BYTES // 1024} KiB"
        return {}, [f"note of {end - start} bytes is larger than {limit}; its settings ignored"]
    return parse_note(_decode(raw[start:end], header.note_encoding == _UTF8_ENCODING)), []


def parse_note(text: str) -> dict[str, str]:
    """Split a wave note into `{key: value}`; the first value wins for repeated keys."""
    note: dict[str, str] = {}
    for line in re.split(r"\r\n|\r|\n", text):
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key and key not in note:
            note[key] = value.strip()
    return note


def _typed(key: str, value: str) -> float | int | str | None:
    """The value as its key's type; None for a numeric setting that is not a number."""
    if key in _TEXT_KEYS:
        return value
    if _INT.fullmatch(value):
        return int(value)
    try:
        return float(value)
    except ValueError:
        return None


def note_meta(note: Mapping[str, str]) -> tuple[dict[str, float | int | str], list[str]]:
    """The settings spmwatch uses, typed, and a problem line per numeric setting that does not
    parse (a flipped byte makes `ScanRate: 1.0F`): such a key is left out of the settings, so
    code reading them meets a number or nothing, never text; the note keeps it as written."""
    meta: dict[str, float | int | str] = {}
    problems: list[str] = []
    for key in META_KEYS:
        if key not in note:
            continue
        value = _typed(key, note[key])
        if value is None:
            problems.append(f"note: {key} is not a number ({note[key][:40]!r}); ignored")
        else:
            meta[key] = value
    return meta, problems


def _channel_names(
    wave: dict, n_channels: int, utf8: bool, path: str | Path, table: bool
) -> list[str]:
    labels = wave.get("labels") or []
    dim2 = [_decode(label, utf8) for label in labels[2]] if len(labels) > 2 else []
    if n_channels == 1 and not any(dim2[1:]):
        columns = [_decode(label, utf8) for label in labels[1][1:]] if len(labels) > 1 else []
        if any(columns) and not table:
            # Asylum saves a force curve as a 2-D wave of samples x labelled columns (Raw,
            # Defl, ZSnsr): read as an image, it was a frame of 3 "lines" that failed
            raise NoImageChannelsError(
                path, f"a 2-D wave of labelled columns {columns[:4]!r}: a force curve, not an image"
            )
        # A 2-D image: the channel is named by the wave itself.
        dim2 = ["", _decode(wave["wave_header"]["bname"], utf8)]
    names = [clean_channel_name(label) for label in dim2[1 : 1 + n_channels]]
    if len(names) < n_channels or not all(names):
        raise NoImageChannelsError(
            path, f"{n_channels} channels but dimension 2 labels are {dim2[1:]!r}"
        )
    if len(set(names)) != len(names):
        raise NoImageChannelsError(path, f"duplicate channel names {names!r}")
    return names


def _runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Group sorted line indices into (first, last) runs of consecutive lines."""
    if indices.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1)
    starts = np.concatenate(([indices[0]], indices[breaks + 1]))
    ends = np.concatenate((indices[breaks], [indices[-1]]))
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def nonfinite_problems(channels: Mapping[str, np.ndarray]) -> list[str]:
    """Describe NaN/Inf content per run of lines and channel, a handful of lines per channel."""
    problems: list[str] = []
    for name, data in channels.items():
        counts = np.count_nonzero(~np.isfinite(data), axis=1) if data.size else np.zeros(0)
        runs = _runs(np.flatnonzero(counts))
        for first, last in runs[:MAX_PROBLEM_RUNS]:
            total = int(counts[first : last + 1].sum())
            where = f"line {first}" if first == last else f"lines {first}-{last}"
            problems.append(f"{where} {name}: {total} non-finite values")
        if len(runs) > MAX_PROBLEM_RUNS:
            rest = runs[MAX_PROBLEM_RUNS:]
            lines = sum(last - first + 1 for first, last in rest)
            problems.append(f"{name}: {len(rest)} more runs of non-finite values ({lines} lines)")
    return problems


def read_scan(path: str | Path, scan_id: str | None = None, table: bool = False) -> Scan:
    """Read an Asylum image file into a `Scan` with channels shaped (lines, points).

    A 2-D wave with labelled columns is a force curve (`NoImageChannelsError`) unless `table`
    asks for it as one channel anyway (the scope ring's samples x 8 columns, which the scope
    follower takes apart itself).

    Raises `IncompleteError` for a file still being written (callers retry),
    `CorruptHeaderError` for a whole one whose header checksum fails, and the other
    `IbwError`s for files that will never read; NaN/Inf content is reported in
    `Scan.problems`, never raised.
    """
    raw = Path(path).read_bytes()
    if not raw:
        raise NotIbwError(path, "empty file: not an Igor binary wave")
    completeness, header = _completeness(raw[:HEADER_SIZE], len(raw), path)
    if not completeness.complete or header is None:
        raise completeness.error(path)
    shape = _validate_layout(header, path)
    wave = _load_igor(raw, header, path)
    utf8 = header.note_encoding == _UTF8_ENCODING

    n_channels = shape[2] if len(shape) == 3 else 1
    names = _channel_names(wave, n_channels, utf8, path, table)
    data = _wave_data(raw, header)
    dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float32)
    # Igor stores column-major: points vary fastest, then lines, then channels.
    data = data.reshape(n_channels, shape[1], shape[0])
    native = dtype.newbyteorder("=")
    # One copy (the view above reads the file's bytes, which are not ours to keep); each
    # channel is a view of it, so the scorer reads the frame as it lies (Scan.block).
    block = data.astype(native)
    channels = {name: block[c] for c, name in enumerate(names)}

    note, note_problems = _read_note(raw, header)
    meta, meta_problems = note_meta(note)
    stored = shape[1]
    scan_lines = meta.get("ScanLines")
    if not table and len(shape) == 2 and scan_lines is None and 0 < stored < MIN_UNNOTED_LINES:
        # a small table or curve without labels: judged as a 3-line image it got a verdict
        # that meant nothing. Asylum's note says ScanLines, so its stopped frames are kept
        raise NoImageChannelsError(
            path,
            f"a 2-D wave of {stored} rows x {shape[0]} points without an Asylum note "
            "(no ScanLines): too small to be an image",
        )
    expected = scan_lines if isinstance(scan_lines, int) and scan_lines > 0 else stored
    return Scan(
        scan_id=scan_id if scan_id is not None else Path(path).stem,
        channels=channels,
        meta=meta,
        expected_lines=max(expected, stored),
        scan_down=meta.get("ScanDown") == 1,
        path=str(path),
        note=note,
        problems=note_problems + meta_problems + nonfinite_problems(channels),
    )


def _note_value(value: object) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        value = int(value)
    text = repr(value) if isinstance(value, float) else str(value)
    return re.sub(r"[\r\n]+", " ", text)


def build_note(scan: Scan) -> str:
    """The wave note Asylum would write for `scan`: its note, updated with meta and the shape."""
    entries = {**scan.note, **{key: _note_value(value) for key, value in scan.meta.items()}}
    entries["ScanLines"] = str(scan.expected_lines)
    entries["ScanDown"] = "1" if scan.scan_down else "0"
    for key in entries:
        if not key.strip() or ":" in key or re.search(r"[\r\n]", key):
            raise ValueError(f"note key {key!r} cannot be written as a 'key: value' line")
    return "\r".join(f"{key}: {value}" for key, value in entries.items())


def write_scan(scan: Scan, path: str | Path) -> None:
    """Write `scan` as an Asylum-like version-5 `.ibw` that `read_scan` reads back exactly.

    wData is (points, lines, channels) with the channel names as dimension-2 labels, as Asylum
    saves it. All channels share one dtype on disk: float64 if any channel is float64, else
    float32 (integers included).
    """
    if not scan.channels:
        raise ValueError(f"scan {scan.scan_id!r} has no channels to write")
    arrays = list(scan.channels.values())
    shapes = {array.shape for array in arrays}
    if len(shapes) != 1 or len(arrays[0].shape) != 2:
        raise ValueError(f"scan {scan.scan_id!r}: channels must share one (lines, points) shape")
    dtype = np.result_type(*arrays)
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float32)
    data = np.stack([np.asarray(a, dtype=dtype).T for a in arrays], axis=2)

    with warnings.catch_warnings():
        # Igor wave names are stricter than scan ids; readers take the id from the file name.
        warnings.simplefilter("ignore", RenameWarning)
        wave = IgorWave5(data, name=scan.scan_id, on_errors="fix")
    for index, name in enumerate(scan.channels):
        try:
            wave.set_dimlabel(2, index, name)
        except InvalidNameError as exc:
            raise ValueError(f"channel name {name!r} is not a valid Igor label: {exc}") from exc
    wave.set_note(build_note(scan))
    wave.save(str(path))


def warm_up_reader() -> None:
    """Write and read back a tiny wave in the calling thread: igor2 builds its parsing
    structures once per thread (~0.1 s), which would otherwise delay the first frame a
    watcher thread reads."""
    scan = Scan("warm_up", {"HeightRetrace": np.zeros((2, 4), np.float32)}, {}, 2, False)
    with tempfile.TemporaryDirectory(prefix="spmwatch-") as folder:
        path = Path(folder) / "warm_up.ibw"
        write_scan(scan, path)
        read_scan(path)


def read_problem(exc: IbwError | OSError) -> str:
    """Why `read_scan` failed, without the path (the caller shows it once)."""
    if isinstance(exc, IbwError):
        return f"{exc.kind}: {exc.reason}"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    return f"cannot read: {exc.strerror or exc}"


_RECORD_FIELDS = (
    "channels",
    "pairs",
    "lines",
    "points",
    "expected_lines",
    "scan_rate",
    "scan_down",
    "partial",
    "file_complete",
    "image",
)


def inspect_file(path: str | Path) -> dict[str, object]:
    """One plain record per file for `spmwatch inspect`; unreadable files fill only `errors`."""
    record: dict[str, object] = {"file": str(path), **dict.fromkeys(_RECORD_FIELDS), "errors": []}
    try:
        scan = read_scan(path)
    except (IbwError, OSError) as exc:
        record["file_complete"] = False if isinstance(exc, IncompleteError) else None
        record["image"] = False if isinstance(exc, NoImageChannelsError) else None
        record["errors"] = [read_problem(exc)]
        return record
    record.update(
        channels=list(scan.channels),
        pairs={prefix: list(pair) for prefix, pair in pair_channels(scan.channels).items()},
        lines=scan.n_lines,
        points=scan.n_points,
        expected_lines=scan.expected_lines,
        scan_rate=scan.scan_rate,
        scan_down=scan.scan_down,
        partial=scan.partial,
        file_complete=True,
        image=True,
        errors=list(scan.problems),
    )
    return record
