"""Reliability and security of the running daemon: a real `spmwatch run` subprocess, real files,
real sockets on loopback. Bad files in the watched folder, SIGKILL and restart, a folder that
goes away, refused configurations and models, loopback-only binds, CURVE against eavesdroppers
and forgers, and no pickle anywhere. Every wait is a poll with a deadline.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import pickle  # only to build a hostile model file: the point is that spmwatch never loads it
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from daemon_helpers import (
    REPO,
    DaemonProcess,
    Subscriber,
    ctl,
    free_port,
    send_scan,
    wait_for,
    write_config,
)
from fuzz_corpus import FuzzCase, corpus, write_corpus
from reliability_helpers import tiny_model

from spmwatch import protocol
from spmwatch.classify.classifier import Classifier, sha256_of
from spmwatch.control import request
from spmwatch.curve import configure_client, configure_server, write_keypair
from spmwatch.model import Scan
from spmwatch.sources.folder import content_digest
from spmwatch.sources.linesocket import LineSender
from spmwatch.synth import clean_scan, failing_scan, write

LINES, POINTS = 64, 128
FUZZ_FILES = 200
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _good(scan_id: str, seed: int = 1) -> Scan:
    return dataclasses.replace(clean_scan(seed, LINES, POINTS), scan_id=scan_id)


def _failing(scan_id: str, seed: int = 1) -> Scan:
    scan, _ = failing_scan(seed, LINES, POINTS, fault="dropout", at=0.5)
    return dataclasses.replace(scan, scan_id=scan_id)


@dataclasses.dataclass
class Watching:
    daemon: DaemonProcess
    sub: Subscriber
    endpoints: dict[str, str]
    folder: Path


def _config(tmp: Path, extra: str = "", **ports: int) -> tuple[Path, dict[str, str]]:
    """write_config with a model of the test's own: these tests are about surviving, not about
    the shipped model's verdicts (tests/test_daemon.py runs that one)."""
    model = tiny_model(tmp / "model")
    return write_config(tmp, f'[model]\npath = "{model}"\n{extra}', **ports)


def _watch_config(tmp: Path, folder: Path, extra: str = "") -> tuple[Path, dict[str, str]]:
    return _config(tmp, f'[watch]\nfolders = ["{folder}"]\nsettle = 0.2\n{extra}')


@pytest.fixture(scope="module")
def watching(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watching]:
    tmp = tmp_path_factory.mktemp("reliability")
    folder = tmp / "watched"
    folder.mkdir()
    config, endpoints = _watch_config(tmp, folder)
    daemon = DaemonProcess(config)
    daemon.wait_ready()
    sub = Subscriber(endpoints["publish"])
    wait_for(lambda: sub.of(protocol.TOPIC_HEARTBEAT), timeout=10)
    yield Watching(daemon, sub, endpoints, folder)
    sub.close()
    assert daemon.stop() == 0


def _answers(run: Watching, name: str) -> list[tuple[str, dict]]:
    """Every frame or error event about the file `name` (frames name it, errors carry its path),
    and the log line of a wave that is no image (skipped: a force curve is no error)."""
    stem = name.removesuffix(".ibw")
    frames = [("frame", p) for p in run.sub.of(protocol.TOPIC_FRAME) if p.get("file") == name]
    errors = [
        ("error", p)
        for p in run.sub.of(protocol.TOPIC_ERROR)
        if str(p.get("subject", "")).endswith(f"/{name}") or p.get("scan_id") == stem
    ]
    skipped = [
        ("not_image", e)
        for e in run.daemon.logged("file_not_image")
        if str(e.get("file", "")).endswith(f"/{name}")
    ]
    return frames + errors + skipped


# ---------------------------------------------------------------------------------------------
# (a) the fuzz slice dropped into the watched folder
# ---------------------------------------------------------------------------------------------


def _distinct_waves(cases: list[FuzzCase], staging: Path) -> list[FuzzCase]:
    """The cases whose wave no earlier case has (some differ only past the wave's sections): a
    copy of a scored wave is recorded, not scored again, so it gets no answer of its own."""
    digests: set[str] = set()
    kept = []
    for case, path in zip(cases, write_corpus(cases, staging), strict=True):
        if (digest := content_digest(path)) not in digests:
            digests.add(digest)
            kept.append(case)
    return kept


