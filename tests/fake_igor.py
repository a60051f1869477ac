"""A fake Asylum Igor at aespm's file boundary, so the real aespm module can be tested on Linux.

aespm writes Igor lines into `ToIgor.arcmd` and runs `SendToIgor.bat` through
`aespm.experiment.Popen`. `FakeIgor.install` points aespm's module-level buffer paths at a
temporary folder and replaces that `Popen` with one whose `wait()` reads the .arcmd file, runs
the lines against a small instrument state and writes `readout.txt` as Igor's `Save/G/J` would.

Modes: "normal"; "silent" (Igor returns without running anything: no readout written);
"not_running" (the .bat never returns, as when Igor is not running, until `release()`).

Run as a script, it is a rehearsal without a microscope: `python tests/fake_igor.py
--config respond.toml` (in the aespm environment) runs the real `spmwatch respond` against this
fake, printing every command Igor runs and the instrument's state after it.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

Mode = Literal["normal", "silent", "not_running"]

_CONTROL = re.compile(r'ARExecuteControl\("(\w+)","(\w+)",([^,]+),""\)')
_PV = re.compile(r'PV\("(\w+)", ([^)]+)\)')
_CHANGE_NAME = re.compile(r'ChangeName\("(\w+)"\)')
_MAKE = re.compile(r"Make/N = \((\d+)\)/O ReadOut")
_READ = re.compile(r'ReadOut\[(\d+)\] = GV\("(\w+)"\)')
_SAVE = re.compile(r'Save/O/G/J ReadOut as "(.+)"')


@dataclass
class FakeIgor:
    """Instrument state plus a record of every line Igor ran and every .bat invocation."""

    folder: Path
    withdraw_control: str = "Withdraw_0"
    mode: Mode = "normal"
    scanning: bool = True
    direction: str = "down"
    withdrawn: bool = False
    setpoints: dict[str, float] = field(default_factory=dict)
    integral_gain: float | None = None
    scan_rate: float | None = None
    base_name: str | None = None
    commands: list[str] = field(default_factory=list)  # action lines run (reads excluded)
    unknown: list[str] = field(default_factory=list)  # lines a real Igor would ignore (/Z)
    ignored: set[str] = field(default_factory=set)  # controls this Igor lacks
    invocations: int = 0
    hanging: threading.Event = field(default_factory=threading.Event)
    echo: Callable[[str], None] | None = None  # told each action line Igor ran
    _release: threading.Event = field(default_factory=threading.Event)
    _readout: list[float] = field(default_factory=list)

    @property
    def command_file(self) -> Path:
        return self.folder / "ToIgor.arcmd"

    @property
    def readout_file(self) -> Path:
        return self.folder / "readout.txt"

    @property
    def bat_file(self) -> Path:
        return self.folder / "SendToIgor.bat"

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeIgor:
        """Point the real `aespm.experiment` at this fake; monkeypatch undoes it after the test."""
        experiment = pytest.importorskip("aespm.experiment")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.bat_file.write_text('"Igor.exe" "ToIgor.arcmd"\n')
        monkeypatch.setattr(experiment, "_buffer_path", str(self.folder))
        monkeypatch.setattr(experiment, "_command_buffer", str(self.command_file))
        monkeypatch.setattr(experiment, "_read_out_buffer", str(self.readout_file))
        monkeypatch.setattr(experiment, "_bash_buffer", str(self.bat_file))
        monkeypatch.setattr(experiment, "Popen", self._popen)
        return self

    def release(self) -> None:
        """Let a hung .bat return (test teardown), so no worker thread outlives the test."""
        self._release.set()

    # -- what aespm sees ------------------------------------------------------------------------

    def _popen(self, args: Any) -> _Process:
        assert str(args) == str(self.bat_file), f"aespm ran {args!r}, not the .bat"
        return _Process(self)

    def run_script(self) -> None:
        self.invocations += 1
        if self.mode == "not_running":
            self.hanging.set()
            self._release.wait()
            return
        if self.mode == "silent":
            return
        for raw in self.command_file.read_text(encoding="utf-8").splitlines():
            line = raw.split("//", 1)[0].strip()
            if line:
                self._execute(line)

    def _execute(self, line: str) -> None:
        if match := _MAKE.fullmatch(line):
            self._readout = [0.0] * int(match[1])
        elif match := _READ.fullmatch(line):
            self._readout[int(match[1])] = self._global(match[2])
        elif match := _SAVE.fullmatch(line):
            path = Path(match[1].replace("\\\\", "\\"))
            path.write_text("".join(f"{value:g}\n" for value in self._readout))
        else:
            self.commands.append(line)
            if not self._act(line):
                self.unknown.append(line)
            if self.echo is not None:
                self.echo(line)

    def _act(self, line: str) -> bool:
        if match := _CONTROL.fullmatch(line):
            control, panel, value = match[1], match[2], float(match[3])
            if panel != "MasterPanel" or control in self.ignored:
                return False
            if control == "StopScan_0":
                self.scanning = False
            elif control in ("DownScan_0", "UpScan_0"):
                self.scanning, self.direction = True, control[:-6].lower()
            elif control == self.withdraw_control:
                self.withdrawn, self.scanning = True, False
            elif control == "IntegralGainSetVar_0":
                self.integral_gain = value
            elif control == "ScanRateSetVar_0":
                self.scan_rate = value
            else:
                return False
            return True
        if match := _PV.fullmatch(line):
            self.setpoints[match[1]] = float(match[2])
            return True
        if match := _CHANGE_NAME.fullmatch(line):
            self.base_name = match[1]
            return True
        return False

    def _global(self, name: str) -> float:
        if name == "ScanStatus":
            return 1.0 if self.scanning else 0.0
        return self.setpoints.get(name, 0.0)


class _Process:
    """What `Popen(_bash_buffer)` returns: `wait()` is where Igor runs the script."""

    def __init__(self, igor: FakeIgor) -> None:
        self._igor = igor

    def wait(self, timeout: float | None = None) -> int:
        self._igor.run_script()
        return 0


def main(argv: list[str] | None = None) -> int:
    """`spmwatch respond` (all arguments but --folder passed on) against a fake Igor."""
    parser = argparse.ArgumentParser(
        prog="python tests/fake_igor.py",
        description="Run the real `spmwatch respond` (aespm and all) against a fake Igor, "
        "printing each command Igor runs and the instrument's state after it.",
    )
    parser.add_argument("--folder", type=Path, help="aespm's buffer folder (default: a temp one)")
    args, respond_args = parser.parse_known_args(argv)
    from spmwatch.cli import main as spmwatch

    with tempfile.TemporaryDirectory() as spare, pytest.MonkeyPatch.context() as patch:
        igor = FakeIgor(args.folder or Path(spare) / "buffer")

        def echo(line: str) -> None:
            tip = "withdrawn" if igor.withdrawn else "engaged"
            scan = f"scanning {igor.direction}" if igor.scanning else "not scanning"
            print(f"fake Igor ran {line}: {scan}, tip {tip}", flush=True)

        igor.echo = echo
        igor.install(patch)
        print(f"fake Igor: scanning, tip engaged; aespm's buffer folder {igor.folder}", flush=True)
        return spmwatch(["respond", *respond_args])


if __name__ == "__main__":
    sys.exit(main())
