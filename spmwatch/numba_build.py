"""One numba build of every kernel per machine, compiled in one go on a cold cache.

The scorer's fast-math kernels round differently when a process compiles them itself than
when it loads them from numba's cache (docs/scoring.md, "One build per machine"), so the first
process on a cold cache has a child compile them into the cache and then loads them. The child
compiles the frame-feature kernels too, in every type the daemon meets: after a first
`spmwatch score` (float32 frames only) the daemon's first start compiled the rest itself,
~12 s of warm-up against ~2 s once everything is cached.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

# set in the child process that fills numba's cache (cached_build), so it does not start one
_FILLING_CACHE = "SPMWATCH_FILLING_KERNEL_CACHE"


def warm_up() -> float:
    """Compile (or load from cache) every numba kernel of spmwatch, the scorer's and the frame
    features', on tiny inputs; returns the seconds it took."""
    from spmwatch.classify import features
    from spmwatch.scoring import scorer

    started = time.perf_counter()
    scorer.warm_up()
    features.warm_up()
    return time.perf_counter() - started


@functools.cache
def cached_build() -> None:
    """Make this process run numba's cached build of the kernels: on a cold cache (the first
    run after an install or an upgrade) a child process compiles them all into the cache
    first, and this process then loads them from it.

    With float32 sums, a fresh compile and the cached code differ by up to ~5e-3 in a line's
    z (seen on a real scan): a daemon started on a fresh install would score ~1e-3 apart from
    every `spmwatch score` after it; with one build, all processes agree bit for bit. Called
    once per process, by the first ScanScorer."""
    from spmwatch.scoring.scorer import kernels_cached

    if os.environ.get(_FILLING_CACHE) or kernels_cached():
        return
    # a child that fails leaves this process to compile its own, as before
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        python_child("from spmwatch.numba_build import warm_up; warm_up()", timeout=1800)


def _dies_with(parent: int) -> str:
    """Code that makes a child Python exit when `parent` exits (Linux's PR_SET_PDEATHSIG,
    checked against a parent gone already); nothing elsewhere."""
    return (
        "import sys\n"
        "if sys.platform.startswith('linux'):\n"
        "    import ctypes, os, signal\n"
        "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"  # 1: PR_SET_PDEATHSIG
        f"    if os.getppid() != {parent}: sys.exit(1)\n"
    )


def python_child(code: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
    """Run `code` in a child Python (marked as filling the cache, so it starts no child of
    its own) that imports this very spmwatch: `python -c` puts its working folder first on
    the import path, and started next to a clone (a folder named spmwatch holding config/)
    it imported that clone's folders as the package and failed. So the child starts in the
    folder holding this package (numba's cache is keyed by the source files' paths: the same
    files, the same cache). On Linux the child dies with this process: a daemon killed
    (SIGKILL) mid warm-up left it compiling on, orphaned, outside systemd's cgroup."""
    return subprocess.run(
        [sys.executable, "-c", _dies_with(os.getpid()) + code],
        env={**os.environ, _FILLING_CACHE: "1"},
        cwd=Path(__file__).resolve().parents[1],
        timeout=timeout,
        check=False,
    )