def test_every_damaged_file_in_the_folder_is_answered_and_the_daemon_survives(
    watching: Watching,
) -> None:
    cases = _distinct_waves(corpus(FUZZ_FILES), watching.folder.parent / "staging")
    paths = write_corpus(cases, watching.folder)
    names = [p.name for p in paths]
    # Files that stay truncated are reported once they have not changed for the watcher's
    # give-up time (30 s): a file Igor is still writing must not be called broken.
    wait_for(lambda: all(_answers(watching, n) for n in names), timeout=90, interval=0.5)
    assert watching.daemon.proc.poll() is None
    twice = {n: _answers(watching, n) for n in names if len(_answers(watching, n)) != 1}
    assert not twice, f"answered more than once: {twice}"
    for name in names:
        ((kind, payload),) = _answers(watching, name)
        if kind == "error":
            assert payload["reason"].strip(), name
        if "_valid_" in name:
            assert kind == "frame", (name, payload)
    errors = sum(_answers(watching, n)[0][0] == "error" for n in names)
    assert 0 < errors < len(names)
    write(_failing("after_fuzz"), watching.folder / "after_fuzz.ibw")
    frame = wait_for(lambda: watching.sub.of(protocol.TOPIC_FRAME, file="after_fuzz.ibw"), 30)[0]
    assert frame["lines"] == LINES and frame["alert"] is not None


# ---------------------------------------------------------------------------------------------
# (c) the watched folder goes away and comes back
# ---------------------------------------------------------------------------------------------


def _gone_reports(run: Watching) -> list[dict]:
    return [
        p
        for p in run.sub.of(protocol.TOPIC_ERROR)
        if p.get("subject") == str(run.folder) and "gone" in p.get("reason", "")
    ]


@pytest.mark.parametrize("how", ["renamed", "deleted"])
def test_folder_that_vanishes_is_reported_and_watched_again_when_back(
    watching: Watching, how: str
) -> None:
    before = len(_gone_reports(watching))
    away = watching.folder.with_name("watched.away")
    if how == "renamed":
        watching.folder.rename(away)
    else:
        shutil.rmtree(watching.folder)
    wait_for(lambda: len(_gone_reports(watching)) > before, timeout=15)
    if how == "renamed":
        away.rename(watching.folder)
    else:
        watching.folder.mkdir()
    name = f"back_{how}.ibw"
    write(_good(f"back_{how}"), watching.folder / name)
    frame = wait_for(lambda: watching.sub.of(protocol.TOPIC_FRAME, file=name), timeout=20)[0]
    assert frame["lines"] == LINES and frame["origin"] == "saved_frame"
    assert watching.daemon.proc.poll() is None


# ---------------------------------------------------------------------------------------------
# (e) security of the running daemon
# ---------------------------------------------------------------------------------------------


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_addr)
            if width == 8:
                address = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                address = socket.inet_ntop(socket.AF_INET6, words)
            found.append((address, int(hex_port, 16)))
    return found


def _non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one that is not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_every_listening_socket_is_on_loopback(watching: Watching) -> None:
    listening = _listening(watching.daemon.proc.pid)
    ports = {int(e.rsplit(":", 1)[1]) for e in watching.endpoints.values()}
    assert ports <= {port for _, port in listening}  # publish, lines, control, metrics
    assert all(address in ("127.0.0.1", "::1") for address, _ in listening), listening
    other = _non_loopback_address()
    if other is None:
        return
    for port in ports:
        with pytest.raises(OSError), socket.create_connection((other, port), timeout=2):
            pass


def test_default_settings_bind_loopback_only() -> None:
    from spmwatch.settings import Settings

    s = Settings()
    for endpoint in (s.publish.endpoint, s.lines.endpoint, s.control.endpoint):
        assert endpoint.startswith("tcp://127.0.0.1:"), endpoint
    assert s.metrics.address.startswith("127.0.0.1:")


