"""Where a scored line's time goes in the real flow: cycle counters around each step of
`score_line`. Prints figures only.

    NUMBA_NUM_THREADS=1 PYTHONPATH=. python benchmarks/profile_score_line.py [--frames 20]

bench_scorer.py times each kernel looped on its own, with hot caches; inside `score_line` the
same kernels run one after the other on a line that has just arrived, so their sum misses
the glue (the scar grid copy, the z loop, the baseline ring) and the cache misses between
steps. This script copies the package into a temporary directory, inserts a cycle counter
(llvm.readcyclecounter) at the start of each step of `score_line` in that copy (the kernels
themselves are not changed), feeds it a 512-line float32 frame read in place as score_scan
does, and prints the cycles per line of each step from the quietest of `--frames` frames
(the counters are wall-clock TSC ticks: another job on the core shows up as time). The
counts are kept in the last 16 entries of `iwork`, which the kernels leave unused at 512
points. The prefetch of the next line (in score_frame, between the steps) is not counted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# (name of the step that starts here, a line of score_line it starts before), in order
STEPS = (
    ("line_stats + consistency", "    worst = 0.0\n    flat = 0.0\n"),
    ("dropout test, built-up level", "    state[I_LINES] += 1\n    out[F_DROPOUT] = worst\n"),
    ("store_scar_grid", "    step = scar_grid_step(int(cfg[S_SCAR_MIN_LEN]))[0]\n"),
    ("scar_fraction", "    if ready:\n        for s in range(scar_ch.shape[0]):"),
    ("lag search / re-check", "    n_votes_max = lag_votes.shape[0]\n"),
    ("residual", "    off = n_ch * N_CH_RAW\n"),
    ("power_spectrum", "    ring_i = n_raw - 2\n"),
    ("spectral_peak", "        have_spec = state[I_SPEC_N] > 0\n"),
    ("persistent_peak", "        if have_spec:\n            # work rows"),
    ("z, score, flag", "    top1 = work[5, :N_FAMILIES]\n"),
    ("baseline ring, reference", "    bh = state[I_BASE_HEAD]\n"),
    ("running spectrum", "    if not flagged and ring_z < 0.5 * cfg[S_FLAG_Z]"),
    (
        "median/MAD refresh",
        "    if state[I_BASE_N] < window or state[I_SINCE_REFRESH] >= cfg[S_REFRESH]:",
    ),
)
END = "        state[I_SINCE_REFRESH] = 0\n\n\n"
COUNTER = """

@intrinsic
def _cycles(typingctx):
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [])
        fn = builder.module.declare_intrinsic("llvm.readcyclecounter", fnty=fnty)
        return builder.call(fn, [])

    return types.int64(), codegen
"""


def instrument(source: str) -> str:
    """kernels.py with a counter at each step of score_line (iwork[-16 + step] += ticks)."""
    head = source.index("@njit(**_OPTS)\ndef score_line(")
    body = source[head:]
    for k, (name, anchor) in enumerate(STEPS):
        if body.count(anchor) != 1:
            raise SystemExit(f"step {name!r}: its anchor is not once in score_line: {anchor!r}")
        indent = anchor[: len(anchor) - len(anchor.lstrip())]
        if k == 0:
            probe = f"{indent}_t = _cycles()\n"
        else:
            probe = (
                f"{indent}_t2 = _cycles()\n{indent}iwork[iwork.shape[0] - 16 + {k - 1}] += "
                f"_t2 - _t\n{indent}_t = _t2\n"
            )
        body = body.replace(anchor, probe + anchor, 1)
    if body.count(END) != 1:
        raise SystemExit("the end of score_line is not where this script expects it")
    last = f"    iwork[iwork.shape[0] - 16 + {len(STEPS) - 1}] += _cycles() - _t\n"
    body = body.replace(END, END[:-2] + last + "\n\n", 1)
    return source[:head] + COUNTER.lstrip("\n") + "\n\n" + body


RUN = r"""
import sys, time
import numpy as np
from spmwatch.scoring import kernels as K
from spmwatch.scoring.scorer import ScanScorer, synthetic_scan
names_steps, frames = sys.argv[1].split("|"), int(sys.argv[2])
LINES, POINTS, PAIRS = 512, 512, 4
scan = synthetic_scan(LINES, POINTS, PAIRS, seed=1, lag=14)
names = list(scan.channels)
block = scan.block().astype(np.float32)  # (channels, lines, points): a read file's data
order = np.arange(LINES)
best = None
for frame in range(frames + 1):  # the first compiles, and does not count
    scorer = ScanScorer("profile", names, POINTS, LINES)
    started = time.perf_counter()
    K.score_frame(block, order, 0, *scorer._args, scorer._features)  # as score_scan does
    wall = time.perf_counter() - started
    ticks = scorer._state.iwork[-16 : -16 + len(names_steps)].copy()
    if frame and (best is None or ticks.sum() < best[0].sum()):
        best = (ticks, wall)
ticks, wall = best
total = ticks.sum()
hz = total / wall  # TSC ticks per second of kernel time
print(f"{total / LINES:8.0f} ticks/line = {total / LINES / hz * 1e6:6.2f} us/line "
      f"(TSC {hz / 1e9:.2f} GHz; quietest of {frames} frames)")
for name, t in zip(names_steps, ticks):
    print(f"  {name:28s} {t / LINES:8.0f} {100 * t / total:5.1f} %  {t / LINES / hz * 1e6:6.2f} us")
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="frames scored; the quietest counts")
    frames = parser.parse_args().frames
    package = Path(__file__).resolve().parent.parent / "spmwatch"
    with tempfile.TemporaryDirectory(prefix="spmwatch-profile-") as tmp:
        copy = Path(tmp) / "spmwatch"
        shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
        kernels = copy / "scoring" / "kernels.py"
        kernels.write_text(instrument(kernels.read_text()))
        env = dict(os.environ, PYTHONPATH=tmp, NUMBA_CACHE_DIR=str(Path(tmp) / "numba-cache"))
        steps = "|".join(name for name, _ in STEPS)
        cmd = [sys.executable, "-c", RUN, steps, str(frames)]
        return subprocess.run(cmd, env=env, cwd=tmp, check=False).returncode  # not this tree


if __name__ == "__main__":
    raise SystemExit(main())
