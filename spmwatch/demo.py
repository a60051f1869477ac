"""`spmwatch demo`: the whole chain on one machine, no microscope, in well under a minute
(once numba has compiled the kernels: the first run after an install adds about a minute).

It writes a generated scan whose tip fails part-way, starts the real daemon and the responder
(dry-run) as subprocesses on free loopback ports, replays the scan into the daemon's line socket
as a live producer would, and prints what a user would see: the alert the moment it is
published, the Igor commands the responder would send, the frame verdict, and a report PNG.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import zmq

from spmwatch import protocol, synth
from spmwatch.assess import assess, score_record
from spmwatch.classify.classifier import load_default
from spmwatch.control import request
from spmwatch.model import ordinal, reasons_text, span_text
from spmwatch.report import write_report
from spmwatch.settings import ModelSettings
from spmwatch.sources.linesocket import LineSender
from spmwatch.sources.replay import replay_lines

# A cold numba cache compiles the kernels on the first start: ~60 s on a 2-core machine
START_TIMEOUT = 300.0
COMPILING_NOTE_AFTER = 5.0  # s of waiting for the daemon before the demo says why
RESULT_TIMEOUT = 20.0
# The folder this process imported spmwatch from. The children run `python -m spmwatch` from
# there: from any other folder, `-m` would import a `spmwatch` found in that folder first (the
# clone a user installed from), which is other code with a numba cache of its own to compile.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class DemoError(RuntimeError):
    """A step of the demo did not happen in time; the text says which."""


@dataclass
class Endpoints:
    pub: str
    lines: str
    control: str
    actions: str

    @classmethod
    def free(cls) -> Endpoints:
        return cls(*(f"tcp://127.0.0.1:{_free_port()}" for _ in range(4)))


@dataclass
class Seen:
    """What arrived on the subscriber, filled by the listening thread."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)


def run_demo(
    out_dir: Path,
    fault: str = "tip_change",
    seed: int = 0,
    rate: float = 100.0,
    say: TextIO = sys.stdout,
) -> int:
    """Run the demo in `out_dir`; return 0 when the alert, the action and the verdict all came."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scan, truth = synth.failing_scan(seed=seed, fault=fault)
    scan.scan_id = "demo_0001"
    scan_file = synth.write(scan, out_dir / f"{scan.scan_id}.ibw")
    first = truth.first_position or 0
    order = scan.acquisition_order()
    if first < len(order):
        where = f"from line {order[first]}, the {ordinal(first + 1)} scanned"
    else:  # a partial frame: the fault is the lines that never came
        where = f"after the {ordinal(first)} line scanned of {scan.expected_lines}"
    print(f"scan      {scan_file}: {scan.n_lines} lines, {fault} {where}", file=say)
    ends = Endpoints.free()
    daemon_cfg, respond_cfg = _write_configs(out_dir, ends)
    seen = Seen()
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        daemon = stack.enter_context(_process("run", daemon_cfg, out_dir / "daemon.log"))
        responder = stack.enter_context(_process("respond", respond_cfg, out_dir / "respond.log"))
        listener = threading.Thread(target=_listen, args=(ends, seen, stop, say), daemon=True)
        listener.start()
        stack.callback(listener.join, 2.0)
        stack.callback(stop.set)
        _wait(
            lambda: _ready(ends.control),
            "the daemon to report ready",
            daemon,
            note=(
                "daemon    starting: the first run after an install compiles the numba kernels"
                " into a cache (about a minute); later starts take a few seconds",
                say,
            ),
        )
        _wait(
            lambda: "responder_ready" in _read(out_dir / "respond.log"), "the responder", responder
        )
        print(f"daemon    ready on {ends.pub}; responder in dry-run", file=say)
        print(f"replay    {scan.n_lines} lines at {rate:g} lines/s -> {ends.lines}", file=say)
        with LineSender(ends.lines, send_timeout=10.0) as sender:
            for line in replay_lines(scan, rate):
                sender.send(line)
            sender.end(scan.scan_id)
        # the frame comes after any alert of its scan (one PUB socket keeps their order), and
        # an alert is followed by the responder's action
        _wait_seen(
            seen, lambda: bool(seen.frames) and bool(seen.actions or not seen.alerts), daemon
        )
    if not seen.alerts:
        if seen.frames[0]["verdict"] != "fail":
            raise DemoError("the fault was missed: no alert, and the frame passed")
        print(
            "no alert  the line monitor found nothing to act on while scanning (a drift too "
            "slow for it, or lines that never came); the frame verdict failed the scan",
            file=say,
        )
    # judged as the daemon judged it, the frame watch included (its poor_image is in the PNG)
    frame, verdict, watched = assess(scan, load_default(), watching=ModelSettings())
    record = score_record(str(scan_file), frame, verdict, watched, scan.problems)
    paths = write_report(scan, frame, record, out_dir / "report")
    print(f"report    {paths['png']}", file=say)
    print(f"logs      {out_dir / 'daemon.log'}, {out_dir / 'respond.log'}", file=say)
    return 0


def _listen(ends: Endpoints, seen: Seen, stop: threading.Event, say: TextIO) -> None:
    """Print alerts, actions and verdicts as they are published, and keep them for the checks."""
    context = zmq.Context.instance()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for topic in (protocol.TOPIC_ALERT, protocol.TOPIC_FRAME, protocol.TOPIC_ACTION):
        sub.subscribe(topic.encode())
    sub.connect(ends.pub)
    sub.connect(ends.actions)
    try:
        while not stop.is_set():
            if not sub.poll(100):
                continue
            topic, event = protocol.decode_event(sub.recv_multipart())
            print(_describe(topic, event), file=say, flush=True)
            with seen.changed:
                {
                    protocol.TOPIC_ALERT: seen.alerts,
                    protocol.TOPIC_FRAME: seen.frames,
                    protocol.TOPIC_ACTION: seen.actions,
                }[topic].append(event)
                seen.changed.notify_all()
    finally:
        sub.close()


def _describe(topic: str, event: dict[str, Any]) -> str:
    if topic == protocol.TOPIC_ALERT:
        return (
            f"ALERT     line {event['line']} (the {ordinal(event['position'] + 1)} scanned): "
            f"{event['kind']}, severity {event['severity']}, "
            f"frame so far p(fail) {event['probability']:.2f}"
            f"{_for(event) if event['kind'] == 'poor_image' else ''}; suggested: {event['action']}"
        )
    if topic == protocol.TOPIC_ACTION:
        commands = "; ".join(event.get("igor_commands") or []) or "(no Igor command)"
        mode = "would send" if event.get("dry_run") else "sent"
        return f"ACTION    {event['action']} {event['outcome']}: {mode} {commands}"
    events = ", ".join(
        f"{e['kind']} {span_text(e['kind'], e['start'], e['end'])}" for e in event.get("events", [])
    )
    decided = {"alert": ", by the alert rule", "stopped_early": ", stopped early"}
    return (
        f"FRAME     {event['scan_id']}: {event['verdict'].upper()} "
        f"(probability {event['probability']:.2f}"
        f"{decided.get(event.get('decided_by', ''), _for(event))}); events: {events or 'none'}"
    )


def _for(event: dict[str, Any]) -> str:
    """The model's reasons, as ", for: offset bands of lines (+1.6)", or nothing."""
    said = reasons_text(event.get("reasons"))
    return f", for: {said}" if said else ""


