"""Daemon latency and footprint, measured from outside on real sockets and a real subprocess.

Prints:
1. line in on the line socket -> spmwatch.alert out on PUB: percentiles at a sustained rate
   (default 1,000 lines/s for 60 s of 512-point x 8-channel lines; failing scans, one alert
   each), and the daemon's own share of it (from its alert logs), alert seq gaps, line
   scores shed;
2. a 512 x 512 x 8 .ibw appearing in the watched folder (renamed in, so complete at that
   instant) -> spmwatch.frame published;
3. time to READY=1 (systemd notify) from process start, with a warm numba cache;
4. daemon RSS while many lines stream through.

    PYTHONPATH=. python benchmarks/bench_latency.py [--seconds 60] [--rate 1000]
        [--rss-lines 200000] [--frames 5] [--starts 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from spmwatch import protocol
from spmwatch.scoring.scorer import score_scan
from spmwatch.sources.linesocket import LineSender
from spmwatch.synth import clean_scan, failing_scan, write
from tests.daemon_helpers import DaemonProcess, Subscriber, wait_for, write_config


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ms = np.asarray(values) * 1e3
    p = np.percentile(ms, [50, 90, 99, 99.9])
    return (
        f"n={len(ms)} p50={p[0]:.2f} ms p90={p[1]:.2f} ms p99={p[2]:.2f} ms "
        f"p99.9={p[3]:.2f} ms max={ms.max():.2f} ms"
    )


def rss_mb(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return float("nan")


def bench_alerts(seconds: float, rate: float, rss_lines: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config, endpoints = write_config(Path(tmp))
        config.write_text(config.read_text().replace('level = "debug"', 'level = "info"'))
        daemon = DaemonProcess(config)
        daemon.wait_ready(120)
        # the alerts' view, as a responder has it: line scores are published but not taken
        # here (taking 1,000 a second in this process delayed the timestamps of the alerts)
        topics = (protocol.TOPIC_ALERT, protocol.TOPIC_FRAME, protocol.TOPIC_HEARTBEAT)
        sub = Subscriber(endpoints["publish"], topics)
        wait_for(lambda: sub.of(protocol.TOPIC_HEARTBEAT), 10)
        templates = [failing_scan(s, 128, 512, fault="dropout", at=0.5)[0] for s in range(4)]
        sent_at: dict[tuple[str, int], float] = {}
        rss: list[float] = [rss_mb(daemon.proc.pid)]
        with LineSender(endpoints["lines"], linger=30.0) as sender:
            total = int(seconds * rate)
            t0 = time.perf_counter()
            i = 0
            n_scan = 0
            next_rss = t0 + 5
            while i < total:
                scan = dataclasses.replace(templates[n_scan % 4], scan_id=f"bench-{n_scan}")
                n_scan += 1
                for line in scan.lines():
                    due = t0 + i / rate
                    while (now := time.perf_counter()) < due:
                        time.sleep(min(due - now, 0.0005))
                    sent_at[(scan.scan_id, line.position)] = time.perf_counter()
                    sender.send(line)
                    i += 1
                    if now > next_rss:
                        rss.append(rss_mb(daemon.proc.pid))
                        next_rss = now + 5
                    if i >= total:
                        break
                sender.end(scan.scan_id)
            elapsed = time.perf_counter() - t0
        wait_for(lambda: sub.of(protocol.TOPIC_FRAME, scan_id=f"bench-{n_scan - 1}"), 60)
        alerts = sub.of(protocol.TOPIC_ALERT)
        latencies, watched = [], []  # line alerts; the frame watch's poor_image alerts
        with sub._lock:
            events = list(sub.events)
        for topic, payload, received in events:
            if topic == protocol.TOPIC_ALERT:
                key = (payload["scan_id"], payload["position"])
                if key in sent_at:
                    late = received - sent_at[key]
                    (watched if payload["kind"] == "poor_image" else latencies).append(late)
        seqs = [a["seq"] for a in alerts]
        gaps = sum(1 for a, b in itertools.pairwise(seqs) if b != a + 1)
        fault_at = [score_scan(t).alert.position for t in templates]  # type: ignore[union-attr]
        expected = sum((f"bench-{s}", fault_at[s % 4]) in sent_at for s in range(n_scan))
        print(f"\n[1] line -> alert at {i / elapsed:.0f} lines/s for {elapsed:.1f} s (512 x 8 ch)")
        print(f"    {percentiles(latencies)}")
        print(f"    poor_image alerts of the frame watch (line -> alert): {percentiles(watched)}")
        # the daemon's own share: its source handing the alert line over -> the alert published
        own = [e["latency_ms"] / 1e3 for e in daemon.logged("alert") if "latency_ms" in e]  # lines
        print(f"    in the daemon (latency_ms of its alert logs): {percentiles(own)}")
        print(
            f"    alerts {len(alerts) - len(watched)} and {len(watched)} poor_image (scans that "
            f"reached their fault: {expected}), "
            f"alert seq gaps {gaps}"
        )
        # RSS under a flood (unpaced) of lines
        if rss_lines:
            t0 = time.perf_counter()
            with LineSender(endpoints["lines"], linger=60.0) as sender:
                sent = 0
                k = 0
                while sent < rss_lines:
                    scan = dataclasses.replace(templates[k % 4], scan_id=f"rss-{k}")
                    k += 1
                    for line in scan.lines():
                        sender.send(line)
                        sent += 1
                    sender.end(scan.scan_id)
                    if k % 50 == 0:
                        rss.append(rss_mb(daemon.proc.pid))
            wait_for(lambda: sub.of(protocol.TOPIC_FRAME, scan_id=f"rss-{k - 1}"), 300)
            flood = time.perf_counter() - t0
            rss.append(rss_mb(daemon.proc.pid))
            beats = sub.of(protocol.TOPIC_HEARTBEAT)
            print(
                f"\n[4] RSS over {i + sent:,} lines: start {rss[0]:.0f} MB, "
                f"after the paced run {rss[len(rss) // 4]:.0f} MB, max {max(rss):.0f} MB, "
                f"end {rss[-1]:.0f} MB (flood of {sent:,} lines at {sent / flood:.0f} "
                f"lines/s; line scores shed {beats[-1]['lines_shed']})"
            )
        sub.close()
        daemon.stop()


def bench_frames(frames: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        watched = Path(tmp) / "watched"
        staging = Path(tmp) / "staging"
        watched.mkdir()
        staging.mkdir()
        config, endpoints = write_config(
            Path(tmp), f'[watch]\nfolders = ["{watched}"]\nsettle = 0.0\n'
        )
        config.write_text(config.read_text().replace('level = "debug"', 'level = "info"'))
        daemon = DaemonProcess(config)
        daemon.wait_ready(120)
        sub = Subscriber(endpoints["publish"], (protocol.TOPIC_FRAME, protocol.TOPIC_HEARTBEAT))
        wait_for(lambda: sub.of(protocol.TOPIC_HEARTBEAT), 10)
        latencies = []
        for k in range(frames):
            scan = dataclasses.replace(clean_scan(k, 512, 512), scan_id=f"frame{k}")
            path = write(scan, staging / f"frame{k}.ibw")
            moved = watched / path.name
            t = time.perf_counter()
            os.replace(path, moved)
            wait_for(lambda name=moved.name: sub.of(protocol.TOPIC_FRAME, file=name), 30, 0.001)
            with sub._lock:
                received = next(r for topic, p, r in sub.events if p.get("file") == moved.name)
            latencies.append(received - t)
        print(
            f"\n[2] 512 x 512 x 8 .ibw renamed into the folder -> spmwatch.frame "
            f"(settle = 0): {percentiles(latencies)}\n    each: "
            + ", ".join(f"{1e3 * s:.0f}" for s in latencies)
            + " ms"
        )
        sub.close()
        daemon.stop()


def bench_ready(starts: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        times = []
        for _ in range(starts):
            address = str(Path(tmp) / "notify")
            receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            receiver.bind(address)
            receiver.settimeout(120)
            config, _ = write_config(Path(tmp))
            t = time.perf_counter()
            daemon = DaemonProcess(config, {"NOTIFY_SOCKET": address})
            while not receiver.recv(4096).startswith(b"READY=1"):
                pass
            times.append(time.perf_counter() - t)
            daemon.stop()
            receiver.close()
            os.unlink(address)
        print(
            f"\n[3] start -> READY=1 (warm numba cache, {starts} starts): "
            + ", ".join(f"{s:.2f} s" for s in times)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--rss-lines", type=int, default=200_000)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    print(f"spmwatch daemon benchmark on {os.cpu_count()} CPUs")
    if args.starts:
        bench_ready(args.starts)
    if args.seconds:
        bench_alerts(args.seconds, args.rate, args.rss_lines)
    if args.frames:
        bench_frames(args.frames)


if __name__ == "__main__":
    main()
