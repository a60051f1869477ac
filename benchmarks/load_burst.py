"""Burst: a producer pushes lines at 10x the fastest realistic rate into a running daemon.

    python benchmarks/load_burst.py [--rate 20000] [--seconds 30] [--block 1] [--json]

The daemon is a real `spmwatch run` subprocess on loopback; the producer is another process
sending scans of --lines x --points with every --fail-every-th scan failing. The line socket
pushes back when the daemon is behind (no line is dropped on the way in); what may be shed is
the per-line telemetry on spmwatch.line. Reports the daemon's RSS over time, lines shed,
alerts published vs expected with seq gaps (must be 0 lost), frames, and the catch-up time
from the producer's last line to the last line scored. Stops by itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_common import (
    Plan,
    Subscriber,
    last_heartbeat,
    line_shape,
    rss_mib,
    scored,
    split_alerts,
    start_daemon,
    start_producer,
    wait_for,
)

from spmwatch import protocol

TOPICS = (protocol.TOPIC_ALERT, protocol.TOPIC_FRAME, protocol.TOPIC_HEARTBEAT)


def seq_gaps(events: list[dict]) -> int:
    """Missing seq numbers between the first and last event seen (0: nothing lost)."""
    seqs = sorted(e["seq"] for e in events)
    return (seqs[-1] - seqs[0] + 1 - len(set(seqs))) if seqs else 0


def run(
    rate: float, seconds: float, lines: int, points: int, fail_every: int, block: int = 1
) -> dict:
    with tempfile.TemporaryDirectory(prefix="spmwatch-burst-") as tmp:
        daemon, endpoints = start_daemon(Path(tmp))
        pid = daemon.proc.pid
        sub = Subscriber(endpoints["publish"], TOPICS)
        try:
            wait_for(lambda: last_heartbeat(sub), timeout=10)
            rss_start = rss_mib(pid)
            scans = int(rate * seconds / lines) + 1
            plan = Plan(
                endpoints["lines"], scans, lines, points, fail_every, rate, "burst", seconds, block
            )
            producer, results = start_producer(plan)
            samples: list[tuple[float, float]] = []
            started = time.perf_counter()
            while producer.is_alive() and time.perf_counter() - started < seconds + 120:
                samples.append((time.perf_counter() - started, rss_mib(pid)))
                time.sleep(0.25)
            sent, ended, send_seconds = results.get(timeout=60)
            burst_end = time.perf_counter()

            def caught_up() -> bool:  # lines_scored counts since start: only this run's lines
                samples.append((time.perf_counter() - started, rss_mib(pid)))
                return scored(sub) >= sent

            wait_for(caught_up, timeout=300, interval=0.1)
            catch_up = time.perf_counter() - burst_end
            ids = {plan.scan_id(i) for i in range(ended)}
            wait_for(
                lambda: len({p["scan_id"] for p in sub.of(protocol.TOPIC_FRAME)} & ids) == ended,
                timeout=60,
            )
            beat = last_heartbeat(sub)
            alerts = sub.of(protocol.TOPIC_ALERT)
            line_alerts, watch_alerts = split_alerts(alerts)
            failing = {plan.scan_id(i) for i in range(ended) if plan.failing(i)}
            alerted = {a["scan_id"] for a in line_alerts}
            rss_end = rss_mib(pid)
            alive = daemon.proc.poll() is None
        finally:
            sub.close()
            code = daemon.stop()
    return {
        "line_shape": line_shape(plan),
        "target_rate": rate,
        "lines_per_message": block,
        "seconds": round(send_seconds, 2),
        "lines_sent": sent,
        "send_rate": round(sent / send_seconds),
        "scans": ended,
        "lines_scored": scored_lines(beat),
        "lines_shed": int(beat.get("lines_shed", 0)),
        "rss_start_mib": round(rss_start, 1),
        "rss_max_mib": round(max(r for _, r in samples), 1),
        "rss_end_mib": round(rss_end, 1),
        "alerts_expected": len(failing),
        "alerts_published": len(line_alerts),
        "alerts_lost": len(failing - alerted),
        "false_alerts": len({a["scan_id"] for a in alerts} - failing),
        "poor_image_alerts": len(watch_alerts),
        "alert_seq_gaps": seq_gaps(alerts),
        "frames": len({p["scan_id"] for p in sub.of(protocol.TOPIC_FRAME)} & ids),
        "catch_up_s": round(catch_up, 2),
        "daemon_alive": alive,
        "exit_code": code,
        "rss_series": [
            (round(t, 1), round(r, 1)) for t, r in samples[:: max(len(samples) // 40, 1)]
        ],
    }


def scored_lines(beat: dict) -> int:
    return int(beat.get("counters", {}).get("lines_scored", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20_000, help="lines/s offered")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the burst")
    parser.add_argument("--lines", type=int, default=128, help="lines per scan")
    parser.add_argument("--points", type=int, default=256, help="points per line")
    parser.add_argument("--fail-every", type=int, default=10, help="every Nth scan fails")
    parser.add_argument(
        "--block", type=int, default=1, help="lines per message (1: one message per line)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.rate, args.seconds, args.lines, args.points, args.fail_every, args.block)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if key != "rss_series":
                print(f"{key:>18}: {value}")
    ok = result["alerts_lost"] == 0 and result["alert_seq_gaps"] == 0 and result["daemon_alive"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
