"""A scored frame for a person: one PNG, the score record as JSON, and a per-line event mask.

Why: an alert is only trusted when a microscopist can check at a glance where it fired and
what the lines looked like there. The PNG puts the channels, the trace-minus-retrace residual
and the per-line score side by side on one shared line axis, so a shaded event band can be
followed across every panel. The JSON is the exact `spmwatch score --json` record and the mask
marks the stored lines inside events, for scripts that blank bad lines. Rendering uses
matplotlib's object API on an Agg canvas (no pyplot state, no display), so the daemon can call
it from any thread.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import offset_copy

from spmwatch.assess import why_text
from spmwatch.model import (
    EVENT_KINDS,
    FrameScores,
    Scan,
    lines_text,
    probability_text,
    span_text,
    split_direction,
)
from spmwatch.protocol import safe_scan_id
from spmwatch.scoring.scorer import ScanScorer, ScoringSettings

MAX_CHANNEL_PANELS = 4
KIND_COLOURS: dict[str, str] = dict(
    zip(
        EVENT_KINDS,
        ("#e41a1c", "#ff7f00", "#984ea3", "#1f78b4", "#a65628", "#666666", "#f781bf"),
        strict=True,
    )
)
OTHER_KIND_COLOUR = "#4daf4a"  # a kind added to the scorer after this palette
ALERT_COLOUR = "#00e000"
WATCH_COLOUR = "#f781bf"  # the frame watch's poor_image line, the kind's colour
DPI = 110
# Display units by channel prefix: length channels are stored in metres, Phase in degrees,
# the auxiliary inputs and potentials in volts. Asylum files do not record a unit per channel.
_LENGTH_PREFIXES = ("height", "zsensor", "amplitude", "deflection")
_VOLT_PREFIXES = ("userin", "potential", "nappotential", "surfacepotential", "bias")
UNKNOWN_UNIT = "as saved (no unit in the file)"


# ------------------------------------------------------------------------------ pure maths


def event_mask(frame: FrameScores, n_lines: int) -> np.ndarray:
    """True for each stored line inside an event: the lines to distrust or blank.

    Events, not flags: a streak is confirmed by the clean line after its band, which is the
    line flagged (docs/scoring.md, Scar delay), while the event spans the band itself. A
    partial_frame event covers lines that were never saved, so it marks none.
    """
    mask = np.zeros(n_lines, dtype=bool)
    for event in frame.events:
        if event.kind != "partial_frame":
            mask[max(event.start, 0) : min(event.end, n_lines - 1) + 1] = True
    return mask


def pair_lags(scan: Scan, settings: ScoringSettings | None = None) -> dict[str, int]:
    """The scorer's trace/retrace lag per pair prefix after streaming the whole frame.

    The daemon already holds a scorer and passes its `lags`; a saved file is streamed through
    a fresh `ScanScorer` so the residual map uses exactly the lag the scorer used.
    """
    if not any(t and r for t, r in scan.pairs.values()):
        return {}
    scorer = ScanScorer(
        scan.scan_id, list(scan.channels), scan.n_points, scan.expected_lines, settings
    )
    for line in scan.lines():
        scorer.push(line)
    return scorer.lags


def level_lines(image: np.ndarray) -> np.ndarray:
    """Each line minus its least-squares slope and then its median (a first-order flatten):
    the per-line offsets and a tilted sample hide the topography. NaN samples are left out,
    and an all-NaN dropout line stays NaN."""
    x = np.arange(image.shape[1], dtype=float)[None, :]
    finite = np.isfinite(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        centre = np.nanmean(np.where(finite, x, np.nan), axis=1, keepdims=True)
        dx = np.where(finite, x - centre, 0.0)
        spread = (dx * dx).sum(axis=1, keepdims=True)
        tilt = (dx * np.where(finite, image, 0.0)).sum(axis=1, keepdims=True)
        slope = np.divide(tilt, spread, out=np.zeros_like(spread), where=spread > 0)
        flat = image - slope * (x - centre)
        return flat - np.nanmedian(flat, axis=1, keepdims=True)


def robust_limits(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """Colour limits at the low/high percentiles of the finite values, so spikes do not wash out."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return -1.0, 1.0
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:
        return float(lo) - 0.5, float(lo) + 0.5
    return float(lo), float(hi)


