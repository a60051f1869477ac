"""The responder: turns alerts into Igor actions under safety rules and reports every outcome.

It runs on the AFM controller PC, subscribes to `spmwatch.alert`, and for each alert either
acts (stop_scan, withdraw, rescan through `igor.IgorLink`) or says why it did not, publishing
one `spmwatch.action` message per decision. The rules, in the order they are applied:

1. duplicate: an alert already handled (same daemon stream, seq and time, remembered across
   restarts in the state file) is skipped, so one alert never causes two actions;
2. seq gap: the first alert after a gap in seq (some alerts lost or reordered) is not acted on;
   a `resync` notice is published and the next alert is judged normally;
3. stale: an alert older than `alert_ttl` seconds is logged and skipped;
4. saved frame: an alert from a saved .ibw (`origin` saved_frame) is only noted, because that
   scan is over and an action would hit whatever the microscope does now (unless
   `act_on_saved_frames`);
5. policy: kind x severity -> actions; notify_only just publishes a notice;
6. debounce: at most one acting response per (scan, kind) within `debounce_s`, a scan being
   its daemon, name and start (`scan_started`: a new scan under a reused name is acted on);
7. rescan cap: at most `max_rescans_per_hour` rescans in any hour.

The decision is written to the state file *before* Igor is touched, so a crash mid-action can
at worst miss an action, never repeat one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import structlog
import zmq

from spmwatch import protocol, statelock
from spmwatch.advice import DEFAULT_POLICY
from spmwatch.config import check_bounds, in_folder, load_file, set_aside
from spmwatch.curve import HandshakeWatch, configure_client
from spmwatch.igor import (
    IGOR_NAME_MAX,
    IgorError,
    IgorLink,
    igor_name,
    rescan_commands,
    stop_scan_command,
    withdraw_command,
)
from spmwatch.model import EVENT_KINDS, SEVERITIES
from spmwatch.publish import Publisher
from spmwatch.sdnotify import Notifier

log = structlog.get_logger("spmwatch.respond")

Action = Literal["stop_scan", "withdraw", "rescan", "notify_only"]
HOUR = 3600.0


# ---------------------------------------------------------------------------------------------
# Settings (config/respond.toml lists every key with these defaults)
# ---------------------------------------------------------------------------------------------


def _check_actions(name: str, actions: tuple[str, ...]) -> None:
    if not actions:
        raise ValueError(f'{name} is empty; use ["notify_only"] to only publish a notice')
    if len(set(actions)) != len(actions):
        raise ValueError(f"{name} = {list(actions)} repeats an action")
    if "notify_only" in actions and len(actions) > 1:
        raise ValueError(f"{name}: notify_only cannot be combined with other actions")
    if "rescan" in actions and "withdraw" in actions:
        raise ValueError(f"{name}: rescan after withdraw would scan with the tip retracted")


@dataclass(frozen=True)
class SeverityActions:
    """The actions for one alert kind, per severity, run in the order listed."""

    low: tuple[Action, ...] = ("notify_only",)
    medium: tuple[Action, ...] = ("notify_only",)
    high: tuple[Action, ...] = ("notify_only",)

    def __post_init__(self) -> None:
        for severity in SEVERITIES:
            _check_actions(severity, getattr(self, severity))


def _default(kind: str) -> Callable[[], SeverityActions]:
    """The default actions for `kind`: the table in spmwatch.advice, which the daemon's
    suggested actions come from too."""
    return partial(SeverityActions, *DEFAULT_POLICY[kind])


@dataclass(frozen=True)
class PolicySettings:
    """By default a tip change or tracking loss stops the scan from medium severity on (and
    withdraws at high), ringing and dropouts stop it at high; streaks, stopped frames and poor
    images are notices (spmwatch.advice.DEFAULT_POLICY)."""

    tip_change: SeverityActions = field(default_factory=_default("tip_change"))
    streak: SeverityActions = field(default_factory=_default("streak"))
    tracking_loss: SeverityActions = field(default_factory=_default("tracking_loss"))
    oscillation: SeverityActions = field(default_factory=_default("oscillation"))
    dropout: SeverityActions = field(default_factory=_default("dropout"))
    partial_frame: SeverityActions = field(default_factory=_default("partial_frame"))
    poor_image: SeverityActions = field(default_factory=_default("poor_image"))

    def actions_for(self, kind: str, severity: str) -> tuple[Action, ...]:
        return getattr(getattr(self, kind), severity)


@dataclass(frozen=True)
class RescanSettings:
    """How a `rescan` action restarts the frame; unset values leave Igor's setting alone."""

    direction: Literal["down", "up"] = "down"
    setpoint: float | None = None
    setpoint_kind: Literal["amplitude", "deflection"] = "amplitude"
    integral_gain: float | None = None
    scan_rate: float | None = None
    base_name_prefix: str = ""

    def __post_init__(self) -> None:
        if self.scan_rate is not None and not self.scan_rate > 0:
            raise ValueError(f"scan_rate = {self.scan_rate} must be > 0")
        if self.base_name_prefix:
            igor_name(self.base_name_prefix, "base_name_prefix")

    def base_name(self, scan_id: str) -> str | None:
        """Prefix + scan id, so a retry file says what it retries: characters Igor refuses in a
        name become `_`, and a name past Igor's 31 characters loses the middle of the id, not
        its frame number (retry_Cs50MA50approx_PositionC_0035: retry_Cs50MA50approx_Posit_0035)."""
        if not self.base_name_prefix:
            return None
        safe = "".join(c if c.isascii() and c.isalnum() else "_" for c in scan_id)
        text = self.base_name_prefix + safe
        if len(text) <= IGOR_NAME_MAX:
            return text
        number = re.search(r"_?\d+$", safe)
        tail = number.group() if number and len(number.group()) < IGOR_NAME_MAX // 2 else ""
        return text[: IGOR_NAME_MAX - len(tail)] + tail


