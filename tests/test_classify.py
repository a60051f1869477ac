"""Classifier: features on partial frames, safe model files (no pickle, checked sidecar),
an end-to-end train on a small synthetic set, evaluate's outputs, and the shipped model."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spmwatch import synth
from spmwatch.classify import classifier as C
from spmwatch.classify.features import MEANINGS, channel_features, feature_names, frame_vector
from spmwatch.classify.train import (
    choose_rule,
    family_of,
    progress,
    thresholds,
    train_model,
)
from spmwatch.scoring.scorer import score_scan
from tests import scoring_helpers as faults

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """Small labelled folders of generated .ibw files (good: clean, bad: one fault each)."""
    root = tmp_path_factory.mktemp("labelled")
    good, bad = root / "good", root / "bad"
    good.mkdir()
    bad.mkdir()
    for i in range(6):
        synth.write(synth.clean_scan(100 + i, 48, 64), good / f"Clean{'AB'[i % 2]}_{i:04d}.ibw")
        kind = ("tip_change", "dropout", "tracking_loss")[i % 3]
        scan, _ = synth.failing_scan(seed=200 + i, lines=48, points=64, fault=kind, at=0.4)
        # long family names, as users' folders have: the console table must print them whole
        synth.write(scan, bad / f"FaultOnALongSampleName{'AB'[i % 2]}_{i:04d}.ibw")
    return good, bad


@pytest.fixture(scope="module")
def model(folders, tmp_path_factory) -> Path:
    good, bad = folders
    out = tmp_path_factory.mktemp("model") / "small"
    return train_model(good, bad, out, synthetic=16, quiet=True).path


def test_family_grouping_follows_the_data_readme():
    assert family_of("Cs50MA50approx_0032.ibw") == "perovskite"
    for name in ("approx5050CsMA0012", "H_90Cs10MA_0004", "PositionC_30Cs70M0000"):
        assert family_of(name) == "perovskite"
    assert family_of("approx5050compos_0011") == "perovskite"
    assert family_of("PTO_AC_0000_b") == "PTO_AC"
    assert family_of("BSFO_AC_0004") == "BSFO_AC"
    assert family_of("WTV_Loc013_0001") == "WTV"


def test_features_work_on_a_frame_in_progress():
    scan, _ = synth.failing_scan(seed=3, lines=64, points=64, fault="dropout", at=0.3)
    names = feature_names()
    full = frame_vector(score_scan(scan), scan.channels)
    assert full.shape == (len(names),) and np.isfinite(full).all()
    half = synth.inject(scan, "partial_frame", seed=0, at=0.5)[0]
    live = frame_vector(score_scan(half), half.channels)
    assert live.shape == full.shape and np.isfinite(live).all()


def _channel_stat(channels, name: str) -> float:
    names = [n for n in feature_names() if n.startswith("chan_")]
    return channel_features(channels)[names.index(name)]


def test_channel_statistics_see_dropouts_and_bands_and_ignore_units():
    scan = synth.clean_scan(4, 64, 64)
    base = channel_features(scan.channels)
    scaled = channel_features({k: v * 1e6 + 3 for k, v in scan.channels.items()})
    np.testing.assert_allclose(base, scaled, rtol=1e-6, atol=1e-9)
    broken, _ = synth.inject(scan, "dropout", seed=1, at=0.5)
    assert _channel_stat(broken.channels, "chan_flat_frac_median") > _channel_stat(
        scan.channels, "chan_flat_frac_median"
    )
    scarred, truth = synth.inject(scan, "streak", seed=2, at=0.1)
    banded = _channel_stat(scarred.channels, "chan_band_frac_median")
    assert banded > _channel_stat(scan.channels, "chan_band_frac_median") + 0.05
    assert banded <= truth.mask.mean() + 0.05  # counts band lines, not the whole frame


def test_thresholds_meet_their_definitions():
    labels = np.array([0] * 100 + [1] * 20)
    scores = np.concatenate([np.linspace(0, 0.6, 100), np.linspace(0.5, 1, 20)])
    points = thresholds(labels, scores, false_alarm=0.01)
    assert (scores[labels == 0] >= points["false_alarm"]).mean() <= 0.01
    assert 0.5 <= points["max_f1"] <= 0.61
    real_good = np.linspace(0, 0.3, 40)
    on_real = thresholds(labels, scores, false_alarm=0.05, good_scores=real_good)
    assert (real_good >= on_real["false_alarm"]).mean() <= 0.05
    assert on_real["false_alarm"] < points["false_alarm"]


def test_auto_rule_ships_the_false_alarm_threshold_only_when_it_still_catches_failures():
    assert choose_rule("auto", 0.95) == "false_alarm"
    assert choose_rule("auto", 0.5) == "max_f1"
    assert choose_rule("max_f1", 1.0) == "max_f1"


def test_train_end_to_end_writes_a_loadable_model(model: Path):
    side = json.loads(model.with_suffix(".json").read_text())
    assert side["model_sha256"] == C.sha256_of(model)
    assert side["training"]["n_good"] == 6 and side["training"]["n_bad"] == 6
    assert set(side["thresholds"]) >= {"max_f1", "false_alarm"}
    loaded = C.Classifier.load(model)
    scan, _ = synth.failing_scan(seed=9, lines=48, points=64, fault="dropout", at=0.3)
    verdict = loaded.verdict(score_scan(scan), scan)
    assert verdict.scan_id == scan.scan_id and 0 <= verdict.probability <= 1
    assert verdict.verdict == ("fail" if verdict.probability >= loaded.threshold else "pass")


def test_a_frame_stopped_early_fails_by_rule_only_once_finished(model: Path):
    loaded = C.Classifier.load(model)
    scan = synth.clean_scan(21, 48, 64)
    stopped, _ = synth.inject(scan, "partial_frame", seed=1, at=0.6)
    frame = score_scan(stopped)
    assert any(e.kind == "partial_frame" for e in frame.events)
    verdict = loaded.verdict(frame, stopped, finished=True)
    assert verdict.verdict == "fail" and verdict.probability == 1.0
    assert (verdict.decided_by, verdict.reasons) == ("stopped_early", ())
    assert loaded.verdict(frame, stopped, finished=False).decided_by == "model"
    live = loaded.predict_proba(frame, stopped, finished=False)
    assert live == pytest.approx(loaded.predict_vectors(loaded.features(frame, stopped))[0])
    assert C.fail_probability(np.array([0.1, 0.2]), np.array([True, False])).tolist() == [1, 0.2]


def _copy_model(model: Path, tmp_path: Path) -> Path:
    target = tmp_path / model.name
    target.write_bytes(model.read_bytes())
    target.with_suffix(".json").write_bytes(model.with_suffix(".json").read_bytes())
    return target


def test_a_model_name_with_a_dot_keeps_it(model: Path, tmp_path: Path):
    """`--out lab_v1.1` wrote lab_v1.skops, which `--out lab_v1.2` then overwrote."""
    assert C.model_file(tmp_path / "lab_v1.1") == tmp_path / "lab_v1.1.skops"
    assert C.model_file(tmp_path / "lab_v1.2.skops") == tmp_path / "lab_v1.2.skops"
    assert C.sidecar_path(C.model_file(tmp_path / "lab_v1.1")) == tmp_path / "lab_v1.1.json"
    versioned = tmp_path / "lab_v1.1.skops"
    versioned.write_bytes(model.read_bytes())
    (tmp_path / "lab_v1.1.json").write_bytes(model.with_suffix(".json").read_bytes())
    assert C.Classifier.load(tmp_path / "lab_v1.1").threshold == C.Classifier.load(model).threshold
    renamed = tmp_path / "mymodel.bin"
    renamed.write_bytes(model.read_bytes())
    with pytest.raises(C.ModelError, match=r"mymodel\.bin: not a \.skops file; a model is NAME"):
        C.Classifier.load(renamed)


def test_load_refuses_a_tampered_model_file(model: Path, tmp_path: Path):
    copy = _copy_model(model, tmp_path)
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(C.ModelError, match=r"small\.skops: SHA-256 .* was changed or replaced"):
        C.Classifier.load(copy)


@pytest.mark.parametrize("threshold", [7.5, 0, -0.1, "0.5", True, float("nan")])
def test_load_refuses_a_threshold_that_is_no_probability(
    model: Path, tmp_path: Path, threshold: object
):
    target = _copy_model(model, tmp_path)
    side = json.loads(target.with_suffix(".json").read_text())
    target.with_suffix(".json").write_text(json.dumps({**side, "threshold": threshold}))
    with pytest.raises(C.ModelError, match=r"small\.json: threshold .* is not a probability"):
        C.Classifier.load(target)


def test_load_refuses_a_sidecar_for_other_features(model: Path, tmp_path: Path):
    copy = _copy_model(model, tmp_path)
    side = json.loads(copy.with_suffix(".json").read_text())
    side["feature_names"] = [*side["feature_names"][:-1], "entropy_of_doom"]
    copy.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(C.ModelError, match=r"trained for other features.*entropy_of_doom"):
        C.Classifier.load(copy)


def test_load_refuses_a_missing_sidecar_and_untrusted_types(model: Path, tmp_path: Path):
    copy = _copy_model(model, tmp_path)
    copy.with_suffix(".json").unlink()
    with pytest.raises(C.ModelError, match=r"sidecar small\.json is missing"):
        C.Classifier.load(copy)
    from fractions import Fraction

    import skops.io as sio
    from sklearn.ensemble import ExtraTreesClassifier

    X = np.random.default_rng(0).normal(size=(20, 3))
    sneaky = tmp_path / "sneaky.skops"
    sio.dump(
        {"estimator": ExtraTreesClassifier(2).fit(X, X[:, 0] > 0), "x": Fraction(1, 3)}, sneaky
    )
    with pytest.raises(C.ModelError, match=r"outside the trusted allow-list: fractions\.Fraction"):
        C._check_types(sneaky)


def test_no_pickle_anywhere_in_the_package():
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "spmwatch").rglob("*.py")
        if "import pickle" in p.read_text() or "joblib.dump" in p.read_text()
    ]
    assert offenders == []


def test_evaluate_writes_summary_plot_and_table(folders, model: Path, tmp_path: Path):
    good, bad = folders
    out = tmp_path / "eval"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spmwatch",
            "evaluate",
            "--good",
            str(good),
            "--bad",
            str(bad),
            "--model",
            str(model),
            "--out",
            str(out),
            "--synthetic",
            "8",
            "--per-kind",
            "1",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    rows = (out / "summary.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"accuracy", "precision", "recall", "f1", "auroc", "pr_auc", "latency_ms"} <= set(header)
    splits = {r.split(",")[0] for r in rows[1:]}
    assert {"given", "lofo", "synthetic:tip_change", "synthetic:clean"} <= splits
    printed = {line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip()}
    assert splits <= printed  # the console table prints every split's name whole
    assert (out / "roc_pr.png").stat().st_size > 1000
    table = (out / "per_file.csv").read_text().splitlines()
    assert sum(1 for line in table if line.startswith("given,")) == 12


def test_the_curves_legend_sits_below_both_plots_and_coinciding_curves_are_named_together(
    tmp_path: Path,
):
    """Inside the ROC plot the legend hid curves, and a perfect split's curve hid another's
    (walkthrough finding)."""
    from spmwatch.classify.evaluate import BASELINE_NAME, SplitResult, curves_figure, plot_curves

    labels = np.array([0, 0, 1, 1])
    perfect = np.array([0.1, 0.2, 0.8, 0.9])
    results = [
        SplitResult("lofo", "spmwatch", [], labels, perfect, 0.5),
        SplitResult("lofo:perovskite", "spmwatch", [], labels, perfect, 0.5),
        SplitResult("lofo", BASELINE_NAME, [], labels, np.array([0.6, 0.2, 0.3, 0.9]), 0.5),
        SplitResult("synthetic:clean", "default", [], np.zeros(4, int), perfect, 0.5),
    ]
    path = plot_curves(results, tmp_path / "roc_pr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = curves_figure(results)
    roc = fig.axes[0]
    assert roc.get_legend() is None and len(fig.legends) == 1
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    # the two perfect spmwatch splits are one curve named by both; one class has no curve
    assert names == [
        "lofo, lofo:perovskite / spmwatch (AUROC 1.000)",
        f"lofo / {BASELINE_NAME} (AUROC 0.750)",
    ]
    assert [c.get_ls() for c in roc.get_lines()] == ["-", "--", "-"]  # the last: the diagonal


def test_evaluate_says_which_files_it_skipped(folders, model: Path, tmp_path: Path):
    """A broken file used to drop out of the evaluation without a word on the console."""
    good, bad = folders
    mixed = tmp_path / "good"
    shutil.copytree(good, mixed)
    (mixed / "Broken_0001.ibw").write_bytes(b"\x05\x00" + b"not an igor wave" * 4)
    out = tmp_path / "eval"
    args = ["--good", str(mixed), "--bad", str(bad), "--model", str(model), "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "spmwatch", "evaluate", *args, "--no-cv", "--per-kind", "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert "skipped " in result.stderr and "Broken_0001.ibw" in result.stderr, result.stderr
    assert "Warning" not in result.stderr  # matplotlib's, for a plot with nothing to label
    assert "Broken_0001.ibw" in (out / "skipped.txt").read_text()
    assert "skipped.txt" in result.stdout


def test_evaluate_names_a_bad_model_clearly(folders, tmp_path: Path):
    good, bad = folders
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "spmwatch",
            "evaluate",
            "--good",
            str(good),
            "--bad",
            str(bad),
            "--model",
            str(tmp_path / "nope.skops"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2 and "nope.skops: model file not found" in result.stderr


def test_shipped_default_model_separates_failing_from_clean_scans():
    model = C.load_default()
    clean = [synth.clean_scan(900 + i, 128, 128) for i in range(4)]
    failing = [
        synth.failing_scan(seed=950 + i, lines=128, points=128, fault=kind, at=0.3)[0]
        for i, kind in enumerate(("dropout", "tracking_loss", "streak", "tip_change"))
    ]
    p_clean = [model.predict_proba(score_scan(s), s) for s in clean]
    p_fail = [model.predict_proba(score_scan(s), s) for s in failing]
    assert np.mean(p_fail) > np.mean(p_clean)
    assert sum(p > max(p_clean) for p in p_fail) >= 3


def test_a_finished_frame_whose_scan_alerted_fails_but_the_alert_keeps_the_model_probability(
    model: Path,
):
    """Live consistency: a frame the monitor raised an alert on (and the responder may have
    stopped) is never reported as usable; while scanning, the alert carries the model's view."""
    loaded = C.Classifier.load(model)
    scan, _ = synth.failing_scan(seed=2, fault="tip_change")
    frame = score_scan(scan)
    assert frame.alert is not None
    model_only = loaded.predict_vectors(loaded.features(frame, scan))[0]
    assert loaded.predict_proba(frame, scan, finished=False) == pytest.approx(model_only)
    verdict = loaded.verdict(frame, scan, finished=True)
    assert (verdict.verdict, verdict.probability, verdict.decided_by) == ("fail", 1.0, "alert")
    clean = synth.clean_scan(5, 64, 128)
    clean_frame = score_scan(clean)
    assert clean_frame.alert is None
    assert loaded.predict_proba(clean_frame, clean) < 1.0


