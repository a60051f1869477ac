"""The daemon end to end: a real subprocess, real sockets on loopback, a real line producer.

One daemon serves the module's tests (start-up costs seconds); tests that stop or reload a
daemon start their own. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from spmwatch import protocol
from spmwatch.assess import assess
from spmwatch.classify.classifier import default_model_path, load_default
from spmwatch.config import ConfigError
from spmwatch.demo import _ready as demo_daemon_ready
from spmwatch.model import Scan
from spmwatch.scoring.scorer import ScanScorer, score_scan
from spmwatch.settings import ModelSettings
from spmwatch.sources.linesocket import LineSender
from spmwatch.synth import clean_scan, failing_scan
from tests.daemon_helpers import (
    REPO,
    DaemonProcess,
    Subscriber,
    assert_seq_increasing,
    ctl,
    send_lines,
    send_scan,
    wait_for,
    write_config,
)

LINES, POINTS = 64, 128


def _good(scan_id: str) -> Scan:
    scan = dataclasses.replace(clean_scan(3, LINES, POINTS), scan_id=scan_id)
    offline = score_scan(scan)
    # the premise: offline, the scorer finds nothing and the shipped model says pass
    assert offline.alert is None and load_default().verdict(offline, scan).verdict == "pass"
    return scan


def _failing(scan_id: str) -> Scan:
    scan, _ = failing_scan(1, LINES, POINTS, fault="dropout", at=0.5)
    return dataclasses.replace(scan, scan_id=scan_id)


@dataclasses.dataclass
class Running:
    daemon: DaemonProcess
    sub: Subscriber
    endpoints: dict[str, str]
    folder: Path


def _start(tmp: Path, extra: str = "") -> Running:
    config, endpoints = write_config(tmp, extra)
    daemon = DaemonProcess(config)
    daemon.wait_ready()
    sub = Subscriber(endpoints["publish"])
    wait_for(lambda: sub.of(protocol.TOPIC_HEARTBEAT), timeout=10)  # subscription is live
    return Running(daemon, sub, endpoints, tmp)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("daemon")
    watched = tmp / "watched"
    watched.mkdir()
    run = _start(tmp, f'[watch]\nfolders = ["{watched}"]\nsettle = 0.2\nincomplete_after = 2.0\n')
    run.folder = watched
    yield run
    run.sub.close()
    assert run.daemon.stop() == 0


def _frame(run: Running, scan_id: str, timeout: float = 30.0) -> dict:
    return wait_for(lambda: run.sub.of(protocol.TOPIC_FRAME, scan_id=scan_id), timeout)[0]


def test_failing_scan_gives_one_alert_then_the_frame(running: Running) -> None:
    scan = _failing("fail-1")
    offline = score_scan(scan)
    assert offline.alert is not None
    send_scan(running.endpoints["lines"], scan)
    frame = _frame(running, "fail-1")
    alerts = running.sub.of(protocol.TOPIC_ALERT, scan_id="fail-1")
    assert len(alerts) == 1
    alert = alerts[0]
    # live scoring raises the alert at the line offline scoring does
    assert (alert["line"], alert["kind"]) == (offline.alert.line, offline.alert.kind)
    assert alert["severity"] in ("low", "medium", "high") and 0 <= alert["probability"] <= 1
    assert alert["action"] in ("notify_only", "rescan", "stop_scan", "withdraw")
    assert alert["origin"] == "live" and alert["source"] == "socket"
    order = [(t, p.get("scan_id")) for t, p, _ in running.sub.events]
    assert order.index((protocol.TOPIC_ALERT, "fail-1")) < order.index(
        (protocol.TOPIC_FRAME, "fail-1")
    )
    assert frame["verdict"] == "fail" and frame["alert"]["line"] == alert["line"]
    assert frame["lines"] == frame["expected_lines"] == LINES and frame["partial"] is False
    assert any(e["kind"] == offline.alert.kind for e in frame["events"])

    def every_line_score() -> list[dict] | None:
        # line scores wait behind alerts and frames (docs/protocol.md): the frame may be first
        found = running.sub.of(protocol.TOPIC_LINE, scan_id="fail-1")
        return found if len(found) == LINES else None

    flagged = [line["line"] for line in wait_for(every_line_score) if line["flagged"]]
    assert flagged
    # at debug level the log names each flagged line; the frame's log line names its events
    said = wait_for(
        lambda: [
            e["line"] for e in running.daemon.logged("line_flagged") if e["scan_id"] == "fail-1"
        ]
    )
    assert sorted(said) == sorted(flagged)
    frame_log = wait_for(
        lambda: [e for e in running.daemon.logged("frame") if e["scan_id"] == "fail-1"]
    )
    assert frame_log[0]["events"] == [
        f"{e['kind']} {e['start']}-{e['end']}" for e in frame["events"]
    ]
    # the log and the metrics say how long the daemon took from the alert line to the alert
    logged = wait_for(
        lambda: [e for e in running.daemon.logged("alert") if e["seq"] == alert["seq"]]
    )
    assert logged[0]["line"] == alert["line"] and logged[0]["latency_ms"] > 0
    metrics = urllib.request.urlopen(f"http://{running.endpoints['metrics']}/metrics").read()
    assert b"spmwatch_alert_latency_seconds_count" in metrics
    count = next(
        m for m in metrics.splitlines() if m.startswith(b"spmwatch_alert_latency_seconds_count")
    )
    assert float(count.split()[-1]) >= 1


def test_a_reused_scan_id_is_a_new_scan_with_its_own_start(running: Running) -> None:
    """After its end message a scan id names a new scan: its alert says so by `scan_started`,
    which a responder's debounce keys on (a failing scan under an old name must be stopped)."""
    before = time.time()
    scan = _failing("again-1")
    send_scan(running.endpoints["lines"], scan)
    _frame(running, "again-1")
    send_scan(running.endpoints["lines"], scan)

    def both_frames() -> list[dict] | None:
        found = running.sub.of(protocol.TOPIC_FRAME, scan_id="again-1")
        return found if len(found) == 2 else None

    frames = wait_for(both_frames)
    alerts = running.sub.of(protocol.TOPIC_ALERT, scan_id="again-1")  # published before frames
    starts = [a["scan_started"] for a in alerts]
    assert len(starts) == 2 and before <= starts[0] < starts[1] <= time.time()
    assert [f["scan_started"] for f in frames] == starts


