"""Value types shared by every stage: what flows from sources to the scorer and on to the wire.

Data flows one way: a source yields `Line`s (or a whole `Scan`), the scorer turns them into
`LineScore`s, `Event`s and an `Alert`, the classifier adds a `Verdict`. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np

TRACE = "Trace"
RETRACE = "Retrace"

EventKind = Literal[
    "tip_change", "streak", "tracking_loss", "oscillation", "dropout", "partial_frame", "poor_image"
]
# Kinds of events and alerts; poor_image (the frame classifier's view of a frame in progress,
# spmwatch.classify.watch) is an alert kind only, never an event.
EVENT_KINDS: tuple[str, ...] = (
    "tip_change",
    "streak",
    "tracking_loss",
    "oscillation",
    "dropout",
    "partial_frame",
    "poor_image",
)
Severity = Literal["low", "medium", "high"]
Rule = Literal["stopped_early", "alert"]  # the rules that fail a frame before the model
SEVERITIES: tuple[str, ...] = ("low", "medium", "high")


def clean_channel_name(label: str) -> str:
    """Return the true channel name from an Asylum dimension label.

    Asylum reuses a 32-byte label buffer, so old text trails the name: `HeightTracee`,
    `PhaseRetracerace`, `UserIn0Retracetrace`. The name ends at the *first* "trace"
    (case-insensitive); cutting at the last one would keep the junk of `UserIn0Retracetrace`.
    Labels without "trace" are kept as they are, stripped.
    """
    label = label.strip().strip("\x00")
    at = label.lower().find("trace")
    return label[: at + len("trace")] if at >= 0 else label


def split_direction(name: str) -> tuple[str, str | None]:
    """Split a cleaned channel name into (prefix, "Trace" | "Retrace" | None)."""
    if name.endswith(RETRACE):
        return name[: -len(RETRACE)], RETRACE
    if name.endswith(TRACE):
        return name[: -len(TRACE)], TRACE
    return name, None


def pair_channels(names: Iterable[str]) -> dict[str, tuple[str | None, str | None]]:
    """Group channel names by prefix: `{"Height": ("HeightTrace", "HeightRetrace")}`.

    A direction that was not saved is None; a name without a direction stands alone as
    `{name: (None, name)}` so it is scored like a single retrace channel. Order follows `names`.
    """
    pairs: dict[str, list[str | None]] = {}
    for name in names:
        prefix, direction = split_direction(name)
        if direction is None:
            pairs[name] = [None, name]
            continue
        slot = pairs.setdefault(prefix, [None, None])
        slot[0 if direction == TRACE else 1] = name
    return {prefix: (trace, retrace) for prefix, (trace, retrace) in pairs.items()}


@dataclass(frozen=True)
class Line:
    """One scan line as it reaches the scorer, whatever the source.

    `index` is the line's position along wData's dim 1 (what a person sees as the image row);
    `position` is its place in acquisition order (0 = first line scanned). `channels` maps the
    cleaned channel name to a 1-D float array of `points` samples.
    """

    scan_id: str
    index: int
    position: int
    n_lines: int
    channels: Mapping[str, np.ndarray]
    meta: Mapping[str, float | int | str] = field(default_factory=dict)
    source: str = "replay"

    @property
    def points(self) -> int:
        return len(next(iter(self.channels.values()))) if self.channels else 0


@dataclass(frozen=True)
class LineBlock:
    """Consecutive lines of one scan that travel together (one line-socket message).

    `channels` maps each channel to a (count, points) array, row k being the line at index
    `index + k * step` and acquisition position `position + k`. Kept whole from the socket
    to the scorer: making a `Line` per row cost more than the rest of decoding the message.
    """

    scan_id: str
    index: int
    position: int
    n_lines: int
    channels: Mapping[str, np.ndarray]
    step: int = 1
    meta: Mapping[str, float | int | str] = field(default_factory=dict)
    source: str = "socket"

    @property
    def count(self) -> int:
        return len(next(iter(self.channels.values()))) if self.channels else 0

    @property
    def points(self) -> int:
        return next(iter(self.channels.values())).shape[1] if self.channels else 0

    def indices(self) -> range:
        return range(self.index, self.index + self.count * self.step, self.step)

    def lines(self) -> list[Line]:
        """The rows as `Line`s (views of the block's arrays)."""
        return [
            Line(
                self.scan_id,
                index,
                self.position + k,
                self.n_lines,
                {name: rows[k] for name, rows in self.channels.items()},
                self.meta,
                self.source,
            )
            for k, index in enumerate(self.indices())
        ]

    def split(self, k: int) -> tuple[LineBlock, LineBlock]:
        """The first k rows and the rest, as two blocks (views)."""
        head = {name: rows[:k] for name, rows in self.channels.items()}
        tail = {name: rows[k:] for name, rows in self.channels.items()}
        rest = dataclasses.replace(
            self, index=self.index + k * self.step, position=self.position + k, channels=tail
        )
        return dataclasses.replace(self, channels=head), rest


@dataclass
class Scan:
    """A whole frame read from an `.ibw` file (or generated), channels shaped (lines, points)."""

    scan_id: str
    channels: dict[str, np.ndarray]
    meta: dict[str, float | int | str]
    expected_lines: int
    scan_down: bool
    path: str | None = None
    note: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def n_lines(self) -> int:
        return next(iter(self.channels.values())).shape[0] if self.channels else 0

    @property
    def n_points(self) -> int:
        return next(iter(self.channels.values())).shape[1] if self.channels else 0

    @property
    def pairs(self) -> dict[str, tuple[str | None, str | None]]:
        return pair_channels(self.channels)

    @property
    def partial(self) -> bool:
        """True when the frame was stopped early and fewer lines than ScanLines were saved."""
        return self.n_lines < self.expected_lines

    @property
    def scan_rate(self) -> float:
        """Lines per second from the settings; 0.0 when absent or not a finite number."""
        rate = self.meta.get("ScanRate")
        if isinstance(rate, int | float) and not isinstance(rate, bool) and math.isfinite(rate):
            return float(rate)
        return 0.0

    def block(self) -> np.ndarray:
        """The channels as one (channels, lines, points) array, in the channels' order: the
        array read_scan holds them in (no copy), else a stacked copy."""
        arrays = list(self.channels.values())
        base = arrays[0].base if arrays else None
        if isinstance(base, np.ndarray) and base.ndim == 3 and len(base) == len(arrays):
            rows = [base[c] for c in range(len(arrays))]
            if all(
                a.ctypes.data == r.ctypes.data and a.shape == r.shape and a.strides == r.strides
                for a, r in zip(arrays, rows, strict=True)
            ):
                return base
        return np.stack(arrays)

    def acquisition_order(self) -> np.ndarray:
        """Stored line indices in the order the microscope scanned them.

        ScanDown 0 scans bottom-up and stores line 0 first; ScanDown 1 starts at the last index.
        """
        order = np.arange(self.n_lines)
        return order[::-1].copy() if self.scan_down else order

    def lines(self, source: str = "replay") -> Iterator[Line]:
        """Yield the frame's lines in acquisition order, as a live source would."""
        meta = dict(self.meta)
        for position, index in enumerate(self.acquisition_order()):
            yield Line(
                scan_id=self.scan_id,
                index=int(index),
                position=position,
                n_lines=self.expected_lines,
                channels={name: data[index] for name, data in self.channels.items()},
                meta=meta,
                source=source,
            )


class LineScore(NamedTuple):
    """The scorer's answer for one line: a combined score, the flag and the likeliest kind.
    A named tuple: a frame makes one per line, and a frozen dataclass took ~0.7 us to build."""

    index: int
    position: int
    score: float
    flagged: bool
    kind: str | None = None


@dataclass(frozen=True)
class Event:
    """A run of flagged lines of one kind. `start`/`end` are stored indices, start <= end;
    except for partial_frame, which stands for lines never scanned (they have no row): its
    start/end are their positions n .. expected - 1, its score their number."""

    kind: str
    start: int
    end: int
    severity: str
    score: float

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "severity": self.severity,
            "score": round(float(self.score), 4),
        }


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th ... 11th, 12th, 13th ... 21st: "the 42nd scanned" for position 41."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def lines_text(n: int) -> str:
    """ "1 line", "256 lines"."""
    return f"{n} line{'s' * (n != 1)}"