def _write_configs(out_dir: Path, ends: Endpoints) -> tuple[Path, Path]:
    daemon_cfg = out_dir / "spmwatch.toml"
    daemon_cfg.write_text(
        "[lines]\n"
        f'endpoint = "{ends.lines}"\n'
        "[publish]\n"
        f'endpoint = "{ends.pub}"\n'
        "line_topic = false\n"
        "[control]\n"
        f'endpoint = "{ends.control}"\n'
        "[metrics]\n"
        'address = ""\n'
        "[logging]\n"
        'format = "json"\n'
    )
    respond_cfg = out_dir / "respond.toml"
    respond_cfg.write_text(
        f'subscribe = "{ends.pub}"\n'
        f'actions_endpoint = "{ends.actions}"\n'
        "dry_run = true\n"
        f'state_file = "{(out_dir / "respond-state.json").as_posix()}"\n'
        'log_format = "json"\n'
    )
    return daemon_cfg, respond_cfg


@contextlib.contextmanager
def _process(command: str, config: Path, log_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `spmwatch COMMAND --config CONFIG` child logging to `log_file`, ended on exit."""
    with log_file.open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "spmwatch", command, "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=PACKAGE_ROOT,
        )
        try:
            yield child
        finally:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _ready(endpoint: str) -> bool:
    """The daemon is serving: warm, every socket bound (while it warms up, its control
    socket already answers, with state "warming_up")."""
    try:
        reply = request(endpoint, "status", timeout=0.5)
    except TimeoutError:
        return False
    return bool(reply.get("ok")) and reply.get("state") == "serving"


def _wait(
    predicate: Callable[[], bool],
    what: str,
    child: subprocess.Popen[bytes],
    note: tuple[str, TextIO] | None = None,
) -> None:
    """Poll until `predicate` holds; `note` (text, stream) is printed once if that takes longer
    than COMPILING_NOTE_AFTER, so a slow first start does not look like a hang."""
    started = time.monotonic()
    while not predicate():
        if child.poll() is not None:
            raise DemoError(f"waiting for {what}: the process exited with code {child.returncode}")
        waited = time.monotonic() - started
        if waited > START_TIMEOUT:
            raise DemoError(f"{what} did not come within {START_TIMEOUT:g} s")
        if note is not None and waited > COMPILING_NOTE_AFTER:
            print(note[0], file=note[1], flush=True)
            note = None
        time.sleep(0.05)


def _wait_seen(seen: Seen, done: Callable[[], bool], daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + RESULT_TIMEOUT
    with seen.changed:
        while not done():
            left = deadline - time.monotonic()
            if left <= 0 or daemon.poll() is not None:
                missing = "frame" if not seen.frames else "action for the alert"
                raise DemoError(f"no {missing} published within {RESULT_TIMEOUT:g} s")
            seen.changed.wait(min(left, 0.2))


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
