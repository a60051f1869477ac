"""Deterministic damaged `.ibw` files for the reliability tests and benchmarks/fuzz_ibw.py.

A monitor sitting next to a microscope meets half-written files, disk errors, files from other
software and hostile input in a shared folder. Every case here starts from a valid Asylum-like
file written by `ibw.write_scan` and damages it in one way a reader must survive: truncation at
each header field and section boundary, flipped header bytes (with the checksum repaired, so
the damage gets past the cheap check), absurd dimensions and section sizes, other versions,
empty and random files, absurd note values and NaN/Inf floods. The same `(count, seed)` always
gives the same bytes, so a failure names a case anyone can regenerate.

`answer` is the one judge both the test slice and the full run use: it reads a file (and
optionally scores it) under a memory tracer and a wall-clock alarm, and classifies the outcome.
"""

from __future__ import annotations

import itertools
import signal
import struct
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ibw_fixtures import DART_CHANNELS, make_scan

from spmwatch.ibw import BIN_HEADER_SIZE, HEADER_SIZE, IbwError, write_scan
from spmwatch.model import Scan

# Field boundaries inside BinHeader5 (64 bytes) and the WaveHeader5 fields the reader uses.
BIN_FIELDS = (0, 2, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64)
WAVE_FIELDS = (68, 72, 76, 80, 82, 88, 89, 90, 96, 128, 132, 136, 140, 144, 148, 200, 320, 384)
NPNTS_AT, TYPE_AT, NDIM_AT = 76, 80, 132
NOTE_SIZE_AT, LABELS_SIZE_AT = 12, 44  # BinHeader5 noteSize, dimLabelsSize[2] (channel names)
INT32_EDGES = (-(2**31), -1, 0, 1, 2**15, 2**31 - 1)


@dataclass(frozen=True)
class FuzzCase:
    """One damaged file: `name` is unique and file-name safe, `family` groups the damage."""

    name: str
    family: str
    data: bytes

    @property
    def filename(self) -> str:
        return f"{self.name}.ibw"


@dataclass(frozen=True)
class Outcome:
    """How one file was answered: "scan", "typed_error", "crash" (any other exception) or "hang"."""

    case: str
    kind: str
    detail: str
    seconds: float
    peak_bytes: int


# ---------------------------------------------------------------------------------------------
# Valid starting points
# ---------------------------------------------------------------------------------------------


def base_scans() -> list[Scan]:
    """Small valid scans covering the layouts Asylum writes (pairs, retrace only, DART, partial)."""
    return [
        make_scan(scan_id="pair", seed=1),
        make_scan(DART_CHANNELS, lines=16, points=48, scan_down=True, dtype=np.float64, seed=2),
        make_scan(("HeightRetrace", "PhaseRetrace"), lines=10, points=32, expected_lines=32),
        make_scan(("HeightRetrace",), lines=8, points=16, seed=3),
    ]


def scan_bytes(scan: Scan) -> bytes:
    """The bytes `write_scan` gives for `scan` (via a temporary file: igorwriter wants a path)."""
    with tempfile.TemporaryDirectory(prefix="spmwatch-fuzz-") as folder:
        path = Path(folder) / "scan.ibw"
        write_scan(scan, path)
        return path.read_bytes()


def section_ends(raw: bytes) -> list[int]:
    """Offsets where each BinHeader5 section ends (wave, formula, note, units, labels, ...)."""
    sizes = struct.unpack_from("<15i", raw, 4)  # wfmSize ... optionsSize2
    ends, at = [], BIN_HEADER_SIZE
    for size in sizes:
        at += max(size, 0)
        ends.append(at)
    return sorted(set(ends))


def fix_checksum(buf: bytearray) -> bytearray:
    """Repair the header checksum (16-bit word sum over 384 bytes must be 0), little-endian."""
    buf[2:4] = b"\x00\x00"
    total = sum(struct.unpack_from("<192h", buf, 0)) & 0xFFFF
    struct.pack_into("<H", buf, 2, (-total) & 0xFFFF)
    return buf


def _patched(raw: bytes, fmt: str, offset: int, *values: int, checksum: bool = True) -> bytes:
    buf = bytearray(raw)
    struct.pack_into(fmt, buf, offset, *values)
    return bytes(fix_checksum(buf) if checksum else buf)


# ---------------------------------------------------------------------------------------------
# Families of damage: each yields (detail, bytes)
# ---------------------------------------------------------------------------------------------

Family = Callable[[list[bytes], np.random.Generator], Iterator[tuple[str, bytes]]]