def test_a_scan_sent_in_blocks_is_judged_as_line_by_line(running: Running) -> None:
    """Blocks change only the transport: the alert and the verdict, probabilities included,
    are those of the same scan sent one line per message."""
    by_line, by_block = _failing("fail-lines"), _failing("fail-blocks")
    send_scan(running.endpoints["lines"], by_line)
    lines = list(by_block.lines(source="test"))
    with LineSender(running.endpoints["lines"], linger=10.0) as sender:
        for k in range(0, len(lines), 16):
            sender.send_lines(lines[k : k + 16])
        sender.end(by_block.scan_id)
    frames = [_frame(running, scan.scan_id) for scan in (by_line, by_block)]
    alerts = [running.sub.of(protocol.TOPIC_ALERT, scan_id=s.scan_id) for s in (by_line, by_block)]
    assert [len(a) for a in alerts] == [1, 1]
    keys = ("line", "position", "kind", "severity", "probability", "action")
    assert [alerts[0][0][k] for k in keys] == [alerts[1][0][k] for k in keys]
    keys = ("verdict", "probability", "lines", "partial")
    assert [frames[0][k] for k in keys] == [frames[1][k] for k in keys]
    assert frames[1]["lines"] == LINES


def test_the_frame_watch_alert_is_the_one_spmwatch_score_replays(running: Running) -> None:
    """The classifier judges the frame so far every 16 lines: live, its poor_image alert comes
    at the line, with the probability, that the offline replay gives."""
    scan, _ = failing_scan(0, 96, 64, fault="dropout", at=0.3)
    scan = dataclasses.replace(scan, scan_id="watched-1")
    offline = assess(scan, load_default(), watching=ModelSettings()).poor_image
    assert offline is not None
    send_scan(running.endpoints["lines"], scan)
    _frame(running, "watched-1")
    alerts = {a["kind"]: a for a in running.sub.of(protocol.TOPIC_ALERT, scan_id="watched-1")}
    assert set(alerts) == {"dropout", "poor_image"}  # the line alert and the frame watch's
    live = alerts["poor_image"]
    assert (live["line"], live["position"], live["severity"]) == (
        offline[0].line,
        offline[0].position,
        offline[0].severity,
    )
    assert live["probability"] == round(offline[1].probability, 4)
    assert live["reasons"] == offline[1].to_dict()["reasons"] != []  # why it judged so
    assert live["action"] == "notify_only" and live["origin"] == "live"
    logged = wait_for(
        lambda: [e for e in running.daemon.logged("alert") if e["seq"] == live["seq"]]
    )
    assert logged[0]["latency_ms"] > 0  # timed like the line alerts


def test_good_scan_passes_without_alert(running: Running) -> None:
    send_scan(running.endpoints["lines"], _good("good-1"))
    frame = _frame(running, "good-1")
    assert frame["verdict"] == "pass" and frame["alert"] is None
    assert running.sub.of(protocol.TOPIC_ALERT, scan_id="good-1") == []


