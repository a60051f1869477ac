"""The responder's rules and service, in dry-run (no aespm needed; see test_respond_aespm.py).

Rule tests drive `Responder.handle` with real settings, a real dry-run IgorLink and a real
state file; the service test runs `spmwatch respond` as a subprocess between a fake daemon
PUB and an action subscriber on loopback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import zmq
from responder_helpers import (
    SCAN_STARTED,
    ActionListener,
    FakeDaemon,
    alert_payload,
    free_tcp_endpoint,
    wait_for,
)

from spmwatch import config, respond
from spmwatch.advice import ACTIONS, suggested_action
from spmwatch.igor import IgorLink, change_name_command
from spmwatch.model import EVENT_KINDS, SEVERITIES

ROOT = Path(__file__).resolve().parents[1]
STOP = 'ARExecuteControl("StopScan_0","MasterPanel",0,"")'
WITHDRAW = 'ARExecuteControl("Withdraw_0","MasterPanel",0,"")'


# -- settings ---------------------------------------------------------------------------------


def test_shipped_config_is_exactly_the_defaults() -> None:
    assert respond.load_respond_settings(ROOT / "config" / "respond.toml") == (
        respond.RespondSettings()
    )


def test_the_shipped_configs_commented_rescan_keys_work_where_they_stand(tmp_path: Path) -> None:
    """They sat above the [rescan] header: uncommented in place, they were policy keys."""
    text = (ROOT / "config" / "respond.toml").read_text()
    for key in ("setpoint", "integral_gain", "scan_rate"):
        assert f"\n# {key} = " in text
        text = text.replace(f"\n# {key} = ", f"\n{key} = ")
    (tmp_path / "respond.toml").write_text(text)
    rescan = respond.load_respond_settings(tmp_path / "respond.toml").rescan
    assert (rescan.setpoint, rescan.integral_gain, rescan.scan_rate) == (0.5, 10.0, 1.0)


def test_policy_covers_every_alert_kind() -> None:
    names = {f.name for f in dataclasses.fields(respond.PolicySettings)}
    assert names == set(EVENT_KINDS)


def test_an_alert_suggests_what_the_default_responder_does() -> None:
    """The alert's `action` is the strongest action the default policy runs (a dashboard
    said "rescan" for streaks the default responder only noted)."""
    policy = respond.PolicySettings()
    for kind in EVENT_KINDS:
        for severity in SEVERITIES:
            actions = policy.actions_for(kind, severity)
            suggested = suggested_action(kind, severity)
            assert suggested in actions, (kind, severity)
            assert all(ACTIONS.index(a) <= ACTIONS.index(suggested) for a in actions)
    assert suggested_action("tip_change", "high") == "withdraw"
    assert suggested_action("streak", "high") == "notify_only"
    assert suggested_action("unheard_of", "high") == "stop_scan"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alert_tll = 3\n", "alert_tll: unknown key"),
        ("[policy.tip_change]\nhigh = ['explode']\n", "policy.tip_change.high[0]: 'explode'"),
        ("[policy.streak]\nhigh = ['notify_only', 'stop_scan']\n", "cannot be combined"),
        ("[policy.dropout]\nhigh = ['withdraw', 'rescan']\n", "rescan after withdraw"),
        ("[policy.dropout]\nlow = []\n", "low is empty"),
        ('withdraw_control = "Withdraw\\")"\n', "withdraw_control"),
        ("igor_timeout = 0\n", "igor_timeout = 0"),
        ("[curve]\nenabled = true\n", "needs secret_key"),
        ('[rescan]\nbase_name_prefix = "1bad"\n', "base_name_prefix"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "respond.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=r"respond\.toml") as info:
        respond.load_respond_settings(path)
    assert message in str(info.value)


# -- rules ------------------------------------------------------------------------------------


class Harness:
    """A dry-run responder whose published outcomes land in a list; `restart` reloads state."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.settings = respond.RespondSettings(
            dry_run=True, state_file=str(tmp_path / "state.json"), **overrides
        )
        self.published: list[tuple[str | None, dict[str, Any]]] = []
        self.now = time.time()  # the responder's clock; alert_payload stamps with time.time()
        self.restart()

    def restart(self) -> None:
        state = respond.ResponderState.load(self.settings.state_file)
        link = IgorLink(self.settings.igor_timeout, dry_run=True)
        self.responder = respond.Responder(
            self.settings,
            link,
            lambda scan, fields: self.published.append((scan, fields)),
            state,
            clock=lambda: self.now,
        )

    def handle(self, payload: dict[str, Any]) -> list[tuple[str, str]]:
        return [(o["action"], o["outcome"]) for o in self.responder.handle(payload)]


