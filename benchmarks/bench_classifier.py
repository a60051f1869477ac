"""Time the classifier apart from scoring: a saved frame, and a frame in progress.

    python benchmarks/bench_classifier.py [MODEL] [--rounds N]

Saved frame: 256 x 256 x 4, channel arrays (from scratch); split into channel statistics,
memory bank (if the model has one) and estimator (the numpy fast path and sklearn's own
predict_proba). Frame in progress: the daemon's mid-frame verdict from a
ChannelStatsAccumulator after 66, 96 and 127 lines of a 128 x 512 x 8 scan (a dropout from
line 64, as the alert case: seeds 0-3 in turn) and after 512 lines of a 512 x 512 x 8 one,
against the from-scratch verdict on the same lines; `features(n)` alone on a closed
128 x 256 x 8 frame (the burst's case), 66 of 128 x 512 x 8 and 512 x 512 x 8 lines; and the
per-line push (with its share of the per-line settle) for 8 channels x 256 and x 512 points.

Runs N rounds of 30 calls each and prints the best and the median per-call time (the median
of each round, then their best and median, so a busy moment shows as spread rather than as
the figure). Budgets: 20 ms per saved frame; mid-frame verdict 1 ms up to 128 lines and
1.5 ms for 512 lines (x 512 x 8); 10 us per push of 8 x 256.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable

import numpy as np

from spmwatch import synth
from spmwatch.classify.classifier import Classifier, load_default
from spmwatch.classify.features import ChannelStatsAccumulator, channel_features
from spmwatch.scoring.scorer import score_scan


def per_call_ms(fn: Callable[[], object], calls: int) -> float:
    """Median of `calls` timed calls, in milliseconds."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def pushes(channels: dict[str, np.ndarray]) -> Callable[[], object]:
    """Push every line of `channels` into a fresh accumulator (one call = all lines)."""
    names = list(channels)
    lines, points = channels[names[0]].shape
    rows = [{name: data[i] for name, data in channels.items()} for i in range(lines)]

    def run() -> ChannelStatsAccumulator:
        acc = ChannelStatsAccumulator(names, points, lines)
        for row in rows:
            acc.push(row)
        return acc

    return run


def float32_channels(lines: int, points: int) -> dict[str, np.ndarray]:
    scan, _ = synth.failing_scan(0, lines, points, fault="dropout", at=0.5)
    return {name: data.astype(np.float32) for name, data in scan.channels.items()}


def alternating(
    model: Classifier, lines: int, so_far: int, seeds: int = 4, arrays: bool = False
) -> Callable[[], object]:
    """A mid-frame verdict after `so_far` of `lines` lines x 512 x 8 (a dropout from the
    middle), the scans of `seeds` seeds in turn: from an accumulator or from the arrays."""
    cases = []
    for seed in range(seeds):
        scan, _ = synth.failing_scan(seed, lines, 512, fault="dropout", at=0.5)
        channels = {name: data[:so_far].astype(np.float32) for name, data in scan.channels.items()}
        held = channels if arrays else pushes(channels)()
        cases.append((score_scan(scan), held))
    turn = itertools.cycle(cases)

    def run() -> object:
        frame, held = next(turn)
        return model.verdict(frame, held, finished=False)

    return run


def report(title: str, parts: dict[str, Callable[[], object]], rounds: int, per: int = 1):
    """Time each part (`per` > 1: the call does `per` items, figures per item, in us)."""
    for fn in parts.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in parts}
    calls = 30 if per == 1 else 3
    for _ in range(rounds):
        for name, fn in parts.items():
            times[name].append(per_call_ms(fn, calls) / per)
    print(title)
    for name, values in times.items():
        unit, scale = ("ms", 1.0) if per == 1 else ("us", 1e3)
        best, median = min(values) * scale, float(np.median(values)) * scale
        print(f"  {name:<34} best {best:7.3f} {unit}  median {median:7.3f} {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    model = Classifier.load(args.model) if args.model else load_default()
    print(f"model {model.path} ({len(model.feature_names)} features), {args.rounds} rounds")

    scan = synth.clean_scan(1, 256, 256, traces=False)
    frame = score_scan(scan)
    vector = model.features(frame, scan)
    saved: dict[str, Callable[[], object]] = {
        "verdict": lambda: model.verdict(frame, scan),
        "channel statistics": lambda: channel_features(scan.channels),
        "estimator (numpy fast path)": lambda: model.predict_vectors(vector),
        "estimator (sklearn predict_proba)": lambda: model.estimator.predict_proba(vector[None]),
    }
    if model.bank is not None:
        saved["memory bank"] = lambda: model.bank.stats(frame.features)
    report(f"saved frame 256 x 256 x {len(scan.channels)} (budget 20 ms)", saved, args.rounds)

    progress: dict[str, Callable[[], object]] = {}
    for lines in (66, 96, 127):
        progress[f"{lines} lines: verdict, accumulator"] = alternating(model, 128, lines)
    progress["127 lines: verdict from the arrays"] = alternating(model, 128, 127, arrays=True)
    progress["512 lines: verdict, accumulator"] = alternating(model, 512, 512, seeds=1)
    progress["512 lines: verdict from the arrays"] = alternating(model, 512, 512, 1, True)
    title = "frame in progress, lines so far x 512 x 8 (budget 1 ms; 1.5 ms for 512 lines)"
    report(title, progress, args.rounds)

    closing: dict[str, Callable[[], object]] = {}
    for lines, points, so_far in ((128, 256, 128), (128, 512, 66), (512, 512, 512)):
        acc = pushes(float32_channels(lines, points))()
        closing[f"{so_far} of {lines} x {points} x 8"] = lambda acc=acc, n=so_far: acc.features(n)
    report("accumulator features(n) alone (the verdict's channel statistics)", closing, args.rounds)

    per_line = {f"push, 8 x {p} points": pushes(float32_channels(128, p)) for p in (256, 512)}
    report("per line, float32 lines (budget ~10 us for 8 x 256)", per_line, args.rounds, 128)


if __name__ == "__main__":
    main()