def test_scan_id_with_path_characters_is_rejected_and_touches_no_file(
    watching: Watching, tmp_path: Path
) -> None:
    before = sorted(p.name for p in watching.folder.parent.rglob("*"))
    target = tmp_path / "escaped"
    hostile = [f"../../{target}", str(target), "..", "a/b", "a\\b", "~root", "\x00x"]
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(watching.endpoints["lines"])
    header = {"v": 1, "line": 0, "n_lines": 4, "points": 8, "channels": ["HeightRetrace"]}
    for scan_id in hostile:
        push.send_multipart([json.dumps({**header, "scan_id": scan_id}).encode(), bytes(32)])
        push.send_multipart([json.dumps({"v": 1, "scan_id": scan_id, "end": True}).encode()])
    push.close()
    expected = 2 * len(hostile)

    def rejections() -> list[dict]:
        errors = watching.sub.of(protocol.TOPIC_ERROR, source="socket")
        return [e for e in errors if "scan_id" in e["reason"]]

    wait_for(lambda: len(rejections()) >= expected, timeout=10)
    assert not target.exists()
    assert sorted(p.name for p in watching.folder.parent.rglob("*")) == before
    assert not any(p.get("scan_id") in hostile for p in watching.sub.of(protocol.TOPIC_FRAME))


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def test_a_producer_cannot_make_the_daemon_hold_hundreds_of_megabytes(watching: Watching) -> None:
    pid = watching.daemon.proc.pid
    before = _rss_mib(pid)
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(watching.endpoints["lines"])
    points, sent = protocol.MAX_POINTS, 1024  # 256 KiB per line, 256 MiB in all
    data = bytes(4 * points)
    header = {"v": 1, "scan_id": "huge", "n_lines": protocol.MAX_LINES, "points": points}
    for line in range(sent):
        frames = [json.dumps({**header, "line": line, "channels": ["HeightRetrace"]}).encode()]
        push.send_multipart([*frames, data])
    push.send_multipart(protocol.encode_end("huge"))
    push.close()

    def all_refused() -> bool:  # every line received and counted, not just the first
        rejected = request(watching.endpoints["control"], "status")["sources"]["socket"]["rejected"]
        return rejected.get(f"scan larger than {protocol.MAX_SCAN_BYTES // 2**20} MiB") == sent

    wait_for(all_refused, timeout=60)
    assert _rss_mib(pid) - before < 128, f"RSS grew from {before:.0f} to {_rss_mib(pid):.0f} MiB"
    (refusal,) = wait_for(lambda: watching.sub.of(protocol.TOPIC_ERROR, scan_id="huge"))
    assert "65536 lines x 65536 points x 1 channels" in refusal["reason"], refusal
    assert "more than 256 MiB" in refusal["reason"]
    assert watching.sub.of(protocol.TOPIC_FRAME, scan_id="huge") == []


def _kinds(events: list[dict]) -> set[str]:
    return {event["kind"] for event in events}


def test_lines_held_for_open_scans_stay_within_the_daemon_budget(tmp_path: Path) -> None:
    """Past `[daemon] max_held_mib` the oldest open scan is closed as a partial frame, judged
    as a frame in progress (the daemon cut it, not the microscope): no stopped-early failure,
    for it nor for the rest of its lines arriving after it was closed."""
    config, endpoints = _config(tmp_path, "[daemon]\nmax_held_mib = 1\n")
    first = clean_scan(1, 1024, 256, traces=False, scan_id="first")  # 4 channels: 4 KiB a line
    second = clean_scan(2, 1024, 256, traces=False, scan_id="second")
    line_bytes = 256 * len(first.channels) * 4
    sent = 2**20 // line_bytes * 3 // 4  # each scan alone fits, the two together do not
    daemon = DaemonProcess(config)
    sub = Subscriber(endpoints["publish"])
    try:
        daemon.wait_ready()
        wait_for(lambda: sub.of(protocol.TOPIC_HEARTBEAT), timeout=10)  # subscribed
        with LineSender(endpoints["lines"], linger=10.0) as sender:
            for scan in (first, second):
                for line in list(scan.lines(source="test"))[:sent]:
                    sender.send(line)
            sender.end("second")
            for line in list(first.lines(source="test"))[sent : sent + 16]:
                sender.send(line)  # the rest of the evicted scan
            sender.end("first")
        wait_for(lambda: len(sub.of(protocol.TOPIC_FRAME)) == 3, timeout=30)
        *firsts, last = sub.of(protocol.TOPIC_FRAME)
        frames = {f["scan_id"]: f for f in firsts}
    finally:
        sub.close()
        assert daemon.stop() == 0
    assert frames["first"]["closed_by"] == "evicted" and frames["first"]["lines"] == sent
    assert frames["first"]["partial"] is True
    assert frames["second"]["closed_by"] == "end" and frames["second"]["lines"] == sent
    stopped_early = [f for f in (*firsts, last) if "partial_frame" in _kinds(f["events"])]
    assert stopped_early == [frames["second"]]  # the one the microscope (its producer) ended
    assert frames["second"]["probability"] == 1.0  # the stopped-early rule
    assert (last["scan_id"], last["closed_by"], last["lines"]) == ("first", "end", 16)
    (evicted,) = daemon.logged("scan_evicted")
    assert evicted["scan_id"] == "first" and evicted["limit"] == "max_held_mib"