@dataclass(frozen=True)
class CurveSettings:
    """CURVE for both sockets; one key pair (`spmwatch keys`) serves as client and server."""

    enabled: bool = False
    secret_key: str = ""
    daemon_public_key: str = ""
    authorized_keys: str = ""

    def __post_init__(self) -> None:
        if self.enabled and not (self.secret_key and self.daemon_public_key):
            raise ValueError("enabled = true needs secret_key and daemon_public_key")


@dataclass(frozen=True)
class RespondSettings:
    subscribe: str = protocol.PUB_ENDPOINT
    actions_endpoint: str = protocol.ACTIONS_ENDPOINT
    dry_run: bool = False
    alert_ttl: float = 10.0
    igor_timeout: float = 5.0
    confirm_reads: int = 3
    confirm_interval: float = 0.3
    withdraw_control: str = "Withdraw_0"
    max_rescans_per_hour: int = 2
    debounce_s: float = 3600.0
    act_on_saved_frames: bool = False
    state_file: str = "~/.local/state/spmwatch/respond-state.json"
    heartbeat_interval: float = 1.0
    daemon_timeout: float = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    policy: PolicySettings = field(default_factory=PolicySettings)
    rescan: RescanSettings = field(default_factory=RescanSettings)
    curve: CurveSettings = field(default_factory=CurveSettings)

    def __post_init__(self) -> None:
        protocol.check_endpoint("subscribe", self.subscribe, binds=False)
        protocol.check_endpoint("actions_endpoint", self.actions_endpoint)
        check_bounds(
            self,
            above={
                "alert_ttl": 0,
                "igor_timeout": 0,
                "confirm_interval": 0,
                "heartbeat_interval": 0,
                "debounce_s": 0,
                "daemon_timeout": 0,
            },
            at_least={"confirm_reads": 1, "max_rescans_per_hour": 0},
        )
        if not self.state_file:
            raise ValueError("state_file must be set: it is what stops a restart acting twice")
        igor_name(self.withdraw_control, "withdraw_control")


def load_respond_settings(path: str | Path) -> RespondSettings:
    """Read and check config/respond.toml; a problem is a ConfigError naming file and key."""
    s = load_file(RespondSettings, path)
    folder = Path(path).absolute().parent  # relative paths are the config file's neighbours
    curve = s.curve
    return replace(
        s,
        state_file=in_folder(folder, s.state_file),
        curve=replace(
            curve,
            secret_key=in_folder(folder, curve.secret_key),
            daemon_public_key=in_folder(folder, curve.daemon_public_key),
            authorized_keys=in_folder(folder, curve.authorized_keys),
        ),
    )


