"""Synthetic AFM scans and fault injection, each with per-line ground truth.

Why: real labelled failures are few (nine bad frames, all from one material family), so the
classifier also learns from scans whose every failing line is known. Clean frames come from a
small physical model: a random surface is imaged through a parabolic tip (grey-scale dilation)
by a PI height loop run left-to-right (trace) and right-to-left (retrace), so the retrace lags,
the loop parachutes down steep drops and the two directions differ as on a real microscope.
Faults are injected afterwards into any `Scan`, generated or real, so real good scans can be
turned into labelled bad ones too. Everything is seeded and deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from spmwatch.model import Scan, split_direction

FAULT_KINDS: tuple[str, ...] = (
    "tip_change",
    "streak",
    "tracking_loss",
    "oscillation",
    "dropout",
    "gain_drift",
    "partial_frame",
)
CHANNELS: tuple[str, ...] = ("Height", "ZSensor", "Amplitude", "Phase")
TOPOGRAPHY = ("Height", "ZSensor")


@dataclass(frozen=True)
class Fault:
    """One injected fault: its kind and the acquisition positions it spans (inclusive)."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class Truth:
    """Per-line ground truth, indexed like the stored lines of the scan it belongs to.

    `mask[i]` says whether stored line i is faulty and `kinds[i]` names the fault. A partial
    frame has no faulty line of its own; it is bad as a whole (`partial`).
    """

    mask: np.ndarray
    kinds: tuple[str | None, ...]
    faults: tuple[Fault, ...] = ()
    partial: bool = False

    @property
    def bad(self) -> bool:
        return bool(self.mask.any()) or self.partial

    @property
    def first_position(self) -> int | None:
        """Acquisition position of the first faulty line: the zero of the alert delay."""
        return min((f.start for f in self.faults), default=None)

    @property
    def kind(self) -> str | None:
        """The first fault's kind: the frame's label for per-kind figures."""
        return min(self.faults, key=lambda f: f.start).kind if self.faults else None


def clean_truth(scan: Scan) -> Truth:
    """Truth of a scan known to be good: no faulty line."""
    return Truth(mask=np.zeros(scan.n_lines, bool), kinds=(None,) * scan.n_lines)


# --------------------------------------------------------------------------- clean scans


