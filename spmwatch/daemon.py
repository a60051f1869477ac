"""The daemon: sources -> per-scan scorers -> classifier -> publisher, with its lifecycle.

Threads and who owns what:
- each source runs its own thread and hands items to one bounded inbox (a full inbox makes the
  sources wait: backpressure, not loss);
- the main thread (`serve`) is the only one that scores, touches scan state and decides what to
  publish; it also pings the systemd watchdog, so a stuck scorer gets the service restarted;
- the publisher thread owns the PUB socket, the control thread the REP socket, and
  prometheus-client its HTTP thread. They read state through `status()`, under a lock.

Nothing a producer sends or a file contains may stop the daemon: every item is handled inside a
try block that turns failures into a logged spmwatch.error.
"""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
import zmq

from spmwatch import logs, numba_build, protocol
from spmwatch.advice import suggested_action
from spmwatch.classify.classifier import Classifier, ModelError, load_model
from spmwatch.classify.features import ChannelStatsAccumulator
from spmwatch.classify.watch import FrameWatch, is_check, lines_to_next_check
from spmwatch.config import ConfigError
from spmwatch.control import ControlServer
from spmwatch.inbox import Inbox
from spmwatch.metrics import Metrics
from spmwatch.model import Alert, FrameScores, Line, LineBlock, Scan, Verdict, span_text
from spmwatch.publish import Publisher
from spmwatch.scoring.scorer import ScanScorer, score_scan, synthetic_scan
from spmwatch.sdnotify import Notifier
from spmwatch.settings import Settings, changed_keys, load_settings
from spmwatch.sources import FrameFile, SourceError
from spmwatch.sources.linesocket import reason_key

if TYPE_CHECKING:
    from spmwatch.sources.folder import SeenFiles

log = structlog.get_logger("spmwatch.daemon")

Arrived = tuple[float, Line | LineBlock]  # lines as handed over, with the hand-over time

_TICK = 0.05  # longest the main loop waits for an item before its housekeeping
LOG_FLUSH_INTERVAL = 0.25  # s an info log line may wait in the buffer (see spmwatch.logs)
_SWITCH_INTERVAL = 0.0005  # s; see run()
_BATCH = 64  # most items taken from the inbox at once (an alert waits for at most this many)
_DRAIN_TIMEOUT = 20.0  # on shutdown, longest wait for sources to stop handing items over
_FIRST_LINES_HELD = 1024  # room reserved for an open scan's lines at first; it grows as needed
# Sections a SIGHUP applies at once; the others own sockets or threads and need a restart.
_LIVE_SECTIONS = ("scoring", "model", "logging", "daemon")


def _as_stored(
    lines: ChannelStatsAccumulator, frame: FrameScores
) -> ChannelStatsAccumulator | dict[str, np.ndarray]:
    """The scan's lines in the order a saved .ibw stores them (by line index), so a finished
    scan's verdict is the one `spmwatch score` gives its file: some frame statistics (the
    entropy's sample lines, the first against the last third) depend on the order, and a
    top-down scan arrives last index first. Lines that came in index order stay as they are."""
    index = np.fromiter((score.index for score in frame.lines), np.int64, len(frame.lines))
    if len(index) != lines.n_lines or bool(np.all(index[1:] >= index[:-1])):
        return lines
    order = np.argsort(index, kind="stable")
    return {name: rows[order] for name, rows in lines.channels().items()}


class StartupError(RuntimeError):
    """The daemon cannot start (model unusable, address in use); the text says why.
    `exit_code` 2 marks a configuration to fix (systemd does not retry it), 1 anything else."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _tcp_port_taken(endpoint: str) -> str | None:
    """Why a listener could not bind this tcp:// endpoint now, or None: free, port * (any
    free one), or a host or interface name (the real bind tells about those)."""
    tcp = protocol.tcp_host_port(endpoint)
    if tcp is None or not tcp[1].isdigit():
        return None
    host, port = tcp[0].strip("[]"), int(tcp[1])
    host = {"*": "0.0.0.0", "localhost": "127.0.0.1"}.get(host, host)
    try:
        ipv6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        return None
    with socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _ipc_folder_missing(endpoint: str) -> str | None:
    """Why an ipc:// socket could not be bound: its folder does not exist (None otherwise,
    and for other schemes and Linux's abstract sockets, ipc://@name)."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    folder = Path(endpoint[len("ipc://") :]).parent
    return None if folder.is_dir() else f"the folder {folder} does not exist"


class _StoppedWarmingUp(Exception):
    """SIGTERM/SIGINT during the warm-up: raised from the signal handler to cut it short
    (a first start compiles for about a minute; subprocess.run kills the compiling child)."""


