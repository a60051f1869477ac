"""What the daemon suggests doing about an alert, by kind and severity.

Only a suggestion carried in each spmwatch.alert: the responder's own policy decides what it
really does. The table is deliberately conservative: stopping the scan is cheap, a crashed tip
is not; withdrawing is kept for signs the tip is no longer tracking the surface at all.
"""

from __future__ import annotations

ACTIONS: tuple[str, ...] = ("notify_only", "rescan", "stop_scan", "withdraw")

# kind -> (low, medium, high)
_TABLE: dict[str, tuple[str, str, str]] = {
    "tip_change": ("notify_only", "stop_scan", "stop_scan"),
    "streak": ("notify_only", "notify_only", "rescan"),
    "tracking_loss": ("notify_only", "stop_scan", "withdraw"),
    "oscillation": ("notify_only", "rescan", "stop_scan"),
    "dropout": ("stop_scan", "stop_scan", "withdraw"),
    "partial_frame": ("notify_only", "notify_only", "notify_only"),
}
_SEVERITY = {"low": 0, "medium": 1, "high": 2}


def suggested_action(kind: str, severity: str) -> str:
    """The table's action; an unknown kind or severity gets stop_scan, the safe choice."""
    row = _TABLE.get(kind)
    level = _SEVERITY.get(severity)
    return "stop_scan" if row is None or level is None else row[level]