def test_progress_bars_work_without_quiet(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """train and evaluate show bars on a terminal unless --quiet; tqdm was once missing from
    the dependencies, and every test ran quiet, so a user's first `spmwatch train` crashed.
    A redirected stderr gets one line per stage, no bar: a log file got every redraw of it,
    and with nothing at all a ten-minute evaluate said nothing."""
    assert list(progress(range(5), "real scans")) == list(range(5))
    assert capsys.readouterr().err == "real scans: 5 scans ...\n"  # not a terminal

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress(range(5), "scans")) == list(range(5))
    assert "scans" in terminal.getvalue()
    assert progress([1, 2], "scans", quiet=True) == [1, 2]


def test_an_early_false_fail_is_not_a_negative_delay():
    """A frame failing before its fault began is an early fail, not a delay (it gave
    'median_delay_lines -124' for a fault never detected)."""
    from spmwatch.classify.evaluate import online_run

    scan, truth = synth.failing_scan(seed=7, lines=64, points=64, fault="dropout", at=0.5)
    strict = C.load_default()
    strict.threshold = 0.0  # every frame so far fails: the first check is before the fault
    onset = truth.first_position
    assert onset is not None and onset > 4
    run = online_run(strict, scan, watch_from=onset)
    assert run.early and run.first is not None and onset <= run.first < onset + 4


