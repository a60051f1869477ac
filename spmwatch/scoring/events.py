"""From per-line flags to events and the alert: pure logic, no numbers crunched here.

Flagged lines are grouped into runs (a gap of up to `gap` unflagged lines does not break a
run); each run becomes one `Event` whose kind is the kind carrying the most score in the run.
The alert rule wants evidence over several lines, because single good lines can stick out:
`k` distinct flagged lines among the last `m` (a scar flag counts for the band lines it
confirms, so one glitch seen by two features is one line), or `dropout_run` consecutive
dropout lines. Streaks and ringing are common and local on usable images (a few glitch lines,
ringing at a particle edge), so when they dominate the window the rule asks for `slow_k` of the
last `slow_m` lines: a feedback loop that rings on every line still alerts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from spmwatch.config import check_bounds
from spmwatch.model import Alert, Event, EventKind


@dataclass(frozen=True)
class AlertRule:
    """When flagged lines become an alert, and how severe events are."""

    k: int = 3
    m: int = 5
    slow_kinds: tuple[EventKind, ...] = ("streak", "oscillation")
    slow_k: int = 10
    slow_m: int = 14
    dropout_run: int = 2
    medium_z: float = 12.0
    high_z: float = 25.0
    medium_lines: int = 4
    high_lines: int = 16
    gap: int = 1
    band_lines: int = 8  # a level excursion that ends within this many lines was a band

    def __post_init__(self) -> None:
        check_bounds(
            self,
            at_least={
                "k": 1,
                "slow_k": 1,
                "dropout_run": 1,
                "medium_lines": 1,
                "gap": 0,
                "band_lines": 0,
            },
            above={"medium_z": 0},
            ordered=(
                ("k", "m"),
                ("slow_k", "slow_m"),
                ("medium_z", "high_z"),
                ("medium_lines", "high_lines"),
            ),
        )


def severity(score: float, n_lines: int, rule: AlertRule) -> str:
    """high/medium/low from the strongest line and the number of flagged lines."""
    if score >= rule.high_z or n_lines >= rule.high_lines:
        return "high"
    if score >= rule.medium_z or n_lines >= rule.medium_lines:
        return "medium"
    return "low"


@dataclass
class _Run:
    first: int
    last_position: int
    lo: int
    hi: int
    n_flagged: int
    peak: float
    kind_score: dict[str, float]

    def kind(self) -> str:
        return max(self.kind_score.items(), key=lambda item: item[1])[0]


class EventTracker:
    """Feeds on one line at a time (acquisition order); keeps events and the first alert.

    Its positions count the lines fed (the evidence windows span the lines scored, across a
    gap too); ScanScorer turns the alert's into the line's place in acquisition order."""

    def __init__(self, rule: AlertRule | None = None) -> None:
        self.rule = rule or AlertRule()
        self.closed: list[Event] = []
        self.alert: Alert | None = None
        self._run: _Run | None = None
        self._window: deque[tuple[bool, str | None, float]] = deque(
            maxlen=max(self.rule.m, self.rule.slow_m, self.rule.dropout_run)
        )
        self._covered: dict[int, str] = {}  # position -> kind of recent flagged lines
        self._recent_index: deque[int] = deque(maxlen=8)
        self._position = -1
        self._last_band = -(10**9)  # position where the last level band closed

    def push(
        self, index: int, score: float, flagged: bool, kind: str | None, span_back: int = 0
    ) -> Alert | None:
        """Add one line; return the alert if this line raised it (only ever once).

        `span_back` > 0 says the evidence is about the `span_back` lines *before* this one (a
        scar band confirmed by this line): the event then covers those lines instead.
        """
        self._position += 1
        position = self._position
        covered = [index]
        positions = [position]
        if flagged and span_back > 0:
            recent = list(self._recent_index)[-span_back:]
            covered = recent or covered
            positions = list(range(position - len(recent), position)) or positions
        self._recent_index.append(index)
        self._window.append((flagged, kind, score))
        if flagged:
            for p in positions:
                self._covered[p] = kind or "tracking_loss"
        horizon = position - max(self.rule.m, self.rule.slow_m)
        for p in [p for p in self._covered if p <= horizon]:
            del self._covered[p]
        if flagged:
            self._extend(position, covered, score, kind or "tracking_loss")
        elif self._run is not None and position - self._run.last_position > self.rule.gap:
            self._close()
        if self.alert is None and flagged and self._alert_due(position):
            self.alert = self._make_alert(index, position)
            return self.alert
        return None

    def push_quiet(self, indices: Sequence[int], scores: Sequence[float]) -> None:
        """Add a stretch of unflagged lines at once: the same state as `push` per line.

        An unflagged line never raises the alert nor adds evidence; it only ages the windows
        and may close the open run, so a whole stretch is one update (score_scan's path).
        """
        if not indices:
            return
        first = self._position + 1
        last = self._position + len(indices)
        run = self._run
        if run is not None and last - run.last_position > self.rule.gap:
            self._position = max(first, run.last_position + self.rule.gap + 1)
            self._close()  # where push would have closed it (its position names the band)
        self._position = last
        self._recent_index.extend(indices[-self._recent_index.maxlen :])
        tail = len(indices) - (self._window.maxlen or 0)
        self._window.extend((False, None, score) for score in scores[max(tail, 0) :])
        horizon = last - max(self.rule.m, self.rule.slow_m)
        for p in [p for p in self._covered if p <= horizon]:
            del self._covered[p]

    def _extend(self, position: int, covered: list[int], score: float, kind: str) -> None:
        run = self._run
        if run is not None and position - run.last_position > self.rule.gap + 1:
            self._close()
            run = None
        if run is None:
            run = self._run = _Run(position, position, min(covered), max(covered), 0, 0.0, {})
        run.last_position = position
        run.lo = min(run.lo, *covered)
        run.hi = max(run.hi, *covered)
        run.n_flagged += 1
        run.peak = max(run.peak, score)
        run.kind_score[kind] = run.kind_score.get(kind, 0.0) + score

    def _close(self) -> None:
        if self._run is not None:
            event = self._event(self._run, closed=True)
            if event.kind == "streak" and self._run.kind() == "tip_change":
                self._last_band = self._position
            self.closed.append(event)
            self._run = None

    def _event(self, run: _Run, closed: bool = False) -> Event:
        kind = run.kind()
        if closed and kind == "tip_change" and run.last_position - run.first < self.rule.band_lines:
            # the level came back: a band of a few lines (a scar or a line jump), not a tip
            # change, which is a new persistent state
            kind = "streak"
        return Event(
            kind=kind,
            start=run.lo,
            end=run.hi,
            severity=severity(run.peak, run.n_flagged, self.rule),
            score=run.peak,
        )

    def _alert_due(self, position: int) -> bool:
        rule = self.rule
        recent = [kind for p, kind in self._covered.items() if p > position - rule.m]
        slow = sum(kind in rule.slow_kinds for kind in recent)
        if len(recent) - slow >= rule.k or (len(recent) >= rule.k and slow < len(recent) / 2):
            return True
        if sum(p > position - rule.slow_m for p in self._covered) >= rule.slow_k:
            return True
        tail = list(self._window)[-self.rule.dropout_run :]
        return len(tail) == self.rule.dropout_run and all(
            f and kind == "dropout" for f, kind, _ in tail
        )

    def _make_alert(self, index: int, position: int) -> Alert:
        weights: dict[str, float] = {}
        peak = 0.0
        n = 0
        for flagged, kind, score in list(self._window)[-self.rule.m :]:
            if flagged:
                n += 1
                peak = max(peak, score)
                weights[kind or "tracking_loss"] = weights.get(kind or "tracking_loss", 0.0) + score
        kind = max(weights.items(), key=lambda item: item[1])[0]
        if kind == "tip_change" and self._level_came_back(position):
            kind = "streak"  # a level excursion that returned: bands, not a new tip state
        sev = "high" if kind == "dropout" else severity(peak, n, self.rule)
        return Alert(line=index, position=position, kind=kind, severity=sev, score=peak)

    def _level_came_back(self, position: int) -> bool:
        """Whether the tip_change evidence of the window is broken by lines of another kind
        or by a line back under half the flag (bands on alternate lines), or follows a level
        band (a tip_change run that came back) that closed within slow_m lines."""
        if position - self._last_band <= self.rule.slow_m:
            return True
        window = list(self._window)[-self.rule.m :]
        first = [kind for _, kind, _ in window].index("tip_change")
        # an unflagged line scoring half the flag or more did not come back: it stepped too
        return any(
            kind != "tip_change" if flagged else score < 0.5 * self.rule.medium_z
            for flagged, kind, score in window[first:]
        )

    def events(self) -> list[Event]:
        """Closed events plus the open run, if any (a snapshot; nothing is closed)."""
        if self._run is None:
            return list(self.closed)
        return [*self.closed, self._event(self._run)]

    def finish(self, scanned: int, expected_lines: int) -> list[Event]:
        """Close the open run; add a partial_frame event for the lines that never came, from
        acquisition position `scanned` (the one after the last line that came) on."""
        self._close()
        if expected_lines > 0 and scanned < expected_lines:
            missing = expected_lines - scanned
            sev = "high" if missing >= expected_lines // 4 else "medium"
            self.closed.append(
                Event("partial_frame", scanned, expected_lines - 1, sev, float(missing))
            )
        return list(self.closed)