# ---------------------------------------------------------------------------------------------
# (b) SIGKILL mid-scan, restart with the same state file
# ---------------------------------------------------------------------------------------------


def _logged_frames(daemon: DaemonProcess, scan_id: str) -> list[dict]:
    return [e for e in daemon.logged("frame") if e.get("scan_id") == scan_id]


def _logged_alerts(daemon: DaemonProcess, scan_id: str) -> list[dict]:
    return [e for e in daemon.logged("alert") if e.get("scan_id") == scan_id]


def test_sigkill_mid_scan_then_restart_neither_repeats_nor_misses_a_frame(tmp_path: Path) -> None:
    folder = tmp_path / "watched"
    folder.mkdir()
    state = tmp_path / "state" / "seen.json"
    extra = (
        f'state_file = "{state}"\n'  # `existing` as shipped (false): a restart is no first start
    )
    config, endpoints = _watch_config(tmp_path, folder, extra)

    first = DaemonProcess(config)
    first.wait_ready()
    write(_failing("reported"), folder / "reported.ibw")
    wait_for(lambda: _logged_frames(first, "reported"), timeout=30)
    assert len(_logged_alerts(first, "reported")) == 1
    # The watcher records a frame right after handing it over; under load that can land a
    # moment after the verdict is out, so "already reported" means: in the state file too.
    wait_for(lambda: state.exists() and "reported.ibw" in state.read_text(), timeout=10)
    live = _failing("live_scan", seed=5)
    lines = list(live.lines(source="test"))
    with LineSender(endpoints["lines"], linger=10.0) as sender:
        for line in lines[: LINES // 2]:
            sender.send(line)
    wait_for(lambda: any(e.get("scan_id") == "live_scan" for e in first.logged("scan_opened")))
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(10) == -signal.SIGKILL
    assert json.loads(state.read_text())["files"]  # written atomically: always whole JSON

    write(_good("while_down"), folder / "while_down.ibw")
    write(_failing("while_down_bad", seed=7), folder / "while_down_bad.ibw")
    second = DaemonProcess(config)
    try:
        second.wait_ready()
        wait_for(lambda: _logged_frames(second, "while_down_bad"), timeout=30)
        wait_for(lambda: _logged_frames(second, "while_down"), timeout=30)
        send_scan(endpoints["lines"], live)  # the producer restarts the interrupted scan
        wait_for(lambda: _logged_frames(second, "live_scan"), timeout=30)
        write(_good("canary"), folder / "canary.ibw")  # a last file, so late repeats show up
        wait_for(lambda: _logged_frames(second, "canary"), timeout=30)
    finally:
        assert second.stop() == 0
    assert _logged_frames(second, "reported") == []
    assert _logged_alerts(second, "reported") == []
    assert len(_logged_frames(second, "while_down")) == 1
    assert len(_logged_frames(second, "while_down_bad")) == 1
    assert len(_logged_alerts(second, "while_down_bad")) == 1
    assert len(_logged_frames(second, "live_scan")) == 1


def test_frame_queued_but_unpublished_at_sigkill_is_scored_after_restart(tmp_path: Path) -> None:
    folder = tmp_path / "watched"
    folder.mkdir()
    state = tmp_path / "seen.json"
    config, endpoints = _watch_config(tmp_path, folder, f'state_file = "{state}"\n')
    first = DaemonProcess(config)
    first.wait_ready()
    stop = threading.Event()

    def backlog() -> None:  # keep the daemon's inbox full of lines, so a frame waits in it
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDTIMEO, 100)
        push.connect(endpoints["lines"])
        big = dataclasses.replace(clean_scan(3, 4096, 256), scan_id="backlog")
        for line in big.lines(source="test"):
            while not stop.is_set():
                try:
                    push.send_multipart(protocol.encode_line(line))
                    break
                except zmq.Again:
                    continue
            if stop.is_set():
                break
        push.close()

    producer = threading.Thread(target=backlog, daemon=True)
    producer.start()
    try:
        wait_for(lambda: first.logged("scan_opened"), timeout=30)
        write(_good("queued"), folder / "queued.ibw")
        write(_good("queued_next"), folder / "queued_next.ibw")

        def window() -> str:
            """Both frames handed over (so the watcher is done with the first), none taken."""
            status = request(endpoints["control"], "status")
            if status["counters"]["frame_files"]:
                return "missed"
            return "open" if status["sources"]["folder"]["frames"] >= 2 else ""

        seen = wait_for(window, timeout=30, interval=0.002)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        if seen == "missed" or _logged_frames(first, "queued"):
            pytest.skip("the daemon took the frame before the kill: no window to test")
    finally:
        stop.set()
        producer.join(10)
        first.kill()
    second = DaemonProcess(config)
    try:
        second.wait_ready()
        write(_good("canary"), folder / "canary.ibw")
        wait_for(lambda: _logged_frames(second, "canary"), timeout=30)
    finally:
        assert second.stop() == 0
    assert len(_logged_frames(second, "queued")) == 1
    assert len(_logged_frames(second, "queued_next")) == 1


