"""The default response to an alert, by kind and severity: one table for both ends.

The responder's default policy (`respond.PolicySettings`, listed in config/respond.toml) is
this table, and each spmwatch.alert carries its strongest action as the suggestion, so a
dashboard never suggests what the default responder would not do. A tip that has changed or
lost tracking only gets worse while the scan runs: stop at medium (the alert rule already
needs several lines of evidence) and also withdraw at high. Ringing and dropouts stop the scan
at high; streaks, stopped frames and poor images are notices (a streak is often debris that
moves on; a poor image is a judgement on the frame so far, with no located fault).
"""

from __future__ import annotations

from spmwatch.model import SEVERITIES

ACTIONS: tuple[str, ...] = ("notify_only", "rescan", "stop_scan", "withdraw")  # weakest first

_NOTICE = ("notify_only",)
_STOP = ("stop_scan",)
_STOP_AND_WITHDRAW = ("stop_scan", "withdraw")

# kind -> actions at (low, medium, high), run in the order listed
DEFAULT_POLICY: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "tip_change": (_NOTICE, _STOP, _STOP_AND_WITHDRAW),
    "streak": (_NOTICE, _NOTICE, _NOTICE),
    "tracking_loss": (_NOTICE, _STOP, _STOP_AND_WITHDRAW),
    "oscillation": (_NOTICE, _NOTICE, _STOP),
    "dropout": (_NOTICE, _NOTICE, _STOP),
    "partial_frame": (_NOTICE, _NOTICE, _NOTICE),
    # the classifier's judgement of the whole frame so far: no located fault, so a person looks
    "poor_image": (_NOTICE, _NOTICE, _NOTICE),
}


def suggested_action(kind: str, severity: str) -> str:
    """The strongest action of the default policy; stop_scan, the safe choice, for a kind or
    severity the table does not know."""
    row = DEFAULT_POLICY.get(kind)
    if row is None or severity not in SEVERITIES:
        return "stop_scan"
    return max(row[SEVERITIES.index(severity)], key=ACTIONS.index)
