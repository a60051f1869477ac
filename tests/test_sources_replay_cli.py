"""`spmwatch replay`: to a real line socket (as a subprocess) and into the in-process scorer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ibw_fixtures import make_scan, write_fixture
from sources_helpers import Collector, wait_for

from spmwatch.assess import assess
from spmwatch.classify.classifier import load_default
from spmwatch.cli import main
from spmwatch.ibw import read_scan
from spmwatch.model import ordinal, span_text
from spmwatch.protocol import EndOfScan
from spmwatch.scoring.scorer import score_scan
from spmwatch.sources.linesocket import LineReceiver

ROOT = Path(__file__).resolve().parent.parent


def test_replay_to_a_line_socket_sends_every_line_then_the_end(tmp_path: Path) -> None:
    scan = make_scan(lines=40, points=16, scan_down=True, scan_id="Image 0007")
    path = write_fixture(tmp_path, scan, "Image 0007")
    sink = Collector()
    receiver = LineReceiver("tcp://127.0.0.1:*", sink)
    receiver.start()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "spmwatch",
                "replay",
                str(path),
                "--fast",
                "--to",
                receiver.endpoint,
                "--every",
                "10",
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert wait_for(lambda: sink.of(EndOfScan) == [EndOfScan("Image_0007")])
    finally:
        assert receiver.stop()
    assert [line.index for line in sink.lines] == list(range(39, -1, -1))
    assert {line.scan_id for line in sink.lines} == {"Image_0007"}
    assert "sent 40 lines and the end of Image_0007" in done.stdout
    assert len(re.findall(r"^sent \d+/40 lines", done.stdout, re.M)) == 4


def test_replay_without_receiver_fails_with_a_reason(tmp_path: Path, capsys) -> None:
    path = write_fixture(tmp_path, make_scan(lines=4, points=8))
    code = main(["replay", str(path), "--fast", "--to", "tcp://127.0.0.1:9", "--timeout", "0.2"])
    assert code == 1
    err = capsys.readouterr().err
    assert "no receiver at tcp://127.0.0.1:9 took line 0 of synthetic_0000" in err
    assert "spmwatch ctl status" in err  # a daemon still warming up has no line socket yet


def test_unreadable_file_exits_2_naming_it(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.ibw"
    bad.write_bytes(b"garbage" * 100)
    assert main(["replay", str(bad), "--fast"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not an Igor binary wave" in err
    assert main(["replay", str(tmp_path / "missing.ibw")]) == 2
    assert "missing.ibw" in capsys.readouterr().err


def test_in_process_replay_prints_the_scorers_alert_and_events(tmp_path: Path, capsys) -> None:
    path = write_fixture(tmp_path, make_scan(lines=48, points=64, expected_lines=64))
    assert main(["replay", str(path), "--fast", "--every", "16"]) == 0
    out = capsys.readouterr().out
    frame = score_scan(read_scan(path))
    assert len(re.findall(r"^line +\d+ \(the \d+(st|nd|rd|th) scanned\): score", out, re.M)) == 3
    assert f"48 lines scored, {sum(s.flagged for s in frame.lines)} flagged" in out
    for event in frame.events:
        assert f"  {event.kind} {span_text(event.kind, event.start, event.end)}, " in out
    assert any(event.kind == "partial_frame" for event in frame.events)
    # and the frame's verdict, as `spmwatch score` gives it (the daemon's, at the scan's end)
    verdict = assess(read_scan(path), load_default())[1]
    assert verdict.verdict == "fail" and verdict.decided_by == "stopped_early"
    assert out.rstrip().endswith("verdict: fail (p=1.00, decided by stopped early)")


@pytest.mark.data
def test_in_process_replay_of_a_failing_real_scan_alerts_like_the_scorer(
    data_root: Path, capsys
) -> None:
    path = data_root / "ofdspm" / "bad" / "H_90Cs10MA_0000.ibw"
    assert main(["replay", str(path), "--fast"]) == 0
    out = capsys.readouterr().out
    alert = score_scan(read_scan(path)).alert
    printed = re.findall(r"^ALERT line (\d+) \(the (\d+)\w\w scanned\): (\w+), (\w+)$", out, re.M)
    if alert is None:
        assert printed == []
    else:
        scanned = str(alert.position + 1)
        assert printed == [(str(alert.line), scanned, alert.kind, alert.severity)]


@pytest.mark.parametrize(
    "option", [["--every", "0"], ["--every", "-5"], ["--rate", "0"], ["--timeout", "0"]]
)
def test_bad_numbers_are_refused_naming_the_option(tmp_path: Path, capsys, option) -> None:
    """--every 0 ended in a ZeroDivisionError traceback; --rate 0 silently meant --fast."""
    path = write_fixture(tmp_path, make_scan(lines=4, points=8))
    with pytest.raises(SystemExit) as exited:
        main(["replay", str(path), *option])
    assert exited.value.code == 2
    assert f"argument {option[0]}: '{option[1]}' must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command,said",
    [
        (["replay", "F", "--to", "bogus://x"], "argument --to: endpoint = 'bogus://x' must start"),
        (["replay", "F", "--scan-id", "_bad"], "argument --scan-id: scan_id '_bad' must be"),
        (["subscribe", "--endpoint", "tcp://127.0.0.1:99999"], "the port must be 1-65535"),
        # * is a bound port's "any free one"; there is no such port to connect to
        (["subscribe", "--endpoint", "tcp://127.0.0.1:*"], "the port must be 1-65535\n"),
        (["proxy", "--connect", "udp://x"], "argument --connect: endpoint = 'udp://x'"),
        (["ctl", "--endpoint", "x", "status"], "argument --endpoint: endpoint = 'x'"),
    ],
)
def test_bad_endpoints_and_scan_ids_are_refused_naming_the_option(
    tmp_path: Path, capsys, command: list[str], said: str
) -> None:
    """A bad endpoint ended in ZeroMQ's traceback (or, port *, waited for nothing); a bad
    --scan-id was quietly renamed."""
    path = write_fixture(tmp_path, make_scan(lines=4, points=8))
    with pytest.raises(SystemExit) as exited:
        main([str(path) if part == "F" else part for part in command])
    assert exited.value.code == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize(
    "n,text", [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"),
               (13, "13th"), (21, "21st"), (42, "42nd"), (111, "111th"), (123, "123rd")],
)  # fmt: skip
def test_ordinal_words_positions_as_people_count_them(n: int, text: str) -> None:
    assert ordinal(n) == text


def test_a_replay_stopped_with_ctrl_c_says_what_the_daemon_will_do(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """It ended quietly, and the daemon later failed the good scan as stopped early with no
    word of why."""
    from spmwatch.cli import replay

    scan = make_scan(lines=10, points=8, scan_id="cut")
    path = write_fixture(tmp_path, scan, "cut")
    real_lines = replay.replay_lines

    def two_then_ctrl_c(scan, rate):
        lines = real_lines(scan, rate)
        yield next(lines)
        yield next(lines)
        raise KeyboardInterrupt

    monkeypatch.setattr(replay, "replay_lines", two_then_ctrl_c)
    sink = Collector()
    receiver = LineReceiver("tcp://127.0.0.1:*", sink)
    receiver.start()
    try:
        assert main(["replay", str(path), "--fast", "--to", receiver.endpoint]) == 130
        assert wait_for(lambda: len(sink.lines) == 2)
    finally:
        assert receiver.stop()
    assert sink.of(EndOfScan) == []
    err = capsys.readouterr().err
    assert "interrupted after 2 of 10 lines, no end sent: the daemon holds cut open" in err


def test_replay_config_sends_to_the_line_socket_that_config_binds(tmp_path: Path) -> None:
    """`--config` takes the endpoint as `ctl` and `subscribe` do: a daemon on non-default
    ports is reached without typing its address (a wildcard bind is reached on loopback)."""
    path = write_fixture(tmp_path, make_scan(lines=12, points=16), "Image 0003")
    sink = Collector()
    receiver = LineReceiver("tcp://127.0.0.1:*", sink)
    receiver.start()
    try:
        port = receiver.endpoint.rsplit(":", 1)[1]
        config = tmp_path / "spmwatch.toml"
        config.write_text(f'[lines]\nendpoint = "tcp://*:{port}"\n')
        code = main(["replay", str(path), "--fast", "--config", str(config)])
        assert code == 0
        assert wait_for(lambda: sink.of(EndOfScan) == [EndOfScan("Image_0003")])
    finally:
        assert receiver.stop()
    assert [line.index for line in sink.lines] == list(range(12))


def test_replay_config_of_a_daemon_without_live_lines_is_refused(tmp_path: Path, capsys) -> None:
    path = write_fixture(tmp_path, make_scan(lines=4, points=8))
    config = tmp_path / "spmwatch.toml"
    config.write_text("[lines]\nenabled = false\n")
    assert main(["replay", str(path), "--fast", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: [lines] enabled = false: that daemon takes no live lines" in err
    respond = str(ROOT / "config" / "respond.toml")
    assert main(["replay", str(path), "--fast", "--config", respond]) == 2
    assert "no [lines] section: is it the daemon's config" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["replay", str(path), "--to", "tcp://127.0.0.1:9", "--config", str(config)])
    assert refused.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
