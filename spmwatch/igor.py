"""The aespm boundary: the one module that talks to Igor, and the only one that imports aespm.

aespm writes Igor command lines into `ToIgor.arcmd` and runs `SendToIgor.bat`; Igor executes
each line with `Execute/Q/Z`. Three things about that transport shape this module:

- no acknowledgement: a wrong command looks like success, so after an action we read
  `GV("ScanStatus")` back to see whether the instrument really changed state;
- no time-out: when Igor is not running aespm waits on the .bat forever, so every round trip
  runs in a worker thread that we stop waiting for after `timeout` seconds, and while such a
  call is still stuck no other call is started (two commands must never race in the buffer);
- stale reads: `read_spm` returns whatever `readout.txt` holds if Igor did not run the script,
  so the readout file is deleted before each read and a missing file means "no answer".

Command strings are built by the pure functions below, in one place, so the dry-run log shows
exactly what would be sent; tests check them against aespm's own action table.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, TypeVar

import structlog

log = structlog.get_logger("spmwatch.igor")

T = TypeVar("T")
Direction = Literal["down", "up"]
SetpointKind = Literal["amplitude", "deflection"]

MASTER_PANEL = "MasterPanel"
STATUS_KEY = "ScanStatus"
# Igor object names: a letter, then letters, digits or underscores, at most 31 characters.
IGOR_NAME_MAX = 31
_IGOR_NAME = re.compile(rf"[A-Za-z][A-Za-z0-9_]{{0,{IGOR_NAME_MAX - 1}}}")
# Keys read_spm accepts: Igor globals, or td_ReadValue paths such as PIDSLoop.0.Setpoint
_READ_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")
_SCAN_CONTROLS = {"down": "DownScan_0", "up": "UpScan_0"}
_SETPOINT_VARIABLES = {
    "amplitude": "AmplitudeSetpointVolts",
    "deflection": "DeflectionSetpointVolts",
}


class IgorError(RuntimeError):
    """An Igor round trip that did not do what was asked; the text says why."""


class IgorTimeout(IgorError):
    """Igor did not answer in time (usually: Igor is not running), or an earlier call is stuck."""


class IgorNoAnswer(IgorError):
    """Igor returned but did not write the readout: it did not run our script."""


class IgorUnavailable(IgorError):
    """aespm cannot be imported or cannot reach Igor (no SendToIgor.bat)."""


# ---------------------------------------------------------------------------------------------
# Igor command strings: pure, the single source of what is sent
# ---------------------------------------------------------------------------------------------


def igor_name(value: str, what: str = "Igor name") -> str:
    """Return `value` if it is a valid Igor object name, so nothing can be injected into a line."""
    if not isinstance(value, str) or not _IGOR_NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must start with a letter and hold at most 31 letters, digits "
            "or underscores"
        )
    return value


def _number(value: float, what: str) -> str:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return f"{number}"  # aespm formats with "{}".format(value): the same text for a float


def press(control: str, panel: str = MASTER_PANEL) -> str:
    """Press a button on an Asylum panel (aespm's button form: value 0, empty string)."""
    control = igor_name(control, "control name")
    return f'ARExecuteControl("{control}","{igor_name(panel, "panel name")}",0,"")'


def set_control(control: str, value: float, panel: str = MASTER_PANEL) -> str:
    """Set a numeric control on an Asylum panel, as if typed into it."""
    control = igor_name(control, "control name")
    shown = _number(value, control)
    return f'ARExecuteControl("{control}","{igor_name(panel, "panel name")}",{shown},"")'


def stop_scan_command() -> str:
    return press("StopScan_0")


def withdraw_command(control: str) -> str:
    return press(control)


def scan_command(direction: Direction) -> str:
    if direction not in _SCAN_CONTROLS:
        raise ValueError(f"scan direction {direction!r} is not 'down' or 'up'")
    return press(_SCAN_CONTROLS[direction])


def setpoint_command(volts: float, kind: SetpointKind = "amplitude") -> str:
    if kind not in _SETPOINT_VARIABLES:
        raise ValueError(f"setpoint kind {kind!r} is not 'amplitude' or 'deflection'")
    return f'PV("{_SETPOINT_VARIABLES[kind]}", {_number(volts, "setpoint")})'


def integral_gain_command(gain: float) -> str:
    return set_control("IntegralGainSetVar_0", gain)


def scan_rate_command(hz: float) -> str:
    if not float(hz) > 0:
        raise ValueError(f"scan rate must be > 0 Hz, got {hz!r}")
    return set_control("ScanRateSetVar_0", hz)


def change_name_command(base_name: str) -> str:
    """aespm's `ChangeName` user function (needs aespm's UserFunctions.ipf in Igor)."""
    return f'ChangeName("{igor_name(base_name, "base name")}")'


def rescan_commands(
    direction: Direction = "down",
    setpoint: float | None = None,
    integral_gain: float | None = None,
    scan_rate: float | None = None,
    base_name: str | None = None,
    setpoint_kind: SetpointKind = "amplitude",
) -> list[str]:
    """Parameter changes first, then start the frame, so the new frame uses them."""
    lines = []
    if setpoint is not None:
        lines.append(setpoint_command(setpoint, setpoint_kind))
    if integral_gain is not None:
        lines.append(integral_gain_command(integral_gain))
    if scan_rate is not None:
        lines.append(scan_rate_command(scan_rate))
    if base_name is not None:
        lines.append(change_name_command(base_name))
    lines.append(scan_command(direction))
    return lines


def read_key(key: str) -> str:
    if not isinstance(key, str) or not _READ_KEY.fullmatch(key):
        raise ValueError(f"read key {key!r} is not an Igor global or PIDSLoop path")
    return key


# ---------------------------------------------------------------------------------------------
# The link: one lock, a time-out on every round trip, dry-run
# ---------------------------------------------------------------------------------------------


class IgorLink:
    """Sends command lines to Igor through aespm and reads values back, one call at a time."""

    def __init__(self, timeout: float = 5.0, dry_run: bool = False) -> None:
        if not timeout > 0:
            raise ValueError(f"Igor time-out must be > 0 s, got {timeout!r}")
        self.timeout = timeout
        self.dry_run = dry_run
        self._lock = threading.Lock()
        self._stuck: threading.Thread | None = None
        self._module: ModuleType | None = None

    def connect(self) -> None:
        """Import aespm now (it takes seconds), so the first emergency stop is not delayed."""
        if not self.dry_run:
            self._aespm()

    def problem(self) -> str | None:
        """Why an action would fail now before Igor is even asked (aespm's SendToIgor.bat is
        not where aespm looks for it), or None: checked at start, so a responder on a machine
        without Igor says so then, not at the first alert."""
        if self.dry_run:
            return None
        bat = Path(self._aespm().experiment._bash_buffer)
        if not bat.is_file():
            return (
                f"aespm runs Igor commands through {bat}, which does not exist: aespm and Igor "
                "are not set up on this machine, so every action fails until they are (see "
                "aespm's own set-up)"
            )
        return None

    def send(self, commands: str | Sequence[str]) -> list[str]:
        """Send command lines in one round trip; returns the lines (also in dry-run)."""
        lines = [commands] if isinstance(commands, str) else list(commands)
        if not lines or any("\n" in line or "\r" in line for line in lines):
            raise ValueError("send needs one or more single-line Igor commands")
        for line in lines:
            log.info("igor_command", command=line, dry_run=self.dry_run)
        if not self.dry_run:
            self._check()
            aespm = self._aespm()
            text = "\n".join(lines)
            self._call("send", lambda: aespm.write_spm(text, wait=0))
        return lines

    def read(self, key: str) -> float | None:
        """`GV(key)` from Igor, or None in dry-run; IgorNoAnswer if Igor did not write it."""
        key = read_key(key)
        if self.dry_run:
            log.info("igor_read", key=key, dry_run=True)
            return None
        self._check()
        aespm = self._aespm()
        readout = Path(aespm.experiment._read_out_buffer)
        bat = str(aespm.experiment._bash_buffer)

        def round_trip() -> float:
            readout.unlink(missing_ok=True)  # else a silent Igor hands us the previous answer
            try:
                value = aespm.read_spm(key)
            except FileNotFoundError as exc:
                if exc.filename == bat:
                    raise
                raise IgorNoAnswer(
                    f"Igor wrote no {readout.name} for GV({key!r}): it did not run the read"
                ) from exc
            return _single_value(value, key)

        return self._call(f"read {key}", round_trip)

    def scan_status(self) -> float | None:
        """Igor's ScanStatus: non-zero while a frame is being scanned (None in dry-run)."""
        return self.read(STATUS_KEY)

    # -- internals ----------------------------------------------------------------------------

    def _check(self) -> None:
        """Fail before aespm writes anything: without its buffer folder it wrote its command
        file into the working folder under a name like 'C:\\Users\\...\\ToIgor.arcmd'."""
        problem = self.problem()
        if problem is not None:
            raise IgorUnavailable(problem)

    def _aespm(self) -> Any:
        if self._module is None:
            try:
                import aespm  # lazy: heavy, Windows-minded, and only needed to really act
            except Exception as exc:  # aespm imports IPython, matplotlib, Pyro5...: any may fail
                raise IgorUnavailable(
                    f"cannot import aespm ({type(exc).__name__}: {exc}); "
                    "install spmwatch with it: pip install '.[aespm]' in the spmwatch folder"
                ) from exc
            self._module = aespm
        return self._module

    def _call(self, what: str, work: Callable[[], T]) -> T:
        """Run `work` in a daemon thread and wait at most `timeout`; never two in flight."""
        with self._lock:
            if self._stuck is not None and self._stuck.is_alive():
                raise IgorTimeout(
                    f"{what}: not sent, an earlier Igor call has still not returned "
                    "(is Igor running?)"
                )
            self._stuck = None
            box: dict[str, Any] = {}
            done = threading.Event()

            def run() -> None:
                try:
                    box["value"] = work()
                except BaseException as exc:  # handed to the caller below
                    box["error"] = exc
                finally:
                    done.set()

            worker = threading.Thread(target=run, name="spmwatch-igor-call", daemon=True)
            worker.start()
            if not done.wait(self.timeout):
                self._stuck = worker
                raise IgorTimeout(
                    f"{what}: no answer from Igor within {self.timeout:g} s (is Igor running?)"
                )
        error = box.get("error")
        if isinstance(error, IgorError):
            raise error
        if isinstance(error, OSError):
            raise IgorUnavailable(f"{what}: aespm could not reach Igor ({error})") from error
        if error is not None:
            raise IgorError(f"{what}: {type(error).__name__}: {error}") from error
        return box["value"]


def _single_value(value: Any, key: str) -> float:
    """aespm returns np.loadtxt's result: a 0-d array for one key; anything else is garbage."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise IgorNoAnswer(f"readout for {key} is not one number: {value!r}") from exc
    return number
