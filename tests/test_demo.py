"""`spmwatch demo`, the README's first command, run as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def test_demo_raises_the_alert_the_responder_acts_and_the_report_is_written(tmp_path: Path) -> None:
    # Run from a folder holding another `spmwatch`, as a user runs the demo from the clone
    # they installed from: the daemon and the responder must run the demo's own package (a
    # child importing the decoy exits at once and the demo fails).
    decoy = tmp_path / "cwd" / "spmwatch"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text('raise SystemExit("the decoy spmwatch was imported")\n')
    (decoy / "__main__.py").write_text("")
    out = tmp_path / "demo"
    script = REPO / "spmwatch" / "__main__.py"  # not -m: the demo must not import the decoy
    done = subprocess.run(
        [sys.executable, str(script), "demo", "--out", str(out), "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=decoy.parent,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    alerts = [line for line in lines if line.startswith("ALERT")]
    actions = [line for line in lines if line.startswith("ACTION")]
    frames = [line for line in lines if line.startswith("FRAME")]
    # the line alert first; the frame watch may add its poor_image notice later in the scan
    assert alerts and "tip_change" in alerts[0], done.stdout
    assert len(alerts) <= 2 and all("poor_image" in a for a in alerts[1:]), done.stdout
    assert actions and all("ok" in line for line in actions), done.stdout
    # The responder (dry-run) names the exact Igor command it would send to stop the scan.
    assert any('ARExecuteControl("StopScan_0","MasterPanel",0,"")' in a for a in actions)
    assert len(frames) == 1 and "FAIL" in frames[0], done.stdout
    assert "by the alert rule" in frames[0]  # why: the scan alerted, whatever the model says
    # The alert comes before the verdict of the finished frame: it was raised while scanning.
    assert lines.index(alerts[0]) < lines.index(frames[0])
    png = out / "report" / "demo_0001.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mask = np.load(out / "report" / "demo_0001_mask.npy")
    assert mask.dtype == bool and mask.any()
    assert "responder_ready" in (out / "respond.log").read_text()
    # the report shows what the demo printed, the frame watch's poor_image included
    record = json.loads((out / "report" / "demo_0001.json").read_text())
    watched = [a for a in alerts if "poor_image" in a]
    assert (record["poor_image"] is not None) == bool(watched), (record["poor_image"], alerts)
    if watched:
        assert f"line {record['poor_image']['line']} " in watched[0]


def test_demo_of_a_fault_without_line_alert_shows_the_failed_frame(tmp_path: Path) -> None:
    # A scan that stops half-way has no line to alert on while scanning: the demo shows the
    # failed frame verdict instead of timing out waiting for an alert (it used to crash).
    command = ["demo", "--out", str(tmp_path), "--fault", "partial_frame"]
    done = subprocess.run(
        [sys.executable, "-m", "spmwatch", *command],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert not [line for line in lines if line.startswith(("ALERT", "ACTION"))], done.stdout
    frames = [line for line in lines if line.startswith("FRAME")]
    assert (
        len(frames) == 1
        and "FAIL" in frames[0]
        and "partial_frame stopped after 64 of 128 lines" in frames[0]
    )
    assert any(line.startswith("no alert") for line in lines)
    assert "after the 64th line scanned of 128" in lines[0]


def test_a_demo_stopped_with_ctrl_c_leaves_no_folder_of_its_own(
    tmp_path: Path, monkeypatch
) -> None:
    """Its /tmp/spmwatch-demo-* folder stayed behind, half filled; one named by --out stays."""
    import tempfile

    from spmwatch import demo
    from spmwatch.cli import main

    def interrupted(out: Path, **_: object) -> int:
        (out / "daemon.log").write_text("started\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(demo, "run_demo", interrupted)
    assert main(["demo"]) == 130
    assert list(tmp_path.iterdir()) == []
    named = tmp_path / "mine"
    named.mkdir()
    assert main(["demo", "--out", str(named)]) == 130
    assert (named / "daemon.log").is_file()
