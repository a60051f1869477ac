"""Soak: 10^6 lines in 1,000 frames through a running daemon, watching memory and descriptors.

    python benchmarks/soak.py [--lines 1000000] [--frames 1000] [--json]

A producer process sends --frames scans of --lines/--frames lines each (every 10th failing)
as fast as the daemon takes them. After a warm-up (the first 10% of frames) the daemon's RSS
and open file descriptors (/proc/PID) are the baseline; at the end RSS may have grown by less
than 10 MB and the fd count not at all. Every frame verdict must be published exactly once
(and every failing frame given its line alert once; a poor_image alert from the frame watch
may come on top, once, on failing frames only). Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_burst import seq_gaps
from reliability_common import (
    Plan,
    Subscriber,
    fd_count,
    last_heartbeat,
    line_shape,
    rss_mib,
    split_alerts,
    start_daemon,
    start_producer,
    wait_for,
)

from spmwatch import protocol

RSS_LIMIT_MB = 10.0
TOPICS = (protocol.TOPIC_ALERT, protocol.TOPIC_FRAME, protocol.TOPIC_HEARTBEAT)


def run(total_lines: int, frames: int, points: int, fail_every: int) -> dict:
    per_frame = max(total_lines // frames, 16)
    with tempfile.TemporaryDirectory(prefix="spmwatch-soak-") as tmp:
        daemon, endpoints = start_daemon(Path(tmp))
        pid = daemon.proc.pid
        sub = Subscriber(endpoints["publish"], TOPICS)
        try:
            wait_for(lambda: last_heartbeat(sub), timeout=10)
            plan = Plan(endpoints["lines"], frames, per_frame, points, fail_every, 0.0, "soak")
            started = time.perf_counter()
            producer, results = start_producer(plan)
            warm = max(frames // 10, 1)
            timeout = 60 + total_lines / 500  # far above any plausible run; a stuck run stops
            wait_for(lambda: len(sub.of(protocol.TOPIC_FRAME)) >= warm, timeout=timeout)
            rss_warm, fds_warm = rss_mib(pid), fd_count(pid)
            samples = [(time.perf_counter() - started, rss_warm)]

            def done() -> bool:
                samples.append((time.perf_counter() - started, rss_mib(pid)))
                return len(sub.of(protocol.TOPIC_FRAME)) >= frames

            wait_for(done, timeout=timeout, interval=0.5)
            sent, ended, _ = results.get(timeout=60)
            producer.join(10)
            elapsed = time.perf_counter() - started
            time.sleep(1.0)  # one more heartbeat, and time for a repeated frame to show up
            rss_end, fds_end = rss_mib(pid), fd_count(pid)
            frame_events = sub.of(protocol.TOPIC_FRAME)
            alerts = sub.of(protocol.TOPIC_ALERT)
            beat = last_heartbeat(sub)
            alive = daemon.proc.poll() is None
        finally:
            sub.close()
            code = daemon.stop()
    per_scan = collections.Counter(e["scan_id"] for e in frame_events)
    ids = {plan.scan_id(i) for i in range(ended)}
    failing = {plan.scan_id(i) for i in range(ended) if plan.failing(i)}
    line_alerts, watch_alerts = split_alerts(alerts)
    alerted = collections.Counter(a["scan_id"] for a in line_alerts)
    watched = collections.Counter(a["scan_id"] for a in watch_alerts)
    return {
        "line_shape": line_shape(plan),
        "lines_sent": sent,
        "frames_sent": ended,
        "lines_per_frame": per_frame,
        "seconds": round(elapsed, 1),
        "lines_per_s": round(sent / elapsed),
        "lines_scored": int(beat.get("counters", {}).get("lines_scored", 0)),
        "frames_published": len(frame_events),
        "frames_exactly_once": set(per_scan) == ids and set(per_scan.values()) == {1},
        "frame_seq_gaps": seq_gaps(frame_events),
        "alerts_expected": len(failing),
        "alerts_exactly_once": set(alerted) == failing and set(alerted.values()) <= {1},
        "poor_image_alerts": len(watch_alerts),
        "poor_image_on_failing_only_once": set(watched) <= failing and set(watched.values()) <= {1},
        "rss_warm_mib": round(rss_warm, 1),
        "rss_end_mib": round(rss_end, 1),
        "rss_max_mib": round(max(r for _, r in samples), 1),
        "rss_growth_mb": round((rss_end - rss_warm) * 1.048576, 2),
        "fds_warm": fds_warm,
        "fds_end": fds_end,
        "daemon_alive": alive,
        "exit_code": code,
    }


def passed(result: dict) -> bool:
    return bool(
        result["frames_exactly_once"]
        and result["alerts_exactly_once"]
        and result["poor_image_on_failing_only_once"]
        and result["frame_seq_gaps"] == 0
        and result["rss_growth_mb"] < RSS_LIMIT_MB
        and result["fds_end"] <= result["fds_warm"]
        and result["daemon_alive"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines in total")
    parser.add_argument("--frames", type=int, default=1000, help="frames (scans) in total")
    parser.add_argument("--points", type=int, default=128, help="points per line")
    parser.add_argument("--fail-every", type=int, default=10, help="every Nth frame fails")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.lines, args.frames, args.points, args.fail_every)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    return 0 if passed(result) else 1


if __name__ == "__main__":
    sys.exit(main())
