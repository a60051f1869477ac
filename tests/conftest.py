"""Shared test fixtures: where the real scans are, and a skip when they are not there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
