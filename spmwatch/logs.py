"""structlog set-up: one JSON object per line for journald and log shippers, colours for people.

Under systemd stdout is not a terminal, so "auto" picks JSON and journald stores each event as
one line that `jq` can read; on a terminal the same events render as aligned console text.
Standard-library `logging` records (from libraries) go through the same renderer.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

Format = Literal["auto", "json", "console"]


def setup_logging(level: str = "info", fmt: Format = "auto", stream: Any = None) -> None:
    """Configure structlog and stdlib logging to write to `stream` (stdout by default)."""
    stream = stream or sys.stdout
    numeric = logging.getLevelName(level.upper())
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if fmt == "json" else _keep,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))  # library debug output (numba) drowns ours


def _keep(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """ConsoleRenderer formats exceptions itself; this stands in for format_exc_info there."""
    return event