# ---------------------------------------------------------------------------------------------
# Alerts in, and the state that must survive a restart
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncomingAlert:
    """The fields of a `spmwatch.alert` the responder relies on, checked."""

    stream: str  # which publisher's seq counter: the daemon id when sent, else one stream
    seq: int
    time: float
    scan_id: str
    scan_started: float | None  # None: a publisher that does not say (the name is all there is)
    kind: str
    severity: str
    payload: Mapping[str, Any]

    @property
    def key(self) -> str:
        """Identity of one alert: seq alone repeats when a daemon restarts, seq + time does not."""
        return f"{self.stream}|{self.seq}|{self.time!r}"

    @property
    def debounce_key(self) -> str:
        """Identity of (scan, kind): names repeat, a name and its start time do not."""
        started = "" if self.scan_started is None else f"@{self.scan_started!r}"
        return f"{self.stream}|{self.scan_id}{started}|{self.kind}"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_alert(payload: Mapping[str, Any]) -> IncomingAlert:
    """Check an alert payload (already through protocol.decode_event); ProtocolError if bad."""
    kind, severity, stamp = payload.get("kind"), payload.get("severity"), payload.get("time")
    if kind not in EVENT_KINDS:
        raise protocol.ProtocolError(f"alert kind {kind!r} is not one of {EVENT_KINDS}")
    if severity not in SEVERITIES:
        raise protocol.ProtocolError(f"alert severity {severity!r} is not one of {SEVERITIES}")
    if not _is_number(stamp):
        raise protocol.ProtocolError(f"alert time {stamp!r} is not a number")
    started = payload.get("scan_started")
    if started is not None and not _is_number(started):
        raise protocol.ProtocolError(f"alert scan_started {started!r} is not a number")
    return IncomingAlert(
        stream=str(payload.get("daemon", "")),
        seq=int(payload["seq"]),
        time=float(stamp),
        scan_id=protocol.valid_scan_id(payload.get("scan_id")),
        scan_started=None if started is None else float(started),
        kind=kind,
        severity=severity,
        payload=payload,
    )