def _valid(bases: list[bytes], rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    for b, raw in enumerate(bases):
        yield f"b{b}", raw


def _truncated(bases: list[bytes], rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    for b, raw in enumerate(bases[:2]):
        cuts = set(BIN_FIELDS) | set(WAVE_FIELDS)
        for end in section_ends(raw):
            cuts |= {end - 1, end, end + 1}
        cuts |= {1, 3, len(raw) // 2, len(raw) - 1}
        for cut in sorted(c for c in cuts if 0 < c < len(raw)):
            yield f"b{b}_at{cut}", raw[:cut]


def _flipped_header(bases: list[bytes], rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    raw = bases[0]
    for offset in range(0, HEADER_SIZE, 3):
        for repair in (True, False):
            buf = bytearray(raw)
            buf[offset] ^= 0xFF
            if repair and offset not in (2, 3):
                fix_checksum(buf)
            yield f"at{offset}_{'fixed' if repair else 'raw'}", bytes(buf)


def _flipped_data(bases: list[bytes], rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    for b, raw in enumerate(bases):
        for trial in range(12):
            buf = bytearray(raw)
            spots = rng.integers(HEADER_SIZE, len(raw), size=int(rng.integers(1, 64)))
            for spot in spots:
                buf[spot] = int(rng.integers(0, 256))
            yield f"b{b}_t{trial}", bytes(buf)


def _absurd_dims(bases: list[bytes], rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    raw = bases[0]
    (npnts,) = struct.unpack_from("<i", raw, NPNTS_AT)
    dims = [
        (2**30, 2**30, 8, 0),
        (2**31 - 1, 2**31 - 1, 2**31 - 1, 2**31 - 1),
        (-1, -1, -1, -1),
        (0, 0, 0, 0),
        (npnts, 1, 1, 0),
        (1, npnts, 1, 0),
        (1, 1, npnts, 0),
        (2, npnts // 2, 1, 0),
        (65536, 65536, 1, 0),
        (46341, 46341, 1, 0),  # product just over 2**31
    ]
    for i, shape in enumerate(dims):
        yield f"dims{i}", _patched(raw, "<4i", NDIM_AT, *shape)
        product = int(np.prod([d for d in shape if d > 0] or [0], dtype=np.int64))
        if 0 < product < 2**31:
            yield (
                f"dims{i}_npnts",
                _patched(_patched(raw, "<4i", NDIM_AT, *shape), "<i", NPNTS_AT, product),
            )
    for value in INT32_EDGES:
        yield f"npnts{value}", _patched(raw, "<i", NPNTS_AT, value)
        yield f"wfm{value}", _patched(raw, "<i", 8, value)
    for type_ in (0, 1, 3, 4, 5, 8, 16, 32, 64, 72, 96, 127, -1, 0x7FFF):
        yield f"type{type_}", _patched(raw, "<h", TYPE_AT, type_)
    # A consistent reinterpretation: float32 data read as int8 (4x the points).
    reshaped = _patched(raw, "<4i", NDIM_AT, 64 * 4, 32, 2, 0)
    reshaped = _patched(reshaped, "<i", NPNTS_AT, npnts * 4)
    yield "as_int8", _patched(reshaped, "<h", TYPE_AT, 8)


def _versions(bases: list[bytes], rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    raw = bases[0]
    for version in (0, 1, 2, 3, 4, 6, 7, 8, -1, -5, 0x7FFF, 0x0500):
        yield f"v{version}", _patched(raw, "<h", 0, version, checksum=False)
        yield f"v{version}_fixed", _patched(raw, "<h", 0, version)


def _empty_and_random(bases: list[bytes], rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    yield "empty", b""
    yield "zeros1k", bytes(1024)
    yield "ff1k", b"\xff" * 1024
    yield "text", b"ScanRate: 1.0\rScanLines: 256\r" * 20
    for size in (1, 2, 63, 64, 383, 384, 385, 1000, 4096, 20000, 65536):
        yield f"random{size}", rng.bytes(size)
        head = b"\x05\x00" + rng.bytes(max(size - 2, 0))
        yield f"v5random{size}", head[:size]
        if size >= HEADER_SIZE:
            yield f"v5random{size}_fixed", bytes(fix_checksum(bytearray(head)))


def _note_abuse(bases: list[bytes], rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    raw = bases[0]
    for value in (2**31 - 1, 10**9, 10**6, -1, -(2**31)):
        yield f"notesize{value}", _patched(raw, "<i", NOTE_SIZE_AT, value)
        yield f"labelsize{value}", _patched(raw, "<i", LABELS_SIZE_AT, value)
    for lines in (0, -5, 10**5, 10**8, 2**31 - 1, 10**30):
        scan = make_scan(lines=4, points=16, scan_id="note")
        scan.meta["ScanLines"] = scan.expected_lines = lines  # the note claims `lines` lines
        yield f"scanlines{lines}", scan_bytes(scan)
    noisy = make_scan(lines=4, points=16, note={f"Key{i}": "x" * 200 for i in range(2000)})
    yield "long_note", scan_bytes(noisy)
    # ~1 MiB of note: real Asylum notes are ~20 kB, and the parser's cost grows with the note.
    big = make_scan(lines=4, points=16, note={f"Key{i}": "x" * 200 for i in range(5000)})
    yield "note_1mib", scan_bytes(big)
    binary = make_scan(lines=4, points=16, note={"Junk": rng.bytes(300).hex()})
    yield "hex_note", scan_bytes(binary)


def _nonfinite(bases: list[bytes], rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    for name, value in (("nan", np.nan), ("inf", np.inf), ("ninf", -np.inf)):
        scan = make_scan(lines=16, points=32, scan_id=name)
        for data in scan.channels.values():
            data[:] = value
        yield f"{name}_flood", scan_bytes(scan)
    mixed = make_scan(lines=16, points=32, dtype=np.float64)
    for data in mixed.channels.values():
        data[rng.random(data.shape) < 0.5] = np.nan
        data[rng.random(data.shape) < 0.1] = np.inf
    yield "mixed", scan_bytes(mixed)
    huge = make_scan(lines=16, points=32)
    for data in huge.channels.values():
        data[:] = np.finfo(np.float32).max
    yield "float_max", scan_bytes(huge)
    zeros = make_scan(lines=16, points=32)
    for data in zeros.channels.values():
        data[:] = 0.0
    yield "zeros", scan_bytes(zeros)
    yield "one_point", scan_bytes(make_scan(lines=8, points=1))
    yield "one_line", scan_bytes(make_scan(lines=1, points=32))


FAMILIES: dict[str, Family] = {
    "valid": _valid,
    "truncated": _truncated,
    "flipped_header": _flipped_header,
    "flipped_data": _flipped_data,
    "absurd_dims": _absurd_dims,
    "version": _versions,
    "empty_random": _empty_and_random,
    "note_abuse": _note_abuse,
    "nonfinite": _nonfinite,
}


def _random_mutation(raw: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One random edit of a valid file: the open-ended tail of the corpus."""
    buf = bytearray(raw)
    op = int(rng.integers(0, 5))
    if op == 0:  # a few header bytes, checksum repaired
        for spot in rng.integers(0, HEADER_SIZE, size=int(rng.integers(1, 6))):
            buf[spot] = int(rng.integers(0, 256))
        fix_checksum(buf)
    elif op == 1:  # one header int32 set to an edge value, checksum repaired
        field = int(rng.integers(1, HEADER_SIZE // 4)) * 4
        struct.pack_into("<i", buf, field, int(rng.choice(INT32_EDGES)))
        fix_checksum(buf)
    elif op == 2:  # bytes cut out of the middle
        start = int(rng.integers(0, len(buf)))
        del buf[start : start + int(rng.integers(1, 512))]
    elif op == 3:  # bytes inserted
        start = int(rng.integers(0, len(buf)))
        buf[start:start] = rng.bytes(int(rng.integers(1, 512)))
    else:  # a chunk of the file copied over another place
        src, dst = (int(x) for x in rng.integers(0, len(buf), size=2))
        chunk = buf[src : src + int(rng.integers(4, 256))]
        buf[dst : dst + len(chunk)] = chunk
    return f"op{op}", bytes(buf)


def corpus(count: int = 200, seed: int = 0) -> list[FuzzCase]:
    """`count` cases: every family's cases interleaved (so any prefix covers all families),
    then random edits of the valid files until `count` is reached. Same arguments, same bytes."""
    rng = np.random.default_rng(seed)
    bases = [scan_bytes(scan) for scan in base_scans()]
    streams = [
        [(family, detail, data) for detail, data in make(bases, rng)]
        for family, make in FAMILIES.items()
    ]
    ordered = [c for c in itertools.chain(*itertools.zip_longest(*streams)) if c is not None]
    cases = [
        FuzzCase(f"{i:05d}_{family}_{detail}", family, data)
        for i, (family, detail, data) in enumerate(ordered[:count])
    ]
    while len(cases) < count:
        detail, data = _random_mutation(bases[int(rng.integers(0, len(bases)))], rng)
        cases.append(FuzzCase(f"{len(cases):05d}_mutated_{detail}", "mutated", data))
    return cases


def write_corpus(cases: list[FuzzCase], folder: Path) -> list[Path]:
    """Write every case as `<name>.ibw` in `folder` and return the paths, in case order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in cases:
        path = folder / case.filename
        path.write_bytes(case.data)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Judging one file
# ---------------------------------------------------------------------------------------------


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Hang


def answer(
    path: Path,
    read: Callable[[Path], Scan],
    score: Callable[[Scan], object] | None = None,
    time_limit: float = 10.0,
) -> Outcome:
    """Read (and score) `path`, classify the result, and measure seconds and peak traced bytes.

    Runs in the calling (main) thread: the time limit is a SIGALRM timer, and memory is what
    tracemalloc sees, which includes numpy's buffers.
    """
    previous = signal.signal(signal.SIGALRM, _alarm)
    tracemalloc.start()
    started = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        scan = read(path)
        if score is not None:
            score(scan)
        kind, detail = "scan", f"{scan.n_lines}x{scan.n_points} {len(scan.channels)} channels"
    except IbwError as exc:
        kind, detail = "typed_error", f"{exc.kind}: {exc.reason}"
    except _Hang:
        kind, detail = "hang", f"no answer within {time_limit} s"
    except Exception as exc:  # what the reader must never raise: the point of the judge
        kind, detail = "crash", f"{type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return Outcome(path.stem, kind, detail, seconds, peak)