@dataclasses.dataclass
class _OpenScan:
    """One scan being scored line by line, with its lines so far for the classifier (the
    accumulator keeps them and their per-line statistics, so a verdict only aggregates)."""

    scorer: ScanScorer
    source: str
    instance: protocol.ScanInstance  # live, started when its first line here arrived
    last_seen: float
    lines: ChannelStatsAccumulator
    alerted: bool = False
    watch: FrameWatch | None = None  # the frame watch's checks (None: off)
    late: bool = False  # opened on a line after the scan's first (evicted, timed out, restarted)
    count: int = 0
    row_bytes: int = 0  # what `keep` holds per line: points x channels x float32

    def keep(self, item: Line | LineBlock) -> None:
        """Keep the lines' rows (the classifier's and the scorer's input); a missing or
        misshapen channel is kept as NaN, which the scorer takes for a dropout."""
        if isinstance(item, LineBlock):
            try:
                self.lines.push_block(item.channels)  # the usual block: a copy per channel
                return
            except ValueError:
                pass
        for line in item.lines() if isinstance(item, LineBlock) else (item,):
            try:
                self.lines.push(line.channels)  # checks each row; a refused line is not added
            except ValueError:
                shape = (self.scorer.points,)
                rows = {name: _row(line.channels.get(name), shape) for name in self.lines.names}
                self.lines.push(rows)


_PAUSED_SCANS_KEPT = 256
ERROR_BURST, ERROR_WINDOW = 20, 10.0  # reports of one kind of error let through per window (s)


def _n_lines(item: Line | LineBlock) -> int:
    return item.count if isinstance(item, LineBlock) else 1


def _split_run(run: list[Arrived], lines: int) -> tuple[list[Arrived], list[Arrived]]:
    """The first `lines` lines of a run and the rest (a block is split where it falls)."""
    for k, (received, item) in enumerate(run):
        n = _n_lines(item)
        if n >= lines:
            if n == lines:
                return run[: k + 1], run[k + 1 :]
            assert isinstance(item, LineBlock)
            head, tail = item.split(lines)
            return [*run[:k], (received, head)], [(received, tail), *run[k + 1 :]]
        lines -= n
    return run, []


def _row(values: object, shape: tuple[int]) -> np.ndarray:
    """A line's channel as float32 of the scan's shape; NaN when missing or misshapen."""
    if values is not None and np.shape(values) == shape:
        try:
            return np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            pass
    return np.full(shape, np.nan, dtype=np.float32)