def test_high_tip_change_stops_and_withdraws_once_per_scan(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.handle(alert_payload(0)) == [("stop_scan", "ok"), ("withdraw", "ok")]
    scan, fields = h.published[0]
    assert scan == "scanA"
    assert fields["igor_commands"] == [STOP]
    assert fields["dry_run"] is True and fields["alert_seq"] == 0
    assert h.published[1][1]["igor_commands"] == [WITHDRAW]
    assert h.handle(alert_payload(1)) == [("skip", "skipped")]
    assert "debounced" in h.published[-1][1]["reason"]
    # another kind in the same scan, and the same kind in another scan, still act
    assert h.handle(alert_payload(2, kind="dropout")) == [("stop_scan", "ok")]
    assert h.handle(alert_payload(3, scan_id="scanB")) == [("stop_scan", "ok"), ("withdraw", "ok")]


def test_a_new_scan_under_a_used_name_is_acted_on_at_once(tmp_path: Path) -> None:
    """Names repeat (the scope follower starts again at scope-1 after a restart, Asylum resets
    its suffix): a failing scan must not be debounced because an old one had its name."""
    h = Harness(tmp_path)
    acted = [("stop_scan", "ok"), ("withdraw", "ok")]
    assert h.handle(alert_payload(0, scan_id="scope-1")) == acted
    assert h.handle(alert_payload(1, scan_id="scope-1")) == [("skip", "skipped")]  # that scan
    h.restart()
    later = alert_payload(0, scan_id="scope-1", scan_started=SCAN_STARTED + 120.0)
    assert h.handle(later) == acted
    assert h.handle({**later, "seq": 1}) == [("skip", "skipped")]  # and it is debounced in turn
    assert "debounced: already acted on tip_change in scan scope-1" in h.published[-1][1]["reason"]


def test_without_scan_started_a_name_is_debounced_for_debounce_s(tmp_path: Path) -> None:
    h = Harness(tmp_path, debounce_s=600.0, alert_ttl=1e9)
    nameless = functools.partial(alert_payload, scan_started=None)
    assert h.handle(nameless(0)) == [("stop_scan", "ok"), ("withdraw", "ok")]
    h.now += 599.0
    assert h.handle(nameless(1)) == [("skip", "skipped")]
    h.restart()  # the acted-on time survives a restart
    assert h.handle(nameless(2)) == [("skip", "skipped")]
    h.now += 2.0  # 601 s after the action: the same name is taken for a new scan
    assert h.handle(nameless(3)) == [("stop_scan", "ok"), ("withdraw", "ok")]
    h.now += 599.0  # and the new action starts a new debounce
    assert h.handle(nameless(4)) == [("skip", "skipped")]


def test_alerts_from_saved_frames_are_noted_not_acted_on(tmp_path: Path) -> None:
    saved = {**alert_payload(0), "origin": "saved_frame"}
    h = Harness(tmp_path)
    assert h.handle(saved) == [("notify_only", "ok")]
    assert h.published[-1][1]["igor_commands"] == []
    assert "saved frame" in h.published[-1][1]["reason"]
    # it does not use up the debounce: a live alert of that scan still acts
    assert h.handle(alert_payload(1)) == [("stop_scan", "ok"), ("withdraw", "ok")]
    h = Harness(tmp_path / "acting", act_on_saved_frames=True)
    assert h.handle(saved) == [("stop_scan", "ok"), ("withdraw", "ok")]


def test_notify_only_does_not_use_up_the_debounce(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.handle(alert_payload(0, severity="low")) == [("notify_only", "ok")]
    assert h.published[-1][1]["igor_commands"] == []
    assert h.handle(alert_payload(1, severity="high")) == [("stop_scan", "ok"), ("withdraw", "ok")]


def test_stale_alert_is_logged_not_acted_on(tmp_path: Path) -> None:
    h = Harness(tmp_path, alert_ttl=5.0)
    assert h.handle(alert_payload(0, age=30.0)) == [("skip", "skipped")]
    assert "stale: alert is 30.0 s old" in h.published[-1][1]["reason"]
    assert h.handle(alert_payload(1, age=-30.0)) == [("skip", "skipped")]  # clock far ahead
    assert "30.0 s in the future" in h.published[-1][1]["reason"]
    assert h.handle(alert_payload(2, age=1.0)) == [("stop_scan", "ok"), ("withdraw", "ok")]


def test_seq_gap_publishes_resync_and_the_next_alert_acts(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    assert h.handle(alert_payload(4, kind="dropout")) == [("stop_scan", "ok")]  # first: baseline
    assert h.handle(alert_payload(7, scan_id="scanB")) == [("resync", "skipped")]
    assert "expected 5, got 7 (2 missing)" in h.published[-1][1]["reason"]
    assert h.handle(alert_payload(8, scan_id="scanB")) == [("stop_scan", "ok"), ("withdraw", "ok")]
    assert h.handle(alert_payload(6, scan_id="scanC")) == [("resync", "skipped")]  # went back
    assert h.handle(alert_payload(0, scan_id="scanD")) == [("stop_scan", "ok"), ("withdraw", "ok")]


def test_restart_never_acts_twice_on_one_alert(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    first = alert_payload(0)
    assert h.handle(first) == [("stop_scan", "ok"), ("withdraw", "ok")]
    h.restart()
    assert h.handle(first) == [("skip", "skipped")]
    assert "duplicate" in h.published[-1][1]["reason"]
    # a daemon restart reuses seq 0 with a new time: a new alert, but the scan is debounced
    assert h.handle(alert_payload(0, scan_id="scanA")) == [("skip", "skipped")]
    assert "debounced" in h.published[-1][1]["reason"]


def test_rescans_are_capped_per_hour(tmp_path: Path) -> None:
    policy = respond.PolicySettings(streak=respond.SeverityActions(high=("stop_scan", "rescan")))
    rescan = respond.RescanSettings(scan_rate=0.5, base_name_prefix="retry_")
    h = Harness(tmp_path, policy=policy, rescan=rescan, max_rescans_per_hour=1)
    assert h.handle(alert_payload(0, kind="streak")) == [("stop_scan", "ok"), ("rescan", "ok")]
    assert h.published[-1][1]["igor_commands"] == [
        'ARExecuteControl("ScanRateSetVar_0","MasterPanel",0.5,"")',
        'ChangeName("retry_scanA")',
        'ARExecuteControl("DownScan_0","MasterPanel",0,"")',
    ]
    h.restart()  # the cap survives a restart too
    outcome = h.handle(alert_payload(1, kind="streak", scan_id="scanB"))
    assert outcome == [("stop_scan", "ok"), ("rescan", "skipped")]
    assert "rescan cap reached: 1 per hour" in h.published[-1][1]["reason"]


@pytest.mark.parametrize(
    "scan_id,name",
    [
        ("scanA", "retry_scanA"),
        ("scope-9", "retry_scope_9"),
        ("Cs50MA50approx_PositionC_0035", "retry_Cs50MA50approx_Posit_0035"),
        ("x" * 40, "retry_" + "x" * 25),
        ("Image_" + "1" * 30, "retry_Image_" + "1" * 19),
    ],
)
def test_a_retry_name_is_an_igor_name_that_keeps_the_frame_number(scan_id: str, name: str) -> None:
    """Cut at 31 characters, retry_Cs50MA50approx_PositionC_0035 lost the `_0035` that tells
    the frames of one position apart."""
    made = respond.RescanSettings(base_name_prefix="retry_").base_name(scan_id)
    assert made == name
    assert change_name_command(made) == f'ChangeName("{name}")'  # Igor takes it


def test_malformed_alerts_are_rejected_without_action(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    meltdown = h.responder.handle({**alert_payload(0), "kind": "meltdown"})
    escape = h.responder.handle({**alert_payload(1), "scan_id": "../../etc"})
    started = h.responder.handle({**alert_payload(2), "scan_started": "yesterday"})
    rejected = meltdown + escape + started
    assert [(o["action"], o["outcome"]) for o in rejected] == [("skip", "skipped")] * 3
    assert all(o["igor_commands"] == [] for o in rejected)  # nothing for Igor
    # published, so a dashboard sees the rejection, under no scan and with no value it carried
    assert [scan_id for scan_id, _ in h.published] == [None, None, None]
    assert "alert scan_started 'yesterday' is not a number" in started[0]["reason"]
    assert "alert rejected" in meltdown[0]["reason"] and "meltdown" in meltdown[0]["reason"]
    assert meltdown[0]["kind"] is None and escape[0]["alert_seq"] == 1


def test_unreadable_state_file_starts_empty(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    h = Harness(tmp_path)
    assert h.handle(alert_payload(0)) == [("stop_scan", "ok"), ("withdraw", "ok")]
    assert respond.ResponderState.load(tmp_path / "state.json").acted  # rewritten, readable


# -- the service, as a subprocess ---------------------------------------------------------------


def _start_responder(
    config_file: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "spmwatch", "respond", "--config", str(config_file), "--dry-run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=20)
    return process.returncode, out


def _service_config(tmp_path: Path, daemon: FakeDaemon, actions_endpoint: str, extra: str) -> Path:
    """A responder config against the fake daemon, JSON logs, quick heartbeats, plus `extra`."""
    config_file = tmp_path / "respond.toml"
    config_file.write_text(
        f'subscribe = "{daemon.endpoint}"\n'
        f'actions_endpoint = "{actions_endpoint}"\n'
        f'state_file = "{tmp_path / "state.json"}"\n'
        f'heartbeat_interval = 0.1\nlog_format = "json"\n{extra}\n'
    )
    return config_file


@dataclasses.dataclass
class _Service:
    """A responder subprocess between a fake daemon and a listener on its actions socket."""

    daemon: FakeDaemon
    listener: ActionListener
    config_file: Path
    process: subprocess.Popen[str]


@contextlib.contextmanager
def _responder_service(tmp_path: Path, extra: str) -> Iterator[_Service]:
    """Start the responder with `_service_config(..., extra)`; stop it (whichever process is
    current: a test may restart it) and close the sockets however the test ends."""
    actions_endpoint = free_tcp_endpoint()
    context = zmq.Context()
    daemon = FakeDaemon(context)
    config_file = _service_config(tmp_path, daemon, actions_endpoint, extra)
    listener = ActionListener(context, actions_endpoint)
    service = _Service(daemon, listener, config_file, _start_responder(config_file))
    try:
        yield service
    finally:
        if service.process.poll() is None:
            _stop(service.process)
        listener.close()
        daemon.close()
        context.term()


def test_responder_service_end_to_end(tmp_path: Path) -> None:
    with _responder_service(tmp_path, "alert_ttl = 5.0") as service:
        daemon, listener = service.daemon, service.listener
        daemon.wait_subscriber()
        listener.wait_heartbeat()
        daemon.send(alert_payload(0, scan_id="scanA"))
        daemon.send(alert_payload(1, scan_id="scanA"))  # same scan and kind: debounced
        daemon.send(alert_payload(2, scan_id="scanB", age=60.0))  # stale
        daemon.send(alert_payload(5, scan_id="scanC"))  # gap: resync, not acted on
        last = daemon.send(alert_payload(6, scan_id="scanC"))
        got = listener.actions(6)
        assert [(a["scan_id"], a["action"], a["outcome"]) for a in got] == [
            ("scanA", "stop_scan", "ok"),
            ("scanA", "withdraw", "ok"),
            ("scanA", "skip", "skipped"),
            ("scanB", "skip", "skipped"),
            ("scanC", "resync", "skipped"),
            ("scanC", "stop_scan", "ok"),
        ]
        assert got[0]["igor_commands"] == [STOP] and got[1]["igor_commands"] == [WITHDRAW]
        assert all(a["source"] == "responder" and a["dry_run"] for a in got)
        assert listener.actions(1)[0]["action"] == "withdraw"
        code, out = _stop(service.process)
        assert code == 0, out
        logged = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        commands = [e["command"] for e in logged if e["event"] == "igor_command"]
        assert commands == [STOP, WITHDRAW, STOP, WITHDRAW]  # dry-run logs the exact lines
        assert logged[-1]["event"] == "responder_stopped"  # SIGTERM is seen in the log

        listener.wait_heartbeat(final=True)  # the first run has ended
        service.process = _start_responder(service.config_file)  # the same state file
        daemon.wait_subscriber()
        listener.wait_heartbeat()
        daemon.send(last)  # the very same alert again
        (again,) = listener.actions(1)
        assert (again["action"], again["outcome"]) == ("skip", "skipped")
        assert "duplicate" in again["reason"]


def test_a_responder_that_hears_no_daemon_says_so(tmp_path: Path) -> None:
    """ZeroMQ connects in silence: without the daemon's heartbeats the responder warns once,
    and its own heartbeats say whether a daemon is heard."""
    with _responder_service(tmp_path, "daemon_timeout = 2.0") as service:
        daemon, listener = service.daemon, service.listener
        daemon.wait_subscriber()
        listener.wait_heartbeat(daemon_heard=None)  # within daemon_timeout: not known yet
        listener.wait_heartbeat(daemon_heard=False)  # then told: daemon_not_heard
        seq = 0

        def heard() -> bool:
            nonlocal seq
            daemon.heartbeat(seq)
            seq += 1
            try:
                listener.wait_heartbeat(daemon_heard=True, timeout=0.3)
            except AssertionError:
                return False
            return True

        wait_for(heard, timeout=20)
        daemon.heartbeat(seq, final=True)
        listener.wait_heartbeat(daemon_heard=False)  # silent again after the daemon stopped
        code, out = _stop(service.process)
        assert code == 0, out
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        told = [e for e in events if e["event"].startswith("daemon_")]
        assert [e["event"] for e in told] == [
            "daemon_not_heard",
            "daemon_heard",
            "daemon_stopping",
            "daemon_not_heard",
        ], told
        assert told[0]["endpoint"] == daemon.endpoint and "no alert can arrive" in told[0]["hint"]


def test_a_daemon_back_within_the_timeout_is_told_heard_again(tmp_path: Path) -> None:
    """After daemon_stopping, a restart within daemon_timeout (systemctl restart) logged
    nothing more: the journal read as if the daemon had stayed away."""
    with _responder_service(tmp_path, "") as service:
        daemon = service.daemon
        daemon.wait_subscriber()
        service.listener.wait_heartbeat()  # the outcomes' subscription is through
        daemon.heartbeat(0)
        daemon.heartbeat(1, final=True)
        daemon.heartbeat(0)  # the restarted daemon, at once
        daemon.send(alert_payload(1))  # on the same socket: taken after the heartbeats
        service.listener.actions(2)
        code, out = _stop(service.process)
    assert code == 0, out
    told = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert [e for e in told if e.startswith("daemon_")] == [
        "daemon_heard",
        "daemon_stopping",
        "daemon_heard",
    ], told


def test_an_alert_before_any_heartbeat_says_the_daemon_is_there(tmp_path: Path) -> None:
    """The demo's log told daemon_heard 0.3 s after the stop it had acted on."""
    with _responder_service(tmp_path, "") as service:
        service.daemon.wait_subscriber()
        service.listener.wait_heartbeat(daemon_heard=None)  # no daemon heartbeat yet
        service.daemon.send(alert_payload(0))
        assert [a["action"] for a in service.listener.actions(2)] == ["stop_scan", "withdraw"]
        service.listener.wait_heartbeat(daemon_heard=True)
        code, out = _stop(service.process)
    assert code == 0, out
    told = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert told.index("daemon_heard") < told.index("igor_command")


def test_bad_config_exits_2_with_the_key(tmp_path: Path) -> None:
    config_file = tmp_path / "respond.toml"
    config_file.write_text("dry_runn = true\n")
    process = _start_responder(config_file)
    out, _ = process.communicate(timeout=20)
    assert process.returncode == 2
    assert "dry_runn: unknown key" in out


def test_an_unwritable_state_file_stops_the_start_not_the_first_alert(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config_file = tmp_path / "respond.toml"
    config_file.write_text(f'state_file = "{(blocker / "state.json").as_posix()}"\n')
    process = _start_responder(config_file)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert f"state_file {blocker / 'state.json'} cannot be written" in out
    assert "responder_ready" not in out


def test_a_second_responder_on_one_state_file_exits_2_naming_the_first(tmp_path: Path) -> None:
    """Both started and both acted on one alert: the state file that stops a restart acting
    twice did not stop two responders at once."""
    with _responder_service(tmp_path, "") as first:
        first.daemon.wait_subscriber()  # the first one runs
        text = first.config_file.read_text()
        own = text.split('actions_endpoint = "')[1].split('"')[0]
        second = tmp_path / "second.toml"
        second.write_text(text.replace(own, free_tcp_endpoint()))
        process = _start_responder(second)
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 2
        said = f"state_file {tmp_path / 'state.json'}: another process (pid {first.process.pid})"
        assert said in out and "give each responder its own" in out
        assert "responder_ready" not in out


def test_a_state_file_that_stops_saving_does_not_stop_the_responder(tmp_path: Path) -> None:
    h = Harness(tmp_path / "state")  # state_file = state/state.json, not written yet
    (tmp_path / "state").write_text("")  # its folder is a file now: every save fails
    with structlog.testing.capture_logs() as logs:
        assert h.handle(alert_payload(0)) == [("stop_scan", "ok"), ("withdraw", "ok")]
    assert any(e["event"] == "state_file_not_saved" for e in logs)


def test_systemd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    """Type=notify in spmwatch-respond.service: READY=1 once subscribed, pings, STOPPING=1."""
    import socket as sockets

    address = str(tmp_path / "notify")
    receiver = sockets.socket(sockets.AF_UNIX, sockets.SOCK_DGRAM)
    receiver.bind(address)
    receiver.settimeout(60)
    config_file = tmp_path / "respond.toml"
    config_file.write_text(
        f'subscribe = "{free_tcp_endpoint()}"\n'
        f'actions_endpoint = "{free_tcp_endpoint()}"\n'
        f'state_file = "{tmp_path / "state.json"}"\n'
    )
    process = _start_responder(config_file, {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
    try:
        assert receiver.recv(4096).decode().startswith("READY=1\nSTATUS=dry-run")
        assert [receiver.recv(4096) for _ in range(3)] == [b"WATCHDOG=1"] * 3
        process.send_signal(signal.SIGTERM)
        while (message := receiver.recv(4096)) != b"STOPPING=1":
            assert message == b"WATCHDOG=1"
        assert process.wait(20) == 0
    finally:
        receiver.close()
        if process.poll() is None:
            _stop(process)


def test_an_actions_address_in_use_exits_1_naming_the_key(tmp_path: Path) -> None:
    """A port clash may pass: exit 1 lets systemd retry (2, a config to fix, is not retried)."""
    endpoint = free_tcp_endpoint()
    config_file = tmp_path / "respond.toml"
    config_file.write_text(
        f'actions_endpoint = "{endpoint}"\nstate_file = "{tmp_path / "state.json"}"\n'
    )
    context = zmq.Context.instance()
    holder = context.socket(zmq.PUB)
    holder.bind(endpoint)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "spmwatch",
                "respond",
                "--config",
                str(config_file),
                "--dry-run",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.close(linger=0)
    assert done.returncode == 1
    assert f"actions_endpoint {endpoint}: Address already in use" in done.stderr
    assert "addr=" not in done.stderr