def test_frame_saved_while_paused_is_scored_on_resume(watching: Watching) -> None:
    control = watching.endpoints["control"]
    name = "saved_while_paused.ibw"
    files_before = json.loads(ctl(control, "status").stdout)["counters"]["frame_files"]
    assert json.loads(ctl(control, "pause").stdout)["paused"] is True
    try:
        write(_good("saved_while_paused"), watching.folder / name)
        deferred = watching.daemon.logged
        wait_for(
            lambda: any(e.get("file", "").endswith(name) for e in deferred("frame_file_deferred"))
        )
        assert watching.sub.of(protocol.TOPIC_FRAME, file=name) == []
    finally:
        assert json.loads(ctl(control, "resume").stdout)["paused"] is False
    wait_for(lambda: watching.sub.of(protocol.TOPIC_FRAME, file=name), timeout=30)
    write(_good("after_resume"), watching.folder / "after_resume.ibw")  # late repeats show up
    wait_for(lambda: watching.sub.of(protocol.TOPIC_FRAME, file="after_resume.ibw"), timeout=30)
    assert len(watching.sub.of(protocol.TOPIC_FRAME, file=name)) == 1
    counters = json.loads(ctl(control, "status").stdout)["counters"]
    assert counters["frame_files"] == files_before + 2  # the deferred file counted once


# ---------------------------------------------------------------------------------------------
# (d) refused at start: bad config, tampered or hostile model files
# ---------------------------------------------------------------------------------------------


class _Trap:
    """Unpickling this writes a marker file: proof that something ran pickle.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "unpickled"))


def _bad_models(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model file, words the refusal must contain); each starts from a good model."""
    tampered = tiny_model(tmp / "tampered")
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    mismatched = tiny_model(tmp / "mismatched")
    side = mismatched.with_suffix(".json")
    sidecar = json.loads(side.read_text())
    sidecar["feature_names"] = [*sidecar["feature_names"][:-1], "not_a_feature"]
    side.write_text(json.dumps(sidecar))
    # A pickle posing as a model, with a sidecar whose SHA-256 matches it.
    hostile = tiny_model(tmp / "hostile")
    hostile.write_bytes(pickle.dumps(_Trap(tmp / "UNPICKLED")))
    side = hostile.with_suffix(".json")
    sidecar = json.loads(side.read_text())
    sidecar["model_sha256"] = sha256_of(hostile)
    side.write_text(json.dumps(sidecar))
    return {
        "tampered model": (tampered, "SHA-256"),
        "mismatched model": (mismatched, "not_a_feature"),
        "pickle as model": (hostile, "tiny.skops"),
    }


CONFIG_ERRORS = {  # TOML appended to a good config -> words the refusal must contain
    "unknown key": ("[daemon]\nqueue_sise = 10\n", "queue_sise"),
    "unknown section": ("[wacth]\nfolders = []\n", "wacth"),
    "wrong type": ('[daemon]\nqueue_size = "many"\n', "queue_size"),
    "bad endpoint": ('[control]\nendpoint = "udp://127.0.0.1:1"\n', "endpoint"),
    "negative settle": ("[watch]\nsettle = -1.0\n", "settle"),
    "not TOML": ("[daemon\n", "TOML"),
    "curve without keys": ("[curve]\nenabled = true\n", "server_secret_key"),
}


