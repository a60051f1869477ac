"""Shared test fixtures: where the real scans are, and a skip when they are not there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    """Load the scorer's numba kernels before any test runs, from numba's cache: on a cold
    cache a child process fills it first (numba_build.cached_build). numba's fresh machine code for
    the fast-math kernels rounds differently from the cached code, so every scorer in this
    process and in every daemon the tests start runs the same cached build
    (docs/scoring.md, "Precision and units")."""
    from spmwatch.numba_build import warm_up

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