def probability_text(probability: float, threshold: float) -> str:
    """A probability to 2 decimals, or to 4 where 2 would hide on which side of the threshold
    it lies (0.5985 against 0.5991 read "0.60, fail at >= 0.60" beside a pass)."""
    digits = 4 if round(probability, 2) == round(threshold, 2) else 2
    return f"{probability:.{digits}f}"


def span_text(kind: str, start: int, end: int) -> str:
    """An event's lines for people: "36-54", or for a partial_frame "stopped after 64 of
    256 lines" (its start/end are positions of lines that have no row)."""
    if kind == "partial_frame":
        return f"stopped after {start} of {end + 1} lines"
    return f"{start}-{end}"


@dataclass(frozen=True)
class Alert:
    """The first line at which the online monitor raises a failure."""

    line: int
    position: int
    kind: str
    severity: str
    score: float

    def to_dict(self) -> dict[str, object]:
        return {
            "line": self.line,
            "position": self.position,
            "kind": self.kind,
            "severity": self.severity,
            "score": round(float(self.score), 4),
        }


@dataclass
class FrameScores:
    """Everything the scorer knows about a frame so far, in acquisition order.

    `features` has one row per scored line and one column per name in `feature_names`: the
    classifier's raw material. A frame scored offline and the same frame streamed live give equal
    `FrameScores`, because every value is causal.
    """

    scan_id: str
    channels: list[str]
    feature_names: tuple[str, ...]
    features: np.ndarray
    lines: list[LineScore]
    events: list[Event]
    alert: Alert | None
    expected_lines: int
    # channels constant (or not finite) in every line so far, left out of the dropout test
    # while another channel lives (an input left unconnected is no failing tip); all of them
    # when no channel lives, and then every line is a dropout
    dead_channels: list[str] = field(default_factory=list)

    @property
    def n_lines(self) -> int:
        return len(self.lines)