class Daemon:
    """`Daemon(settings).run()` serves until SIGTERM/SIGINT and returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        config_path: str | Path | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = Path(config_path) if config_path else None
        self.notifier = notifier or Notifier()
        self._inbox: Inbox[tuple[float, object]] = Inbox(settings.daemon.queue_size)
        self._shed_depth = max(1, settings.daemon.queue_size // 4)
        self._scans: OrderedDict[str, _OpenScan] = OrderedDict()
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "lines_received",
                "lines_scored",
                "lines_paused",
                "alerts",
                "frames",
                "frame_files",
                "errors",
                "scans_evicted",
                "scans_timed_out",
            ),
            0,
        )
        self._paused = False
        self._error_reports = logs.Throttle(ERROR_BURST, ERROR_WINDOW)
        # scans that lost lines to a pause (newest last, bounded): judged as frames in progress
        self._paused_through: OrderedDict[str, bool] = OrderedDict()
        self._frames_deferred = False  # some FrameFile was deferred while paused
        self._held_bytes = 0  # lines kept by the open scans (main thread only)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._started = time.monotonic()
        self._serving = False  # set once warm and bound: `ctl status` says warming_up before
        self._warming = False  # in the warm-up: a stop signal cuts it short
        self.model: Classifier | None = None
        self.sources: list[Any] = []
        self._seen: SeenFiles | None = None  # the watch's record of handled files
        self.publisher: Publisher | None = None
        self.control: ControlServer | None = None
        self._scored_by: dict[str, Any] = {}  # lines_scored counter child per source
        self.metrics = Metrics(self._queue_depths, self._rejected)

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        """Start, report ready, serve until asked to stop, drain, and return 0."""
        self._install_signals()
        # The socket, publisher and control threads wait for the GIL while the main thread
        # scores; Python's default 5 ms switch interval would add up to that to an alert's way.
        sys.setswitchinterval(_SWITCH_INTERVAL)
        try:
            self.start()
        except StartupError as exc:
            log.error("startup_failed", error=str(exc))
            self._close()
            return exc.exit_code
        except _StoppedWarmingUp:
            log.info("stopping", during="warm-up")
            self._close()
            log.info("stopped", drained=0, **self._snapshot_counts())
            logs.flush()
            return 0
        self.serve()
        self.shutdown()
        return 0

    def start(self) -> None:
        """Load the model and warm numba first, then bind everything; READY comes last.

        A bad model is refused before any socket is bound. The control socket alone binds
        before the warm-up, so `spmwatch ctl status` answers `warming_up` during the minute
        a first start compiles, instead of timing out."""
        s = self.settings
        self.notifier.status("loading model, compiling kernels")
        try:
            self.model = load_model(s.model.path)
        except ModelError as exc:
            raise StartupError(f"model: {exc}") from exc
        self._claim_state_file()
        self.control = ControlServer(s.control.endpoint, self.command)
        self._bind(self.control.start, "control.endpoint", s.control.endpoint)
        self._check_addresses_free()
        log.info(
            "warming_up",
            note="loading the numba kernels from numba's cache (seconds), or compiling them on a"
            " first start after an install (about a minute)",
        )
        logs.flush()  # out now: nothing else is written during the minute it explains
        self._warming = True
        try:
            if self._stop.is_set():  # asked to stop while the model loaded
                raise _StoppedWarmingUp
            warm = self._warm_up()
        finally:
            self._warming = False
        self.publisher = Publisher(
            s.publish.endpoint,
            hwm=s.publish.hwm,
            line_queue=s.publish.line_queue,
            heartbeat_interval=s.publish.heartbeat_interval,
            heartbeat=self._heartbeat,
            curve=(s.curve.server_secret_key, s.curve.authorized_keys) if s.curve.enabled else None,
            name=s.daemon.name or socket.gethostname(),
        )
        for key, endpoint, risk in s.exposed():
            log.warning(
                "endpoint_exposed",
                key=key,
                endpoint=endpoint,
                reason=f"listens beyond this machine without authentication: anyone who reaches "
                f"it can {risk} (docs/responder.md, CURVE)",
            )
        self._bind(self.publisher.start, "publish.endpoint", s.publish.endpoint)
        if s.metrics.address:
            serve_metrics = lambda: self.metrics.serve(*s.metrics.host_port)  # noqa: E731
            self._bind(serve_metrics, "metrics.address", s.metrics.address)
        for source in self._make_sources():
            self._bind(source.start, f"{source.name} source", getattr(source, "endpoint", ""))
            self.sources.append(source)
        self._started = time.monotonic()
        self._serving = True
        model = self._model_identity()
        status = f"scoring; model {model['model']} ({model['model_sha256']}); warm-up {warm:.2f} s"
        # Everything loaded so far (numba, sklearn, the model) lives as long as the process:
        # out of the collector's sight, a full collection no longer walks it mid-scan.
        gc.freeze()
        self.notifier.ready(status)
        log.info(
            "ready",
            warm_up_s=round(warm, 3),
            config=str(self.config_path) if self.config_path else "none: built-in defaults",
            **model,
            publish=self.publisher.bound_endpoint,
            control=self.control.endpoint,
            lines=next((src.endpoint for src in self.sources if src.name == "socket"), None),
            metrics=s.metrics.address or None,
            sources=[source.name for source in self.sources],
            folders=[str(folder) for folder in s.watch.folders] or None,
            state_file=s.watch.state_file if self._seen is not None else None,
        )

    def _warm_up(self) -> float:
        """Compile (or load from cache) the scorer's and the classifier's numba kernels on a tiny
        scan, so the first real line and the first alert's verdict are not slow."""
        assert self.model is not None
        started = time.perf_counter()
        numba_build.warm_up()
        scan = synthetic_scan()
        frame = score_scan(scan)
        as_float32 = {k: v.astype(np.float32) for k, v in scan.channels.items()}
        for channels in (scan.channels, as_float32):  # saved frames come as either
            self.model.verdict(frame, channels, finished=True)
        held = ChannelStatsAccumulator(scan.channels, scan.n_points, scan.n_lines)
        for index in range(scan.n_lines):
            held.push({k: v[index] for k, v in as_float32.items()})
        self.model.verdict(frame, held, finished=False)
        # a frame of the size Asylum saves: without it the first saved frame paid for the
        # allocator's first large blocks and cold code, 51-105 ms against ~45 ms for the next
        saved = _noise_frame(lines=512, points=512, pairs=4)
        self.model.verdict(score_scan(saved), saved.channels, finished=True)
        return time.perf_counter() - started

    def serve(self) -> None:
        """The main loop: score what arrives, keep house, until `request_stop`."""
        watchdog = self.notifier.watchdog_interval
        next_ping = time.monotonic()
        next_sweep = time.monotonic() + 1.0
        next_flush = time.monotonic()
        while not self._stop.is_set():
            batch = self._inbox.take(_BATCH, _TICK)
            if batch:
                self._handle_batch(batch)
            now = time.monotonic()
            if now >= next_flush:
                logs.flush()
                next_flush = now + LOG_FLUSH_INTERVAL
            if watchdog is not None and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + watchdog
            if now >= next_sweep:
                self._expire_idle(now)
                self._redeliver_if_resumed()
                self._report_held_errors()
                next_sweep = now + 1.0
            if self._reload.is_set():
                self._reload.clear()
                self.reload()

    def shutdown(self) -> None:
        """Stop the sources, score and publish everything queued, send final counters, close."""
        self.notifier.stopping()
        log.info("stopping", queued=len(self._inbox), open_scans=len(self._scans))
        for source in self.sources:
            source.stop(timeout=0)  # ask all at once; they finish while the inbox drains
        deadline = time.monotonic() + _DRAIN_TIMEOUT
        drained = 0
        while time.monotonic() < deadline:
            batch = self._inbox.take(_BATCH, _TICK)
            if not batch:
                if not any(getattr(s, "running", False) for s in self.sources):
                    break
                continue
            self._handle_batch(batch)
            drained += len(batch)
        for scan_id in list(self._scans):
            self._close_scan(scan_id, "shutdown")
        for source in self.sources:
            source.stop()
        self._close()
        log.info("stopped", drained=drained, **self._snapshot_counts())
        logs.flush()

    def request_stop(self) -> None:
        self._stop.set()

    def _on_stop_signal(self, *_: object) -> None:
        self.request_stop()
        if self._warming:
            self._warming = False  # once: a second signal lands in the unwinding
            raise _StoppedWarmingUp

    def request_reload(self) -> None:
        self._reload.set()

    def _install_signals(self) -> None:
        """Handlers only set flags: the main loop acts on them between two items. During the
        warm-up a stop also cuts it short (no item is in flight yet)."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def _check_addresses_free(self) -> None:
        """A port another program holds, or an ipc:// socket's missing folder, is told now, not
        after the warm-up (a minute on a first start). The sockets themselves bind after it; a
        port taken in between is still told then."""
        s = self.settings
        wanted = [("publish.endpoint", s.publish.endpoint, s.publish.endpoint)]
        if s.lines.enabled:
            wanted.append(("lines.endpoint", s.lines.endpoint, s.lines.endpoint))
        if s.metrics.address:
            wanted.append(("metrics.address", s.metrics.address, f"tcp://{s.metrics.address}"))
        for key, value, endpoint in wanted:
            problem = _tcp_port_taken(endpoint) or _ipc_folder_missing(endpoint)
            if problem is not None:
                raise StartupError(f"{key} {value}: {problem}")

    def _bind(self, start: Any, what: str, address: str) -> None:
        try:
            start()
        except Exception as exc:  # zmq.ZMQError, OSError: name what could not be bound
            # a ZMQError's text repeats the address ("... (addr='tcp://...')"): the reason alone
            reason = zmq.strerror(exc.errno) if isinstance(exc, zmq.ZMQError) else exc
            raise StartupError(f"{what} {address}: {reason}") from exc

    def _claim_state_file(self) -> None:
        """The watched folders' record of handled files, locked to this daemon and written
        once now: another daemon's file or an unwritable one is a configuration error, found
        before any socket is bound and before the warm-up, not after the first frame."""
        s = self.settings
        if not s.watch.folders:
            return
        from spmwatch.sources.folder import SeenFiles
        from spmwatch.statelock import StateFileInUse

        try:
            self._seen = SeenFiles(s.watch.state_file or None, claim=True)
            self._seen.save()
        except StateFileInUse as exc:
            raise StartupError(
                f"[watch] state_file {s.watch.state_file}: {exc}; give each daemon its own",
                exit_code=2,
            ) from exc
        except OSError as exc:
            raise StartupError(
                f"[watch] state_file {s.watch.state_file} cannot be written ({exc}): point "
                "it at a writable file (the systemd unit: /var/lib/spmwatch/seen.json)",
                exit_code=2,
            ) from exc

    def _make_sources(self) -> list[Any]:
        s = self.settings
        made: list[Any] = []
        if s.lines.enabled:
            from spmwatch.sources.linesocket import LineReceiver

            made.append(LineReceiver(s.lines.endpoint, self._sink))
        if self._seen is not None:
            from spmwatch.sources.folder import FolderWatcher

            made.append(
                FolderWatcher(
                    list(s.watch.folders),
                    self._sink,
                    recursive=s.watch.recursive,
                    existing=s.watch.existing,
                    settle=s.watch.settle,
                    give_up=s.watch.incomplete_after,
                    seen=self._seen,
                )
            )
        if s.scope.buffer_dir:
            from spmwatch.sources.scope import ScopeFollower

            made.append(
                ScopeFollower(
                    Path(s.scope.buffer_dir),
                    self._sink,
                    channel_names=s.scope.channels,
                    n_lines=s.scope.lines,
                    give_up=s.scope.incomplete_after,
                )
            )
        return made

    def _close(self) -> None:
        if self.publisher is not None:
            self.publisher.stop(final={"final_counters": self._snapshot_counts()})
            self.publisher = None
        if self.control is not None:
            self.control.stop()
            self.control = None
        self.metrics.close()

    def _sink(self, item: object) -> None:
        """What the sources call: stamp the hand-over time (latency starts here) and queue.

        A block of lines weighs its lines, so `queue_size` bounds the lines waiting."""
        weight = item.count if isinstance(item, LineBlock) else 1
        self._inbox.put((time.perf_counter(), item), weight)

    # -- items ------------------------------------------------------------------------------------

    def _handle_batch(self, batch: list[tuple[float, object]]) -> None:
        """Handle items in arrival order; consecutive lines of one scan go in as one run."""
        run: list[Arrived] = []
        for received, item in batch:
            if isinstance(item, Line | LineBlock):
                if run and run[0][1].scan_id != item.scan_id:
                    self._handle_run(run)
                    run = []
                run.append((received, item))
                continue
            if run:
                self._handle_run(run)
                run = []
            self._handle(item)
        if run:
            self._handle_run(run)

    def _handle_run(self, run: list[Arrived]) -> None:
        try:
            self._on_lines(run)
        except Exception as exc:  # one bad line must not stop the daemon
            self._item_failed(run[0][1], exc)

    def _handle(self, item: object) -> None:
        """Everything but lines (those go in runs through `_handle_run`)."""
        try:
            if isinstance(item, protocol.EndOfScan):
                self._on_end(item.scan_id)
            elif isinstance(item, FrameFile):
                self._on_frame_file(item)
            elif isinstance(item, SourceError):
                self._error(item.source, item.scan_id, item.subject, item.reason)
            else:
                self._error("daemon", None, type(item).__name__, "unknown item from a source")
        except Exception as exc:  # one bad message or file must not stop the daemon
            self._item_failed(item, exc)

    def _item_failed(self, item: object, exc: Exception) -> None:
        scan_id = getattr(item, "scan_id", None) or getattr(
            getattr(item, "scan", None), "scan_id", None
        )
        log.exception("item_failed", item=type(item).__name__, scan_id=scan_id)
        self._error("daemon", scan_id, str(scan_id), f"{type(exc).__name__}: {exc}")

    def _on_lines(self, run: list[Arrived]) -> None:
        """Score consecutive lines of one scan; publish their scores and the scan's alert."""
        first = run[0][1]
        if self._paused:
            self._drop_paused(run)
            return
        scan = self._scans.get(first.scan_id)
        if scan is None:
            scan = self._open(first)
        scan.last_seen = time.monotonic()
        assert self.publisher is not None
        publish_lines = self.settings.publish.line_topic
        # behind: line scores are shed (counted, seq used up) and frame-watch checks skipped,
        # so the time goes to scoring the lines and raising their alerts
        overloaded = len(self._inbox) >= self._shed_depth
        behind = publish_lines and overloaded
        observe = self.metrics.latency.observe
        budget = self.settings.daemon.max_held_bytes
        # the lines up to the one that completes the scan or takes the kept lines past the
        # budget (either closes it; the rest start over) are kept and scored in one go, then
        # ingested in steps that end on the alert line
        room = scan.scorer.expected_lines - scan.count
        if self._held_bytes + room * scan.row_bytes > budget:
            room = (budget - self._held_bytes) // max(scan.row_bytes, 1) + 1
        take, rest = _split_run(run, max(room, 1))
        indices: list[int] = []
        positions: list[int] = []
        take_times: list[float] = []
        for received, item in take:
            scan.keep(item)
            if isinstance(item, LineBlock):
                arrived = item.indices()
                positions += range(item.position, item.position + item.count)
            else:
                arrived = (item.index,)
                positions.append(item.position)
            indices += arrived
            take_times += [received] * len(arrived)
        # a jump in position (lines lost in transit or dropped in a pause) is a gap to the scorer
        scan.scorer.score_ahead(scan.lines.stored(), indices, scan.count, positions)
        pending = take_times
        watch = None if overloaded else scan.watch
        while pending:  # in steps that end on the alert line or a frame-watch check
            most = len(pending)
            if watch is not None and not watch.raised:
                most = min(most, lines_to_next_check(scan.count))
            scores = scan.scorer.take_ahead(most)
            done, pending = pending[: len(scores)], pending[len(scores) :]
            scan.count += len(scores)
            self._held_bytes += len(scores) * scan.row_bytes
            now = time.perf_counter()
            for received in done:
                observe(now - received)
            for score in scores:
                if score.flagged:  # rare; at debug level the log shows every line that counted
                    log.debug(
                        "line_flagged",
                        scan_id=first.scan_id,
                        line=score.index,
                        score=round(score.score, 2),
                        kind=score.kind,
                    )
            if behind:
                self.publisher.shed_lines(len(scores))
            elif publish_lines:
                for score in scores:
                    fields = protocol.line_fields(score)
                    self.publisher.publish(protocol.TOPIC_LINE, first.scan_id, first.source, fields)
            alert = scan.scorer.alert
            if alert is not None and not scan.alerted:
                scan.alerted = True
                frame = scan.scorer.frame()
                verdict = self._verdict(frame, scan.lines, finished=False)
                self._publish_alert(
                    alert,
                    verdict,
                    first.scan_id,
                    first.source,
                    scan.instance,
                    scan.count,
                    received=done[-1],  # the alert line ends the step: its hand-over time
                )
            if watch is not None and is_check(scan.count, scan.scorer.expected_lines):
                self._watch(scan, watch, first, done[-1])
        self._tally(first.source, len(indices))
        if scan.count >= scan.scorer.expected_lines or self._held_bytes > budget:
            self._close_or_evict(scan, first.scan_id)
        if rest:  # lines after a scan's end start a new scan of that id
            self._on_lines(rest)

    def _watch(
        self, scan: _OpenScan, watch: FrameWatch, first: Line | LineBlock, received: float
    ) -> None:
        """A frame-watch check: the frame so far judged; its poor_image alert published once
        the rule of `[model] watch_threshold` and `watch_checks` holds (classify.watch).
        `received`: when the check's line was handed over, for the alert's latency."""
        if watch.raised:
            return
        frame = scan.scorer.frame()
        verdict = self._verdict(frame, scan.lines, finished=False)
        alert = watch.judge(frame, verdict)
        if alert is not None:
            self._publish_alert(
                alert, verdict, first.scan_id, first.source, scan.instance, scan.count, received
            )

    def _drop_paused(self, run: list[Arrived]) -> None:
        """Count lines that came while paused and remember their scan lost lines: its end is
        no stopped frame (its next line's jump in position tells the scorer of the gap)."""
        scan_id = run[0][1].scan_id
        self._count("lines_received", "lines_paused", n=sum(_n_lines(item) for _, item in run))
        self._paused_through[scan_id] = True
        self._paused_through.move_to_end(scan_id)
        while len(self._paused_through) > _PAUSED_SCANS_KEPT:
            self._paused_through.popitem(last=False)

    def _tally(self, source: str, n: int, received: bool = True) -> None:
        """n lines of `source` scored (and received: live lines; a saved frame's were read)."""
        self._lines_scored(source).inc(n)
        self._count(*(("lines_received",) if received else ()), "lines_scored", n=n)

    def _close_or_evict(self, scan: _OpenScan, scan_id: str) -> None:
        if scan.count >= scan.scorer.expected_lines:
            self._close_scan(scan_id, "complete")
        if self._held_bytes > self.settings.daemon.max_held_bytes:
            self._evict_while("max_held_mib", self._over_held_budget)

    def _lines_scored(self, source: str) -> Any:
        """The per-source counter child, looked up once (labels() takes a lock and a dict)."""
        child = self._scored_by.get(source)
        if child is None:
            child = self._scored_by[source] = self.metrics.lines_scored.labels(source)
        return child

    def _open(self, line: Line | LineBlock) -> _OpenScan:
        self._evict_while(
            "max_open_scans", lambda: len(self._scans) >= self.settings.daemon.max_open_scans
        )
        names = list(line.channels)
        scorer = ScanScorer(line.scan_id, names, line.points, line.n_lines, self.settings.scoring)
        held = ChannelStatsAccumulator(names, line.points, min(line.n_lines, _FIRST_LINES_HELD))
        row_bytes = line.points * len(names) * 4
        scan = _OpenScan(
            scorer,
            line.source,
            protocol.ScanInstance(protocol.LIVE, time.time()),
            time.monotonic(),
            held,
            watch=self.settings.model.frame_watch(),
            row_bytes=row_bytes,
            late=line.position > 0,
        )
        with self._lock:
            self._scans[line.scan_id] = scan
            self.metrics.open_scans.set(len(self._scans))
        log.info("scan_opened", scan_id=line.scan_id, source=line.source, lines=line.n_lines)
        return scan

    def _over_held_budget(self) -> bool:
        return self._held_bytes > self.settings.daemon.max_held_bytes

    def _evict_while(self, limit: str, over: Callable[[], bool]) -> None:
        """Close the oldest open scans as partial frames while `over()`: `[daemon] limit`
        (max_open_scans, or max_held_mib for the lines they keep) would be broken."""
        while self._scans and over():
            oldest = next(iter(self._scans))
            held_mib = round(self._held_bytes / 2**20, 1)
            log.warning(
                "scan_evicted",
                scan_id=oldest,
                limit=limit,
                open_scans=len(self._scans),
                held_mib=held_mib,
            )
            self._count("scans_evicted")
            self._close_scan(oldest, "evicted")

    def _on_end(self, scan_id: str) -> None:
        if scan_id in self._scans:
            self._close_scan(scan_id, "end")
        else:
            log.debug("end_of_closed_scan", scan_id=scan_id)

    def _close_scan(self, scan_id: str, closed_by: str) -> None:
        with self._lock:
            scan = self._scans.pop(scan_id)
            self.metrics.open_scans.set(len(self._scans))
        self._held_bytes -= scan.count * scan.row_bytes
        # a scan cut by the daemon (stopping, or evicting it at a limit), missing the lines that
        # came while it was paused, or opened after its first lines (the rest of a scan the
        # daemon closed before, or began while it was down) is judged as a frame in progress:
        # no partial_frame event and no stopped-early rule (the microscope may well be scanning
        # on; the daemon's limits and an operator's pause are no failed scan). Its alert still
        # fails it: the responder may have stopped the scan on it
        paused_through = self._paused_through.pop(scan_id, False)
        cut = closed_by in ("shutdown", "evicted") or paused_through or scan.late
        frame = scan.scorer.frame() if cut else scan.scorer.finish()
        stored = _as_stored(scan.lines, frame)
        verdict = self._verdict(frame, stored, finished=not cut, closed=True)
        self._publish_frame(frame, verdict, scan.source, scan.instance, closed_by)

    def _on_frame_file(self, item: FrameFile) -> None:
        """Acknowledged only once its verdict or error is out: a crash before that means the
        watcher hands it over again after the restart, never that it is lost. While paused it is
        deferred, and handed over again on resume."""
        if self._paused:
            log.info("frame_file_deferred", file=str(item.path))
            self._frames_deferred = True
            item.defer()
            return
        self._count("frame_files")  # once, when scored: a deferred file comes back
        try:
            self._score_frame_file(item)
        except Exception as exc:
            self._item_failed(item, exc)
        item.done()

    def _score_frame_file(self, item: FrameFile) -> None:
        frame = score_scan(item.scan, self.settings.scoring)
        self._tally("folder", frame.n_lines, received=False)
        verdict = self._verdict(frame, item.scan.channels, finished=True)
        instance = protocol.ScanInstance(protocol.SAVED_FRAME, item.modified, item.name)
        if frame.alert is not None:
            self._publish_alert(
                frame.alert, verdict, item.scan.scan_id, "folder", instance, frame.n_lines
            )
        self._publish_frame(frame, verdict, "folder", instance, "file")

    def _redeliver_if_resumed(self) -> None:
        """Frames deferred while paused are asked for again from here, the thread that deferred
        them, so a resume cannot overtake a deferral still on its way to the source."""
        if self._frames_deferred and not self._paused:
            self._frames_deferred = False
            for source in self.sources:
                source.redeliver_deferred()

    def _expire_idle(self, now: float) -> None:
        limit = self.settings.daemon.scan_timeout
        for scan_id in [k for k, v in self._scans.items() if now - v.last_seen > limit]:
            log.warning("scan_timed_out", scan_id=scan_id, idle_s=limit)
            self._count("scans_timed_out")
            self._close_scan(scan_id, "timeout")

    # -- publishing -------------------------------------------------------------------------------

    def _verdict(
        self,
        frame: FrameScores,
        channels: Mapping[str, np.ndarray] | ChannelStatsAccumulator,
        finished: bool,
        closed: bool | None = None,
    ) -> Verdict:
        assert self.model is not None
        return self.model.verdict(frame, channels, finished=finished, closed=closed)

    def _publish_alert(
        self,
        alert: Alert,
        verdict: Verdict,
        scan_id: str,
        source: str,
        instance: protocol.ScanInstance,
        seen: int,
        received: float | None = None,
    ) -> None:
        """Publish an alert; `received`: when a source handed over its line (live alerts),
        so the log and the metrics say how long the daemon took to raise it."""
        assert self.publisher is not None
        # a saved frame's scan is over: the shipped responder only notes such alerts
        live = instance.origin == protocol.LIVE
        action = suggested_action(alert.kind, alert.severity) if live else "notify_only"
        fields = protocol.alert_fields(alert, verdict, action, seen, instance)
        seq = self.publisher.publish(protocol.TOPIC_ALERT, scan_id, source, fields)
        timing = {}
        if received is not None:
            latency = time.perf_counter() - received
            self.metrics.alert_latency.observe(latency)
            timing["latency_ms"] = round(latency * 1e3, 3)
        self._count("alerts")
        self.metrics.alerts.labels(alert.kind, alert.severity).inc()
        log.warning("alert", scan_id=scan_id, seq=seq, **fields, **timing)

    def _publish_frame(
        self,
        frame: FrameScores,
        verdict: Verdict,
        source: str,
        instance: protocol.ScanInstance,
        closed_by: str,
    ) -> None:
        assert self.publisher is not None
        fields = protocol.frame_fields(frame, verdict, closed_by, instance)
        self.publisher.publish(protocol.TOPIC_FRAME, frame.scan_id, source, fields)
        self._count("frames")
        self.metrics.frames.labels(verdict.verdict).inc()
        log.info(
            "frame",
            scan_id=frame.scan_id,
            verdict=verdict.verdict,
            probability=fields["probability"],
            lines=frame.n_lines,
            closed_by=closed_by,
            file=instance.file,
            events=[f"{e.kind} {span_text(e.kind, e.start, e.end)}" for e in frame.events],
            **({"dead_channels": frame.dead_channels} if frame.dead_channels else {}),
        )

    def _report_held_errors(self) -> None:
        """Errors held back by the limit whose flood has stopped: one report each, so the count
        is not left to the next error of that kind, which may never come."""
        for (source, subject, kind), held in self._error_reports.overdue():
            reason = f"{held} more like this were held back: {kind}"
            self._report_error(source, None, subject, reason, held)

    def _error(self, source: str, scan_id: str | None, subject: str, reason: str) -> None:
        """Count every error; log and publish at most ERROR_BURST of one kind about one subject
        (a socket, a file) per ERROR_WINDOW s, the next one saying how many were held back
        (`suppressed`). Each broken file is still reported: its path is its own subject."""
        self._count("errors")
        self.metrics.errors.labels(source).inc()
        held = self._error_reports.admit((source, subject, reason_key(reason)))
        if held is not None:
            self._report_error(source, scan_id, subject, reason, held)

    def _report_error(
        self, source: str, scan_id: str | None, subject: str, reason: str, held: int
    ) -> None:
        """Log and publish one error; `held`: how many like it the limit held back before."""
        extra = {"suppressed": held} if held else {}
        about = {"scan_id": scan_id} if scan_id is not None else {}
        log.warning("source_error", source=source, subject=subject, reason=reason, **about, **extra)
        if self.publisher is not None:
            fields = {**protocol.error_fields(subject, reason), **extra}
            self.publisher.publish(protocol.TOPIC_ERROR, scan_id, source, fields)

    # -- control (called from the control thread) -------------------------------------------------

    def command(self, cmd: str) -> dict[str, Any]:
        if cmd == "status":
            return self.status()
        if cmd in ("pause", "resume"):
            self._paused = cmd == "pause"
            self.metrics.paused.set(int(self._paused))
            log.info("paused" if self._paused else "resumed")
            return {"paused": self._paused}
        if cmd == "reload-model":
            if not self._serving:  # the warm-up is judging frames with the current model
                return {"ok": False, "error": "the daemon is warming up; reload once it is ready"}
            # the running [model] path: a path edited in the config takes a SIGHUP (reload)
            reply = self.reload_model(self.settings.model.path)
            return {**reply, "path": str(self.model.path), **self._model_path_note()}
        raise protocol.ProtocolError(f"unknown control command {cmd!r}")

    def status(self) -> dict[str, Any]:
        with self._lock:
            scans = [
                {
                    "scan_id": scan_id,
                    "source": scan.source,
                    "lines": scan.count,
                    "expected_lines": scan.scorer.expected_lines,
                    "alerted": scan.alerted,
                }
                for scan_id, scan in self._scans.items()
            ]
        return {
            "state": "serving" if self._serving else "warming_up",
            "paused": self._paused,
            **self._model_identity(),
            "uptime": round(time.monotonic() - self._started, 3),
            "counters": self._snapshot_counts(),
            "open_scans": scans,
            "queue": len(self._inbox),
            "sources": {s.name: s.counters.snapshot() for s in self.sources},
            "publisher": self.publisher.counters() if self.publisher else {},
        }

    def reload_model(self, path: str) -> dict[str, Any]:
        """Load `path` (or the shipped model); on failure keep the current one and say why."""
        try:
            model = load_model(path)
        except ModelError as exc:
            kept = self._model_identity()
            log.error("model_reload_failed", error=str(exc), kept=kept["model"])
            return {"ok": False, "error": str(exc), **kept}
        self.model = model
        log.info("model_loaded", **self._model_identity())
        return self._model_identity()

    def _model_path_note(self) -> dict[str, str]:
        """A note for reload-model when the config file now names another model than the one
        the daemon runs with: only SIGHUP switches (a config mid-edit says nothing)."""
        if self.config_path is None:
            return {}
        try:
            named = load_settings(self.config_path).model.path
        except (ConfigError, OSError):
            return {}
        if named == self.settings.model.path:
            return {}
        try:
            load_model(named)
        except ModelError as exc:  # SIGHUP would fail, as it may have already
            return {"note": f"the config file now names a model that cannot be used: {exc}"}
        return {
            "note": f"the config file now names the model {named or 'shipped with spmwatch'}; "
            "SIGHUP (systemctl reload spmwatch) switches to it"
        }

    def reload(self) -> None:
        """SIGHUP: re-read the config file and the model; on any error keep both as they are."""
        if self.config_path is None:
            log.warning("reload_ignored", reason="no config file was given")
            return
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc), kept="the running config")
            return
        old = self.settings
        reply = self.reload_model(new.model.path)
        if not reply.get("ok", True):
            log.error(
                "config_reload_failed", error="model: " + reply["error"], kept="the running config"
            )
            return
        fixed = {
            f.name: getattr(old, f.name)
            for f in dataclasses.fields(Settings)
            if f.name not in _LIVE_SECTIONS
        }
        # the publisher stamps every message with the daemon's name: fixed at its start
        fixed["daemon"] = dataclasses.replace(new.daemon, name=old.daemon.name)
        self.settings = dataclasses.replace(new, **fixed)
        applied = changed_keys(old, self.settings)
        needs_restart = [key for key in changed_keys(old, new) if key not in applied]
        if new.logging != old.logging:
            logs.setup_logging(new.logging.level, new.logging.format, None, LOG_FLUSH_INTERVAL)
        if needs_restart:
            log.warning("config_needs_restart", keys=needs_restart)
        log.info(
            "config_reloaded", path=str(self.config_path), changed=applied, **self._model_identity()
        )

    # -- counters ---------------------------------------------------------------------------------

    def _count(self, *names: str, n: int = 1) -> None:
        with self._lock:
            for name in names:
                self._counts[name] += n

    def _snapshot_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _model_identity(self) -> dict[str, Any]:
        if self.model is None:
            return {"model": "none", "model_sha256": None, "threshold": None}
        return self.model.identity()

    def _heartbeat(self) -> dict[str, Any]:
        return {
            "counters": self._snapshot_counts(),
            **self._model_identity(),
            "paused": self._paused,
            "open_scans": len(self._scans),
            "queue": len(self._inbox),
        }

    def _queue_depths(self) -> dict[str, int]:
        pub = self.publisher.counters() if self.publisher else {}
        return {
            "inbox": len(self._inbox),
            "publish_priority": int(pub.get("priority_queue", 0)),
            "publish_lines": int(pub.get("line_queue", 0)),
        }

    def _rejected(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for source in self.sources:
            rejected = source.counters.snapshot().get("rejected", {})
            out[source.name] = dict(rejected) if isinstance(rejected, dict) else {}
        return out


def _noise_frame(lines: int, points: int, pairs: int) -> Scan:
    """A float32 frame of noise with trace/retrace pairs: the size and dtype of a saved frame,
    for the warm-up (cheaper to make than `synthetic_scan`'s surfaces)."""
    rng = np.random.default_rng(0)
    channels = {
        f"Ch{p}{direction}": rng.standard_normal((lines, points), dtype=np.float32)
        for p in range(pairs)
        for direction in ("Trace", "Retrace")
    }
    return Scan("warm-up", channels, {}, lines, False)
