"""`spmwatch score` as a subprocess on files written with igorwriter (through ibw.write_scan)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spmwatch import synth
from spmwatch.classify.classifier import load_default
from spmwatch.classify.features import MEANINGS, feature_names
from spmwatch.ibw import write_scan
from spmwatch.scoring.scorer import synthetic_scan
from tests import scoring_helpers as faults

ROOT = Path(__file__).resolve().parents[1]


def spmwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spmwatch", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_score_json_good_bad_and_unreadable(tmp_path: Path) -> None:
    good = synthetic_scan(128, 128, seed=2, scan_id="good")
    bad, rows = faults.zero_lines(synthetic_scan(128, 128, seed=2, scan_id="bad"), 60, 4)
    write_scan(good, tmp_path / "good.ibw")
    write_scan(bad, tmp_path / "bad.ibw")
    (tmp_path / "junk.ibw").write_bytes(b"not an igor wave")
    files = [str(tmp_path / n) for n in ("good.ibw", "junk.ibw", "bad.ibw")]
    files.append(str(tmp_path / "absent.ibw"))
    done = spmwatch("score", "--json", *files)
    assert done.returncode == 2
    # every file gets a record, in order; the unreadable ones say why (the path once)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [Path(r["file"]).name for r in records] == [
        "good.ibw",
        "junk.ibw",
        "bad.ibw",
        "absent.ibw",
    ]
    ok, junk, failed, absent = records
    assert junk == {"file": files[1], "error": junk["error"]}
    assert junk["error"].startswith("not_ibw: ")
    assert absent == {"file": files[3], "error": "file not found"}
    assert f"spmwatch score: {files[1]}: not_ibw: " in done.stderr
    assert done.stderr.count(files[1]) == 1
    assert "2 of 4 files unreadable" in done.stderr
    assert ok["verdict"] == "pass" and ok["alert"] is None and len(ok["lines"]) == 128
    assert failed["verdict"] == "fail" and failed["alert"]["kind"] == "dropout"
    # what decided: the model for the clean frame, the alert rule for the failed one
    assert (ok["decided_by"], failed["decided_by"], failed["reasons"]) == ("model", "alert", [])
    assert all(r["feature"] in feature_names(bank=True) for r in ok["reasons"])
    assert failed["alert"]["line"] in rows.tolist()
    # the alert as the daemon publishes it (position, score), each line with its kind
    alert_line = failed["lines"][failed["alert"]["position"]]
    assert alert_line["index"] == failed["alert"]["line"] and alert_line["kind"] == "dropout"
    assert failed["alert"]["score"] > 0
    assert all((line["kind"] is None) == (not line["flagged"]) for line in failed["lines"])
    assert any(e["kind"] == "dropout" for e in failed["events"])
    assert failed["channels"] == list(bad.channels)


def test_a_force_curve_among_the_images_is_skipped_as_the_daemon_skips_it(tmp_path: Path) -> None:
    """A walkthrough: `score` called a force curve (a 1-D wave) unreadable and exited 2, where
    the daemon skips it as no image; `spmwatch score *.ibw` over an Asylum folder failed."""
    from igorwriter import IgorWave5

    write_scan(synthetic_scan(64, 64, seed=2, scan_id="image"), tmp_path / "image.ibw")
    IgorWave5(np.linspace(0, 1, 200, dtype=np.float32), name="Defl").save(
        str(tmp_path / "force.ibw")
    )
    files = [str(tmp_path / "force.ibw"), str(tmp_path / "image.ibw")]
    done = spmwatch("score", "--json", *files)
    assert done.returncode == 0, done.stderr
    skipped, scored = (json.loads(line) for line in done.stdout.splitlines())
    assert skipped == {"file": files[0], "skipped": skipped["skipped"]}
    assert skipped["skipped"].startswith("no_image_channels: a 1-D wave")
    assert scored["file"] == files[1] and len(scored["lines"]) == 64
    assert f"{files[0]}: skipped: a 1-D wave" in done.stderr
    assert "1 of 2 files skipped: not an image" in done.stderr
    assert "unreadable" not in done.stderr


def test_score_human_output(tmp_path: Path) -> None:
    scan, _ = faults.tracking_loss(synthetic_scan(128, 128, seed=4), 60, 20)
    write_scan(scan, tmp_path / "a.ibw")
    done = spmwatch("score", str(tmp_path / "a.ibw"))
    assert done.returncode == 0, done.stderr
    assert "fail" in done.stdout and "tracking_loss" in done.stdout
    threshold = load_default().threshold  # what the verdict was judged by
    assert f"fail at >= {threshold:.2f}, model default" in done.stdout
    alert = json.loads(spmwatch("score", "--json", str(tmp_path / "a.ibw")).stdout)["alert"]
    said = f"why: the scan raised an alert (tracking_loss at line {alert['line']}): fails by rule"
    assert said in done.stdout
    # a stopped frame: the partial_frame row counts the lines never scanned, and shows no
    # line numbers (those lines have no row; its start/end were read as rows "64-255" of a
    # 64-line file scanned top to bottom)
    cut, _ = synth.failing_scan(seed=4, lines=128, points=64, fault="partial_frame", at=0.5)
    synth.write(cut, tmp_path / "cut.ibw")
    done = spmwatch("score", str(tmp_path / "cut.ibw"))
    missing = cut.expected_lines - cut.n_lines
    row = next(line for line in done.stdout.splitlines() if "partial_frame" in line)
    assert f"{missing} of {cut.expected_lines} lines never scanned" in row and "high" in row
    assert row.split()[1:3] == ["-", "-"]
    said = f"stopped early, after {cut.n_lines} of {cut.expected_lines} lines: fails by rule"
    assert said in done.stdout


def test_score_says_which_features_failed_a_frame_the_model_decided(tmp_path: Path) -> None:
    """Weak offset bands in every channel, too weak for a line alert: the text names the
    model and the band share among its reasons, in words."""
    scan, _ = faults.offset_bands(synth.clean_scan(31, 128, 128))
    path = synth.write(scan, tmp_path / "banded.ibw")
    record = json.loads(spmwatch("score", "--json", str(path)).stdout)
    assert record["verdict"] == "fail" and record["decided_by"] == "model", record["alert"]
    assert "chan_band_frac_median" in [r["feature"] for r in record["reasons"]]
    why = next(line for line in spmwatch("score", str(path)).stdout.splitlines() if "why:" in line)
    assert why.startswith("  why: the model, mostly for: ")
    assert MEANINGS["chan_band_frac_median"] in why


def test_a_slow_first_file_is_explained(monkeypatch, capsys) -> None:
    """The first run after an install compiles for about a minute: it looked like a hang. With
    the kernels cached, a slow file (a busy machine) was blamed on a compile too."""
    from spmwatch.cli import score as cli_score
    from spmwatch.scoring import scorer
    from tests.polling import wait_for

    with cli_score.compiling_note("score"):
        pass
    assert capsys.readouterr().err == ""  # a quick file: nothing said
    monkeypatch.setattr(cli_score, "COMPILING_NOTE_AFTER", 0.01)
    asked: list[bool] = []

    def cached(answer: bool):
        return lambda: asked.append(answer) or answer

    # kernels in the cache: a slow file is the machine's business, not a compile
    monkeypatch.setattr(scorer, "kernels_cached", cached(True))
    with cli_score.compiling_note("score"):
        wait_for(lambda: asked)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(scorer, "kernels_cached", cached(False))
    said: list[str] = []
    with cli_score.compiling_note("score"):
        wait_for(lambda: said.append(capsys.readouterr().err) or "still working" in said[-1])
    assert "compiles the scoring kernels" in said[-1]


def test_score_with_a_daemon_config_judges_as_that_daemon(tmp_path: Path) -> None:
    scan, _ = synth.failing_scan(0, 96, 64, fault="dropout", at=0.3)
    path = synth.write(scan, tmp_path / "watched.ibw")
    default = json.loads(spmwatch("score", "--json", str(path)).stdout)
    assert default["poor_image"] is not None  # the premise: the frame watch names it
    off = tmp_path / "off.toml"
    off.write_text("[model]\nwatch = false\n")
    done = spmwatch("score", "--json", "--config", str(off), str(path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["poor_image"] is None
    strict = tmp_path / "strict.toml"
    strict.write_text("[scoring]\nflag_z = 49\n")  # barely anything flags
    streaky = synth.write(synth.failing_scan(0, 96, 64, fault="streak")[0], tmp_path / "s.ibw")
    default = json.loads(spmwatch("score", "--json", str(streaky)).stdout)
    record = json.loads(spmwatch("score", "--json", "--config", str(strict), str(streaky)).stdout)
    assert sum(line["flagged"] for line in record["lines"]) < sum(
        line["flagged"] for line in default["lines"]
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[scoring]\nbogus = 1\n")
    done = spmwatch("score", "--config", str(bad), str(path))
    assert done.returncode == 2 and "scoring.bogus: unknown key" in done.stderr


def test_score_names_a_channel_constant_in_every_line(tmp_path: Path) -> None:
    scan = synthetic_scan(64, 64, seed=3)
    scan.channels["Ch0Retrace"] = np.zeros((64, 64))
    write_scan(scan, tmp_path / "dead.ibw")
    record = json.loads(spmwatch("score", "--json", str(tmp_path / "dead.ibw")).stdout)
    assert record["dead_channels"] == ["Ch0Retrace"] and record["alert"] is None
    text = spmwatch("score", str(tmp_path / "dead.ibw")).stdout
    assert "constant in every line (not scored for dropouts; unconnected?): Ch0Retrace" in text


def test_probabilities_show_the_side_of_the_threshold_and_counts_read_right() -> None:
    """0.5985 against a threshold 0.5991 printed "p=0.60, fail at >= 0.60" beside a pass."""
    from spmwatch.model import lines_text, probability_text

    assert probability_text(0.5985, 0.5991) == "0.5985"
    assert probability_text(0.57, 0.5991) == "0.57"
    assert probability_text(1.0, 0.5991) == "1.00"
    assert (lines_text(1), lines_text(2), lines_text(0)) == ("1 line", "2 lines", "0 lines")


def test_a_wrong_argument_is_told_with_the_command_usage(capsys) -> None:
    """`report A B` printed spmwatch's own usage, which does not say that report takes one file."""
    from spmwatch.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["report", "a.ibw", "b.ibw", "--out", "x"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: spmwatch report [-h] --out DIR")
    assert "spmwatch report: error: unrecognized arguments: b.ibw" in err


def test_ctrl_c_while_a_command_is_imported_ends_quietly(monkeypatch, capsys) -> None:
    """Ctrl-C in the first second of `replay` (its modules still importing) printed a
    KeyboardInterrupt traceback; later it ended quietly with 130."""
    import importlib

    from spmwatch import cli

    def interrupted(name: str, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted)
    assert cli.main(["replay", "x.ibw"]) == 130
    assert capsys.readouterr().err == ""