@pytest.mark.parametrize("name", CONFIG_ERRORS)
def test_config_error_names_the_key(tmp_path: Path, name: str) -> None:
    from spmwatch.config import ConfigError
    from spmwatch.settings import load_settings

    text, words = CONFIG_ERRORS[name]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_settings(path)


def test_bad_config_and_models_are_refused_before_any_socket_is_bound(tmp_path: Path) -> None:
    """As real `spmwatch run` processes: non-zero exit, the problem named, nothing bound."""
    config, endpoints = write_config(tmp_path)
    good = config.read_text()
    models = _bad_models(tmp_path)
    Classifier.load(tiny_model(tmp_path / "good"))  # the starting point is a usable model
    texts = {"unknown key": good + CONFIG_ERRORS["unknown key"][0]}
    texts |= {name: good + f'[model]\npath = "{path}"\n' for name, (path, _) in models.items()}
    words = {"unknown key": CONFIG_ERRORS["unknown key"][1]}
    words |= {name: word for name, (_, word) in models.items()}
    running = {}
    for i, (name, text) in enumerate(texts.items()):
        path = tmp_path / f"bad{i}.toml"
        path.write_text(text)
        running[name] = subprocess.Popen(
            [sys.executable, "-m", "spmwatch", "run", "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=ENV,
            cwd=REPO,
            text=True,
        )
    for name, proc in running.items():
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode != 0, f"{name}: started anyway\n{output}"
        assert words[name] in output, f"{name}: refusal does not name {words[name]!r}:\n{output}"
        assert '"event": "ready"' not in output and "Traceback" not in output, output
    assert not (tmp_path / "UNPICKLED").exists()
    for endpoint in endpoints.values():  # nothing was left bound (and nothing is bound now)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", int(endpoint.rsplit(":", 1)[1])))


def _start_that_fails(config: Path) -> str:
    """Start the daemon on `config`, expecting it to give up at once: its whole output."""
    done = subprocess.run(
        [sys.executable, "-m", "spmwatch", "run", "--config", str(config)],
        capture_output=True,
        env=ENV,
        cwd=REPO,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "warming_up" not in output, output  # told before the warm-up began
    return output


@pytest.mark.parametrize("key", ["publish", "lines", "metrics", "control"])
def test_a_port_held_by_another_program_is_told_before_the_warm_up(
    tmp_path: Path, key: str
) -> None:
    """A second daemon on the same ports heard of the clash only after the warm-up (a minute
    on a first start): now at once, naming the key, exit 1 (systemd retries)."""
    config, endpoints = write_config(tmp_path)
    port = int(endpoints[key].rsplit(":", 1)[1])
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        output = _start_that_fails(config)
    name = "address" if key == "metrics" else "endpoint"
    assert f"{key}.{name} {endpoints[key]}: Address already in use" in output, output
    assert "addr=" not in output  # the address once, not again in ZeroMQ's words


def test_an_ipc_socket_in_a_missing_folder_is_told_before_the_warm_up(tmp_path: Path) -> None:
    config, endpoints = write_config(tmp_path)
    missing = f"ipc://{tmp_path}/absent/lines.sock"
    config.write_text(config.read_text().replace(endpoints["lines"], missing))
    output = _start_that_fails(config)
    assert f"lines.endpoint {missing}: the folder {tmp_path}/absent does not exist" in output


# ---------------------------------------------------------------------------------------------
# (e) CURVE: eavesdroppers get nothing, forged alerts are not acted on
# ---------------------------------------------------------------------------------------------


def _respond_config(tmp: Path, subscribe: str, actions: str, keys: Path) -> Path:
    path = tmp / "respond.toml"
    path.write_text(
        f'subscribe = "{subscribe}"\nactions_endpoint = "{actions}"\ndry_run = true\n'
        f'state_file = "{tmp / "respond-state.json"}"\nlog_format = "json"\n'
        f'[curve]\nenabled = true\nsecret_key = "{keys / "responder.key_secret"}"\n'
        f'daemon_public_key = "{keys / "daemon.key"}"\n'
    )
    return path


def _forged_alert(seq: int) -> list[bytes]:
    payload = {
        "v": 1,
        "seq": seq,
        "time": time.time(),
        "scan_id": "forged",
        "source": "socket",
        "line": 3,
        "position": 3,
        "kind": "tip_change",
        "severity": "high",
        "score": 40.0,
        "probability": 1.0,
        "threshold": 0.5,
        "model": "forged",
        "action": "stop_scan",
        "origin": "live",
        "lines_seen": 4,
    }
    return protocol.encode_event(protocol.TOPIC_ALERT, payload)


def test_curve_shuts_out_eavesdroppers_and_forgers(tmp_path: Path) -> None:
    keys, authorised, outsider = tmp_path / "keys", tmp_path / "authorised", tmp_path / "outsider"
    for name in ("daemon", "responder", "subscriber", "forger"):
        write_keypair(keys, name)
    write_keypair(outsider, "stranger")
    authorised.mkdir()
    for name in ("responder", "subscriber"):
        shutil.copy(keys / f"{name}.key", authorised)
    pub_port = free_port()
    publish = f"tcp://127.0.0.1:{pub_port}"
    actions = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.Context.instance()

    # A forger holds the daemon's address first: it even admits the responder's key.
    forger = context.socket(zmq.PUB)
    auth = configure_server(forger, keys / "forger.key_secret", authorised)
    forger.bind(publish)
    responder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spmwatch",
            "respond",
            "--config",
            str(_respond_config(tmp_path, publish, actions, keys)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
        cwd=REPO,
        text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(responder.stdout or []), daemon=True)
    reader.start()
    outcomes = Subscriber(actions, (protocol.TOPIC_ACTION,))
    try:
        wait_for(lambda: any("responder_ready" in line for line in output), timeout=30)
        deadline = time.monotonic() + 3.0
        seq = 0
        while time.monotonic() < deadline:  # 3 s of forged alerts, fresh each time
            forger.send_multipart(_forged_alert(seq))
            seq += 1
            time.sleep(0.05)
        assert outcomes.of(protocol.TOPIC_ACTION) == [], "the responder acted on a forged alert"
        forger.close(linger=0)
        auth.stop()

        # The real daemon takes its address back, with CURVE on.
        config, endpoints = _config(
            tmp_path,
            f'[curve]\nenabled = true\nserver_secret_key = "{keys / "daemon.key_secret"}"\n'
            f'authorized_keys = "{authorised}"\n',
            publish=pub_port,
        )
        daemon = DaemonProcess(config)
        try:
            try:
                daemon.wait_ready()
            except RuntimeError:
                raise AssertionError("".join(daemon.raw)) from None
            plain = Subscriber(publish)  # no CURVE at all
            stranger = context.socket(zmq.SUB)
            configure_client(stranger, outsider / "stranger.key_secret", keys / "daemon.key")
            stranger.setsockopt(zmq.SUBSCRIBE, b"")
            stranger.connect(publish)
            member = context.socket(zmq.SUB)
            configure_client(member, keys / "subscriber.key_secret", keys / "daemon.key")
            member.setsockopt(zmq.SUBSCRIBE, b"")
            member.connect(publish)
            assert member.poll(10_000), "an authorised subscriber hears heartbeats"
            send_scan(endpoints["lines"], _failing("genuine"))
            acted = wait_for(lambda: outcomes.of(protocol.TOPIC_ACTION, scan_id="genuine"), 30)
            assert acted and not outcomes.of(protocol.TOPIC_ACTION, scan_id="forged")
            assert stranger.poll(500) == 0, "a subscriber with an unknown key heard something"
            assert plain.events == [], "a subscriber without CURVE heard something"
            stranger.close(linger=0)
            member.close(linger=0)
            plain.close()
        finally:
            assert daemon.stop() == 0
    finally:
        outcomes.close()
        responder.terminate()
        responder.wait(30)
        reader.join(10)
    logged = [json.loads(line) for line in output if line.startswith("{")]
    assert not [e for e in logged if e.get("scan_id") == "forged"]


# ---------------------------------------------------------------------------------------------
# No pickle anywhere
# ---------------------------------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}


def test_no_module_can_unpickle() -> None:
    """skops (with an allow-list) and JSON only: no import of a pickle family module, no
    `allow_pickle=True`, no `trusted=True` blanket for skops."""
    offenders = []
    for path in sorted((REPO / "spmwatch").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            if set(names) & UNSAFE_MODULES:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} imports {names}")
            unsafe_flag = isinstance(node, ast.keyword) and node.arg in ("allow_pickle", "trusted")
            if unsafe_flag and isinstance(node.value, ast.Constant) and node.value.value is True:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.arg}=True")
    assert not offenders, offenders