class Reason(NamedTuple):
    """A frame feature that moved a verdict toward failing: its share of the log-odds of
    failure, and what it measures in words (for people reading an alert, not the code)."""

    feature: str
    log_odds: float
    meaning: str


@dataclass(frozen=True)
class Verdict:
    """The classifier's pass/fail for a frame (or the frame so far)."""

    scan_id: str
    verdict: Literal["pass", "fail"]
    probability: float
    threshold: float
    model: str
    # what decided: a rule ("stopped_early", "alert": probability 1) or the "model"
    decided_by: Rule | Literal["model"] = "model"
    # the model's reasons, largest first
    reasons: tuple[Reason, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "probability": round(float(self.probability), 4),
            "threshold": round(float(self.threshold), 4),
            "model": self.model,
            "decided_by": self.decided_by,
            "reasons": reasons_list(self.reasons),
        }


def reasons_list(reasons: tuple[Reason, ...]) -> list[dict[str, object]]:
    """A verdict's reasons as the wire and --json carry them."""
    return [reason._asdict() for reason in reasons]


def reasons_text(reasons: object) -> str:
    """Reasons as the wire carries them, in words: "offset bands of lines (+1.6), texture
    drift across the frame (+1.4)" (log-odds of failure); "" for none or a malformed list."""
    if not isinstance(reasons, list):
        return ""
    return ", ".join(
        f"{r.get('meaning') or r.get('feature')} ({r['log_odds']:+.1f})"
        for r in reasons
        if isinstance(r, dict) and isinstance(r.get("log_odds"), int | float)
    )
