"""Per-scan scoring state: feeds lines to the numba kernels and turns rows into scores and events.

`ScanScorer.push` scores one line as it arrives (the daemon's path); `score_scan` scores a
saved frame with one `kernels.score_frame` call and then runs the same event logic, so both
give identical `FrameScores`. Every value is causal: a line's score depends only on it and
the lines before it in acquisition order.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice, repeat

import numpy as np

from spmwatch import numba_build
from spmwatch.config import check_bounds
from spmwatch.model import Alert, FrameScores, Line, LineScore, Scan, pair_channels
from spmwatch.scoring import kernels as K
from spmwatch.scoring.events import AlertRule, EventTracker

FEATURE_NAMES: tuple[str, ...] = (
    "level_z",
    "rms_z",
    "sharpness_z",
    "decorrelation_z",
    "scar_z",
    "residual_rms_z",
    "residual_max_z",
    "tr_decorrelation_z",
    "ringing_z",
    "dropout_fraction",
    "scar_fraction",
    "scar_width",
    "score",
)
assert len(FEATURE_NAMES) == K.N_FEATURES

# Which event kind each feature family stands for (families F_LEVEL..F_DROPOUT).
FAMILY_KIND: tuple[str, ...] = (
    "tip_change",
    "tracking_loss",
    "tip_change",
    "tracking_loss",
    "streak",
    "tracking_loss",
    "tracking_loss",
    "tracking_loss",
    "oscillation",
    "dropout",
)
# Feature rows allocated up front; more are added by doubling as lines arrive.
INITIAL_ROWS = 1024
# Channels whose spectrum shows feedback ringing best (error signals), by name prefix.
OSCILLATION_PREFIXES: tuple[str, ...] = ("amplitude", "deflection")
# Channels that follow the z piezo (a ringing loop shows there too), by name prefix.
TOPOGRAPHY_PREFIXES: tuple[str, ...] = ("height", "zsensor")


@dataclass(frozen=True)
class ScoringSettings:
    """Thresholds and window sizes of the scorer; the defaults are documented in docs/scoring.md."""

    window: int = 32  # good lines in the rolling robust baseline
    min_baseline: int = 8  # good lines needed before any z is computed (warm-up)
    refresh: int = 4  # recompute the baseline median/MAD every this many good lines
    z_clip: float = 50.0  # robust z values are clipped to [0, z_clip]
    flag_z: float = 12.0  # a line is flagged when its score reaches this
    dropout_fraction: float = 0.25  # share of NaN/zero samples making a dropout (pinned: tracking)
    scar_hard: float = 0.666  # Gwyddion mark-scars hard threshold (x vertical-difference RMS)
    scar_soft: float = 0.25  # ... soft threshold
    scar_min_len: int = 16  # shortest scar, px
    lag_max: int = 32  # largest trace/retrace lag searched, px
    lag_votes: int = 16  # lines whose full lag search votes first; the lag is the votes' median
    lag_every: int = 32  # then re-check the lag every this many lines ...
    lag_recheck: int = 2  # ... within this many px of the current lag (a slow drift)
    spec_alpha: float = 1.0 / 16  # EMA weight of a good line in the running log spectrum
    spec_klo: int = 4  # lowest spectral bin considered for ringing (skips topography)
    level_floor: float = 0.25  # level-step z scale >= this x the line-to-line difference RMS
    # floors of the robust scale (1.4826 MAD) per feature; RMS-like features are in log units
    floor_log_rms: float = 0.4
    floor_sharpness: float = 0.1
    floor_decorrelation: float = 0.05
    floor_scar: float = 0.05
    floor_tr_decorrelation: float = 0.05
    floor_ringing: float = 0.35
    floor_ringing_persist: float = 0.4
    # lines a spectral peak must hold at one bin for the persistent ringing measure (it
    # raises the score and names the line oscillation, but has no feature column)
    ring_lines: int = 3
    # a ringing hint (z >= flag_z / 2) whose peak bin stands this many nats above its
    # neighbours in the topography's spectrum too, at >= topo_kmin cycles per line, is
    # confirmed: it scores topo_boost more and stays out of the ringing baseline
    topo_contrast: float = 2.0
    topo_kmin: int = 8
    topo_boost: float = 5.0
    # a level step of z >= flag_z / 2 whose level holds this many lines (the step's with the
    # lines settled after it) is a tip change too: it scores topo_boost more (kernels._held_step)
    step_lines: int = 3
    # a level step of z >= flag_z / 2 built up over several lines (no single line's change
    # carried this share of it) counts only as far as the whole line moved
    abrupt: float = 0.75
    clip: float = 3.0  # a flagged line enters the baseline clipped to median +- clip x scale
    consensus: int = 2  # a family's z is the consensus-th largest over channels (or pairs)
    alert: AlertRule = field(default_factory=AlertRule)

    def __post_init__(self) -> None:
        floors = {name: 0 for name in self.__dataclass_fields__ if name.startswith("floor_")}
        check_bounds(
            self,
            above={
                "z_clip": 0,
                "flag_z": 0,
                "dropout_fraction": 0,
                "scar_soft": 0,
                "spec_alpha": 0,
                "abrupt": 0,
                "clip": 0,
                **floors,
            },
            at_least={
                "window": 2,
                "min_baseline": 1,
                "refresh": 1,
                "scar_min_len": 1,
                "lag_max": 0,
                "lag_votes": 1,
                "lag_every": 1,
                "lag_recheck": 0,
                "spec_klo": 1,
                "level_floor": 0,
                "ring_lines": 1,
                "step_lines": 2,
                "topo_contrast": 0,
                "topo_kmin": 0,
                "topo_boost": 0,
                "consensus": 1,
            },
            at_most={"dropout_fraction": 1, "spec_alpha": 1, "abrupt": 1},
            # a flag above the clip, or a warm-up longer than the window, would never flag
            ordered=(("flag_z", "z_clip"), ("min_baseline", "window"), ("scar_soft", "scar_hard")),
        )

    def as_array(self) -> np.ndarray:
        cfg = np.zeros(K.N_SETTINGS)
        cfg[K.S_WINDOW] = self.window
        cfg[K.S_MIN_BASELINE] = self.min_baseline
        cfg[K.S_REFRESH] = self.refresh
        cfg[K.S_Z_CLIP] = self.z_clip
        cfg[K.S_FLAG_Z] = self.flag_z
        cfg[K.S_DROPOUT_FRACTION] = self.dropout_fraction
        cfg[K.S_SAT_FRACTION] = self.dropout_fraction
        cfg[K.S_SCAR_HARD] = self.scar_hard
        cfg[K.S_SCAR_SOFT] = self.scar_soft
        cfg[K.S_SCAR_MIN_LEN] = self.scar_min_len
        cfg[K.S_LAG_MAX] = self.lag_max
        cfg[K.S_LAG_VOTES] = self.lag_votes
        cfg[K.S_LAG_EVERY] = self.lag_every
        cfg[K.S_SPEC_ALPHA] = self.spec_alpha
        cfg[K.S_SPEC_KLO] = self.spec_klo
        cfg[K.S_LEVEL_FLOOR] = self.level_floor
        cfg[K.S_CLIP] = self.clip
        cfg[K.S_LAG_RECHECK] = self.lag_recheck
        cfg[K.S_TOPO_CONTRAST] = self.topo_contrast
        cfg[K.S_TOPO_KMIN] = self.topo_kmin
        cfg[K.S_TOPO_BOOST] = self.topo_boost
        cfg[K.S_STEP_LINES] = self.step_lines
        cfg[K.S_ABRUPT] = self.abrupt
        return cfg


@dataclass(frozen=True)
class Layout:
    """Which channels are paired, scarred and spectrally watched, and per-raw-feature rules."""

    channels: tuple[str, ...]
    pair_t: np.ndarray
    pair_r: np.ndarray
    scar_ch: np.ndarray
    osc_ch: int
    topo_ch: int
    family: np.ndarray
    consensus: np.ndarray
    sign2: np.ndarray
    floors: np.ndarray

    @property
    def n_raw(self) -> int:
        return len(self.family)


def make_layout(channels: Sequence[str], settings: ScoringSettings) -> Layout:
    names = tuple(channels)
    at = {name: i for i, name in enumerate(names)}
    pair_t: list[int] = []
    pair_r: list[int] = []
    scar_ch: list[int] = []
    for trace, retrace in pair_channels(names).values():
        if trace is not None and retrace is not None:
            pair_t.append(at[trace])
            pair_r.append(at[retrace])
        scar_ch.append(at[trace if trace is not None else retrace])  # type: ignore[index]
    osc = [i for i in scar_ch if names[i].lower().startswith(OSCILLATION_PREFIXES)]
    osc_ch = osc[0] if osc else (scar_ch[0] if scar_ch else -1)
    topo = [i for i in scar_ch if names[i].lower().startswith(TOPOGRAPHY_PREFIXES)]
    topo_ch = topo[0] if topo else -1
    s = settings
    ch_family = [K.F_LEVEL, K.F_RMS, K.F_SHARP, K.F_DECOR, K.F_SCAR, -1]
    ch_sign2 = [True, True, True, False, False, False]
    lg = s.floor_log_rms
    ch_floor = [0.0, lg, s.floor_sharpness, s.floor_decorrelation, s.floor_scar, lg]
    pr_family = [K.F_RES_RMS, K.F_RES_MAX, K.F_TR_DECOR]
    pr_floor = [lg, lg, s.floor_tr_decorrelation]
    n_ch, n_pairs = len(names), len(pair_t)
    # the spectral peak, then the peak persisting over ring_lines lines (its own rule in the
    # kernel: it raises the score, not the ringing_z column)
    ring = [K.F_RING, -1]
    family = np.array(ch_family * n_ch + pr_family * n_pairs + ring, dtype=np.int64)
    members = np.bincount(family[family >= 0], minlength=K.N_FAMILIES)
    consensus = np.minimum(members, settings.consensus)
    return Layout(
        channels=names,
        pair_t=np.array(pair_t, dtype=np.int64),
        pair_r=np.array(pair_r, dtype=np.int64),
        scar_ch=np.array(scar_ch, dtype=np.int64),
        osc_ch=osc_ch,
        topo_ch=topo_ch,
        family=family,
        consensus=consensus.astype(np.int64),
        sign2=np.array(ch_sign2 * n_ch + [False] * (3 * n_pairs + len(ring)), dtype=np.bool_),
        floors=np.array(
            ch_floor * n_ch + pr_floor * n_pairs + [s.floor_ringing, s.floor_ringing_persist]
        ),
    )


@functools.lru_cache(maxsize=32)  # one table per size, shared by the scans: never written
def _fft_tables(points: int) -> np.ndarray:
    """Twiddles for the packed real FFT of the first 2M points (M a power of two, >= 8;
    shape (4, 0) when the line is too short for a spectrum).

    Rows (see kernels.power_spectrum): unpack cos/sin of -pi k / M, then per stage of
    half-size h the cos/sin of -pi j / h at [h + j] (j < h).
    """
    m = 1
    while 4 * m <= points:
        m *= 2
    if m < 8:
        return np.zeros((4, 0))
    tw = np.zeros((4, m))
    angle = -np.pi * np.arange(m) / m
    tw[0], tw[1] = np.cos(angle), np.sin(angle)
    h = 1
    while h < m:
        stage = -np.pi * np.arange(h) / h
        tw[2, h : 2 * h], tw[3, h : 2 * h] = np.cos(stage), np.sin(stage)
        h *= 2
    return tw


class ScanState:
    """Every array the kernels read and advance for one scan, allocated once."""

    def __init__(self, layout: Layout, points: int, settings: ScoringSettings) -> None:
        n_ch = len(layout.channels)
        n_pairs = len(layout.pair_t)
        self.cfg = settings.as_array()
        self.state = np.zeros(K.N_STATE, dtype=np.int64)
        self.state[K.I_REF_SLOT] = -1
        # float32: line_stats measures in float32 (see there) and writes the rows
        self.hist = np.zeros((K.HIST_DEPTH, n_ch, points), dtype=np.float32)
        self.scar_grid = np.zeros((K.HIST_DEPTH, n_ch, points))  # every step-th pixel
        self.hist_good = np.zeros(K.HIST_DEPTH, dtype=np.bool_)
        self.base_ring = np.zeros((settings.window, layout.n_raw))
        # the ring's columns kept sorted (kernels.window_replace): float32, 16 lanes a vector,
        # whole vectors wide (the spare columns hold 0); +inf past the lines so far
        width = -(-layout.n_raw // 16) * 16
        self.base_sorted = np.full((settings.window + 1, width), np.inf, dtype=np.float32)
        self.base_moves = np.zeros((5, width), dtype=np.float32)  # leaving, entering, scratch
        self.base_med = np.zeros(layout.n_raw)
        self.base_scale = np.ones(layout.n_raw)
        # per channel the reference line's level and slope, a watched step's levels, the
        # previous line's level and the climb since the reference (rows: kernels.R_*); the
        # reference line's detrended row once its history slot is reused (kernels.score_line)
        self.ref_level = np.zeros((K.N_REF_ROWS, n_ch))
        self.ref_row = np.zeros((n_ch, points), dtype=np.float32)
        self.units = np.zeros(n_ch)  # each channel's unit (kernels.unit_of), 0 until chosen
        self.alive = np.zeros(n_ch, dtype=np.bool_)  # a line with a span seen (score_line)
        self.lags = np.zeros(max(n_pairs, 1), dtype=np.int64)
        self.lag_votes = np.zeros((settings.lag_votes, max(n_pairs, 1)), dtype=np.int64)
        self.fft_tw = _fft_tables(points)
        # the running log spectrum, then the excess over it of the last ring_lines - 1 lines
        self.spec_base = np.zeros((max(settings.ring_lines, 1), max(self.fft_tw.shape[1], 1)))
        lag_scratch = K.lag_scratch_size(points, settings.lag_max)  # row 8 in the lag step
        self.work = np.zeros((11, max(points, settings.window, n_ch, 8, lag_scratch)))
        n_iwork = max(settings.lag_votes, 3 * K.SCAR_MAX_WIDTH + points)
        self.iwork = np.zeros(n_iwork, dtype=np.int64)  # lag median, scar grid
        self.raw = np.zeros(layout.n_raw)

    def args(self, layout: Layout) -> tuple:
        """The kernel arguments after the data (and start row), in kernels.score_line order."""
        return (
            self.cfg,
            layout.pair_t,
            layout.pair_r,
            layout.scar_ch,
            layout.osc_ch,
            layout.topo_ch,
            layout.family,
            layout.consensus,
            layout.sign2,
            layout.floors,
            self.state,
            self.hist,
            self.scar_grid,
            self.hist_good,
            self.base_ring,
            self.base_sorted,
            self.base_moves,
            self.base_med,
            self.base_scale,
            self.ref_level,
            self.ref_row,
            self.units,
            self.alive,
            self.lags,
            self.lag_votes,
            self.spec_base,
            self.fft_tw,
            self.work,
            self.iwork,
            self.raw,
        )


def line_kind(row: np.ndarray, settings: ScoringSettings) -> str | None:
    """The event kind of a flagged feature row: its dominant family."""
    if row[K.F_DROPOUT] >= settings.dropout_fraction:
        return "dropout"  # a lost line; a pinned segment of a live line is tracking loss (F_RMS)
    if row[K.F_RING] >= settings.flag_z and row[K.F_DECOR] < settings.flag_z / 2:
        # a spectral peak is ringing even when the level and sharpness move with it (ringing
        # at particle edges): a tip change blurs or echoes, it does not ring. Lines that also
        # lost their neighbour are broadband noise: tracking loss.
        return "oscillation"
    families = row[: K.N_FAMILIES - 1]
    if row[K.F_SCORE] > families.max() and row[K.F_DECOR] < settings.flag_z / 2:
        return "oscillation"  # flagged by the spectral peak that persisted over ring_lines
    family = int(np.argmax(families))
    if family == K.F_SHARP and row[K.F_DECOR] >= settings.flag_z / 2:
        return "tracking_loss"  # sharpness changed *and* the line lost its neighbour: noise
    return FAMILY_KIND[family]


def kernels_cached() -> bool:
    """Whether numba's cache holds `score_frame` as the scorer calls it, on this machine
    (numba's own index key; True when numba's internals cannot tell, so nothing is done)."""
    from numba import typeof  # numba is loaded with the kernels anyway

    settings = ScoringSettings()
    layout = make_layout(["Ch0Trace", "Ch0Retrace"], settings)
    state = ScanState(layout, 64, settings)
    frame = np.zeros((2, 1, 64), dtype=np.float32)
    rest = (*state.args(layout), np.zeros((1, K.N_FEATURES)))
    signature = (typeof(frame), typeof(np.zeros(1, dtype=np.int64)), typeof(0), typeof(rest))
    try:
        cache = K.score_frame._cache
        key = cache._index_key(signature, K.score_frame.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # a private numba API: when it moves, each process compiles its own
        return True


# LineScore from a (index, position, score, flagged, kind) tuple without a Python-level call:
# a whole frame makes 512 of them, and LineScore(...) cost ~0.1 us more each
_LINE_SCORE = functools.partial(tuple.__new__, LineScore)


class ScanScorer:
    """Scores the lines of one scan as they arrive; holds its baseline, events and alert."""

    def __init__(
        self,
        scan_id: str,
        channels: Sequence[str],
        points: int,
        expected_lines: int,
        settings: ScoringSettings | None = None,
    ) -> None:
        numba_build.cached_build()
        self.scan_id = scan_id
        self.settings = settings or ScoringSettings()
        self.layout = make_layout(channels, self.settings)
        self.points = int(points)
        self.expected_lines = int(expected_lines)
        self._state = ScanState(self.layout, self.points, self.settings)
        self._args = self._state.args(self.layout)
        self._frame1 = np.zeros((len(self.layout.channels), 1, self.points), dtype=np.float32)
        self._rows = list(self._frame1[:, 0])  # one view per channel, made once
        self._row0 = np.zeros(1, dtype=np.int64)
        self._shape = (self.points,)
        self._flag_z = self.settings.flag_z
        # rows grow on demand: expected_lines comes from the file's note and may be absurd
        self._features = np.zeros((min(max(self.expected_lines, 1), INITIAL_ROWS), K.N_FEATURES))
        self._lines: list[LineScore] = []
        self._events = EventTracker(self.settings.alert)
        self._alert: Alert | None = None
        self._finished = False
        # (index, position) of the lines scored ahead, not yet taken
        self._ahead: deque[tuple[int, int]] = deque()
        self._next_position = 0  # acquisition position after the last line scored

    @property
    def alert(self) -> Alert | None:
        """The first alert raised so far; set once and never changed afterwards. The events
        count the lines scored; its position is the alert line's place in acquisition order."""
        raised = self._events.alert
        if raised is not None and self._alert is None:
            self._alert = replace(raised, position=self._lines[raised.position].position)
        return self._alert

    @property
    def lags(self) -> dict[str, int]:
        """Current trace/retrace lag per pair prefix, px (trace[i + lag] matches retrace[i])."""
        names = self.layout.channels
        return {
            names[t][: -len("Trace")]: int(self._state.lags[p])
            for p, t in enumerate(self.layout.pair_t)
        }

    def push(self, line: Line) -> LineScore:
        """Score one line (causal). Missing or misshapen channels make the line a dropout."""
        self._no_lines_ahead()
        n = len(self._lines)
        self._fill(line.channels)
        self._reserve(1)
        position = int(line.position)
        self._follow(position)
        K.score_frame(self._frame1, self._row0, n, *self._args, self._features)
        return self._ingest(int(line.index), n, position)

    def _follow(self, position: int) -> None:
        """Lines before `position` were never scored (lost in transit, dropped in a pause):
        the next line's line-to-line measures (level step, decorrelation, scar bands) start
        afresh, as on a scan's first line, instead of comparing it with a line scanned long
        before. The robust baseline is kept."""
        if position > self._next_position:
            self._state.state[K.I_HIST_N] = 0
        self._next_position = max(self._next_position, position + 1)

    def score_ahead(
        self,
        frame: np.ndarray,
        indices: Sequence[int],
        first: int = 0,
        positions: Sequence[int] | None = None,
    ) -> None:
        """Run the kernel now over the next lines, frame[:, first : first + len(indices)] of
        frame (channels, lines, points) in acquisition order, any layout and float type;
        `take_ahead` then turns their rows into scores and events. The same rows as pushing
        the lines one by one, without a kernel call and a copy-in per line; a C-contiguous
        frame is read in place. `positions`: the lines' places in acquisition order (by
        default the next ones); a jump forward is a gap, as in `push`.
        """
        if not 0 <= first <= first + len(indices) <= frame.shape[1]:
            raise ValueError(f"lines {first}..+{len(indices)} outside the frame's {frame.shape[1]}")
        if positions is None:
            positions = range(self._next_position, self._next_position + len(indices))
        elif len(positions) != len(indices):
            raise ValueError(f"{len(positions)} positions for {len(indices)} lines")
        start = len(self._lines) + len(self._ahead)
        self._reserve(len(self._ahead) + len(indices))
        frame, first = self._kernel_frame(frame, first, len(indices))
        rows = np.arange(first, first + len(indices), dtype=np.int64)
        # one kernel call per stretch of consecutive positions, the gaps marked between them
        cuts = [k for k in range(1, len(positions)) if positions[k] > positions[k - 1] + 1]
        for a, b in zip([0, *cuts], [*cuts, len(positions)], strict=True):
            if a < b:
                self._follow(int(positions[a]))
                self._next_position = max(self._next_position, int(positions[b - 1]) + 1)
                K.score_frame(frame, rows[a:b], start + a, *self._args, self._features)
        self._ahead.extend(zip(map(int, indices), map(int, positions), strict=True))

    def _kernel_frame(self, frame: np.ndarray, first: int, count: int) -> tuple[np.ndarray, int]:
        """(array, row of line `first`) for the kernel to read lines first..first+count-1 of
        frame (channels, lines, points) from: the frame itself when it is C-contiguous,
        writeable float32, else a float32 copy of those lines (the kernel runs ~6x slower on
        a strided array, and a read-only one would compile another specialisation). Other
        types are narrowed: the scorer works at float32 resolution, the type Asylum saves,
        so the rows of a line do not depend on the type it came in."""
        shape = (len(self.layout.channels), self.points)
        if frame.ndim != 3 or (frame.shape[0], frame.shape[2]) != shape:
            raise ValueError(f"frame shaped {frame.shape}, not (channels, lines, points) {shape}")
        if frame.dtype == np.float32 and frame.flags.c_contiguous and frame.flags.writeable:
            return frame, first
        with np.errstate(over="ignore"):  # beyond float32: inf, a non-finite sample
            return np.array(frame[:, first : first + count], dtype=np.float32, order="C"), 0

    def _no_lines_ahead(self) -> None:
        if self._ahead:
            raise RuntimeError(
                f"scan {self.scan_id}: {len(self._ahead)} lines scored ahead wait for take_ahead"
            )

    def _fill(self, channels: Mapping[str, np.ndarray]) -> None:
        for name, target in zip(self.layout.channels, self._rows, strict=True):
            values = channels.get(name)
            if getattr(values, "shape", None) == self._shape:
                try:
                    with np.errstate(over="ignore"):  # beyond float32: inf, as _kernel_frame
                        np.copyto(target, values, casting="unsafe")  # type: ignore[arg-type]
                    continue
                except (TypeError, ValueError):
                    pass
            target.fill(np.nan)

    def _reserve(self, extra: int) -> None:
        """Room for `extra` rows past the lines ingested so far."""
        n = len(self._lines)
        if n + extra > len(self._features):
            grown = np.zeros((max(n + extra, 2 * len(self._features)), K.N_FEATURES))
            grown[:n] = self._features[:n]
            self._features = grown

    def _ingest(self, index: int, n: int, position: int, score: float | None = None) -> LineScore:
        """Turn feature row n into the line's score, flag and kind, and feed the events."""
        if score is None:
            score = float(self._features[n, K.F_SCORE])
        flagged = score >= self._flag_z
        kind = None
        span = 0
        if flagged:
            row = self._features[n]
            kind = line_kind(row, self.settings)
            span = int(row[K.F_SCAR_WIDTH]) if kind == "streak" else 0
        result = LineScore(index, position, score, flagged, kind)
        self._lines.append(result)
        self._events.push(index, score, flagged, kind, span)
        return result

    def score_frame(self, frame: np.ndarray, rows: Sequence[int]) -> None:
        """Score the lines frame[:, row] for each of `rows` (stored indices in acquisition
        order, which also name the lines) of frame (channels, lines, points). A C-contiguous
        float32 frame (`Scan.block()` of a read file) is read where it lies.
        """
        self._no_lines_ahead()
        order = np.asarray(rows, dtype=np.int64)
        if len(order) and not (order.min() >= 0 and order.max() < frame.shape[1]):
            raise ValueError(f"rows outside the frame's {frame.shape[1]} lines")
        start = len(self._lines)
        self._reserve(len(order))
        frame, _ = self._kernel_frame(frame, 0, frame.shape[1])
        K.score_frame(frame, order, start, *self._args, self._features)
        positions = list(range(self._next_position, self._next_position + len(order)))
        self._next_position += len(order)
        self._ingest_rows(order.tolist(), positions, start, stop_at_alert=False)

    def take_ahead(self, most: int) -> list[LineScore]:
        """Ingest up to `most` of the lines scored ahead, in order, like their `push`es: quiet
        stretches in one go, each flagged line on its own. Stops right after the line that
        raises the alert, so the caller acts on it with `frame()` ending at that line."""
        taken = list(islice(self._ahead, most))
        indices = [index for index, _ in taken]
        positions = [position for _, position in taken]
        start = len(self._lines)
        for _ in range(self._ingest_rows(indices, positions, start, stop_at_alert=True)):
            self._ahead.popleft()
        return self._lines[start:]

    def _ingest_rows(
        self, indices: list[int], positions: list[int], first: int, stop_at_alert: bool
    ) -> int:
        """Ingest rows first, first + 1, ... as the lines `indices` at `positions`; returns
        how many (all of them unless `stop_at_alert` and one raised the alert)."""
        n = len(indices)
        scores = self._features[first : first + n, K.F_SCORE]
        flagged = np.flatnonzero(scores >= self._flag_z).tolist()
        score_list = scores.tolist()
        done = 0
        for k in [*flagged, n]:  # quiet stretches in one go, each flagged line on its own
            if k > done:
                self._ingest_quiet(
                    indices[done:k], positions[done:k], first + done, score_list[done:k]
                )
            if k < n:
                quiet_so_far = self.alert is None
                self._ingest(indices[k], first + k, positions[k], score_list[k])
                if stop_at_alert and quiet_so_far and self.alert is not None:
                    return k + 1
            done = k + 1
        return n

    def _ingest_quiet(
        self, indices: list[int], positions: list[int], first: int, scores: list[float]
    ) -> None:
        """`_ingest` for a stretch of unflagged lines (rows first, first + 1, ...)."""
        rows = zip(indices, positions, scores, repeat(False), repeat(None))
        self._lines.extend(map(_LINE_SCORE, rows))
        self._events.push_quiet(indices, scores)

    def frame(self) -> FrameScores:
        """Everything so far, open events included."""
        events = list(self._events.closed) if self._finished else self._events.events()
        return FrameScores(
            scan_id=self.scan_id,
            channels=list(self.layout.channels),
            feature_names=FEATURE_NAMES,
            features=self._features[: len(self._lines)].copy(),
            lines=list(self._lines),
            events=events,
            alert=self.alert,
            expected_lines=self.expected_lines,
            dead_channels=self.dead_channels(),
        )

    def dead_channels(self) -> list[str]:
        """Channels without a line with a span yet (constant or not finite in every line so
        far): left out of the dropout test while another channel lives; when none does,
        every line is a dropout and all are named."""
        if not self._lines:
            return []
        alive = self._state.alive
        return [name for name, live in zip(self.layout.channels, alive, strict=True) if not live]

    def finish(self) -> FrameScores:
        """Close the events; a frame with fewer lines than expected gets a partial_frame event."""
        if not self._finished:
            self._events.finish(self._next_position, self.expected_lines)
            self._finished = True
        return self.frame()


