"""spmwatch: a monitoring daemon that scores AFM scan lines as they arrive."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__version__ = "0.1.0"


def numba_cache_dir() -> Path:
    """Where compiled kernels are cached unless NUMBA_CACHE_DIR says otherwise: the user's
    cache folder. numba's own default, __pycache__ beside the sources, put files into
    site-packages that pip does not know: after `pip install .` and a first run, an uninstall
    left a spmwatch/ folder without __init__.py there, which then shadowed the next install."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spmwatch" / "numba"


# numba reads its settings once, when first imported; a folder it cannot write it skips
if "numba" not in sys.modules:
    os.environ.setdefault("NUMBA_CACHE_DIR", str(numba_cache_dir()))
