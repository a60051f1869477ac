"""The daemon's settings: one frozen dataclass per TOML section, every field with its default.

config/spmwatch.toml lists every key with the default written here; a test checks that the
shipped file parses to exactly `Settings()`, so the two cannot drift. Values are checked in
`__post_init__` so a bad one is refused at start with the key named, before any socket is bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Literal

from spmwatch import protocol
from spmwatch.classify.watch import FrameWatch
from spmwatch.config import check_bounds, in_folder, load_file
from spmwatch.scoring.scorer import ScoringSettings
from spmwatch.sources.scope import DEFAULT_CHANNELS as DEFAULT_SCOPE_CHANNELS


@dataclass(frozen=True)
class WatchSettings:
    """Folders where Asylum saves .ibw files; each finished file is scored as a whole frame."""

    folders: tuple[Path, ...] = ()
    recursive: bool = False
    existing: bool = False
    settle: float = 1.0
    incomplete_after: float = 30.0
    state_file: str = ""

    def __post_init__(self) -> None:
        check_bounds(self, at_least={"settle": 0}, above={"incomplete_after": 0})


@dataclass(frozen=True)
class LinesSettings:
    """The PULL socket where live producers push scan lines (docs/protocol.md, Line socket)."""

    endpoint: str = protocol.LINES_ENDPOINT
    enabled: bool = True

    def __post_init__(self) -> None:
        protocol.check_endpoint("endpoint", self.endpoint)


@dataclass(frozen=True)
class ScopeSettings:
    """aespm's scope ring to follow lines from (empty `buffer_dir`: off). The ring's files
    carry no line number, so the frame length and the channels it saves are told here."""

    buffer_dir: str = ""
    lines: int = 256
    channels: tuple[str, ...] = DEFAULT_SCOPE_CHANNELS
    incomplete_after: float = 2.0

    def __post_init__(self) -> None:
        check_bounds(self, above={"lines": 0, "incomplete_after": 0})
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels = {list(self.channels)} must be distinct names, >= 1")


@dataclass(frozen=True)
class PublishSettings:
    """The PUB socket for alerts, frames, line scores and heartbeats."""

    endpoint: str = protocol.PUB_ENDPOINT
    line_topic: bool = True
    heartbeat_interval: float = 1.0
    hwm: int = 100_000
    line_queue: int = 10_000

    def __post_init__(self) -> None:
        protocol.check_endpoint("endpoint", self.endpoint)
        check_bounds(self, above={"heartbeat_interval": 0, "hwm": 0, "line_queue": 0})


@dataclass(frozen=True)
class ControlSettings:
    """The REP socket that `spmwatch ctl` talks to."""

    endpoint: str = protocol.CONTROL_ENDPOINT

    def __post_init__(self) -> None:
        protocol.check_endpoint("endpoint", self.endpoint)


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus text endpoint as host:port; empty means off."""

    address: str = protocol.METRICS_ADDRESS

    def __post_init__(self) -> None:
        if self.address:
            host, _, port = self.address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"address = {self.address!r} must be host:port or empty")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class ModelSettings:
    """The classifier file (.skops; empty: the model shipped with spmwatch), and whether it
    also judges frames in progress (spmwatch.classify.watch)."""

    path: str = ""
    watch: bool = True
    watch_threshold: float = 0.95
    watch_checks: int = 3

    def __post_init__(self) -> None:
        check_bounds(
            self,
            at_least={"watch_threshold": 0.5, "watch_checks": 1},
            at_most={"watch_threshold": 1.0, "watch_checks": 16},
        )

    def frame_watch(self) -> FrameWatch | None:
        """A new scan's frame watch, or None when it is off."""
        return FrameWatch(self.watch_threshold, self.watch_checks) if self.watch else None


@dataclass(frozen=True)
class CurveSettings:
    """CURVE encryption and client authentication for the PUB socket (keys: `spmwatch keys`)."""

    enabled: bool = False
    server_secret_key: str = ""
    authorized_keys: str = ""

    def __post_init__(self) -> None:
        if self.enabled and not (self.server_secret_key and self.authorized_keys):
            raise ValueError("enabled = true needs server_secret_key and authorized_keys")


@dataclass(frozen=True)
class DaemonSettings:
    """Bounds that keep memory flat whatever the producers do."""

    name: str = ""
    queue_size: int = 2_000
    max_open_scans: int = 16
    scan_timeout: float = 600.0
    max_held_mib: int = 1024

    def __post_init__(self) -> None:
        check_bounds(
            self,
            above={"queue_size": 0, "max_open_scans": 0, "scan_timeout": 0, "max_held_mib": 0},
        )

    @property
    def max_held_bytes(self) -> int:
        return self.max_held_mib * 2**20


@dataclass(frozen=True)
class LoggingSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True)
class Settings:
    watch: WatchSettings = field(default_factory=WatchSettings)
    lines: LinesSettings = field(default_factory=LinesSettings)
    scope: ScopeSettings = field(default_factory=ScopeSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    curve: CurveSettings = field(default_factory=CurveSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    def exposed(self) -> list[tuple[str, str, str]]:
        """(key, endpoint, what anyone reaching it can do) for each socket that listens beyond
        this machine without CURVE (which covers the PUB socket only), for a warning at start."""
        found = []
        if not protocol.is_local(self.publish.endpoint) and not self.curve.enabled:
            found.append(("publish.endpoint", self.publish.endpoint, "read every alert"))
        if self.lines.enabled and not protocol.is_local(self.lines.endpoint):
            found.append(("lines.endpoint", self.lines.endpoint, "push lines: forge scans"))
        if not protocol.is_local(self.control.endpoint):
            found.append(("control.endpoint", self.control.endpoint, "pause the daemon"))
        return found


def load_settings(path: str | Path) -> Settings:
    """Read and check a config file; every problem is a ConfigError naming the file and key.
    Relative paths in it are taken from the file's folder."""
    s = load_file(Settings, path)
    folder = Path(path).absolute().parent
    return replace(
        s,
        watch=replace(
            s.watch,
            folders=tuple(Path(in_folder(folder, str(f))) for f in s.watch.folders),
            state_file=in_folder(folder, s.watch.state_file),
        ),
        scope=replace(s.scope, buffer_dir=in_folder(folder, s.scope.buffer_dir)),
        model=replace(s.model, path=in_folder(folder, s.model.path)),
        curve=replace(
            s.curve,
            server_secret_key=in_folder(folder, s.curve.server_secret_key),
            authorized_keys=in_folder(folder, s.curve.authorized_keys),
        ),
    )


def changed_keys(old: object, new: object, prefix: str = "") -> list[str]:
    """The dotted keys ("scoring.alert.k") whose values differ between two settings."""
    if not (is_dataclass(old) and type(old) is type(new)):
        return [prefix] if old != new else []
    found: list[str] = []
    for f in fields(old):
        key = f"{prefix}.{f.name}" if prefix else f.name
        found += changed_keys(getattr(old, f.name), getattr(new, f.name), key)
    return found
