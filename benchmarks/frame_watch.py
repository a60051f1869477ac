"""Frame watch rules: how many scans each (threshold, checks in a row) rule would name.

    SPMWATCH_DATA=<scans> PYTHONPATH=. python benchmarks/frame_watch.py

Replays the checks of the frame watch (the classifier on the frame so far, every WATCH_EVERY
lines from WATCH_FROM on) over the bad and good real scans in ofdspm/ and public/, the good
ones again with one streak line added early (as good scans have: it must not read as a bad
frame), and 100 clean generated scans (256 x 256 and 128 x 256, both directions, with and
without trace channels), then prints, per rule, the scans that would get a poor_image
alert. The table in docs/classifier.md ("Frames in progress") comes from this script.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np

from spmwatch import synth
from spmwatch.assess import watch_checks
from spmwatch.classify.classifier import load_default
from spmwatch.ibw import read_scan
from spmwatch.model import Scan
from spmwatch.scoring.scorer import ScanScorer

RULES = [(0.9, 1), (0.9, 2), (0.9, 3), (0.95, 1), (0.95, 2), (0.95, 3), (0.97, 2), (0.99, 1)]


def probabilities(scan: Scan, model) -> list[float]:
    """The in-progress probability at every check of the scan, as the daemon computes it."""
    scorer = ScanScorer(scan.scan_id, list(scan.channels), scan.n_points, scan.expected_lines)
    return [verdict.probability for _, verdict in watch_checks(scan, scorer, model)]


def one_streak(scan: Scan, position: int = 40, size: float = 8.0) -> Scan:
    """The scan with its `position`-th scanned line raised by `size` x the channel's median
    line spread, in every channel: one glitch line before the second check."""
    out = copy.copy(scan)
    row = scan.acquisition_order()[position]
    out.channels = {}
    for name, data in scan.channels.items():
        data = np.array(data, dtype=np.float32)
        spread = np.std(data - data.mean(axis=1, keepdims=True), axis=1)
        data[row] += size * float(np.median(spread[np.isfinite(spread)]))
        out.channels[name] = data
    return out


def named(checks: list[float], threshold: float, in_a_row: int) -> bool:
    run = 0
    for p in checks:
        run = run + 1 if p >= threshold else 0
        if run >= in_a_row:
            return True
    return False


def main() -> None:
    root = Path(os.environ["SPMWATCH_DATA"])
    model = load_default()
    groups: dict[str, list[tuple[str, list[float]]]] = {
        "bad real": [],
        "good real": [],
        "good + 1 streak": [],
    }
    for path in sorted((root / "ofdspm" / "bad").glob("*.ibw")):
        groups["bad real"].append((path.name, probabilities(read_scan(path), model)))
    good = sorted((root / "ofdspm" / "good").glob("*.ibw"))
    for path in good + sorted((root / "public").glob("*.ibw")):
        scan = read_scan(path)
        groups["good real"].append((path.name, probabilities(scan, model)))
        groups["good + 1 streak"].append((path.name, probabilities(one_streak(scan), model)))
    clean = []
    for seed in range(60):
        scan = synth.clean_scan(seed, 256, 256, traces=bool(seed % 2), scan_down=seed % 3 == 0)
        clean.append((f"clean {seed}", probabilities(scan, model)))
    for seed in range(40):
        down = seed % 2 == 1
        scan = synth.clean_scan(1000 + seed, 128, 256, traces=bool(seed % 2), scan_down=down)
        clean.append((f"clean {1000 + seed}", probabilities(scan, model)))
    groups["clean generated"] = clean
    print("threshold  checks  " + "  ".join(f"{g} (of {len(v)})" for g, v in groups.items()))
    for threshold, in_a_row in RULES:
        counts = [sum(named(p, threshold, in_a_row) for _, p in v) for v in groups.values()]
        print(f"{threshold:9.2f}  {in_a_row:6d}  " + "  ".join(f"{c:>14d}" for c in counts))
    for group in ("bad real", "good real", "good + 1 streak"):
        hits = [name for name, p in groups[group] if named(p, 0.95, 3)]
        print(f"named at 0.95 x 3, {group}: {', '.join(hits) or 'none'}")


if __name__ == "__main__":
    main()