def _fractal(rng: np.random.Generator, shape: tuple[int, int], beta: float) -> np.ndarray:
    """Unit-variance random field with a 1/f**beta power spectrum (self-affine roughness)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** (beta / 2)
    spectrum[0, 0] = 0.0
    field_ = np.fft.irfft2(spectrum, s=shape)
    return field_ / (field_.std() or 1.0)


def random_surface(rng: np.random.Generator, lines: int, points: int) -> np.ndarray:
    """A surface in nm, shaped (lines, points): tilt + roughness + terraces + particles."""
    y, x = np.mgrid[0:lines, 0:points].astype(float)
    z = rng.uniform(-3, 3) * x / points + rng.uniform(-3, 3) * y / lines
    z += rng.uniform(0.2, 2.0) * _fractal(rng, (lines, points), rng.uniform(2.0, 3.5))
    for _ in range(rng.integers(0, 4)):
        # Step edges run within 60 degrees of the slow axis: an edge along the fast axis would
        # look exactly like a tip change, which a clean frame must not contain.
        angle = rng.uniform(-np.pi / 3, np.pi / 3)
        offset = rng.uniform(-0.5, 0.5) * min(lines, points)
        side = np.cos(angle) * (x - points / 2) + np.sin(angle) * (y - lines / 2) > offset
        z += rng.uniform(0.4, 3.0) * side
    n_particles = rng.integers(0, 80)
    if n_particles:
        bumps = np.zeros((lines, points))
        rows = rng.integers(0, lines, n_particles)
        cols = rng.integers(0, points, n_particles)
        np.add.at(bumps, (rows, cols), rng.uniform(2.0, 25.0, n_particles))
        width = rng.uniform(1.5, 5.0) * points / 256
        z += ndimage.gaussian_filter(bumps, width) * 2 * np.pi * width**2
    return z


def tip_image(surface: np.ndarray, radius_px: float, depth_per_px: float) -> np.ndarray:
    """Image a surface through a parabolic tip: grey-scale dilation by the reflected tip."""
    half = max(1, int(np.ceil(radius_px)))
    u = np.arange(-half, half + 1, dtype=float)
    tip = -(u[:, None] ** 2 + u[None, :] ** 2) * depth_per_px / (2 * radius_px)
    return ndimage.grey_dilation(surface, structure=tip)


def pi_loop(
    surface: np.ndarray, kp: float, ki: float, drop_limit: float
) -> tuple[np.ndarray, np.ndarray]:
    """Run a PI height loop along axis 1 for every line at once; returns (z, error).

    The error is clipped below at -drop_limit: when the surface falls away faster than the
    loop follows, the AC amplitude cannot exceed its free value, so the tip descends slowly
    ("parachutes") and the image shows a smeared trailing edge, as on a real microscope.
    """
    n = surface.shape[1]
    z = np.empty_like(surface)
    error = np.empty_like(surface)
    current = surface[:, 0].copy()
    integral = current / ki
    for k in range(n):
        e = np.maximum(surface[:, k] - current, -drop_limit)
        integral += e
        current = ki * integral + kp * e
        z[:, k] = current
        error[:, k] = e
    return z, error


def _shift(image: np.ndarray, px: float) -> np.ndarray:
    """Shift every line by px along the fast axis (edge values repeat)."""
    return ndimage.shift(image, (0, px), order=1, mode="nearest")


def clean_scan(
    seed: int,
    lines: int = 256,
    points: int = 256,
    *,
    traces: bool = True,
    scan_down: bool = False,
    scan_id: str | None = None,
) -> Scan:
    """A good frame: Height/ZSensor/Amplitude/Phase, Retrace (and Trace when `traces`)."""
    rng = np.random.default_rng(seed)
    surface = random_surface(rng, lines, points)
    scan_size = float(rng.choice([0.5e-6, 1e-6, 2e-6, 5e-6]))
    pixel_nm = scan_size * 1e9 / points
    imaged = tip_image(
        surface, radius_px=max(1.0, rng.uniform(8, 30) / pixel_nm), depth_per_px=pixel_nm
    )
    kp, ki = rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.8)
    drop_limit = rng.uniform(1.0, 4.0)
    setpoint, free = rng.uniform(0.2, 0.8), 1.0
    material = ndimage.gaussian_filter(rng.normal(size=(lines, points)), 3.0)
    material = rng.uniform(0.5, 5.0) * material / (material.std() or 1.0)
    phase0 = rng.uniform(40, 120)
    lag = rng.uniform(0.5, 4.0) * points / 256
    line_offsets = rng.normal(0, rng.uniform(0.02, 0.3), size=(lines, 1))

    channels: dict[str, np.ndarray] = {}
    directions = [("Trace", False), ("Retrace", True)] if traces else [("Retrace", True)]
    for name, backwards in directions:
        source = imaged[:, ::-1] if backwards else imaged
        z, error = pi_loop(source, kp, ki, drop_limit)
        if backwards:
            z, error = z[:, ::-1], error[:, ::-1]
            z, error = _shift(z, lag), _shift(error, lag)
        noise = rng.normal(0, 0.05, size=(2, lines, points))
        height = z + line_offsets + noise[0]
        zsensor = z + 0.5 * line_offsets + noise[1] + 0.3 * ((np.arange(points) / points) ** 2)
        amplitude = np.clip(setpoint - 0.08 * error, 0, free) + rng.normal(0, 0.004, z.shape)
        phase = phase0 + material + 2.0 * error + rng.normal(0, 0.2, z.shape)
        channels[f"Height{name}"] = height * 1e-9
        channels[f"ZSensor{name}"] = zsensor * 1e-9
        channels[f"Amplitude{name}"] = amplitude
        channels[f"Phase{name}"] = phase
    rate = float(rng.choice([0.5, 1.0, 1.5, 2.0]))
    meta: dict[str, float | int | str] = {
        "ScanRate": rate,
        "ScanLines": lines,
        "ScanPoints": points,
        "ScanSize": scan_size,
        "FastScanSize": scan_size,
        "SlowScanSize": scan_size * lines / points,
        "ScanSpeed": 2.5 * scan_size * rate,
        "ScanDown": int(scan_down),
        "ImagingMode": "AC Mode",
        "IntegralGain": round(ki * 40, 3),
        "ProportionalGain": round(kp * 40, 3),
        "AmplitudeSetpointVolts": setpoint,
    }
    return Scan(
        scan_id=scan_id or f"synth_{seed:05d}",
        channels=channels,
        meta=meta,
        expected_lines=lines,
        scan_down=scan_down,
        note={"synthetic": "clean", "seed": str(seed)},
    )


# --------------------------------------------------------------------------- faults


def _role(name: str) -> str:
    prefix, _ = split_direction(name)
    if prefix in TOPOGRAPHY:
        return "topography"
    if prefix.startswith("Amplitude") or prefix.startswith("Deflection"):
        return "error"
    return "other"


def _scale(data: np.ndarray) -> float:
    """Robust size of a channel's line-to-line detail: MAD of pixel differences along lines."""
    finite = data[np.isfinite(data)]
    if finite.size < 2:
        return 1.0
    diffs = np.abs(np.diff(data, axis=1))
    diffs = diffs[np.isfinite(diffs)]
    mad = float(np.median(diffs)) if diffs.size else 0.0
    spread = float(np.subtract(*np.percentile(finite, [90, 10])))
    return max(mad * 4, spread * 0.15, 1e-12)


