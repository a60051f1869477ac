"""Full fuzz run: >= 1,000 damaged .ibw files through the reader and the scorer, with counts.

    python benchmarks/fuzz_ibw.py [--count 1000] [--seed 0] [--hypothesis 0] [--json]

Every file must be answered with a Scan (then scored) or a typed IbwError: crashes (any other
exception), hangs (no answer within --time-limit s) and files costing over 100 MiB of traced
memory must all be 0; the exit code is 1 otherwise. The corpus is tests/fuzz_corpus.py
(deterministic for a seed); --hypothesis N adds N files of random byte edits drawn by
hypothesis. Prints per-family counts, the slowest file and the largest traced allocation.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fuzz_corpus import FuzzCase, Outcome, answer, corpus, write_corpus  # noqa: E402

from spmwatch.ibw import read_scan  # noqa: E402
from spmwatch.model import Scan  # noqa: E402
from spmwatch.scoring.scorer import score_scan, warm_up  # noqa: E402

MEMORY_LIMIT = 100 * 2**20  # traced bytes one file may cost; more counts as a failure


def consume(scan: Scan) -> None:
    """What the daemon does with a frame file: read its settings, then score every line."""
    _ = (scan.scan_rate, scan.partial, scan.acquisition_order())
    score_scan(scan)


def hypothesis_cases(count: int, seed: int) -> list[FuzzCase]:
    """`count` random edits of a valid file drawn by hypothesis (its shrinking is not needed)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    valid = corpus(1, seed)[0].data
    drawn: list[bytes] = []
    edits = st.lists(
        st.tuples(st.integers(0, len(valid) - 1), st.binary(min_size=1, max_size=16)),
        min_size=1,
        max_size=8,
    )

    @hseed(seed)
    @settings(max_examples=count, database=None, suppress_health_check=list(HealthCheck))
    @given(edits=edits, cut=st.integers(0, len(valid)))
    def draw(edits: list[tuple[int, bytes]], cut: int) -> None:
        buf = bytearray(valid)
        for at, chunk in edits:
            buf[at : at + len(chunk)] = chunk
        drawn.append(bytes(buf[: max(cut, 1)]))

    draw()
    return [FuzzCase(f"h{i:05d}_hypothesis", "hypothesis", d) for i, d in enumerate(drawn)]


def run(count: int, seed: int, extra: int, time_limit: float) -> dict[str, object]:
    warm_up()  # compile (or load) the numba kernels first, so the first file is not "slow"
    cases = corpus(count, seed) + (hypothesis_cases(extra, seed) if extra else [])
    families = {case.name: case.family for case in cases}
    with tempfile.TemporaryDirectory(prefix="spmwatch-fuzz-") as folder:
        paths = write_corpus(cases, Path(folder))
        started = time.perf_counter()
        outcomes = [answer(path, read_scan, consume, time_limit) for path in paths]
        elapsed = time.perf_counter() - started
    by_kind = collections.Counter(o.kind for o in outcomes)
    errors = collections.Counter(
        o.detail.split(":")[0] for o in outcomes if o.kind == "typed_error"
    )
    per_family: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for o in outcomes:
        per_family[families[o.case]][o.kind] += 1
    slowest = max(outcomes, key=lambda o: o.seconds)
    largest = max(outcomes, key=lambda o: o.peak_bytes)
    greedy = [o for o in outcomes if o.peak_bytes > MEMORY_LIMIT and o.kind == "scan"]
    failures: list[Outcome] = [o for o in outcomes if o.kind in ("crash", "hang")] + greedy
    return {
        "files": len(outcomes),
        "scored": by_kind["scan"],
        "typed_errors": by_kind["typed_error"],
        "crashes": by_kind["crash"],
        "hangs": by_kind["hang"],
        "over_100mib": len(greedy),
        "error_kinds": dict(errors),
        "families": {f: dict(c) for f, c in sorted(per_family.items())},
        "max_seconds": round(slowest.seconds, 4),
        "slowest": slowest.case,
        "max_mib": round(largest.peak_bytes / 2**20, 1),
        "largest": largest.case,
        "total_seconds": round(elapsed, 2),
        "failures": [f"{o.case}: {o.kind}: {o.detail}"[:300] for o in failures],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="corpus files (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hypothesis", type=int, default=0, metavar="N", help="extra files")
    parser.add_argument("--time-limit", type=float, default=10.0, help="seconds = a hang")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = run(args.count, args.seed, args.hypothesis, args.time_limit)
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("files", "scored", "typed_errors", "crashes", "hangs", "over_100mib"):
            print(f"{key:>14}: {result[key]}")
        print(f"{'max s/file':>14}: {result['max_seconds']} ({result['slowest']})")
        print(f"{'max MiB/file':>14}: {result['max_mib']} ({result['largest']})")
        print(f"{'total s':>14}: {result['total_seconds']}")
        print(f"{'error kinds':>14}: {result['error_kinds']}")
        for family, counts in result["families"].items():
            print(f"{family:>14}: {counts}")
        for line in result["failures"]:
            print(f"FAIL {line}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
