"""Where the compiled kernels are cached: never beside the installed sources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cache_dir_in_child(tmp_path: Path, **env: str) -> Path:
    """numba's cache folder as a fresh process sees it after `import spmwatch`."""
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    code = "import spmwatch, numba; print(numba.config.CACHE_DIR)"
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return Path(run.stdout.strip())


@pytest.mark.skipif(sys.platform == "win32", reason="the user cache folder is LOCALAPPDATA there")
def test_kernels_are_cached_in_the_user_cache_folder_by_default(tmp_path: Path) -> None:
    """numba's default, __pycache__ beside the sources, left files in site-packages that pip
    did not remove: the leftover spmwatch/ folder shadowed the next (editable) install."""
    cache = cache_dir_in_child(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert cache == tmp_path / "xdg" / "spmwatch" / "numba"


def test_numba_cache_dir_set_by_the_user_is_kept(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    assert cache_dir_in_child(tmp_path, NUMBA_CACHE_DIR=str(mine)) == mine