@pytest.mark.parametrize("scan_down", [False, True])
def test_a_live_scan_gets_the_verdict_spmwatch_score_gives_its_file(
    running: Running, scan_down: bool
) -> None:
    """Top-down scans arrive last index first; the finished frame is judged in stored order,
    as the saved file is (it used to differ: e.g. 0.8583 live against 0.9178 from the file)."""
    scan_id = f"order-{int(scan_down)}"
    scan, _ = failing_scan(5, LINES, POINTS, fault="gain_drift", at=0.3)
    scan = dataclasses.replace(scan, scan_id=scan_id, scan_down=scan_down)
    _, offline, _ = assess(scan, load_default())
    send_scan(running.endpoints["lines"], scan)
    frame = _frame(running, scan_id)
    assert frame["lines"] == LINES
    said = offline.to_dict()
    assert [frame[k] for k in ("probability", "decided_by", "reasons")] == [
        said["probability"],
        said["decided_by"],
        said["reasons"],
    ]


def test_ibw_in_the_watched_folder_is_scored(running: Running) -> None:
    pytest.importorskip("spmwatch.sources.folder")
    from spmwatch.synth import write

    scan = _failing("saved-1")
    write(scan, running.folder / "saved-1.ibw")
    frame = wait_for(lambda: running.sub.of(protocol.TOPIC_FRAME, file="saved-1.ibw"), 30)[0]
    assert frame["origin"] == "saved_frame" and frame["source"] == "folder"
    assert frame["verdict"] == "fail" and frame["lines"] == LINES
    metrics = urllib.request.urlopen(f"http://{running.endpoints['metrics']}/metrics").read()
    assert b'spmwatch_lines_scored_total{source="folder"}' in metrics  # its lines count too
    alerts = running.sub.of(protocol.TOPIC_ALERT, scan_id=frame["scan_id"])
    assert len(alerts) == 1 and alerts[0]["origin"] == "saved_frame"
    assert alerts[0]["action"] == "notify_only"  # that scan is over: what the responder does
    assert alerts[0]["file"] == "saved-1.ibw"  # the same name may sit in several sub-folders
    # the scan's start is the file's: the same file scored again is the same scan
    modified = (running.folder / "saved-1.ibw").stat().st_mtime_ns / 1e9
    assert alerts[0]["scan_started"] == frame["scan_started"] == modified


