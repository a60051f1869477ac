"""Line-socket throughput on loopback: how many 512-point, 4-channel lines per second.

Run: python benchmarks/linesocket_throughput.py [N_LINES]
A fast AFM scans tens of lines per second, so anything in the thousands leaves ample headroom.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np

from spmwatch.model import Line
from spmwatch.protocol import EndOfScan
from spmwatch.sources.linesocket import LineReceiver, LineSender


def main(n_lines: int = 20_000, points: int = 512) -> None:
    done = threading.Event()
    received = 0

    def sink(item: object) -> None:
        nonlocal received
        if isinstance(item, EndOfScan):
            done.set()
        elif isinstance(item, Line):
            received += 1

    rng = np.random.default_rng(0)
    channels = {
        name: rng.normal(size=points).astype(np.float32)
        for name in ("HeightTrace", "HeightRetrace", "PhaseTrace", "PhaseRetrace")
    }
    receiver = LineReceiver("tcp://127.0.0.1:*", sink)
    receiver.start()
    started = time.perf_counter()
    with LineSender(receiver.endpoint) as sender:
        for index in range(n_lines):
            sender.send(Line("bench", index, index, n_lines, channels))
        sender.end("bench")
    done.wait(120)
    elapsed = time.perf_counter() - started
    receiver.stop()
    mb = n_lines * (len(channels) * points * 4) / 1e6
    print(f"{received} of {n_lines} lines x {len(channels)} channels x {points} points")
    print(
        f"{elapsed:.2f} s: {received / elapsed:,.0f} lines/s, {mb / elapsed:,.1f} MB/s of samples"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