def _rows(scan: Scan, start: int, end: int) -> np.ndarray:
    """Stored indices of acquisition positions start..end (inclusive)."""
    return scan.acquisition_order()[start : end + 1]


def _tip_change(scan: Scan, rng: np.random.Generator, start: int) -> int:
    rows = _rows(scan, start, scan.n_lines - 1)
    double = rng.random() < 0.5
    echo_px = int(rng.integers(4, 20)) * max(1, scan.n_points // 256)
    echo_gain = rng.uniform(0.4, 0.9)
    sigma = rng.uniform(1.5, 4.0)
    step_sign = rng.choice([-1.0, 1.0])
    for name, data in scan.channels.items():
        block = data[rows]
        scale = _scale(data)
        if double:
            echo = np.roll(block, echo_px, axis=1)
            echo[:, :echo_px] = block[:, :1]
            block = np.maximum(block, block.mean() + echo_gain * (echo - block.mean()))
        else:
            block = ndimage.gaussian_filter1d(block, sigma, axis=1, mode="nearest")
        if _role(name) == "topography":
            block = block + step_sign * rng.uniform(1.5, 4.0) * scale
        else:
            block = block + step_sign * rng.uniform(0.5, 2.0) * scale
        data[rows] = block
    return scan.n_lines - 1


def _streak(scan: Scan, rng: np.random.Generator, start: int) -> list[tuple[int, int]]:
    """Scars and line jumps as on the real failed frames: many bands of 1-8 lines spread over
    the rest of the frame, each offset over the whole line or from a jump point to the line's
    end (the tip jumped and stayed), the error channels often ringing inside the band."""
    remaining = scan.n_lines - start
    spans = []
    for _ in range(int(rng.integers(4, 21))):
        width = int(rng.integers(1, 9))
        first = start + int(rng.integers(0, max(1, remaining - width)))
        last = min(scan.n_lines - 1, first + width - 1)
        spans.append((first, last))
        rows = _rows(scan, first, last)
        if rng.random() < 0.6:
            lo, hi = 0, scan.n_points
        else:
            lo = int(rng.integers(0, scan.n_points * 3 // 4))
            to_end = rng.random() < 0.5
            hi = scan.n_points if to_end else int(rng.integers(lo + 8, scan.n_points + 1))
        sign = rng.choice([-1.0, 1.0])
        size = rng.uniform(1.0, 5.0)
        ringing = rng.random() < 0.5
        period = rng.uniform(2.0, 5.0)
        wave = np.sin(2 * np.pi * np.arange(hi - lo) / period + rng.uniform(0, 2 * np.pi))
        for name, data in scan.channels.items():
            data[rows, lo:hi] += sign * size * _scale(data)
            if ringing and _role(name) != "topography":
                data[rows, lo:hi] += rng.uniform(1.0, 3.0) * _scale(data) * wave
    return spans


def _tracking_loss(scan: Scan, rng: np.random.Generator, start: int) -> int:
    """Flat parachuting segments; trace and retrace lose contact at different places."""
    end = min(scan.n_lines - 1, start + int(rng.integers(8, 40)))
    rows = _rows(scan, start, end)
    seeds = {}
    for name, data in scan.channels.items():
        direction = split_direction(name)[1]
        if direction not in seeds:
            lo = int(rng.integers(0, scan.n_points // 2))
            seeds[direction] = (lo, int(rng.integers(lo + scan.n_points // 4, scan.n_points + 1)))
        lo, hi = seeds[direction]
        role = _role(name)
        block = data[rows]
        if role == "topography":
            top = np.nanmax(block[:, lo:hi], axis=1, keepdims=True)
            sag = np.linspace(0, 1, hi - lo)[None, :] * 0.2 * _scale(data)
            block[:, lo:hi] = top - sag
        elif role == "error":
            block[:, lo:hi] = np.nanmax(data) + 0.1 * _scale(data)
        else:
            block[:, lo:hi] = np.nanmedian(block[:, lo:hi]) + rng.normal(
                0, 0.05 * _scale(data), (len(rows), hi - lo)
            )
        data[rows] = block
    return end


def _oscillation(scan: Scan, rng: np.random.Generator, start: int) -> int:
    """Feedback ringing: a short burst after an edge, a sustained oscillation, or ringing at
    every steep edge of the topography (the real failure on rough samples), fine-pitched
    (2-5 px) or slower."""
    mode = rng.choice(["burst", "sustained", "edges"])
    end = scan.n_lines - 1
    if mode == "burst":
        end = min(scan.n_lines - 1, start + int(rng.integers(6, 30)))
    rows = _rows(scan, start, end)
    x = np.arange(scan.n_points, dtype=float)
    period = rng.uniform(2.0, 5.0) if rng.random() < 0.5 else scan.n_points / rng.uniform(8, 50)
    wave = np.sin(2 * np.pi * x / period + rng.uniform(0, 2 * np.pi))[None, :]
    if mode == "burst":
        onset = rng.integers(0, scan.n_points // 2, size=(len(rows), 1))
        decay = np.exp(-np.maximum(x[None, :] - onset, 0) / rng.uniform(20, 80))
        envelope = np.where(x[None, :] >= onset, decay, 0.0)
    elif mode == "edges":
        envelope = 0.2 + _edges(scan, rows)
    else:
        envelope = np.ones((len(rows), 1))
    size = rng.uniform(2.0, 6.0)
    for name, data in scan.channels.items():
        weight = 1.0 if _role(name) != "other" else 0.5
        data[rows] += weight * size * _scale(data) * wave * envelope
    return end


def _edges(scan: Scan, rows: np.ndarray) -> np.ndarray:
    """0..1 weight of steep topography along the lines `rows` (ringing follows edges)."""
    name = next((n for n in scan.channels if _role(n) == "topography"), next(iter(scan.channels)))
    slope = np.abs(np.gradient(np.nan_to_num(scan.channels[name][rows]), axis=1))
    steep = slope > np.quantile(slope, 0.8)
    return ndimage.uniform_filter1d(steep.astype(float), 9, axis=1)


def _dropout(scan: Scan, rng: np.random.Generator, start: int) -> int:
    end = min(scan.n_lines - 1, start + int(rng.integers(2, 25)))
    rows = _rows(scan, start, end)
    style = rng.choice(["zero", "constant", "nan"])
    for data in scan.channels.values():
        if style == "zero":
            data[rows] = 0.0
        elif style == "nan":
            data[rows] = np.nan
        else:
            data[rows] = data[rows[0], 0]
    return end


def _gain_drift(scan: Scan, rng: np.random.Generator, start: int) -> int:
    """From `start` on the loop gain drifts: contrast shrinks or grows, the error grows."""
    rows = _rows(scan, start, scan.n_lines - 1)
    ramp = np.linspace(1 / len(rows), 1, len(rows))[:, None]
    final = rng.choice([rng.uniform(0.15, 0.5), rng.uniform(2.0, 4.0)])
    for name, data in scan.channels.items():
        block = data[rows]
        centre = np.nanmedian(block, axis=1, keepdims=True)
        gain = 1 + (final - 1) * ramp
        block = centre + (block - centre) * gain
        if _role(name) == "topography":
            block = block + ramp * rng.uniform(2, 6) * _scale(data) * rng.choice([-1, 1])
        data[rows] = block
    return scan.n_lines - 1


_INJECTORS: dict[str, Callable[[Scan, np.random.Generator, int], object]] = {
    "tip_change": _tip_change,
    "streak": _streak,
    "tracking_loss": _tracking_loss,
    "oscillation": _oscillation,
    "dropout": _dropout,
    "gain_drift": _gain_drift,
}


def _copy(scan: Scan, suffix: str) -> Scan:
    return replace(
        scan,
        scan_id=f"{scan.scan_id}{suffix}",
        channels={k: np.array(v, dtype=float, copy=True) for k, v in scan.channels.items()},
        meta=dict(scan.meta),
        note=dict(scan.note),
        problems=list(scan.problems),
        path=None,
    )


def inject(
    scan: Scan,
    kind: str,
    seed: int,
    at: float | None = None,
    truth: Truth | None = None,
) -> tuple[Scan, Truth]:
    """Return a copy of `scan` with one fault of `kind` starting at fraction `at` of the frame.

    `at` is in acquisition order (0 = first line scanned); None draws it at random. `truth` is
    the scan's existing truth (a clean scan's when None), so faults can be stacked.
    """
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
    if scan.n_lines < 8:
        raise ValueError(f"scan {scan.scan_id} has {scan.n_lines} lines: too few to inject into")
    rng = np.random.default_rng(seed)
    at = rng.uniform(0.1, 0.8) if at is None else at
    start = int(np.clip(round(at * scan.n_lines), 1, scan.n_lines - 2))
    truth = truth or clean_truth(scan)
    out = _copy(scan, f"+{kind}")
    out.note["fault"] = kind
    if kind == "partial_frame":
        keep = scan.acquisition_order()[:start]
        rows = np.sort(keep)
        out.channels = {k: v[rows] for k, v in out.channels.items()}
        mask = truth.mask[rows]
        kinds = tuple(truth.kinds[i] for i in rows)
        return out, Truth(mask, kinds, (*truth.faults, Fault(kind, start, start)), True)
    result = _INJECTORS[kind](out, rng, start)
    spans = result if isinstance(result, list) else [(start, int(result))]
    mask = truth.mask.copy()
    kinds = list(truth.kinds)
    faults = list(truth.faults)
    for first, last in spans:
        rows = _rows(out, first, last)
        mask[rows] = True
        for i in rows:
            kinds[i] = kinds[i] or kind
        faults.append(Fault(kind, first, last))
    return out, Truth(mask, tuple(kinds), tuple(faults), truth.partial)


def failing_scan(
    seed: int = 0,
    lines: int = 128,
    points: int = 256,
    fault: str = "tip_change",
    at: float = 0.5,
    traces: bool = True,
) -> tuple[Scan, Truth]:
    """A generated scan whose tip fails part-way (at fraction `at` of acquisition): for demos."""
    return inject(clean_scan(seed, lines, points, traces=traces), fault, seed + 1, at=at)


@dataclass
class SyntheticSet:
    """A labelled batch: scans, their truths, and the group (family) each was derived from."""

    scans: list[Scan] = field(default_factory=list)
    truths: list[Truth] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)


def synthetic_set(
    n: int,
    seed: int = 0,
    bases: list[tuple[Scan, str]] | None = None,
    lines: int = 128,
    points: int = 128,
    bad_fraction: float = 0.5,
) -> SyntheticSet:
    """`n` labelled scans: about `bad_fraction` carry one random fault.

    With `bases` (good real scans and their family), half of the scans are derived from them,
    keeping the family as the group so grouped splits never leak a family; the rest are
    generated (group "synthetic").
    """
    rng = np.random.default_rng(seed)
    out = SyntheticSet()
    for i in range(n):
        item_seed = int(rng.integers(0, 2**31))
        if bases and i % 2 == 1:
            base, group = bases[int(rng.integers(0, len(bases)))]
            base = _copy(base, f"~{i}")
        else:
            base = clean_scan(
                item_seed,
                lines,
                points,
                traces=bool(rng.random() < 0.5),
                scan_down=bool(rng.random() < 0.5),
                scan_id=f"synth_{seed}_{i:05d}",
            )
            group = "synthetic"
        if rng.random() < bad_fraction and base.n_lines >= 8:
            kind = FAULT_KINDS[int(rng.integers(0, len(FAULT_KINDS)))]
            scan, truth = inject(base, kind, item_seed + 1)
        else:
            scan, truth = base, clean_truth(base)
        out.scans.append(scan)
        out.truths.append(truth)
        out.groups.append(group)
    return out


def write(scan: Scan, path: str | Path) -> Path:
    """Write a (synthetic) scan as a real Asylum-style .ibw through the project's writer."""
    from spmwatch.ibw import write_scan

    path = Path(path)
    write_scan(scan, path)
    return path
