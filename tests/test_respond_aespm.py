"""The responder driving the real aespm module against a fake Igor (aespm venv: .ci/run-aespm)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from fake_igor import FakeIgor
from responder_helpers import (
    ActionListener,
    FakeDaemon,
    alert_payload,
    free_tcp_endpoint,
    wait_for,
)

from spmwatch import respond
from spmwatch.igor import IgorLink, IgorUnavailable

pytest.importorskip(
    "aespm", reason="aespm is not installed here (it pins numpy<2); .ci/run-aespm runs these"
)

pytestmark = pytest.mark.aespm

STOP = 'ARExecuteControl("StopScan_0","MasterPanel",0,"")'
WITHDRAW = 'ARExecuteControl("Withdraw_0","MasterPanel",0,"")'


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeIgor]:
    instrument = FakeIgor(tmp_path / "buffer").install(monkeypatch)
    yield instrument
    instrument.release()


def _settings(tmp_path: Path, **overrides: Any) -> respond.RespondSettings:
    return respond.RespondSettings(
        state_file=str(tmp_path / "state.json"), confirm_interval=0.05, **overrides
    )


def test_service_stops_and_withdraws_through_aespm(tmp_path: Path, fake: FakeIgor) -> None:
    context = zmq.Context()
    daemon = FakeDaemon(context)
    settings = _settings(
        tmp_path,
        subscribe=daemon.endpoint,
        actions_endpoint=free_tcp_endpoint(),
        heartbeat_interval=0.2,
        igor_timeout=5.0,
    )
    listener = ActionListener(context, settings.actions_endpoint)
    stop = threading.Event()
    service = threading.Thread(
        target=respond.serve, args=(settings, stop), kwargs={"context": context}
    )
    service.start()
    try:
        daemon.wait_subscriber()
        listener.wait_heartbeat()
        daemon.send(alert_payload(0, scan_id="scan1"))
        daemon.send(alert_payload(1, scan_id="scan1"))  # debounced: exactly one stop
        stop_out, withdraw_out, skipped = listener.actions(3)
    finally:
        stop.set()
        service.join(timeout=20)
        listener.close()
        daemon.close()
        context.term()
    assert fake.commands == [STOP, WITHDRAW]
    assert fake.unknown == []
    assert (fake.scanning, fake.withdrawn) == (False, True)
    assert (stop_out["action"], stop_out["outcome"], stop_out["scan_status"]) == (
        "stop_scan",
        "ok",
        0.0,
    )
    assert stop_out["igor_commands"] == [STOP] and stop_out["dry_run"] is False
    assert (withdraw_out["action"], withdraw_out["outcome"]) == ("withdraw", "ok")
    # ScanStatus says nothing about the tip: a withdraw is not reported as confirmed
    assert withdraw_out["reason"] == "sent, and Igor answers; withdraw itself is not read back"
    assert (skipped["action"], skipped["outcome"]) == ("skip", "skipped")


class Recorder:
    def __init__(self, tmp_path: Path, timeout: float) -> None:
        settings = _settings(tmp_path, igor_timeout=timeout)
        self.responder = respond.Responder(
            settings,
            IgorLink(settings.igor_timeout),
            lambda scan, fields: None,
            respond.ResponderState.load(settings.state_file),
        )

    def handle(self, payload: dict[str, Any]) -> list[tuple[str, str, str]]:
        self.outcomes = self.responder.handle(payload)
        return [(o["action"], o["outcome"], o["reason"]) for o in self.outcomes]


def test_igor_not_running_fails_the_action_and_the_responder_goes_on(
    tmp_path: Path, fake: FakeIgor
) -> None:
    fake.mode = "not_running"
    recorder = Recorder(tmp_path, timeout=0.3)
    (stop, withdraw) = recorder.handle(alert_payload(0, scan_id="scan1"))
    assert stop[:2] == ("stop_scan", "failed") and "no answer from Igor within 0.3 s" in stop[2]
    assert withdraw[:2] == ("withdraw", "failed") and "earlier Igor call" in withdraw[2]
    # a failed action still names the commands it tried, for the operator to send by hand
    assert [o["igor_commands"] for o in recorder.outcomes] == [[STOP], [WITHDRAW]]
    assert fake.invocations == 1
    fake.mode = "normal"
    fake.release()  # Igor is back
    fake.hanging.clear()
    outcomes = recorder.handle(alert_payload(1, scan_id="scan2", kind="dropout"))
    assert [o[:2] for o in outcomes] == [("stop_scan", "ok")]
    assert fake.commands == [STOP]


def test_a_machine_without_igor_is_named_at_start(fake: FakeIgor) -> None:
    """Without Igor the first alert's stop failed; nothing said so before."""
    link = IgorLink(timeout=1.0)
    link.connect()
    assert link.problem() is None  # the fake's SendToIgor.bat is where aespm looks
    fake.bat_file.unlink()
    problem = link.problem()
    assert problem is not None and str(fake.bat_file) in problem
    assert IgorLink(timeout=1.0, dry_run=True).problem() is None
    # and an action fails before aespm writes its command file (it used to write one, named
    # after the missing Windows path, into the working folder)
    fake.command_file.unlink(missing_ok=True)
    with pytest.raises(IgorUnavailable, match="does not exist"):
        link.send(STOP)
    with pytest.raises(IgorUnavailable, match="does not exist"):
        link.scan_status()
    assert not fake.command_file.exists() and fake.invocations == 0


