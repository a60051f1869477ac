"""A line-socket producer run as a real subprocess by the source tests.

Usage: python tests/sources_producer.py ENDPOINT FIRST STOP [--end]
Sends lines FIRST..STOP-1 of the "restart" scan, optionally the end of scan, then closes with
an unlimited linger so everything sent is delivered before the process exits.
"""

from __future__ import annotations

import sys

from sources_helpers import test_line

from spmwatch.sources.linesocket import LineSender


def main(argv: list[str]) -> int:
    endpoint, first, stop = argv[0], int(argv[1]), int(argv[2])
    with LineSender(endpoint) as sender:
        for index in range(first, stop):
            sender.send(test_line(index))
        if "--end" in argv:
            sender.end("restart")
    print(f"sent {first}..{stop - 1}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
