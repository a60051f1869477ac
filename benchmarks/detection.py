"""Detection figures of the scorer's alert: per fault kind, alert rate, delay and kind named.

    SPMWATCH_DATA=<scans> PYTHONPATH=. python benchmarks/detection.py [--seeds 20] [--wide]

Faults come from `spmwatch.synth`: generated failing scans (`failing_scan`, 128 x 256, fault
from acquisition position 64) and the same fault kinds injected half-way into each of the 38
good real scans (`inject(scan, kind, seed, at=0.5)`). The delay is the alert's acquisition
position minus the fault's first position, in lines; an alert before the fault is counted as
"early" (a false alert on the clean part), not as a detection. False alerts are counted on
the 38 good real scans and on clean generated scans (trace + retrace and retrace only);
`--wide` adds 480 more clean generated scans of four sizes.
Prints figures only; the tests assert a small subset (tests/test_scoring_detection.py).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from spmwatch import synth
from spmwatch.ibw import read_scan
from spmwatch.model import Scan
from spmwatch.scoring.scorer import score_scan

KINDS = ("tip_change", "tracking_loss", "oscillation", "dropout", "streak")


def outcome(scan: Scan, truth: synth.Truth) -> tuple[int | None, str | None]:
    """(alert delay in lines after the fault's first position, alert kind); (None, None)
    when nothing alerted."""
    alert = score_scan(scan).alert
    if alert is None:
        return None, None
    return alert.position - int(truth.first_position or 0), alert.kind


def good_real_scans(root: Path) -> list[Scan]:
    paths = sorted((root / "public").glob("*.ibw")) + sorted((root / "ofdspm/good").glob("*.ibw"))
    return [read_scan(p) for p in paths]


def summarise(results: list[tuple[int | None, str | None]], kind: str) -> str:
    n = len(results)
    hits = [(d, k) for d, k in results if d is not None and d >= 0]
    early = sum(1 for d, _ in results if d is not None and d < 0)
    delays = np.array([d for d, _ in hits], dtype=float)
    med = f"{np.median(delays):5.1f}" if len(delays) else "    -"
    p90 = f"{np.percentile(delays, 90):5.1f}" if len(delays) else "    -"
    named = sum(1 for _, k in hits if k == kind)
    other = defaultdict(int)
    for _, k in hits:
        if k != kind:
            other[k] += 1
    wrong = ", ".join(f"{k} {v}" for k, v in sorted(other.items())) or "-"
    return (
        f"{len(hits):3d}/{n:<3d} {100 * len(hits) / n:5.0f} %  {med}  {p90}  "
        f"{named:3d}/{len(hits):<3d}  early {early:2d}  named instead: {wrong}"
    )


WIDE_SIZES = ((192, 128), (128, 256), (256, 256), (64, 128))  # (lines, points)


def clean_sweep(
    seeds: range, sizes: tuple[tuple[int, int], ...]
) -> tuple[int, list[tuple[int, int, str, bool, str, int, str]], int]:
    """(scans, alerts, flagged lines) on clean generated scans of each (lines, points) size:
    each seed with and without trace, scanned up (even seeds) or down (odd). An alert is
    (lines, points, scan_id, traces, kind, position, severity)."""
    alerts = []
    flagged = 0
    n = 0
    for lines, points in sizes:
        for seed in seeds:
            for traces in (True, False):
                scan = synth.clean_scan(seed, lines, points, traces=traces, scan_down=seed % 2 == 1)
                frame = score_scan(scan)
                n += 1
                flagged += sum(s.flagged for s in frame.lines)
                if (a := frame.alert) is not None:
                    alerts.append(
                        (lines, points, scan.scan_id, traces, a.kind, a.position, a.severity)
                    )
    return n, alerts, flagged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="generated scans per fault kind")
    parser.add_argument(
        "--clean", type=int, default=30, help="clean seeds (x2: with/without trace)"
    )
    parser.add_argument("--no-real", action="store_true", help="skip the real scans")
    parser.add_argument(
        "--wide",
        action="store_true",
        help="also the wider clean sweep: seeds 2000-2059 at 4 sizes, with/without trace (~40 s)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    root = os.environ.get("SPMWATCH_DATA")
    real = [] if args.no_real or not root else good_real_scans(Path(root))

    header = "alerted        rate   med    p90   kind ok"
    print(f"{'kind':14s} {'source':9s} {header}")
    for kind in KINDS:
        gen = [outcome(*synth.failing_scan(seed, fault=kind)) for seed in range(args.seeds)]
        print(f"{kind:14s} {'synth':9s} {summarise(gen, kind)}")
        if real:
            inj = [
                outcome(*synth.inject(scan, kind, seed, at=0.5)) for seed, scan in enumerate(real)
            ]
            print(f"{kind:14s} {'real+inj':9s} {summarise(inj, kind)}")

    if real:
        false_real = [s.scan_id for s in real if score_scan(s).alert is not None]
        print(f"false alerts, {len(real)} good real scans: {len(false_real)} {false_real}")
    n_clean, alerts, _ = clean_sweep(range(1000, 1000 + args.clean), ((128, 256),))
    false_clean = [(scan_id, traces, kind, at) for _, _, scan_id, traces, kind, at, _ in alerts]
    print(f"false alerts, {n_clean} clean generated scans: {len(false_clean)} {false_clean}")
    if args.wide:
        n_wide, alerts, flagged = clean_sweep(range(2000, 2060), WIDE_SIZES)
        print(
            f"false alerts, {n_wide} clean generated scans (wide): {len(alerts)}, "
            f"{flagged} flagged lines"
        )
        for lines, points, scan_id, traces, kind, at, severity in alerts:
            print(f"  {lines}x{points} {scan_id} trace={traces} {kind} at {at} ({severity})")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
