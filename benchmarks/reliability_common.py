"""Shared plumbing of the load and soak benchmarks: a daemon subprocess on free loopback ports,
a paced line producer in its own process, /proc probes (RSS, open fds) and a heartbeat reader.

Loopback only, and every wait has a deadline: a benchmark stops by itself.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from daemon_helpers import DaemonProcess, Subscriber, free_port, wait_for  # noqa: E402

from spmwatch import protocol  # noqa: E402
from spmwatch.model import Scan  # noqa: E402

__all__ = ["DaemonProcess", "Subscriber", "wait_for"]


def start_daemon(folder: Path, extra: str = "") -> tuple[DaemonProcess, dict[str, str]]:
    """`spmwatch run` on fresh loopback ports with the shipped model (what a user runs: its
    verdict takes the numpy fast path); returns it once ready."""
    ports = {name: free_port() for name in ("publish", "lines", "control")}
    endpoints = {name: f"tcp://127.0.0.1:{port}" for name, port in ports.items()}
    config = folder / "spmwatch.toml"
    config.write_text(
        f'[publish]\nendpoint = "{endpoints["publish"]}"\nheartbeat_interval = 0.25\n'
        f'[lines]\nendpoint = "{endpoints["lines"]}"\n'
        f'[control]\nendpoint = "{endpoints["control"]}"\n'
        '[metrics]\naddress = ""\n[logging]\nlevel = "info"\nformat = "json"\n' + extra
    )
    daemon = DaemonProcess(config)
    daemon.wait_ready(timeout=120)
    return daemon, endpoints


def rss_mib(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def last_heartbeat(sub: Subscriber) -> dict[str, Any]:
    beats = sub.of(protocol.TOPIC_HEARTBEAT)
    return beats[-1] if beats else {}


def split_alerts(alerts: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(line alerts, frame-watch alerts). A failing scan raises its line alert once; the frame
    watch may add a poor_image alert on the same scan (a judgement of the image so far, on
    its own rule), and only checks frames while the daemon keeps up, so its count varies."""
    line = [a for a in alerts if a.get("kind") != "poor_image"]
    return line, [a for a in alerts if a.get("kind") == "poor_image"]


def scored(sub: Subscriber) -> int:
    return int(last_heartbeat(sub).get("counters", {}).get("lines_scored", 0))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the producer sends: `scans` scans of `lines` x `points`, every `fail_every`-th
    scan failing (0: none), at `rate` lines/s (0: as fast as the daemon takes them)."""

    endpoint: str
    scans: int
    lines: int
    points: int
    fail_every: int
    rate: float
    prefix: str = "scan"
    seconds: float = 0.0  # stop after this long even if scans remain (0: no limit)
    block: int = 1  # lines per message (protocol `count`): 1 is one message per line

    def scan_id(self, i: int) -> str:
        return f"{self.prefix}_{i:06d}"

    def failing(self, i: int) -> bool:
        return self.fail_every > 0 and i % self.fail_every == self.fail_every - 1


def templates(plan: Plan) -> tuple[Scan, Scan]:
    """A clean and a failing scan of the plan's size (the failing one alerts when scored)."""
    from spmwatch.synth import clean_scan, failing_scan

    good = clean_scan(11, plan.lines, plan.points)
    bad, _ = failing_scan(12, plan.lines, plan.points, fault="dropout", at=0.5)
    return dataclasses.replace(good, scan_id="good"), dataclasses.replace(bad, scan_id="bad")


def line_shape(plan: Plan) -> str:
    """The shape of one line as sent, for reports: channels x points."""
    good, _ = templates(plan)
    return f"{len(good.channels)} channels x {plan.points} points, {plan.lines} lines per scan"


def _produce(plan: Plan, results: mp.Queue) -> None:
    """Child process: send the plan, paced, then report (lines sent, scans ended, seconds)."""
    from spmwatch.protocol import encode_end
    from spmwatch.sources.linesocket import LineSender

    good, bad = templates(plan)
    frames = {kind: _messages(scan, plan.block) for kind, scan in (("good", good), ("bad", bad))}
    sender = LineSender(plan.endpoint, linger=60.0)
    socket = sender._socket  # pre-encoded frames: only the scan id in the header changes
    sent = ended = 0
    started = time.perf_counter()
    try:
        for i in range(plan.scans):
            if plan.seconds and time.perf_counter() - started >= plan.seconds:
                break
            template = frames["bad" if plan.failing(i) else "good"]
            new = plan.scan_id(i).encode()
            for count, (header, *arrays) in template:
                socket.send_multipart([_retag(header, new), *arrays])
                sent += count
                if plan.rate and sent % 100 < count:
                    ahead = sent / plan.rate - (time.perf_counter() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            socket.send_multipart(encode_end(plan.scan_id(i)))
            ended += 1
    finally:
        elapsed = time.perf_counter() - started
        sender.close()
        results.put((sent, ended, elapsed))


def _messages(scan: Scan, block: int) -> list[tuple[int, list[bytes]]]:
    """The scan's lines encoded in blocks of `block` lines: (lines in the message, frames)."""
    from spmwatch.protocol import encode_lines

    lines = list(scan.lines(source="bench"))
    chunks = [lines[k : k + block] for k in range(0, len(lines), block)]
    return [(len(chunk), encode_lines(chunk)) for chunk in chunks]


_SCAN_ID = b'"scan_id":"'


def _retag(header: bytes, scan_id: bytes) -> bytes:
    """Swap the template's scan id for another (a safe id needs no escaping in JSON)."""
    at = header.index(_SCAN_ID) + len(_SCAN_ID)
    return header[:at] + scan_id + header[header.index(b'"', at) :]


def start_producer(plan: Plan) -> tuple[mp.Process, mp.Queue]:
    results: mp.Queue = mp.get_context("spawn").Queue()
    process = mp.get_context("spawn").Process(target=_produce, args=(plan, results), daemon=True)
    process.start()
    return process, results