def test_a_file_left_incomplete_is_reported_after_incomplete_after(running: Running) -> None:
    pytest.importorskip("spmwatch.sources.folder")
    from spmwatch.synth import write

    whole = write(_good("stuck-1"), running.folder.parent / "stuck-1.ibw").read_bytes()
    (running.folder / "stuck-1.ibw").write_bytes(whole[: len(whole) // 2])

    def reported() -> list[dict]:
        errors = running.daemon.logged("source_error")
        return [e for e in errors if str(e.get("subject", "")).endswith("stuck-1.ibw")]

    # [watch] incomplete_after = 2.0 in this daemon's config (the default is 30 s)
    error = wait_for(reported, 20)[0]
    assert "still incomplete after 2 s unchanged" in error["reason"]
    # the wait itself was logged once, before the report
    waits = [
        e
        for e in running.daemon.logged("file_incomplete_waiting")
        if e["file"].endswith("stuck-1.ibw")
    ]
    assert len(waits) == 1 and waits[0]["broken_after_s"] == 2.0 and waits[0]["reason"]
    assert running.sub.of(protocol.TOPIC_FRAME, file="stuck-1.ibw") == []


def test_a_whole_file_with_a_corrupt_header_is_called_corrupt(running: Running) -> None:
    from spmwatch.synth import write

    flipped = bytearray(write(_good("bent-1"), running.folder.parent / "bent-1.ibw").read_bytes())
    flipped[100] ^= 0x40  # the checksum no longer adds up; the length is whole
    (running.folder / "bent-1.ibw").write_bytes(bytes(flipped))

    def reported() -> list[dict]:
        errors = running.daemon.logged("source_error")
        return [e for e in errors if str(e.get("subject", "")).endswith("bent-1.ibw")]

    # once settled (0.2 s here), not after incomplete_after (2 s here, 30 s by default)
    reason = wait_for(reported, 20)[0]["reason"]
    assert reason.startswith("corrupt header: checksum fails"), reason
    assert not [
        e for e in running.daemon.logged("file_incomplete_waiting") if "bent-1" in e["file"]
    ]


def test_malformed_message_is_an_error_and_the_daemon_keeps_serving(running: Running) -> None:
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(running.endpoints["lines"])
    push.send_multipart([b"{not json"])
    push.send_multipart([json.dumps({"v": 1, "scan_id": "../etc", "line": 0}).encode()])
    push.send_multipart([json.dumps({"v": 1, "scan_id": "X1", "line": "zero"}).encode()])
    push.close()

    def socket_errors() -> list[dict] | None:
        # other tests of this daemon report folder errors on the same topic
        found = [e for e in running.sub.of(protocol.TOPIC_ERROR) if e["source"] == "socket"]
        return found if len(found) >= 3 else None

    errors = wait_for(socket_errors)
    assert any("not valid JSON" in e["reason"] for e in errors)
    assert any("scan_id" in e["reason"] for e in errors)
    # an error about a known scan names it in the log too, as on the wire
    assert [e["scan_id"] for e in errors if e["scan_id"]] == ["X1"]
    logged = wait_for(lambda: [e for e in running.daemon.logged("source_error") if "scan_id" in e])
    assert [e["scan_id"] for e in logged] == ["X1"]
    send_scan(running.endpoints["lines"], _good("after-bad"))
    assert _frame(running, "after-bad")["verdict"] == "pass"
    status = json.loads(ctl(running.endpoints["control"], "status").stdout)
    assert status["state"] == "serving" and demo_daemon_ready(running.endpoints["control"])
    assert status["sources"]["socket"]["rejected"]  # counted by reason
    metrics = urllib.request.urlopen(f"http://{running.endpoints['metrics']}/metrics").read()
    assert b"spmwatch_rejected_messages_total{" in metrics
    assert b"spmwatch_lines_scored_total" in metrics


def test_a_flood_of_one_bad_message_is_counted_but_not_repeated(tmp_path: Path) -> None:
    """A broken bridge sent 2,000 bad messages in 9 ms: 2,000 log lines and error events."""
    from spmwatch.daemon import ERROR_BURST

    run = _start(tmp_path)
    try:
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 5000)
        push.connect(run.endpoints["lines"])
        for _ in range(5 * ERROR_BURST):
            push.send_multipart([b"{bad", b"x"])
        push.close()

        def counted() -> int:
            return json.loads(ctl(run.endpoints["control"], "status").stdout)["counters"]["errors"]

        wait_for(lambda: counted() == 5 * ERROR_BURST)  # every one counted, and all handled
        wait_for(lambda: len(run.daemon.logged("source_error")) >= ERROR_BURST)
        assert len(run.daemon.logged("source_error")) == ERROR_BURST
        published = wait_for(lambda: run.sub.of(protocol.TOPIC_ERROR))
        assert len(published) <= ERROR_BURST
        # the flood stopped: once its window is over, one report says how many were held back
        held = wait_for(
            lambda: [e for e in run.sub.of(protocol.TOPIC_ERROR) if "suppressed" in e], 30
        )
        assert held[0]["suppressed"] == 4 * ERROR_BURST
    finally:
        run.sub.close()
        assert run.daemon.stop() == 0


def test_ctl_status_pause_resume(running: Running) -> None:
    result = ctl(running.endpoints["control"], "status")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["ok"] and status["paused"] is False
    shipped = json.loads(default_model_path().with_suffix(".json").read_text())
    identity = {
        "model": "default",
        "model_sha256": shipped["model_sha256"][:12],
        "threshold": shipped["threshold"],
    }
    assert {key: status[key] for key in identity} == identity
    beat = wait_for(lambda: running.sub.of(protocol.TOPIC_HEARTBEAT))[-1]
    assert {key: beat[key] for key in identity} == identity
    assert status["counters"]["lines_scored"] >= 0 and status["uptime"] > 0

    assert json.loads(ctl(running.endpoints["control"], "pause").stdout)["paused"] is True
    before = json.loads(ctl(running.endpoints["control"], "status").stdout)
    assert before["paused"] is True
    send_scan(running.endpoints["lines"], _failing("while-paused"))
    wait_for(
        lambda: (
            json.loads(ctl(running.endpoints["control"], "status").stdout)["counters"][
                "lines_paused"
            ]
            == before["counters"]["lines_paused"] + LINES
        )
    )
    assert running.sub.of(protocol.TOPIC_ALERT, scan_id="while-paused") == []
    beat = wait_for(lambda: [b for b in running.sub.of(protocol.TOPIC_HEARTBEAT) if b["paused"]])
    assert beat[-1]["paused"] is True

    assert json.loads(ctl(running.endpoints["control"], "resume").stdout)["paused"] is False
    send_scan(running.endpoints["lines"], _failing("after-resume"))
    _frame(running, "after-resume")
    assert len(running.sub.of(protocol.TOPIC_ALERT, scan_id="after-resume")) == 1


def test_a_scan_paused_half_way_is_not_failed_for_the_lines_it_missed(running: Running) -> None:
    """An operator's pause drops lines. The scan used to end as a stopped frame (fail at 1.0),
    and the first line after the pause, compared with one scanned 60 lines before, was flagged
    as tracking loss."""
    scan = dataclasses.replace(clean_scan(0, 192, 128), scan_id="paused-half")
    lines = list(scan.lines(source="test"))
    control = running.endpoints["control"]

    def paused_lines() -> int:
        return json.loads(ctl(control, "status").stdout)["counters"]["lines_paused"]

    send_lines(running.endpoints["lines"], lines[:60])
    wait_for(
        lambda: any(
            s["scan_id"] == "paused-half" and s["lines"] == 60
            for s in json.loads(ctl(control, "status").stdout)["open_scans"]
        )
    )
    before = paused_lines()
    assert json.loads(ctl(control, "pause").stdout)["paused"] is True
    send_lines(running.endpoints["lines"], lines[60:120])
    wait_for(lambda: paused_lines() == before + 60)
    assert json.loads(ctl(control, "resume").stdout)["paused"] is False
    send_lines(running.endpoints["lines"], lines[120:], end=scan.scan_id)
    frame = _frame(running, "paused-half")
    assert frame["lines"] == 132 and frame["verdict"] == "pass"
    assert frame["events"] == []  # no partial_frame, and no flag on the first line after


def test_lines_lost_in_transit_keep_their_places_and_make_no_stopped_frame(
    running: Running,
) -> None:
    """20 lines lost between the producer and the daemon: the scan was failed as stopped early
    (its last 20 positions read as never scanned), positions after the gap were counts of the
    lines scored, and the first line after it, compared across the gap, was flagged."""
    scan, _ = failing_scan(2, 128, POINTS, fault="dropout", at=0.7)
    scan = dataclasses.replace(scan, scan_id="lost-20")
    lines = list(scan.lines(source="test"))
    send_lines(running.endpoints["lines"], lines[:40] + lines[60:], end=scan.scan_id)
    frame = _frame(running, "lost-20")
    assert frame["lines"] == 108 and frame["decided_by"] == "alert"
    assert [e["kind"] for e in frame["events"]] == ["dropout"]  # no partial_frame, no flag at 60
    (alert,) = running.sub.of(protocol.TOPIC_ALERT, scan_id="lost-20")
    assert alert["kind"] == "dropout" and alert["position"] == alert["line"] > 60
    assert frame["alert"]["position"] == alert["position"]


def test_a_scan_cut_by_a_pause_after_its_alert_fails_by_the_alert(running: Running) -> None:
    """A frame judged in progress (paused through) was decided by the model alone, so a scan
    the responder stopped on its alert could be reported usable."""
    scan, _ = failing_scan(1, 128, POINTS, fault="dropout", at=0.3)
    scan = dataclasses.replace(scan, scan_id="cut-after-alert")
    lines = list(scan.lines(source="test"))
    control = running.endpoints["control"]
    send_lines(running.endpoints["lines"], lines[:80])
    wait_for(lambda: running.sub.of(protocol.TOPIC_ALERT, scan_id="cut-after-alert"))
    assert json.loads(ctl(control, "pause").stdout)["paused"] is True
    before = json.loads(ctl(control, "status").stdout)["counters"]["lines_paused"]
    send_lines(running.endpoints["lines"], lines[80:100])
    wait_for(
        lambda: json.loads(ctl(control, "status").stdout)["counters"]["lines_paused"] == before + 20
    )
    assert json.loads(ctl(control, "resume").stdout)["paused"] is False
    send_lines(running.endpoints["lines"], lines[100:], end=scan.scan_id)
    frame = _frame(running, "cut-after-alert")
    assert frame["verdict"] == "fail" and frame["decided_by"] == "alert"
    assert not [e for e in frame["events"] if e["kind"] == "partial_frame"]


def test_reload_model_keeps_serving(running: Running) -> None:
    result = ctl(running.endpoints["control"], "reload-model")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["model"] and Path(reply["path"]).is_file()  # which file it loaded
    assert Path(reply["path"]).suffix == ".skops"


def test_seq_strictly_increasing_per_topic(running: Running) -> None:
    send_scan(running.endpoints["lines"], _good("seq-1"))
    _frame(running, "seq-1")
    for topic in protocol.TOPICS:
        events = running.sub.of(topic)
        assert_seq_increasing(events)
    alerts = running.sub.of(protocol.TOPIC_ALERT)
    seqs = [a["seq"] for a in alerts]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no alert lost


def test_ctl_without_daemon_says_so(tmp_path: Path) -> None:
    from tests.daemon_helpers import free_port

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    result = ctl(endpoint, "status", timeout=0.5)
    assert result.returncode == 1
    assert f"no spmwatch daemon answered at {endpoint}" in result.stderr


def test_ctl_answers_while_a_first_start_compiles(tmp_path: Path) -> None:
    """`ctl status` timed out for the minute a first start after an install compiles the
    kernels: the control socket was bound only once the daemon was ready. The `warming_up`
    log line that explains the wait must be out meanwhile (stdout is a pipe here, as under
    systemd, so it is flushed by hand)."""
    config, endpoints = write_config(tmp_path)
    cold = {"NUMBA_CACHE_DIR": str(tmp_path / "empty-cache")}  # as on a fresh install
    daemon = DaemonProcess(config, extra_env=cold)
    try:
        status = ctl(endpoints["control"], "status", timeout=30)
        assert status.returncode == 0, status.stderr
        reply = json.loads(status.stdout)
        assert reply["state"] == "warming_up" and reply["paused"] is False
        # `spmwatch demo` waits for a serving daemon: it replayed into the unbound line
        # socket of a warming one, and gave up after 10 s on a first run
        assert not demo_daemon_ready(endpoints["control"])
        reload = ctl(endpoints["control"], "reload-model")
        assert reload.returncode == 1 and "warming up" in reload.stderr
        # the log line explaining the wait is out during the wait, not with `ready` after it
        assert wait_for(lambda: daemon.logged("warming_up"), timeout=10)
        assert json.loads(ctl(endpoints["control"], "status").stdout)["state"] == "warming_up"
        # SIGTERM cuts the warm-up short (it went on for the whole compile, then bound every
        # socket, and only then stopped), and takes the compiling child along
        assert daemon.stop(timeout=20) == 0
        assert daemon.logged("stopping") and daemon.logged("stopped")
        assert not daemon.logged("ready")
        with pytest.raises(ProcessLookupError):  # nothing is left of its process group
            wait_for(lambda: os.killpg(daemon.proc.pid, 0), timeout=10)
    finally:
        daemon.kill()


def test_ctl_starts_without_the_classifier_stack_or_numba() -> None:
    """Importing every command's module pulled in scikit-learn: `ctl pause` took 2 s."""
    probe = (
        "import sys\n"
        "from spmwatch.cli import main\n"
        "code = main(['ctl', 'status', '--endpoint', 'tcp://127.0.0.1:1', '--timeout', '0.05'])\n"
        "print(code, 'sklearn' in sys.modules, 'numba' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["1", "False", "False"], done.stdout + done.stderr


def test_bad_config_key_exits_2_before_binding(tmp_path: Path) -> None:
    config, endpoints = write_config(tmp_path, "[scoring]\nflag_zz = 3\n")
    daemon = DaemonProcess(config)
    assert daemon.proc.wait(60) == 2
    err = daemon.stderr()
    assert "scoring.flag_zz: unknown key" in err and str(config) in err
    # nothing was bound: the ports are still free
    import socket as sockets

    for name in ("publish", "control", "lines"):
        port = int(endpoints[name].rsplit(":", 1)[1])
        with sockets.socket() as probe:
            probe.bind(("127.0.0.1", port))


@pytest.mark.parametrize("state_file", ["afile/seen.json", "adir"])
def test_an_unwritable_state_file_stops_the_start_with_exit_2(
    tmp_path: Path, state_file: str
) -> None:
    """It used to start, then fail to save after the first frame: under systemd every restart
    re-scored and re-published every file. A folder named by mistake is left as it is (it was
    renamed to adir.unreadable, contents and all)."""
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "keep.ibw").write_text("a user's file")
    watched = tmp_path / "watched"
    watched.mkdir()
    extra = f'[watch]\nfolders = ["{watched}"]\nstate_file = "{state_file}"\n'
    config, _ = write_config(tmp_path, extra)
    daemon = DaemonProcess(config)
    assert daemon.proc.wait(60) == 2
    failed = wait_for(lambda: daemon.logged("startup_failed"))
    assert f"[watch] state_file {tmp_path / state_file} cannot be written" in failed[0]["error"]
    assert not daemon.logged("ready")
    assert (tmp_path / "adir" / "keep.ibw").read_text() == "a user's file"
    assert not (tmp_path / "adir.unreadable").exists()


def test_a_second_daemon_on_the_same_state_file_refuses_to_start(tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    state = tmp_path / "seen.json"
    extra = f'[watch]\nfolders = ["{watched}"]\nstate_file = "{state}"\n'
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    first = DaemonProcess(write_config(first_dir, extra)[0])
    try:
        first.wait_ready()
        second = DaemonProcess(write_config(second_dir, extra)[0])  # other ports, same file
        assert second.proc.wait(60) == 2
        failed = wait_for(lambda: second.logged("startup_failed"))
        error = failed[0]["error"]
        assert f"[watch] state_file {state}" in error and f"pid {first.proc.pid}" in error
        assert not second.logged("warming_up")  # refused at once, not after a minute's compile
    finally:
        assert first.stop() == 0


def test_an_unreadable_state_file_is_kept_aside(tmp_path: Path) -> None:
    from spmwatch.sources.folder import SeenFiles

    state = tmp_path / "seen.json"
    state.write_text("{half a json")
    seen = SeenFiles(state)
    assert seen.load_error is not None and "kept as" in seen.load_error
    assert (tmp_path / "seen.json.unreadable").read_text() == "{half a json"
    seen.save()
    assert SeenFiles(state).load_error is None


def test_sigterm_drains_and_exits_0(tmp_path: Path) -> None:
    run = _start(tmp_path)
    try:
        scans = [_good(f"drain-{i}") for i in range(3)]
        sent = sum(send_scan(run.endpoints["lines"], scan, end=False) for scan in scans)
        cut = _good("cut-by-stop")  # half sent, then the daemon stops under it
        rows = {k: v[: LINES // 2] for k, v in cut.channels.items()}
        half = dataclasses.replace(cut, channels=rows)
        with LineSender(run.endpoints["lines"], linger=10.0) as sender:
            for line in half.lines(source="test"):
                sender.send(dataclasses.replace(line, n_lines=LINES))
        sent += LINES // 2
        wait_for(
            lambda: (
                json.loads(ctl(run.endpoints["control"], "status").stdout)["sources"]["socket"][
                    "lines"
                ]
                == sent
            )
        )
        run.daemon.proc.send_signal(signal.SIGTERM)
        assert run.daemon.proc.wait(60) == 0
        final = wait_for(
            lambda: [b for b in run.sub.of(protocol.TOPIC_HEARTBEAT) if b.get("final")]
        )
    finally:
        run.sub.close()
        run.daemon.kill()
    assert final[0]["final_counters"]["lines_scored"] == sent
    for scan in scans:
        assert run.sub.of(protocol.TOPIC_FRAME, scan_id=scan.scan_id)
    assert run.daemon.logged("stopped")
    # the daemon, not the scan, ended it: judged on its lines so far, not failed as stopped
    (frame,) = run.sub.of(protocol.TOPIC_FRAME, scan_id="cut-by-stop")
    assert frame["closed_by"] == "shutdown" and frame["partial"] is True
    assert frame["lines"] == LINES // 2 and frame["expected_lines"] == LINES
    assert [e["kind"] for e in frame["events"]] == []
    scorer = ScanScorer("cut-by-stop", list(half.channels), half.n_points, LINES)
    for line in half.lines():
        scorer.push(line)
    so_far = load_default().verdict(scorer.frame(), half.channels, finished=False)
    assert frame["probability"] == so_far.to_dict()["probability"] < 1.0
    assert frame["decided_by"] == "model"  # not the stopped-early rule


def _ctl_status_by_config(config: Path) -> subprocess.CompletedProcess[str]:
    """`spmwatch ctl status --config FILE`, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "spmwatch", "ctl", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_sighup_reloads_config(tmp_path: Path) -> None:
    run = _start(tmp_path)
    config = tmp_path / "spmwatch.toml"
    try:
        text = config.read_text()
        config.write_text(text + "[scoring.alert]\nk = 4\n")
        run.daemon.proc.send_signal(signal.SIGHUP)
        reloaded = wait_for(lambda: run.daemon.logged("config_reloaded"), 30)
        assert reloaded[0]["changed"] == ["scoring.alert.k"]  # what the reload changed

        config.write_text(text.replace("[lines]", "[lines]\nbogus = 1"))
        run.daemon.proc.send_signal(signal.SIGHUP)
        failed = wait_for(lambda: run.daemon.logged("config_reload_failed"), 30)
        assert "lines.bogus: unknown key" in failed[0]["error"]
        assert failed[0]["kept"] == "the running config"
        # ctl still finds the daemon through that file: the typo is told, not fatal
        by_config = _ctl_status_by_config(config)
        assert by_config.returncode == 0, by_config.stderr
        assert json.loads(by_config.stdout)["state"] == "serving"
        assert "lines.bogus: unknown key" in by_config.stderr
        assert "its [control] endpoint is used" in by_config.stderr

        # a config naming a model that cannot load: the note says so, not "SIGHUP switches"
        config.write_text(text + '[model]\npath = "missing.skops"\n')
        broken = json.loads(ctl(run.endpoints["control"], "reload-model").stdout)
        assert "cannot be used" in broken["note"] and "missing.skops" in broken["note"]
        # a copy of the shipped model with its threshold edited: status shows which is live
        edited = tmp_path / "edited"
        edited.mkdir()
        shipped = default_model_path()
        shutil.copy(shipped, edited / "default.skops")
        sidecar = json.loads(shipped.with_suffix(".json").read_text())
        sidecar["threshold"] = 0.75
        (edited / "default.json").write_text(json.dumps(sidecar))
        config.write_text(text + '[model]\npath = "edited/default.skops"\n')
        # reload-model reloads the running path, and says the config names another
        before = json.loads(ctl(run.endpoints["control"], "reload-model").stdout)
        assert Path(before["path"]) == shipped and before["threshold"] != 0.75
        assert "edited/default.skops" in before["note"] and "SIGHUP" in before["note"]
        run.daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(run.daemon.logged("config_reloaded")) == 2, 30)
        status = json.loads(ctl(run.endpoints["control"], "status").stdout)
        assert status["threshold"] == 0.75
        assert status["model_sha256"] == sidecar["model_sha256"][:12]
        after = json.loads(ctl(run.endpoints["control"], "reload-model").stdout)
        assert Path(after["path"]) == edited / "default.skops" and "note" not in after

        moved = text.replace(run.endpoints["control"], "tcp://127.0.0.1:1")
        config.write_text(moved + '[daemon]\nname = "renamed"\n')
        run.daemon.proc.send_signal(signal.SIGHUP)
        restart = wait_for(lambda: run.daemon.logged("config_needs_restart"), 30)
        # the daemon's name is on every message, fixed when the publisher starts
        assert restart[0]["keys"] == ["control.endpoint", "daemon.name"]
        # the old control endpoint still answers: sockets are not moved by a reload
        assert ctl(run.endpoints["control"], "status").returncode == 0
    finally:
        run.sub.close()
        assert run.daemon.stop() == 0


def test_systemd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    """Under a fake systemd: READY=1 once warm, WATCHDOG=1 pings, STOPPING=1 on SIGTERM."""
    import socket as sockets

    address = str(tmp_path / "notify")
    receiver = sockets.socket(sockets.AF_UNIX, sockets.SOCK_DGRAM)
    receiver.bind(address)
    # READY comes after the warm-up: a deadline for a cold numba cache on 2 busy cores (the
    # unit allows 300 s), not a wait; it once ran out at 60 s with other test runs beside it
    receiver.settimeout(180)
    config, _ = write_config(tmp_path)
    daemon = DaemonProcess(config, {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    messages: list[str] = []
    try:
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(receiver.recv(4096).decode())
        assert daemon.wait_ready()["warm_up_s"] >= 0
        ready = next(m for m in messages if m.startswith("READY=1"))
        assert "warm-up" in ready
        pings = 0
        while pings < 3:
            pings += receiver.recv(4096) == b"WATCHDOG=1"
        daemon.proc.send_signal(signal.SIGTERM)
        while (message := receiver.recv(4096)) != b"STOPPING=1":
            assert message == b"WATCHDOG=1"
        assert daemon.proc.wait(60) == 0
    finally:
        receiver.close()
        daemon.kill()


def test_sockets_bound_to_any_port_are_named_in_the_ready_log(tmp_path: Path) -> None:
    """With port * the daemon picked free ports that nobody could learn: `ready` logged the
    control endpoint as `...:*` and not the line socket at all, and `ctl --config` ended in a
    ZeroMQ traceback."""
    any_port = "tcp://127.0.0.1:*"
    config = tmp_path / "spmwatch.toml"
    config.write_text(
        f'[publish]\nendpoint = "{any_port}"\n[lines]\nendpoint = "{any_port}"\n'
        f'[control]\nendpoint = "{any_port}"\n[metrics]\naddress = ""\n'
    )
    daemon = DaemonProcess(config)
    try:
        ready = daemon.wait_ready()
        assert ready["config"] == str(config)  # which file it runs (or the built-in defaults)
        bound = [ready["publish"], ready["lines"], ready["control"]]
        assert all(e.startswith("tcp://127.0.0.1:") and e[-1].isdigit() for e in bound), ready
        sent = send_scan(ready["lines"], clean_scan(4, 16, 32))  # the producer finds it
        status = ctl(ready["control"], "status")
        assert status.returncode == 0, status.stderr
        assert wait_for(
            lambda: (
                json.loads(ctl(ready["control"], "status").stdout)["counters"]["lines_scored"]
                == sent
            ),
            timeout=20,
        )
        by_config = _ctl_status_by_config(config)
        assert by_config.returncode == 2 and "Traceback" not in by_config.stderr
        assert "[control] endpoint tcp://127.0.0.1:* binds any free port" in by_config.stderr
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize(
    "bound,reached",
    [
        ("tcp://*:5562", "tcp://127.0.0.1:5562"),
        ("tcp://0.0.0.0:5562", "tcp://127.0.0.1:5562"),
        ("tcp://[::]:5562", "tcp://[::1]:5562"),
        ("tcp://192.168.1.20:5562", "tcp://192.168.1.20:5562"),
        ("ipc:///run/spmwatch/control", "ipc:///run/spmwatch/control"),
    ],
)
def test_ctl_and_subscribe_reach_a_wildcard_bind_on_loopback(
    tmp_path: Path, bound: str, reached: str
) -> None:
    from spmwatch.cli import endpoint_in_config

    config = tmp_path / "spmwatch.toml"
    config.write_text(f'[control]\nendpoint = "{bound}"\n[publish]\nendpoint = "{bound}9"\n')
    assert endpoint_in_config(str(config), "control") == reached
    assert endpoint_in_config(str(config), "publish") == reached + "9"


def test_a_bad_endpoint_in_the_section_asked_for_is_still_an_error(tmp_path: Path) -> None:
    from spmwatch.cli import endpoint_in_config

    config = tmp_path / "spmwatch.toml"
    config.write_text('[control]\nendpoint = "tcp://127.0.0.1:99999"\n[lines]\nbogus = 1\n')
    with pytest.raises(ConfigError, match=r"control\.endpoint = .* the port must be 1-65535"):
        endpoint_in_config(str(config), "control")


def test_the_responders_config_is_no_daemon_config_to_ctl() -> None:
    """`ctl --config respond.toml` warned of an unknown key, said "its [control] endpoint is
    used" of a file without one, and reached whatever daemon held the built-in port."""
    from spmwatch.cli import endpoint_in_config

    with pytest.raises(ConfigError, match=r"no \[control\] section: is it the daemon's config"):
        endpoint_in_config(str(REPO / "config" / "respond.toml"), "control")
