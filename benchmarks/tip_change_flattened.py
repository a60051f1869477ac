"""Tip changes injected into the good real scans as synth makes them, and as the saved files
could show them: what the scorer's tip_change figures rest on.

    SPMWATCH_DATA=/work/shared/data PYTHONPATH=. python benchmarks/tip_change_flattened.py

The ofdspm and Cypher files store Height/ZSensor flattened line by line (each line's mean and
slope are zero to float32 precision, <= 1.4e-4 of its RMS), so a change of the tip's length
cannot show there as a level step; `synth.inject(..., "tip_change")` adds one after the
flattening. Three variants per
scan (same seed, `at=0.5`, as benchmarks/detection.py):
- "as synth": the injection as it is;
- "flattened": the rows from the fault on flattened again (offset + slope) on every channel
  the source file stores flattened, the blur/echo and the other channels' steps kept;
- "+ setpoint": also the error channel's (Amplitude/Deflection) line means put back: the AC
  loop holds the amplitude at its setpoint, so a tip change cannot hold its mean off.
Also prints the longest run of lines with the sharpness z (consensus over channels) >= T on
the good real scans, the clean generated scans and after each injection: a blunt tip's
sustained sharpness drop is the signature left once the level step is gone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spmwatch import synth
from spmwatch.ibw import read_scan
from spmwatch.model import Scan
from spmwatch.scoring import kernels as K
from spmwatch.scoring.scorer import score_scan

THRESHOLDS = (5.0, 6.0, 8.0)


def flattened(data: np.ndarray) -> bool:
    """True when every line's mean is ~0 against the channel's RMS (a line-flattened channel)."""
    data = np.nan_to_num(np.asarray(data, float))
    rms = float(np.std(data))
    return rms > 0 and float(np.abs(data.mean(axis=1)).max()) < 1e-3 * rms


def _flatten_rows(data: np.ndarray, rows: np.ndarray) -> None:
    x = np.arange(data.shape[1]) - (data.shape[1] - 1) / 2
    block = data[rows] - data[rows].mean(axis=1, keepdims=True)
    data[rows] = block - np.outer(block @ x / (x @ x), x)


def realistic(source: Scan, injected: Scan, truth: synth.Truth, setpoint: bool) -> Scan:
    """`injected` with the fault rows flattened as the source's channels are (in place)."""
    rows = np.flatnonzero(truth.mask)
    for name, data in injected.channels.items():
        original = np.asarray(source.channels[name], float)
        if flattened(original):
            _flatten_rows(data, rows)
        elif setpoint and synth._role(name) == "error":
            shift = data[rows].mean(axis=1) - original[rows].mean(axis=1)
            data[rows] -= shift[:, None]
    return injected


def longest_runs(features: np.ndarray, first: int) -> list[int]:
    """Per threshold, the longest run of lines (from `first`) with sharpness z >= it."""
    z = features[first:, K.F_SHARP]
    out = []
    for t in THRESHOLDS:
        best = run = 0
        for above in z >= t:
            run = run + 1 if above else 0
            best = max(best, run)
        out.append(best)
    return out


def main() -> int:
    root = Path(os.environ.get("SPMWATCH_DATA", "/work/shared/data"))
    paths = sorted((root / "public").glob("*.ibw")) + sorted((root / "ofdspm/good").glob("*.ibw"))
    scans = [read_scan(p) for p in paths]
    flat = sum(
        all(flattened(scan.channels[n]) for n in scan.channels if synth._role(n) == "topography")
        for scan in scans
    )
    print(f"{len(scans)} good real scans, topography stored line-flattened in {flat}")
    good = [longest_runs(score_scan(s).features, 8) for s in scans]
    clean = [
        longest_runs(
            score_scan(
                synth.clean_scan(1000 + s, 128, 256, traces=t, scan_down=s % 2 == 1)
            ).features,
            8,
        )
        for s in range(30)
        for t in (True, False)
    ]
    for i, t in enumerate(THRESHOLDS):
        print(
            f"sharpness z >= {t:g}: longest runs, good real {sorted(r[i] for r in good)[-3:]}, "
            f"clean generated {sorted(r[i] for r in clean)[-3:]}"
        )
    for label, variant in (("as synth", None), ("flattened", False), ("+ setpoint", True)):
        alerted, named, delays, runs = 0, 0, [], []
        for seed, scan in enumerate(scans):
            injected, truth = synth.inject(scan, "tip_change", seed, at=0.5)
            if variant is not None:
                injected = realistic(scan, injected, truth, variant)
            frame = score_scan(injected)
            first = int(truth.first_position or 0)
            alert = frame.alert
            if alert is not None and alert.position >= first:
                alerted += 1
                named += alert.kind == "tip_change"
                delays.append(alert.position - first)
            else:
                runs.append(longest_runs(frame.features, first))
        median = f"{np.median(delays):.0f}" if delays else "-"
        missed = ", ".join(
            f">={t:g}: {sorted(r[i] for r in runs)[-3:]}" for i, t in enumerate(THRESHOLDS)
        )
        print(
            f"{label:11s} alerted {alerted}/{len(scans)} (tip_change {named}, median delay "
            f"{median}); missed scans' longest sharpness runs {missed}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
