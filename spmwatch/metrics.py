"""Prometheus metrics for fleet dashboards, on a registry of our own (not the global one).

A private registry keeps the exposition to what spmwatch means (no duplicate-registration
errors when a test runs two daemons in one process). Values the daemon already counts
elsewhere (queue depths, sources' rejected messages) are read at scrape time, not copied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# Source receive -> line scored: the budget is milliseconds, so the buckets are too.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class _Rejected(Collector):
    """spmwatch_rejected_messages_total{source, reason}, from each source's own counters."""

    def __init__(self, read: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        self._read = read

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "spmwatch_rejected_messages",
            "Messages or files a source rejected, by reason.",
            labels=["source", "reason"],
        )
        for source, reasons in self._read().items():
            for reason, count in reasons.items():
                family.add_metric([source, reason], count)
        yield family


class Metrics:
    """The daemon's instruments; `serve` exposes them at http://ADDRESS/metrics."""

    def __init__(
        self,
        queue_depths: Callable[[], Mapping[str, int]],
        rejected: Callable[[], Mapping[str, Mapping[str, int]]],
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.lines_scored = Counter(
            "spmwatch_lines_scored", "Scan lines scored.", ["source"], registry=r
        )
        self.alerts = Counter(
            "spmwatch_alerts", "Alerts published.", ["kind", "severity"], registry=r
        )
        self.frames = Counter("spmwatch_frames", "Frames finished.", ["verdict"], registry=r)
        self.errors = Counter(
            "spmwatch_errors",
            "Errors counted (all of them; the spmwatch.error events of one kind are limited).",
            ["source"],
            registry=r,
        )
        self.latency = Histogram(
            "spmwatch_line_latency_seconds",
            "From a source handing over a line to its score being ready.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.alert_latency = Histogram(
            "spmwatch_alert_latency_seconds",
            "From a source handing over the line an alert is raised on to the alert published.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        depth = Gauge("spmwatch_queue_depth", "Items waiting in a queue.", ["queue"], registry=r)
        for name in queue_depths():
            depth.labels(name).set_function(lambda name=name: queue_depths().get(name, 0))
        self.open_scans = Gauge("spmwatch_open_scans", "Scans being scored.", registry=r)
        self.paused = Gauge("spmwatch_paused", "1 while scoring is paused.", registry=r)
        r.register(_Rejected(rejected))
        self._server = None

    def serve(self, host: str, port: int) -> None:
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
