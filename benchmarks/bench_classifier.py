"""Time the classifier on a 256 x 256 x 4 frame (features + probability), apart from scoring.

    python benchmarks/bench_classifier.py [MODEL] [--rounds N]

Runs N rounds of 30 verdicts each and prints the best and the median per-verdict time (the
median of each round, then their best and median, so a busy moment shows as spread rather
than as the figure), plus the split into channel statistics, memory bank (if the model has
one) and estimator. The budget is 20 ms per frame.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from spmwatch import synth
from spmwatch.classify.classifier import Classifier, load_default
from spmwatch.classify.features import channel_features
from spmwatch.scoring.scorer import score_scan


def per_call_ms(fn: Callable[[], object], calls: int) -> float:
    """Median of `calls` timed calls, in milliseconds."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    model = Classifier.load(args.model) if args.model else load_default()
    scan = synth.clean_scan(1, 256, 256, traces=False)
    frame = score_scan(scan)
    vector = model.features(frame, scan)
    parts: dict[str, Callable[[], object]] = {
        "verdict": lambda: model.verdict(frame, scan),
        "channel statistics": lambda: channel_features(scan.channels),
        "estimator": lambda: model.predict_vectors(vector),
    }
    if model.bank is not None:
        parts["memory bank"] = lambda: model.bank.stats(frame.features)
    for fn in parts.values():
        fn()
    rounds: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(args.rounds):
        for name, fn in parts.items():
            rounds[name].append(per_call_ms(fn, 30))
    print(f"model {model.path} ({len(model.feature_names)} features)")
    print(f"frame 256 x 256 x {len(scan.channels)}, {args.rounds} rounds of 30 calls")
    for name, values in rounds.items():
        tag = " (budget 20 ms)" if name == "verdict" else ""
        print(f"  {name:<20} best {min(values):6.2f} ms  median {np.median(values):6.2f} ms{tag}")


if __name__ == "__main__":
    main()
