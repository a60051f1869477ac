"""One process per state file: a lock file beside it, held while the process lives.

Two processes sharing a state file each overwrite the other's record: two daemons re-publish
files after a restart, two responders both act on one alert. The system releases the lock
even after a SIGKILL. Where the system has no flock (Windows), nothing is locked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class StateFileInUse(Exception):
    """Another process holds the state file (its pid is in the message)."""


def claim(state_file: Path) -> IO[str] | None:
    """Lock `state_file` to this process: the open lock file `<name>.lock` (keep it open:
    closing it releases the lock), or None without flock. StateFileInUse naming the
    holder's pid when another process has it; OSError when the lock file cannot be made."""
    if fcntl is None:
        return None
    path = state_file.with_name(state_file.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StateFileInUse(f"another process (pid {holder}) uses it") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