class ResponderState:
    """Handled alerts, acted-on (scan, kind) pairs with their times and rescan times, saved
    atomically as JSON."""

    KEEP = 2000  # enough for hours of alerts; old entries cannot come back over PUB/SUB

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handled: dict[str, None] = {}  # insertion-ordered sets
        self.acted: dict[str, float] = {}  # debounce key -> when it was acted on
        self.rescans: list[float] = []

    @classmethod
    def load(cls, path: str | Path) -> ResponderState:
        state = cls(Path(path).expanduser())
        try:
            data = json.loads(state.path.read_text(encoding="utf-8"))
            state.handled = dict.fromkeys(str(k) for k in data["handled"])
            acted = data["acted"]
            # a list: a state file from before the debounce expired (time unknown, so expired)
            pairs = acted.items() if isinstance(acted, dict) else ((k, 0.0) for k in acted)
            state.acted = {str(k): float(t) for k, t in pairs}
            state.rescans = [float(t) for t in data["rescans"]]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Refusing to start would leave a failing tip unattended; say it loudly instead,
            # and keep the unreadable file for a person
            aside = set_aside(state.path)
            log.error(
                "state_file_unreadable",
                path=str(state.path),
                error=str(exc),
                kept_as=str(aside) if aside else None,
            )
        return state

    def save(self) -> None:
        """Write to a temporary file, fsync, rename: a crash leaves the old or the new file.

        A failure (disk full, permissions changed) is logged and the responder goes on: acting
        with a stale state file risks a repeat after a crash, not acting risks a broken tip.
        `serve` checks once at start that the file can be written at all."""
        try:
            self.write()
        except OSError as exc:
            log.error("state_file_not_saved", path=str(self.path), error=str(exc))

    def write(self) -> None:
        """`save`, raising OSError when the file cannot be written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "handled": list(self.handled)[-self.KEEP :],
            "acted": dict(list(self.acted.items())[-self.KEEP :]),
            "rescans": self.rescans,
        }
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def rescans_in_last_hour(self, now: float) -> int:
        self.rescans = [t for t in self.rescans if now - t < HOUR]
        return len(self.rescans)


# ---------------------------------------------------------------------------------------------
# Decisions and actions
# ---------------------------------------------------------------------------------------------

Emit = Callable[[str | None, dict[str, Any]], Any]


class Responder:
    """Applies the rules to each alert and runs the chosen actions; `emit` publishes outcomes."""

    def __init__(
        self,
        settings: RespondSettings,
        link: IgorLink,
        emit: Emit,
        state: ResponderState,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.link = link
        self.emit = emit
        self.state = state
        self.clock = clock
        self._seq = protocol.SeqTracker()  # this session only: a restart is a fresh baseline

    def handle(self, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Decide about one alert payload; returns the outcome fields it published."""
        try:
            alert = parse_alert(payload)
        except protocol.ProtocolError as exc:
            seq = payload.get("seq")
            log.warning("alert_rejected", error=str(exc), seq=seq)
            # published too, so a dashboard sees it; none of its values is trusted but seq
            known = {"seq": seq if isinstance(seq, int) else None}
            reason = f"alert rejected: {exc}"
            fields = protocol.action_fields(
                "skip", "skipped", reason, known, dry_run=self.link.dry_run
            )
            self.emit(None, fields)
            return [fields]
        if alert.key in self.state.handled:
            return [self._notice(alert, "skip", "duplicate: this alert was already handled")]
        gap = self._seq.gap(protocol.TOPIC_ALERT, alert.payload)
        self.state.handled[alert.key] = None
        if gap:
            self.state.save()
            log.warning("alert_seq_gap", scan_id=alert.scan_id, reason=gap)
            return [self._notice(alert, "resync", gap)]
        age = self.clock() - alert.time
        if abs(age) > self.settings.alert_ttl:
            self.state.save()
            when = f"{age:.1f} s old" if age > 0 else f"{-age:.1f} s in the future (clocks apart?)"
            why = f"stale: alert is {when}, alert_ttl is {self.settings.alert_ttl:g} s"
            log.warning("alert_stale", scan_id=alert.scan_id, seq=alert.seq, age=round(age, 3))
            return [self._notice(alert, "skip", why)]
        saved = alert.payload.get("origin") == protocol.SAVED_FRAME
        if saved and not self.settings.act_on_saved_frames:
            self.state.save()
            why = (
                "saved frame: that scan is over, an action now would hit whatever the microscope "
                "does next (act_on_saved_frames = true to act)"
            )
            return [self._notice(alert, "notify_only", why, outcome="ok")]
        actions = self.settings.policy.actions_for(alert.kind, alert.severity)
        if actions == ("notify_only",):
            self.state.save()
            why = f"policy for {alert.severity} {alert.kind} is notify_only"
            return [self._notice(alert, "notify_only", why, outcome="ok")]
        debounce = alert.debounce_key
        now = self.clock()
        if now - self.state.acted.get(debounce, -math.inf) < self.settings.debounce_s:
            self.state.save()
            why = f"debounced: already acted on {alert.kind} in scan {alert.scan_id}"
            return [self._notice(alert, "skip", why)]
        # after debounce_s even the same scan is acted on again (an alert without
        # scan_started gives its name alone, which may be a new scan): act, move it to the end
        self.state.acted.pop(debounce, None)
        self.state.acted[debounce] = now
        self.state.save()  # before touching Igor: at most once, even across a crash
        return [self._act(action, alert) for action in actions]

    def _act(self, action: Action, alert: IncomingAlert) -> dict[str, Any]:
        settings = self.settings
        expect: Callable[[float], bool] | None = None
        if action == "stop_scan":
            commands = [stop_scan_command()]
            expect = _stopped
        elif action == "withdraw":
            commands = [withdraw_command(settings.withdraw_control)]
        else:
            now = self.clock()
            cap = settings.max_rescans_per_hour
            if self.state.rescans_in_last_hour(now) >= cap:
                return self._notice(
                    alert, "rescan", f"rescan cap reached: {cap} per hour", outcome="skipped"
                )
            self.state.rescans.append(now)
            self.state.save()
            rescan = settings.rescan
            commands = rescan_commands(
                rescan.direction,
                rescan.setpoint,
                rescan.integral_gain,
                rescan.scan_rate,
                rescan.base_name(alert.scan_id),
                rescan.setpoint_kind,
            )
            expect = _scanning
        try:
            self.link.send(commands)
        except IgorError as exc:
            # the commands it tried go out with the failure: the operator can send them by hand
            log.error("igor_action_failed", action=action, scan_id=alert.scan_id, error=str(exc))
            return self._notice(alert, action, str(exc), outcome="failed", commands=commands)
        return self._confirm(action, alert, commands, expect)

    def _confirm(
        self,
        action: Action,
        alert: IncomingAlert,
        commands: list[str],
        expect: Callable[[float], bool] | None,
    ) -> dict[str, Any]:
        """Read ScanStatus back (a few times: Igor may take a moment to stop)."""
        if self.link.dry_run:
            self.link.scan_status()  # logs the read it would make
            return self._notice(alert, action, "dry run: commands logged, not sent", "ok", commands)
        status: float | None = None
        for attempt in range(self.settings.confirm_reads):
            if attempt:
                time.sleep(self.settings.confirm_interval)
            try:
                status = self.link.scan_status()
            except IgorError as exc:
                why = f"sent, but the read-back failed: {exc}"
                return self._notice(alert, action, why, "failed", commands)
            if status is None:
                continue
            if expect is None:  # nothing in Igor reads it back
                why = f"sent, and Igor answers; {action} itself is not read back"
                return self._notice(alert, action, why, "ok", commands, status)
            if expect(status):
                return self._notice(
                    alert, action, "confirmed by ScanStatus", "ok", commands, status
                )
        why = f"sent, but ScanStatus is still {status:g} after {self.settings.confirm_reads} reads"
        return self._notice(alert, action, why, "failed", commands, status)

    def _notice(
        self,
        alert: IncomingAlert,
        action: str,
        reason: str,
        outcome: str = "skipped",
        commands: list[str] | tuple[str, ...] = (),
        scan_status: float | None = None,
    ) -> dict[str, Any]:
        fields = protocol.action_fields(
            action,
            outcome,
            reason,
            alert.payload,
            igor_commands=commands,
            scan_status=scan_status,
            dry_run=self.link.dry_run,
        )
        log.info(
            "action",
            action=action,
            outcome=outcome,
            reason=reason,
            scan_id=alert.scan_id,
            alert_seq=alert.seq,
            igor_commands=list(commands),
        )
        self.emit(alert.scan_id, fields)
        return fields


