"""Time the classifier on a 256 x 256 x 4 frame (features + probability), apart from scoring.

    python benchmarks/bench_classifier.py [MODEL]

Prints the median and 95th percentile over repeated calls; the budget is 20 ms.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from spmwatch import synth
from spmwatch.classify.classifier import Classifier, load_default
from spmwatch.scoring.scorer import score_scan


def main() -> None:
    model = Classifier.load(sys.argv[1]) if len(sys.argv) > 1 else load_default()
    scan = synth.clean_scan(1, 256, 256, traces=False)
    frame = score_scan(scan)
    model.verdict(frame, scan)
    times = []
    for _ in range(50):
        start = time.perf_counter()
        model.verdict(frame, scan)
        times.append((time.perf_counter() - start) * 1e3)
    parts = {
        "features": lambda: model.features(frame, scan),
        "estimator": lambda: model.predict_vectors(model.features(frame, scan)),
    }
    print(f"model {model.path} ({len(model.feature_names)} features)")
    print(
        f"verdict on 256x256x{len(scan.channels)}: median {np.median(times):.2f} ms, "
        f"p95 {np.percentile(times, 95):.2f} ms (budget 20 ms)"
    )
    for name, fn in parts.items():
        start = time.perf_counter()
        for _ in range(20):
            fn()
        print(f"  {name:<10} {(time.perf_counter() - start) / 20 * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