def score_scan(scan: Scan, settings: ScoringSettings | None = None) -> FrameScores:
    """Score a whole saved frame in acquisition order, then close it. The kernel reads the
    frame where it lies (`Scan.block()`: read_scan's one array, no copy)."""
    names = list(scan.channels)
    scorer = ScanScorer(scan.scan_id, names, scan.n_points, scan.expected_lines, settings)
    if names:
        scorer.score_frame(scan.block(), scan.acquisition_order())
    return scorer.finish()


def synthetic_scan(
    lines: int = 24,
    points: int = 64,
    pairs: int = 2,
    seed: int = 0,
    lag: int = 3,
    noise: float = 0.05,
    scan_id: str = "synthetic",
) -> Scan:
    """A smooth random 2-D surface with trace/retrace pairs, the retrace `lag` px behind.

    Used by the warm-up and the tests; `spmwatch.synth` is the full fault simulator.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:lines, 0 : points + abs(lag)] / 16.0
    channels: dict[str, np.ndarray] = {}
    for p in range(pairs):
        surface = np.zeros_like(x)
        for _ in range(4):
            kx, ky, phase = rng.uniform(0.3, 1.5), rng.uniform(0.1, 0.8), rng.uniform(0, 6.3)
            surface += np.sin(kx * x + ky * y + phase)
        trace = surface[:, :points] + noise * rng.standard_normal((lines, points))
        retrace = surface[:, lag : lag + points] + noise * rng.standard_normal((lines, points))
        channels[f"Ch{p}Trace"] = trace
        channels[f"Ch{p}Retrace"] = retrace
    return Scan(scan_id, channels, {}, lines, False)


def warm_up() -> float:
    """Compile (or load from cache) every kernel on a tiny scan; returns the seconds it took."""
    started = time.perf_counter()
    scan = synthetic_scan()
    score_scan(scan)
    scorer = ScanScorer(scan.scan_id, list(scan.channels), scan.n_points, scan.expected_lines)
    for line in scan.lines():
        scorer.push(line)
    scorer.finish()
    return time.perf_counter() - started