def residual_map(trace: np.ndarray, retrace: np.ndarray, lag: int) -> np.ndarray:
    """trace[:, i + lag] - retrace[:, i] per line, offset and slope removed (as the scorer does).

    Columns follow the retrace; those without a lag-shifted trace partner are NaN.
    """
    lines, points = trace.shape
    out = np.full((lines, points), np.nan)
    i0, i1 = max(0, -lag), min(points, points - lag)
    if i1 - i0 < 4:
        return out
    d = trace[:, i0 + lag : i1 + lag].astype(float) - retrace[:, i0:i1]
    x = np.arange(i1 - i0) - 0.5 * (i1 - i0 - 1)
    d = d - d.mean(axis=1, keepdims=True)
    d = d - np.outer((d * x).sum(axis=1) / (x * x).sum(), x)
    out[:, i0:i1] = d
    return out


def display_unit(name: str, image: np.ndarray) -> tuple[float, str]:
    """(factor, unit) for a channel's colour bar; length channels in metres are shown in nm."""
    prefix = split_direction(name)[0].lower()
    finite = image[np.isfinite(image)]
    typical = float(np.max(np.abs(finite))) if finite.size else 0.0
    if prefix.startswith(_LENGTH_PREFIXES) and 0.0 < typical < 1e-3:
        return 1e9, "nm"
    if prefix.startswith("phase"):
        return 1.0, "deg"
    if prefix.startswith(_VOLT_PREFIXES):
        return 1.0, "V"
    return 1.0, UNKNOWN_UNIT


def shown_channels(scan: Scan) -> list[str]:
    """First direction of each channel (trace when saved), at most MAX_CHANNEL_PANELS."""
    names = [trace or retrace for trace, retrace in scan.pairs.values()]
    return [n for n in names if n is not None][:MAX_CHANNEL_PANELS]


def first_pair(scan: Scan) -> tuple[str, str, str] | None:
    """(prefix, trace, retrace) of the first channel saved in both directions."""
    for prefix, (trace, retrace) in scan.pairs.items():
        if trace and retrace:
            return prefix, trace, retrace
    return None


# ------------------------------------------------------------------------------ drawing


def _fast_size_um(scan: Scan) -> float | None:
    for key in ("FastScanSize", "ScanSize"):
        value = scan.meta.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return float(value) * 1e6
    return None