def test_silent_igor_is_not_taken_for_a_stopped_scan(tmp_path: Path, fake: FakeIgor) -> None:
    fake.mode = "silent"
    fake.readout_file.write_text("0\n")  # a stale "not scanning" from an earlier read
    recorder = Recorder(tmp_path, timeout=2.0)
    ((action, outcome, reason),) = recorder.handle(alert_payload(0, kind="oscillation"))
    assert (action, outcome) == ("stop_scan", "failed")
    assert "read-back failed" in reason and "did not run the read" in reason
    assert fake.scanning  # the fake Igor really did nothing


def test_rescan_confirmed_and_a_stop_that_does_not_stop_is_reported(
    tmp_path: Path, fake: FakeIgor
) -> None:
    policy = respond.PolicySettings(
        dropout=respond.SeverityActions(high=("rescan",)),
        oscillation=respond.SeverityActions(high=("stop_scan",)),
    )
    settings = _settings(tmp_path, policy=policy, confirm_reads=2)
    responder = respond.Responder(
        settings,
        IgorLink(2.0),
        lambda scan, fields: None,
        respond.ResponderState.load(settings.state_file),
    )
    fake.scanning = False
    (rescan,) = responder.handle(alert_payload(0, kind="dropout"))
    assert (rescan["outcome"], rescan["scan_status"]) == ("ok", 1.0)
    assert fake.commands == ['ARExecuteControl("DownScan_0","MasterPanel",0,"")']
    fake.ignored.add("StopScan_0")  # e.g. a panel that names the control differently
    (stop,) = responder.handle(alert_payload(1, kind="oscillation", scan_id="scanB"))
    assert stop["outcome"] == "failed"
    assert stop["reason"] == "sent, but ScanStatus is still 1 after 2 reads"


def test_the_fake_igor_script_rehearses_the_responder_without_a_microscope(
    tmp_path: Path,
) -> None:
    """`python tests/fake_igor.py --config respond.toml` (docs/responder.md): the real
    `spmwatch respond` acts through aespm, and the console shows what Igor ran."""
    context = zmq.Context()
    daemon = FakeDaemon(context)
    config = tmp_path / "respond.toml"
    config.write_text(
        f'subscribe = "{daemon.endpoint}"\nactions_endpoint = "{free_tcp_endpoint()}"\n'
        f'state_file = "{tmp_path / "state.json"}"\nconfirm_interval = 0.05\n'
    )
    script = Path(__file__).with_name("fake_igor.py")
    process = subprocess.Popen(
        [sys.executable, str(script), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(process.stdout or ()), daemon=True)
    reader.start()
    try:
        daemon.wait_subscriber(timeout=60)
        daemon.send(alert_payload(0, scan_id="scan1"))
        wait_for(lambda: any("Withdraw_0" in line for line in said), timeout=30)
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
        reader.join(timeout=10)
        daemon.close()
        context.term()
    assert code == 0, "".join(said)
    assert said[0].startswith("fake Igor: scanning, tip engaged; aespm's buffer folder ")
    ran = [line.strip() for line in said if line.startswith("fake Igor ran")]
    assert ran == [
        f"fake Igor ran {STOP}: not scanning, tip engaged",
        f"fake Igor ran {WITHDRAW}: not scanning, tip withdrawn",
    ]
