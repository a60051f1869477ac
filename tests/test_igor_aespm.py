"""IgorLink against the real aespm module, with a fake Igor at aespm's file boundary.

aespm pins numpy < 2, so these run in their own virtual environment (.ci/run-aespm).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_igor import FakeIgor
from responder_helpers import wait_for

aespm = pytest.importorskip(
    "aespm", reason="aespm is not installed here (it pins numpy<2); .ci/run-aespm runs these"
)

from spmwatch import igor  # noqa: E402

STOP = 'ARExecuteControl("StopScan_0","MasterPanel",0,"")'
WITHDRAW = 'ARExecuteControl("Withdraw_0","MasterPanel",0,"")'

pytestmark = pytest.mark.aespm


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeIgor]:
    instrument = FakeIgor(tmp_path / "buffer").install(monkeypatch)
    yield instrument
    instrument.release()


def _aespm_sends(fake: FakeIgor, action: str, value: object = None) -> str:
    """The line aespm's own action table sends for `action`, as the fake Igor received it."""
    before = len(fake.commands)
    aespm.spm_control(action, value=value, wait=0)
    (line,) = fake.commands[before:]
    return line


@pytest.mark.parametrize(
    ("action", "value", "ours"),
    [
        ("StopScan", None, lambda: igor.stop_scan_command()),
        ("DownScan", None, lambda: igor.scan_command("down")),
        ("UpScan", None, lambda: igor.scan_command("up")),
        ("IGain", 12.5, lambda: igor.integral_gain_command(12.5)),
        ("ScanRate", 0.8, lambda: igor.scan_rate_command(0.8)),
        ("SetpointAmp", 0.45, lambda: igor.setpoint_command(0.45, "amplitude")),
        ("SetpointDefl", 0.2, lambda: igor.setpoint_command(0.2, "deflection")),
        ("ChangeName", "retry_", lambda: igor.change_name_command("retry_")),
    ],
)
def test_our_command_strings_are_what_aespm_sends(fake: FakeIgor, action, value, ours) -> None:
    assert _aespm_sends(fake, action, value) == ours()


def test_stop_withdraw_and_status_round_trips(fake: FakeIgor) -> None:
    link = igor.IgorLink(timeout=5)
    assert link.scan_status() == 1.0
    assert link.send(igor.stop_scan_command()) == [STOP]
    assert link.scan_status() == 0.0
    assert link.send(igor.withdraw_command("Withdraw_0")) == [WITHDRAW]
    assert fake.withdrawn
    assert fake.commands == [
        'ARExecuteControl("StopScan_0","MasterPanel",0,"")',
        'ARExecuteControl("Withdraw_0","MasterPanel",0,"")',
    ]
    assert fake.unknown == []


def test_rescan_sends_parameters_then_starts_the_frame_in_one_round_trip(fake: FakeIgor) -> None:
    fake.scanning = False
    link = igor.IgorLink(timeout=5)
    sent = link.send(igor.rescan_commands("up", 0.35, 8.0, 0.5, "retry_a"))
    expected = [
        'PV("AmplitudeSetpointVolts", 0.35)',
        'ARExecuteControl("IntegralGainSetVar_0","MasterPanel",8.0,"")',
        'ARExecuteControl("ScanRateSetVar_0","MasterPanel",0.5,"")',
        'ChangeName("retry_a")',
        'ARExecuteControl("UpScan_0","MasterPanel",0,"")',
    ]
    assert sent == expected
    assert fake.commands == expected
    assert fake.invocations == 1
    assert (fake.scanning, fake.direction, fake.scan_rate) == (True, "up", 0.5)
    assert fake.setpoints == {"AmplitudeSetpointVolts": 0.35}
    assert link.scan_status() == 1.0


def test_silent_igor_gives_no_answer_not_the_stale_readout(fake: FakeIgor) -> None:
    fake.mode = "silent"
    fake.readout_file.write_text("1\n")  # an old answer lying in the buffer folder
    assert float(aespm.read_spm("ScanStatus")) == 1.0  # the hazard: aespm returns it silently
    link = igor.IgorLink(timeout=5)
    with pytest.raises(igor.IgorNoAnswer, match=r"readout\.txt.*ScanStatus"):
        link.scan_status()
    assert not fake.readout_file.exists()


def test_igor_not_running_times_out_and_never_stacks_calls(fake: FakeIgor) -> None:
    fake.mode = "not_running"
    link = igor.IgorLink(timeout=0.3)
    started = time.monotonic()
    with pytest.raises(igor.IgorTimeout, match=r"within 0\.3 s"):
        link.send(igor.stop_scan_command())
    assert time.monotonic() - started < 3
    assert fake.hanging.is_set()
    with pytest.raises(igor.IgorTimeout, match="earlier Igor call"):
        link.scan_status()
    assert fake.invocations == 1  # the second call never reached aespm
    fake.mode = "normal"
    fake.release()  # Igor comes back: the stuck .bat returns and the link is usable again

    def usable() -> bool:
        try:
            return link.scan_status() == 1.0
        except igor.IgorTimeout:
            return False

    wait_for(usable, timeout=5)
    assert fake.invocations == 2


def test_missing_bat_is_reported_as_unavailable(
    fake: FakeIgor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    monkeypatch.setattr(aespm.experiment, "Popen", subprocess.Popen)  # the real one
    fake.bat_file.unlink()
    with pytest.raises(igor.IgorUnavailable, match=r"SendToIgor\.bat"):
        igor.IgorLink(timeout=5).send(igor.stop_scan_command())


def test_dry_run_never_touches_aespm(fake: FakeIgor) -> None:
    link = igor.IgorLink(timeout=5, dry_run=True)
    assert link.send(igor.stop_scan_command()) == [STOP]
    assert link.scan_status() is None
    assert fake.invocations == 0
    assert not fake.command_file.exists()