def _stopped(status: float) -> bool:
    return status == 0


def _scanning(status: float) -> bool:
    return status != 0


# ---------------------------------------------------------------------------------------------
# The service loop
# ---------------------------------------------------------------------------------------------


class DaemonPresence:
    """Whether the daemon's heartbeats arrive. A responder that hears none protects nothing
    (a wrong `subscribe`, a daemon not running, CURVE keys that do not match), and ZeroMQ
    connects in silence, so the change is logged each way and shown in systemd's status.

    Silent means no heartbeat for `timeout` seconds, or for 3 of the daemon's own declared
    intervals when those are longer.
    """

    def __init__(
        self,
        endpoint: str,
        timeout: float,
        notifier: Notifier,
        mode: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.heard_now: bool | None = None  # None until heard or `timeout` has passed
        self._notifier = notifier
        self._mode = mode
        self._clock = clock
        self._since = clock()  # the last heartbeat, or the start
        self._interval = 0.0
        self._told_silent = False
        self._stopping = False

    def heard(self, topic: str, payload: Mapping[str, Any]) -> None:
        """A daemon heartbeat arrived, or an alert: the daemon is there too (an alert that
        came before the first heartbeat was logged as acted on before `daemon_heard`)."""
        self._since = self._clock()
        if topic == protocol.TOPIC_HEARTBEAT:
            interval = payload.get("interval")
            self._interval = float(interval) if isinstance(interval, int | float) else 0.0
            if payload.get("final"):
                log.warning("daemon_stopping", endpoint=self.endpoint, daemon=payload.get("daemon"))
                self._stopping = True  # a daemon back within `timeout` is told heard again
                return
        if not self.heard_now or self._stopping:
            self._stopping = False
            self.heard_now = True
            self._told_silent = False
            log.info("daemon_heard", endpoint=self.endpoint, daemon=payload.get("daemon"))
            self._notifier.status(f"{self._mode}; daemon heard at {self.endpoint}")

    def check(self) -> None:
        """Tell, once, that no heartbeat came for too long."""
        silent_for = self._clock() - self._since
        if self._told_silent or silent_for < max(self.timeout, 3 * self._interval):
            return
        self.heard_now = False
        self._told_silent = True
        log.warning(
            "daemon_not_heard",
            endpoint=self.endpoint,
            seconds=round(silent_for, 1),
            hint="no alert can arrive: is spmwatch running and publishing at this address, "
            "and do the CURVE keys match?",
        )
        self._notifier.status(f"{self._mode}; NO DAEMON HEARD at {self.endpoint}")


def serve(
    settings: RespondSettings,
    stop: threading.Event,
    link: IgorLink | None = None,
    context: zmq.Context | None = None,
) -> None:
    """Subscribe to alerts and publish outcomes until `stop` is set."""
    # a state file another responder holds or that cannot be written is a setting to fix
    # (exit 2), found before any socket; the lock is held until this function returns
    path = Path(settings.state_file).expanduser()
    try:
        lock = statelock.claim(path)
    except statelock.StateFileInUse as exc:
        raise OSError(f"state_file {path}: {exc}; give each responder its own") from None
    except OSError as exc:
        raise _unwritable(path, exc) from exc
    with lock or contextlib.nullcontext():
        state = ResponderState.load(path)
        try:
            state.write()
        except OSError as exc:
            raise _unwritable(path, exc) from exc
        _serve(settings, state, stop, link, context)


def _unwritable(path: Path, exc: OSError) -> OSError:
    return OSError(
        f"state_file {path} cannot be written ({exc}): point state_file at a writable place "
        "(the systemd unit: /var/lib/spmwatch-respond/state.json)"
    )


def _serve(
    settings: RespondSettings,
    state: ResponderState,
    stop: threading.Event,
    link: IgorLink | None,
    context: zmq.Context | None,
) -> None:
    link = link or IgorLink(settings.igor_timeout, settings.dry_run)
    link.connect()
    problem = link.problem()
    if problem is not None:  # a warning, not a refusal: Igor may be set up after the start
        log.warning("igor_unreachable", problem=problem)
    context = context or zmq.Context.instance()
    curve = settings.curve
    notifier = Notifier()
    mode = "dry-run" if settings.dry_run else "acting on alerts"
    presence = DaemonPresence(settings.subscribe, settings.daemon_timeout, notifier, mode)
    publisher = Publisher(
        settings.actions_endpoint,
        heartbeat_interval=settings.heartbeat_interval,
        heartbeat=lambda: {
            "role": "responder",
            "dry_run": settings.dry_run,
            "daemon_heard": presence.heard_now,
        },
        source="responder",
        curve=(curve.secret_key, curve.authorized_keys)
        if curve.enabled and curve.authorized_keys
        else None,
        context=context,
    )
    publisher.start()
    sub = context.socket(zmq.SUB)
    watch = None
    try:
        if curve.enabled:
            configure_client(sub, curve.secret_key, curve.daemon_public_key)
        watch = HandshakeWatch(  # with CURVE or without: a mismatch with the daemon is told too
            sub,
            lambda problem: log.warning("curve_handshake_failed", problem=problem),
            recovered=lambda endpoint: log.info("curve_handshake_succeeded", endpoint=endpoint),
        )
        sub.setsockopt(zmq.LINGER, 0)
        sub.subscribe(protocol.TOPIC_ALERT.encode())
        sub.subscribe(protocol.TOPIC_HEARTBEAT.encode())
        sub.connect(settings.subscribe)

        def emit(scan_id: str | None, fields: dict[str, Any]) -> None:
            publisher.publish(protocol.TOPIC_ACTION, scan_id, "responder", fields)

        responder = Responder(settings, link, emit, state)
        log.info(
            "responder_ready",
            subscribe=settings.subscribe,
            actions=publisher.bound_endpoint,
            dry_run=settings.dry_run,
            state_file=str(state.path),
        )
        notifier.ready(mode)
        ping = notifier.watchdog_interval
        next_ping = 0.0
        while not stop.is_set():
            if ping is not None and time.monotonic() >= next_ping:
                notifier.watchdog()  # from this loop: a hung Igor call is caught by its time-out
                next_ping = time.monotonic() + ping
            watch.check()
            presence.check()
            if not sub.poll(200):
                continue
            try:
                topic, payload = protocol.decode_event(sub.recv_multipart())
            except protocol.ProtocolError as exc:
                log.warning("message_rejected", error=str(exc))
                continue
            if topic == protocol.TOPIC_ALERT:
                presence.heard(topic, payload)
                responder.handle(payload)
            elif topic == protocol.TOPIC_HEARTBEAT and payload.get("source") == "daemon":
                presence.heard(topic, payload)
    finally:
        notifier.stopping()
        if watch is not None:
            watch.close()
        sub.close(linger=0)
        publisher.stop()
        log.info("responder_stopped")