def _title(scan: Scan, frame: FrameScores, record: Mapping[str, object]) -> tuple[str, str, str]:
    """Headline (file, verdict, probability, alert), why it was so judged (and the frame
    watch's judgement), and a detail line (size, flags, events)."""
    name = Path(str(record.get("file", scan.path or scan.scan_id))).name
    verdict = str(record.get("verdict", "?")).upper()
    probability = record.get("probability")
    threshold = record.get("threshold")
    prob = "p = ?"
    if isinstance(probability, (int, float)) and isinstance(threshold, (int, float)):
        prob = f"p = {probability_text(probability, threshold)}, fail at ≥ {threshold:.2f}"
    alert = record.get("alert")
    if isinstance(alert, Mapping):
        said = f"alert at line {alert['line']}: {alert['kind']} ({alert['severity']})"
    else:
        said = "no line alert"
    head = f"{name}   |   {verdict} ({prob})   |   {said}"
    why = f"why: {why_text(record)}"
    watched = record.get("poor_image")
    if isinstance(watched, Mapping):  # the frame watch judged the frame so far a failure
        why += f"   |   poor image: the frame so far judged failed at line {watched['line']}"
    parts = [
        f"{scan.n_lines} of {lines_text(scan.expected_lines)}"
        if scan.partial
        else lines_text(scan.n_lines),
        f"{scan.n_points} points",
    ]
    size = _fast_size_um(scan)
    if size is not None:
        parts.append(f"{size:g} µm")
    if scan.scan_rate:
        parts.append(f"{scan.scan_rate:g} Hz")
    parts.append("scanned top to bottom" if scan.scan_down else "scanned bottom to top")
    flagged = sum(line.flagged for line in frame.lines)
    parts.append(f"{flagged} flagged line{'s' * (flagged != 1)}")
    counts: dict[str, int] = {}
    for event in frame.events:
        counts[event.kind] = counts.get(event.kind, 0) + 1
    if counts:
        parts.append("events: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    if scan.problems:
        parts.append(f"{len(scan.problems)} data problem(s)")
    if first_pair(scan) is None:
        parts.append("one direction saved: no trace − retrace map")
    return head, why, "   ·   ".join(parts)


def _colour(kind: str) -> str:
    return KIND_COLOURS.get(kind, OTHER_KIND_COLOUR)


def _mark_events(ax: Axes, frame: FrameScores, n_lines: int, labels: bool) -> None:
    """Events as horizontal bands of their kind's colour: a solid strip at the left edge, with
    `labels` (the score panel) also a faint wash across and the kind as text beside the band;
    over an image a strip at each edge and no wash, so the faulty lines stay in plain view.
    The alert line is a distinct dashed line."""
    last_label = -np.inf
    for event in sorted(frame.events, key=lambda e: e.start):
        lo, hi = max(event.start, 0) - 0.5, min(event.end, n_lines - 1) + 0.5
        if hi <= lo:
            continue  # partial_frame: the missing lines are not in the image
        colour = _colour(event.kind)
        if labels:
            ax.axhspan(lo, hi, color=colour, alpha=0.25, lw=0, zorder=3)
        else:
            ax.axhspan(lo, hi, xmin=0.965, xmax=1.0, color=colour, lw=0.6, ec=colour, zorder=4)
        ax.axhspan(lo, hi, xmin=0.0, xmax=0.035, color=colour, lw=0.6, ec=colour, zorder=4)
        mid = 0.5 * (lo + hi)
        if labels and mid - last_label > 0.04 * n_lines:
            ax.text(
                0.05,
                mid,
                event.kind,
                transform=ax.get_yaxis_transform(),
                ha="left",
                va="center",
                fontsize=8,
                color=colour,
                zorder=6,
                bbox={"fc": "white", "ec": "none", "alpha": 0.75, "pad": 1},
            )
            last_label = mid
    if frame.alert is not None:
        ax.axhline(frame.alert.line, color=ALERT_COLOUR, lw=1.4, ls=(0, (4, 2)), zorder=5)


def _image_panel(
    fig: Figure,
    ax: Axes,
    image: np.ndarray,
    title: str,
    unit: str,
    extent: tuple[float, float, float, float],
    cmap: str,
    limits: tuple[float, float],
) -> None:
    shown = ax.imshow(
        image,
        origin="lower",
        cmap=cmap,
        extent=extent,
        aspect="auto",
        interpolation="nearest",
        vmin=limits[0],
        vmax=limits[1],
    )
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(shown, ax=ax, location="bottom", shrink=0.85, pad=0.02, aspect=30)
    bar.ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # 6+ labels ran together on a panel
    bar.ax.tick_params(labelsize=8)
    bar.set_label(unit, fontsize=8, labelpad=1)


def _score_panel(ax: Axes, frame: FrameScores, n_lines: int, threshold: float) -> None:
    ordered = sorted(frame.lines, key=lambda s: s.index)
    index = np.array([s.index for s in ordered])
    score = np.array([s.score for s in ordered])
    flagged = np.array([s.flagged for s in ordered], dtype=bool)
    if len(index):
        ax.plot(score, index, color="#333333", lw=0.8, zorder=4)
        ax.plot(
            score[flagged],
            index[flagged],
            "o",
            ms=3.5,
            mfc="none",
            mec="#e41a1c",
            mew=1.0,
            zorder=5,
        )
    ax.axvline(threshold, color="#e41a1c", lw=1.0, ls="--", zorder=4)
    top = max(float(score.max()) if len(score) else 0.0, threshold) * 1.15
    ax.set_xlim(0.0, top)
    ax.set_ylim(-0.5, n_lines - 0.5)
    ax.set_title("per-line score", fontsize=10)
    ax.set_xlabel("score (robust z)", fontsize=9)
    ax.grid(axis="x", color="#dddddd", lw=0.6)
    _mark_events(ax, frame, n_lines, labels=True)


def _legend(fig: Figure, frame: FrameScores, threshold: float, watch_line: int | None) -> None:
    handles: list[Patch | Line2D] = []
    for kind in dict.fromkeys(event.kind for event in frame.events):
        if kind != "partial_frame":
            handles.append(Patch(color=_colour(kind), alpha=0.6, label=kind))
    for event in frame.events:
        if event.kind == "partial_frame":  # no band: the lines it stands for are not in the image
            label = f"partial_frame: {span_text(event.kind, event.start, event.end)}"
            handles.append(Line2D([], [], ls="none", label=label))
    if frame.alert is not None:
        handles.append(
            Line2D(
                [],
                [],
                color=ALERT_COLOUR,
                lw=1.4,
                ls=(0, (4, 2)),
                label=f"alert line {frame.alert.line}",
            )
        )
    if watch_line is not None:
        style = {"color": WATCH_COLOUR, "lw": 1.4, "ls": (0, (1, 1.5))}
        handles.append(Line2D([], [], **style, label=f"poor image judged at line {watch_line}"))
    handles.append(
        Line2D([], [], color="#e41a1c", lw=1.0, ls="--", label=f"flag threshold {threshold:g}")
    )
    if any(line.flagged for line in frame.lines):
        marker = {"ls": "none", "marker": "o", "ms": 4, "mfc": "none", "mec": "#e41a1c"}
        handles.append(Line2D([], [], **marker, label="flagged line"))
    fig.legend(
        handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False
    )


def render_png(
    scan: Scan,
    frame: FrameScores,
    record: Mapping[str, object],
    lags: Mapping[str, int],
    threshold: float,
) -> Figure:
    """The report figure: channels, residual map and score on one shared line axis."""
    channels = shown_channels(scan)
    pair = first_pair(scan)
    drawn = {*channels, *(pair[1:] if pair is not None else ())}
    with np.errstate(invalid="ignore"):  # a corrupt sample can be a signalling NaN: it warned
        wide = {name: np.asarray(scan.channels[name], dtype=float) for name in drawn}
    n_images = len(channels) + (pair is not None)
    n_lines = scan.n_lines
    size_um = _fast_size_um(scan)
    width_x = size_um if size_um is not None else float(scan.n_points)
    extent = (0.0, width_x, -0.5, n_lines - 0.5)
    xlabel = "fast axis (µm)" if size_um is not None else "point"
    # A partial frame keeps its place in the square frame: the lines never scanned are a band
    # below line 0 when it was scanned top to bottom (it stopped there), else above the last.
    missing = max(scan.expected_lines - n_lines, 0)
    below = missing if scan.scan_down else 0
    y_range = (-0.5 - below, n_lines - 0.5 + missing - below)
    score_w = 2.4
    panel_w = max(3.4, (10.0 - score_w) / max(n_images, 1))
    fig_w = panel_w * n_images + score_w
    title_h = 1.0  # inches kept free above the panels for the three title lines
    fig = Figure(figsize=(fig_w, panel_w + 1.5 + title_h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_images + 1, sharey=True, width_ratios=[panel_w] * n_images + [score_w])
    head, why, detail = _title(scan, frame, record)
    failed = str(record.get("verdict")) == "fail"
    below_top = partial(offset_copy, fig.transFigure, fig=fig, x=0.0, units="inches")
    titles = [
        fig.text(
            0.5,
            1.0,
            head,
            ha="center",
            va="top",
            fontsize=14,
            fontweight="bold",
            color="#b00000" if failed else "#006000",
            transform=below_top(y=-0.12),
        )
    ]
    for text, y in ((why, -0.45), (detail, -0.7)):
        titles.append(fig.text(
            0.5, 1.0, text, ha="center", va="top", fontsize=10, color="#333333",
            transform=below_top(y=y),
        ))  # fmt: skip
    for ax, name in zip(axes, channels, strict=False):
        image = level_lines(wide[name])
        factor, unit = display_unit(name, image)
        image = image * factor
        _image_panel(
            fig, ax, image, f"{name} (line-levelled)", unit, extent, "gray", robust_limits(image)
        )
    if pair is not None:
        prefix, trace, retrace = pair
        lag = int(lags.get(prefix, 0))
        res = residual_map(wide[trace], wide[retrace], lag)
        factor, unit = display_unit(trace, res)
        res = res * factor
        lo, hi = robust_limits(res)
        edge = max(abs(lo), abs(hi))
        _image_panel(
            fig,
            axes[len(channels)],
            res,
            f"{prefix} trace − retrace (lag {lag} px)",
            unit,
            extent,
            "RdBu_r",
            (-edge, edge),
        )
    for ax in axes[:n_images]:
        ax.set_xlabel(xlabel, fontsize=9)
        ax.tick_params(labelsize=8)
        _mark_events(ax, frame, n_lines, labels=False)
    axes[0].set_ylabel("stored line index (line 0 at bottom)", fontsize=9)
    _score_panel(axes[-1], frame, n_lines, threshold)
    axes[-1].tick_params(labelsize=8, labelleft=True)
    watched = record.get("poor_image")
    watch_line = watched["line"] if isinstance(watched, Mapping) else None
    if watch_line is not None:  # where the frame watch judged the frame so far a failure
        for ax in axes:
            ax.axhline(watch_line, color=WATCH_COLOUR, lw=1.4, ls=(0, (1, 1.5)), zorder=5)
        _edge_marker(axes[-1], watch_line, WATCH_COLOUR)
    if frame.alert is not None:
        _edge_marker(axes[-1], frame.alert.line, ALERT_COLOUR)
    if missing:
        not_scanned = (n_lines - 0.5, y_range[1]) if below == 0 else (y_range[0], -0.5)
        said = f"not scanned: stopped after {n_lines} of {scan.expected_lines} lines"
        for i, ax in enumerate(axes):
            _mark_not_scanned(ax, not_scanned, said if i < n_images else None)
    axes[0].set_ylim(*y_range)
    ticks = MaxNLocator(nbins=6, integer=True).tick_values(0, n_lines - 1)
    axes[0].set_yticks([t for t in ticks if 0 <= t <= n_lines - 1])
    _legend(fig, frame, threshold, watch_line)
    _fit_height(fig, axes[0], title_h)
    _fit_width(fig, titles)
    return fig


def _edge_marker(ax: Axes, line: int, colour: str) -> None:
    """A triangle outside the right edge pointing at `line`: a line drawn on line 0 or the
    last one lies on the axis itself and cannot be seen."""
    ax.plot(
        [1.0], [line], marker="<", ms=7, color=colour, transform=ax.get_yaxis_transform(),
        clip_on=False, zorder=6,
    )  # fmt: skip


def _mark_not_scanned(ax: Axes, span: tuple[float, float], label: str | None) -> None:
    ax.axhspan(*span, facecolor="#f2f2f2", hatch="//", edgecolor="#c8c8c8", lw=0, zorder=2)
    if label is not None:
        ax.text(
            0.5, 0.5 * (span[0] + span[1]), label, transform=ax.get_yaxis_transform(),
            ha="center", va="center", fontsize=8, color="#555555", zorder=3,
            bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1},
        )  # fmt: skip


def _fit_width(fig: Figure, texts: list[Text]) -> None:
    """Shrink a title line that is wider than the figure until it fits (a long file name, an
    alert and the reasons on a figure of one or two panels ran off both edges)."""
    renderer = fig.canvas.get_renderer()
    room = 0.98 * fig.bbox.width
    for text in texts:
        for _ in range(4):  # glyph widths do not scale exactly with the size: measure again
            wide = text.get_window_extent(renderer).width
            if wide <= room:
                break
            text.set_fontsize(text.get_fontsize() * room / wide * 0.99)


def _fit_height(fig: Figure, panel: Axes, title_h: float) -> None:
    """Make the image panels square, as the frame is. The layout gives them what is left
    under the titles, colour bars and legend, which depends on fonts; one measured correction
    of the figure's height (the widths do not move with it) replaces a guess of that space."""
    for _ in range(2):  # the second pass only confirms: the first lands within a pixel
        width_in, height_in = fig.get_size_inches()
        fig.get_layout_engine().set(rect=(0.0, 0.0, 1.0, 1.0 - title_h / height_in))
        fig.draw_without_rendering()
        box = panel.get_position()
        missing = box.width * width_in - box.height * height_in
        if abs(missing) * DPI < 1.0:
            return
        fig.set_size_inches(width_in, height_in + missing)


# ------------------------------------------------------------------------------ files


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask is process-wide, not thread-safe


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a report is for people to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:  # a handle, because np.save appends .npy to other names
        np.save(handle, array, allow_pickle=False)


def write_report(
    scan: Scan,
    frame: FrameScores,
    record: Mapping[str, object],
    out_dir: str | Path,
    lags: Mapping[str, int] | None = None,
    threshold: float | None = None,
) -> dict[str, Path]:
    """Write `<scan_id>.png`, `<scan_id>.json` and `<scan_id>_mask.npy` into `out_dir`.

    `record` is the `spmwatch score --json` record of the frame, written as it is. `lags` is the
    scorer's per-pair lag (computed from the scan when None); `threshold` the flag score
    (ScoringSettings' default when None). Returns {"png", "json", "mask"} -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_scan_id(scan.scan_id)
    paths = {
        "png": out / f"{stem}.png",
        "json": out / f"{stem}.json",
        "mask": out / f"{stem}_mask.npy",
    }
    lags = pair_lags(scan) if lags is None else lags
    threshold = ScoringSettings().flag_z if threshold is None else threshold
    fig = render_png(scan, frame, record, lags, threshold)
    _write_atomic(paths["png"], lambda p: fig.savefig(p, format="png", dpi=DPI))
    text = json.dumps(record, indent=1) + "\n"
    _write_atomic(paths["json"], lambda p: p.write_text(text, encoding="utf-8"))
    mask = event_mask(frame, scan.n_lines)
    _write_atomic(paths["mask"], lambda p: _save_npy(p, mask))
    return paths
