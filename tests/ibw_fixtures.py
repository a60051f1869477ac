"""Small builders for synthetic Asylum-like scans and `.ibw` fixtures, shared by every test file.

Scans look like tilted, gently rough surfaces with per-line noise, so scorers see plausible data;
the meta holds the keys `read_scan` types, so a written fixture reads back equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from spmwatch.ibw import write_scan
from spmwatch.model import Scan

DEFAULT_CHANNELS = ("HeightTrace", "HeightRetrace")
DART_CHANNELS = (
    "HeightRetrace",
    "Amplitude1Retrace",
    "Amplitude2Retrace",
    "Phase1Retrace",
    "Phase2Retrace",
    "FrequencyRetrace",
)


def make_scan(
    channels: Sequence[str] = DEFAULT_CHANNELS,
    lines: int = 32,
    points: int = 64,
    expected_lines: int | None = None,
    scan_down: bool = False,
    seed: int = 0,
    note: Mapping[str, str] | None = None,
    dtype: type = np.float32,
    scan_id: str = "synthetic_0000",
) -> Scan:
    """A scan of `lines` stored lines (of `expected_lines`, default all) with smooth content."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, points)
    y = np.linspace(0.0, 1.0, max(lines, 1))[:lines, None]
    surface = 2e-9 * np.sin(6 * np.pi * x) * np.cos(4 * np.pi * y) + 1e-9 * x + 5e-10 * y
    data = {
        name: (surface * (1 + index) + rng.normal(0.0, 2e-11, (lines, points))).astype(dtype)
        for index, name in enumerate(channels)
    }
    expected = lines if expected_lines is None else expected_lines
    meta: dict[str, float | int | str] = {
        "ScanRate": 1.0016,
        "ScanLines": expected,
        "ScanPoints": points,
        "ScanSize": 1e-06,
        "ScanDown": int(scan_down),
        "ImagingMode": "AC Mode",
        "IntegralGain": 10.0,
        "MicroscopeModel": "Synthetic",
    }
    return Scan(
        scan_id=scan_id,
        channels=data,
        meta=meta,
        expected_lines=expected,
        scan_down=scan_down,
        note=dict(note or {}),
    )


def write_fixture(tmp_path: Path, scan: Scan, name: str | None = None) -> Path:
    """Write `scan` as `<name>.ibw` (default: its scan id) under `tmp_path` and return the path."""
    path = Path(tmp_path) / f"{name or scan.scan_id}.ibw"
    write_scan(scan, path)
    return path
