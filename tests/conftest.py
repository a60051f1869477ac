"""Shared test fixtures: where the real scans are, and a skip when they are not there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the scorer's numba kernels in a child process, then load them here, before
    any test runs.

    numba's machine code for the fast-math kernels rounds the last bits differently when a
    process compiles a kernel itself than when it loads it from the cache (up to ~1e-14 in the
    z scores), and a kernel loaded after another was compiled in the same process links to
    that fresh code: a test that compiles one kernel directly would leave the float32 and
    float64 scorers of this process on different builds (docs/scoring.md#cost). Filled by a
    child and loaded here first, every scorer in this process and in every daemon the tests
    start runs the same cached code."""
    subprocess.run(
        [sys.executable, "-c", "from spmwatch.scoring.scorer import warm_up; warm_up()"],
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,
    )
    from spmwatch.scoring.scorer import warm_up

    warm_up()


def _data_root() -> Path | None:
    value = os.environ.get("SPMWATCH_DATA")
    return Path(value) if value else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder of real Asylum scans; tests that need it skip when SPMWATCH_DATA is unset."""
    root = _data_root()
    if root is None:
        pytest.skip("SPMWATCH_DATA is not set: real Asylum scans are not available")
    if not root.is_dir():
        pytest.fail(f"SPMWATCH_DATA={root} is not a folder")
    return root


@pytest.fixture(scope="session")
def dna_scan_path(data_root: Path) -> Path:
    """The one real scan with trace and retrace: 512 x 512, 4 pairs."""
    return data_root / "public" / "afmreader_sample_0.ibw"
