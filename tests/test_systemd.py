"""The systemd units pass `systemd-analyze verify` and carry the settings the service relies on.

verify refuses a unit whose ExecStart binary does not exist, so the test verifies a copy whose
ExecStart points at an executable stand-in in a temporary folder; everything else is unchanged.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.daemon_helpers import REPO

# each unit and where the install steps (docs/daemon.md) put its command
INSTALLED = {
    "spmwatch.service": "/opt/spmwatch/bin/spmwatch",
    "spmwatch-respond.service": "/opt/spmwatch/bin/spmwatch",  # a dry run needs no aespm
}
UNITS = tuple(INSTALLED)


def _service(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(REPO / "systemd" / name)
    return parser["Service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_units_verify(tmp_path: Path) -> None:
    stub = tmp_path / "spmwatch"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    paths = []
    for name in UNITS:
        text = (REPO / "systemd" / name).read_text()
        assert INSTALLED[name] in text
        (tmp_path / name).write_text(text.replace(INSTALLED[name], str(stub)))
        paths.append(str(tmp_path / name))
    result = subprocess.run(
        ["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize("name", UNITS)
def test_service_contract(name: str) -> None:
    service = _service(name)
    assert service["Type"] == "notify"
    assert service["WatchdogSec"] == "10"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a config error is not retried
    assert service["User"] == "spmwatch"
    for key in ("NoNewPrivileges", "PrivateTmp"):
        assert service[key] == "yes"
    assert service["ProtectSystem"] == "strict" and service["ProtectHome"] == "read-only"
    assert service["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]


def test_daemon_unit_allows_the_jit() -> None:
    """numba compiles to executable memory: MemoryDenyWriteExecute would kill the daemon."""
    assert "MemoryDenyWriteExecute" not in _service("spmwatch.service")


def test_the_linux_responder_unit_only_dry_runs() -> None:
    """aespm drives Igor through a Windows .bat: on Linux the responder can only log."""
    assert _service("spmwatch-respond.service")["ExecStart"].endswith(" --dry-run")