def test_undefined_metrics_are_empty_not_zero():
    from spmwatch.classify.splits import metrics

    nothing_failed = metrics(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.3]), 0.5)
    assert np.isnan(nothing_failed["precision"]) and nothing_failed["recall"] == 0.0
    assert nothing_failed["f1"] == 0.0
    all_good = metrics(np.array([0, 0]), np.array([0.1, 0.2]), 0.5)
    assert np.isnan(all_good["precision"]) and np.isnan(all_good["f1"])


def test_a_folder_as_model_path_is_named_as_one(tmp_path: Path):
    with pytest.raises(C.ModelError, match=r"a folder; name the model's \.skops file"):
        C.Classifier.load(tmp_path)


def test_the_shipped_model_is_found_in_a_user_install(tmp_path: Path, monkeypatch):
    """`pip install --user` puts the wheel's data files under the user base, not sys.prefix."""
    import shutil
    import site
    import sys

    user_models = tmp_path / "user" / "share" / "spmwatch" / "models"
    user_models.mkdir(parents=True)
    shipped = C.default_model_path()
    for path in (shipped, shipped.with_suffix(".json")):
        shutil.copy(path, user_models / path.name)
    monkeypatch.setattr(C, "__file__", str(tmp_path / "site-packages" / "spmwatch" / "x" / "c.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(site, "getuserbase", lambda: str(tmp_path / "user"))
    assert C.default_model_path() == user_models / shipped.name
    assert C.load_default().identity()["model"] == "default"


def test_train_prints_its_table_when_a_family_has_only_bad_frames(folders, tmp_path: Path, capsys):
    # each family here is all good or all bad: their held-out AUROC is undefined (null in the
    # sidecar), which the console table printed by crashing, after the model was written
    from spmwatch.cli import main

    good, bad = folders
    out = tmp_path / "mine"
    args = ["--good", str(good), "--bad", str(bad), "--out", str(out), "--synthetic", "8"]
    code = main(["train", *args, "--quiet"])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0
    assert "6 real good frames cannot pin a 5% false-alarm rate" in captured.err
    assert "no sample family has both good and bad frames" in captured.err
    side = json.loads(out.with_suffix(".json").read_text())
    undefined = [s for s, m in side["metrics"].items() if m.get("auroc", 0) is None]
    assert undefined  # the case this test is about
    rows = {line.split()[0]: line for line in printed.splitlines() if line.startswith("  ")}
    assert all(" -  " in rows[split] for split in undefined)
    assert "wrote" in printed


@pytest.mark.parametrize("n", [3, 13, 14, 40, 100, 256, 651, 652, 1024])
def test_line_tail_quantiles_rest_on_enough_lines(n: int):
    """The 1st/99th percentile over lines, but never nearer the end than TAIL_LINES (6.5)
    lines, so the few streak lines of a good frame (three: six steps) are not its tail."""
    from spmwatch.classify.features import TAIL_LINES, _line_quantile

    values = np.random.default_rng(n).normal(size=n)
    for q in (0.01, 0.99):
        got = _line_quantile(values, q)
        if 0.01 * (n - 1) >= TAIL_LINES:
            assert got == np.quantile(values, q)  # long frames keep their features bit for bit
        elif n - 1 > 2 * TAIL_LINES:
            beyond = TAIL_LINES if q > 0.5 else n - 1 - TAIL_LINES
            assert got == pytest.approx(np.quantile(values, 1 - beyond / (n - 1)))
        else:
            assert got == pytest.approx(np.median(values))
    spiked = values.copy()
    spiked[n // 2 : n // 2 + 6] = 1e6  # six wild steps
    if n - 1 > 2 * TAIL_LINES:
        assert _line_quantile(spiked, 0.99) < 10


def test_log_odds_shares_add_up_to_each_calibrated_models_log_odds():
    """The reasons rest on an exact split: per calibrated classifier, the shares sum to its
    log-odds less that of a frame at the training mean."""
    fast = C.load_default().linear
    assert fast is not None
    rng = np.random.default_rng(3)
    for k in range(len(fast.coef)):
        one = C.LinearSigmoid(
            *(np.asarray(getattr(fast, f))[k : k + 1] for f in C.LinearSigmoid.__dataclass_fields__)
        )
        for row in fast.mean[k] + fast.scale[k] * rng.normal(0, 2, (5, fast.n_features)):
            logit = np.log(one.predict(row[None]) / (1 - one.predict(row[None])))
            at_mean = one.predict(fast.mean[k][None])
            expected = logit - np.log(at_mean / (1 - at_mean))
            assert one.log_odds_shares(row).sum() == pytest.approx(expected[0], rel=1e-9, abs=1e-9)


def test_every_frame_feature_has_its_meaning_in_words():
    assert set(MEANINGS) == set(feature_names(bank=True))


def test_a_model_verdict_names_the_features_that_failed_it():
    """Offset bands added to a clean scan: the frame fails on the model, with the band share
    among its reasons; a clean scan's reasons, if any, obey the same rules."""
    model = C.load_default()
    clean = synth.clean_scan(31, 128, 128)
    banded, _ = faults.offset_bands(clean)
    verdicts = [model.verdict(score_scan(s), s) for s in (clean, banded)]
    assert [v.verdict for v in verdicts] == ["pass", "fail"]
    assert verdicts[1].decided_by == "model"
    band = [
        {r.feature: r.log_odds for r in v.reasons}.get("chan_band_frac_median", 0.0)
        for v in verdicts
    ]
    assert band[1] > band[0] + 1.0  # the bands moved the log-odds by more than a clean frame's
    for verdict in verdicts:
        shares = [r.log_odds for r in verdict.reasons]
        assert len(shares) <= C.MAX_REASONS and shares == sorted(shares, reverse=True)
        assert all(share >= C.MIN_REASON for share in shares)
        assert {r.feature for r in verdict.reasons} <= set(model.feature_names)
        # each in words, as the wire carries it (a dashboard has no MEANINGS table)
        assert all(r.meaning == MEANINGS[r.feature] for r in verdict.reasons)
    assert verdicts[1].to_dict()["reasons"][0].keys() == {"feature", "log_odds", "meaning"}
