"""Igor command strings and the dry-run link: pure, no aespm needed (see test_igor_aespm.py)."""

from __future__ import annotations

import importlib.util

import pytest

from spmwatch import igor


def test_command_strings() -> None:
    assert igor.stop_scan_command() == 'ARExecuteControl("StopScan_0","MasterPanel",0,"")'
    assert igor.withdraw_command("Withdraw_0") == (
        'ARExecuteControl("Withdraw_0","MasterPanel",0,"")'
    )
    assert igor.scan_command("down") == 'ARExecuteControl("DownScan_0","MasterPanel",0,"")'
    assert igor.scan_rate_command(2) == 'ARExecuteControl("ScanRateSetVar_0","MasterPanel",2.0,"")'
    assert igor.setpoint_command(0.1, "deflection") == 'PV("DeflectionSetpointVolts", 0.1)'
    assert igor.rescan_commands() == ['ARExecuteControl("DownScan_0","MasterPanel",0,"")']


@pytest.mark.parametrize(
    "bad",
    ['Withdraw_0","MasterPanel",0,"");DeleteFolder root:', "1Withdraw", "", "x" * 32, "a b"],
)
def test_names_that_could_inject_or_that_igor_refuses_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="control name"):
        igor.withdraw_command(bad)
    with pytest.raises(ValueError, match="base name"):
        igor.change_name_command(bad)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: igor.scan_rate_command(0), "scan rate must be > 0"),
        (lambda: igor.integral_gain_command(float("nan")), "finite"),
        (lambda: igor.scan_command("sideways"), "direction"),
        (lambda: igor.setpoint_command(1.0, "force"), "setpoint kind"),
        (lambda: igor.read_key('ScanStatus")\nKillWaves'), "read key"),
    ],
)
def test_bad_values_are_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_dry_run_returns_the_lines_and_reads_nothing() -> None:
    link = igor.IgorLink(timeout=1, dry_run=True)
    link.connect()  # no aespm import in dry-run
    assert link.send(igor.rescan_commands("up", scan_rate=1.5)) == [
        'ARExecuteControl("ScanRateSetVar_0","MasterPanel",1.5,"")',
        'ARExecuteControl("UpScan_0","MasterPanel",0,"")',
    ]
    assert link.scan_status() is None
    with pytest.raises(ValueError, match="single-line"):
        link.send("StopScan()\nKillWaves/A")


@pytest.mark.skipif(importlib.util.find_spec("aespm") is not None, reason="aespm is installed")
def test_without_aespm_the_link_says_how_to_install_it() -> None:
    hint = r"pip install '\.\[aespm\]' in the spmwatch folder"
    with pytest.raises(igor.IgorUnavailable, match=hint):
        igor.IgorLink(timeout=1).connect()


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="time-out"):
        igor.IgorLink(timeout=0)
