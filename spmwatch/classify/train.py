"""Build the labelled feature table and fit the pass/fail model.

The recipe, shared by `spmwatch train` and `spmwatch evaluate` (which refits it per fold):
real good/bad frames plus synthetic ones (generated scans, and faults injected into the real
good scans) -> scorer -> frame features -> calibrated, class-weighted logistic regression.
Frames stopped early are failed by rule (`classifier.fail_probability`), not learnt.
Every record carries its sample family so that splits never put one family on both sides.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from spmwatch import synth
from spmwatch.classify.baseline import baseline_vector
from spmwatch.classify.classifier import fail_probability, stopped_early
from spmwatch.classify.features import LineBank, feature_names, frame_vector
from spmwatch.classify.splits import Predictor, leave_family_out, metrics
from spmwatch.ibw import IbwError, read_scan
from spmwatch.model import FrameScores, Scan

# Sample families that share a material under different file-name prefixes. The data README
# says all Cs/MA halide perovskite scans (Cs50MA50approx_*, H_90Cs10MA_*, PositionC_*,
# approx5050*) are one family; WTV_LocNNN are locations on one sample.
FAMILY_ALIASES: tuple[tuple[str, str], ...] = (
    (r"cs\d*ma|\d+cs\d+m|^approx5050|^positionc", "perovskite"),
    (r"^wtv_loc", "WTV"),
)
BANK_SIZE = 1000
SYNTHETIC_FOLDS = 5


def family_of(name: str) -> str:
    """Sample family of a scan from its file name: the prefix before the trailing number.

    `Cs50MA50approx_0032` -> perovskite (alias), `PTO_AC_0000_b` -> `PTO_AC`,
    `BSFO_AC_0004` -> `BSFO_AC`.
    """
    stem = Path(name).stem
    for pattern, family in FAMILY_ALIASES:
        if re.search(pattern, stem, flags=re.IGNORECASE):
            return family
    stem = re.sub(r"_[A-Za-z]$", "", stem)
    return re.sub(r"[_\-\s]*\d+$", "", stem) or stem


@dataclass
class Record:
    """One labelled frame reduced to what training needs."""

    name: str
    family: str
    label: int
    vector: np.ndarray
    line_features: np.ndarray
    baseline: np.ndarray
    kind: str | None = None
    synthetic: bool = False
    partial: bool = False
    first_position: int | None = None
    alert_position: int | None = None


@dataclass
class Dataset:
    records: list[Record] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def arrays(self, index: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        chosen = self.records if index is None else [self.records[i] for i in index]
        return np.array([r.vector for r in chosen]), np.array([r.label for r in chosen])


def default_scorer() -> Callable[[Scan], FrameScores]:
    from spmwatch.scoring.scorer import score_scan

    return score_scan


def record_of(
    scan: Scan,
    label: int,
    family: str,
    score: Callable[[Scan], FrameScores],
    truth: synth.Truth | None = None,
) -> Record:
    frame = score(scan)
    return Record(
        name=scan.scan_id,
        family=family,
        label=label,
        vector=frame_vector(frame, scan.channels),
        line_features=np.asarray(frame.features, dtype=float),
        baseline=baseline_vector(scan),
        kind=truth.kind if truth else None,
        synthetic=truth is not None,
        partial=stopped_early(frame, finished=True),
        first_position=truth.first_position if truth else None,
        alert_position=frame.alert.position if frame.alert else None,
    )


def list_scans(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".ibw")


def read_folders(good: Path, bad: Path) -> tuple[list[tuple[Scan, int, str]], list[str]]:
    """Read every .ibw of both folders; unreadable files are listed, not fatal."""
    scans, skipped = [], []
    for folder, label in ((good, 0), (bad, 1)):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: not a folder of .ibw scans")
        for path in list_scans(folder):
            try:
                scan = read_scan(path)
            except IbwError as exc:
                skipped.append(f"{path}: {exc}")
                continue
            scans.append((scan, label, family_of(path.name)))
    return scans, skipped


def data_digest(paths: Iterable[Path], synthetic: int, seed: int) -> str:
    """SHA-256 over the training files' names and bytes plus the synthetic recipe."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: (p.parent.name, p.name)):
        digest.update(f"{path.parent.name}/{path.name}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(f"synthetic={synthetic};seed={seed}".encode())
    return digest.hexdigest()


def progress(items: Sequence, desc: str, quiet: bool = False):
    """A tqdm bar on a terminal (stderr); silent when quiet. When stderr is no terminal (a
    log, CI) one line per stage: a bar there wrote every redraw, and no bar at all left a
    ten-minute `evaluate` silent."""
    if quiet:
        return items
    if not sys.stderr.isatty():
        print(f"{desc}: {len(items)} scans ...", file=sys.stderr, flush=True)
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="scan", file=sys.stderr, leave=False, disable=None)


def build_dataset(
    real: list[tuple[Scan, int, str]],
    synthetic: int,
    seed: int = 0,
    score: Callable[[Scan], FrameScores] | None = None,
    quiet: bool = False,
    lines: int = 256,
    points: int = 256,
) -> Dataset:
    """Score real frames and `synthetic` generated/injected ones into feature records."""
    score = score or default_scorer()
    data = Dataset()
    for scan, label, family in progress(real, "real scans", quiet):
        data.records.append(record_of(scan, label, family, score))
    bases = [(scan, family) for scan, label, family in real if label == 0 and not scan.partial]
    batch = synth.synthetic_set(synthetic, seed=seed, bases=bases, lines=lines, points=points)
    # Generated scans belong to no real family: spread them over SYNTHETIC_FOLDS groups so
    # that grouped splits hold each part out once. Injected ones keep their base's family.
    groups = [
        f"{g}-{i % SYNTHETIC_FOLDS}" if g == "synthetic" else g for i, g in enumerate(batch.groups)
    ]
    items = list(zip(batch.scans, batch.truths, groups, strict=True))
    for scan, truth, group in progress(items, "synthetic scans", quiet):
        data.records.append(record_of(scan, int(truth.bad), group, score, truth))
    return data


def make_estimator(seed: int = 0) -> CalibratedClassifierCV:
    """Regularised, class-weighted logistic regression on standardised features, calibrated.

    Chosen over gradient boosting: with tens of real frames it generalises across families at
    least as well, and it is cheap to apply. One pipeline refit on all data with a sigmoid
    fitted on 3-fold held-out predictions (ensemble=False), rather than an average of three
    calibrated copies: the same ranking here, a third of the prediction time.
    """
    linear = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000, random_state=seed),
    )
    return CalibratedClassifierCV(linear, method="sigmoid", cv=3, ensemble=False)


def build_bank(records: Sequence[Record], seed: int = 0) -> LineBank | None:
    """A bank of good-line feature vectors (standardised, subsampled) and its far radius."""
    lines = [r.line_features for r in records if r.label == 0 and len(r.line_features)]
    if not lines:
        return None
    x = np.nan_to_num(np.concatenate(lines))
    center = np.median(x, axis=0)
    scale = np.quantile(x, 0.75, axis=0) - np.quantile(x, 0.25, axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = (x - center) / scale
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(z))
    bank_rows, probe_rows = order[:BANK_SIZE], order[BANK_SIZE : BANK_SIZE + 1000]
    bank = LineBank(z[bank_rows], center, scale, radius=np.inf)
    probe = x[probe_rows] if len(probe_rows) else x[bank_rows[:200]]
    radius = float(np.quantile(bank.distances(probe), 0.99)) or 1.0
    return LineBank(z[bank_rows], center, scale, radius)


def with_bank(records: Sequence[Record], bank: LineBank | None) -> np.ndarray:
    """Feature rows, extended with the bank statistics when a bank is used."""
    rows = np.array([r.vector for r in records])
    if bank is None:
        return rows
    extra = np.array([bank.stats(r.line_features) for r in records])
    return np.hstack([rows, extra])


def fit(
    records: Sequence[Record], seed: int = 0, use_bank: bool = False
) -> tuple[CalibratedClassifierCV, LineBank | None]:
    """Fit the recipe on `records`; returns the estimator and the line bank (if used).

    Frames stopped early are left out: the partial rule fails them, so the model only has to
    separate complete failed frames from good ones.
    """
    records = [r for r in records if not r.partial]
    labels = np.array([r.label for r in records])
    if len(set(labels)) < 2:
        raise ValueError("training needs both good and bad frames")
    bank = build_bank(records, seed) if use_bank else None
    estimator = make_estimator(seed).fit(with_bank(records, bank), labels)
    return estimator, bank


def thresholds(
    labels: np.ndarray,
    scores: np.ndarray,
    false_alarm: float = 0.05,
    good_scores: np.ndarray | None = None,
) -> dict:
    """Two operating points from held-out scores: max F1, and a false-alarm rate on good frames.

    The false-alarm threshold is the smallest one that fails at most `false_alarm` of the good
    frames (just above their corresponding upper quantile): of `good_scores` when given (the
    real good frames, whose rate the target is about; generated clean scans are easier), else
    of the good frames among `scores`. It uses no bad frame, so the share of bad frames it
    fails is measured, not fitted.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    candidates = np.unique(np.concatenate([scores, [0.5]]))
    f1s = [f1_score(labels, scores >= t, zero_division=0) for t in candidates]
    best = float(candidates[int(np.argmax(f1s))])
    pool = scores[labels == 0] if good_scores is None or not len(good_scores) else good_scores
    good = np.sort(np.asarray(pool, dtype=float))
    allowed = int(np.floor(false_alarm * len(good)))
    far = 0.5 if len(good) == 0 else float(np.nextafter(good[len(good) - 1 - allowed], np.inf))
    return {"max_f1": best, "false_alarm": min(far, 1.0), "false_alarm_target": false_alarm}


RULES = ("max_f1", "false_alarm")
MIN_RECALL = 0.9  # the false-alarm threshold ships only if it still fails this share of bad frames


def choose_rule(rule: str, false_alarm_recall: float) -> str:
    """`auto`: the target false-alarm threshold when, on held-out real frames, it still fails
    at least MIN_RECALL of the bad ones; otherwise max F1 (a threshold that misses most
    failures is worse than a few false alarms)."""
    if rule != "auto":
        return rule
    return "false_alarm" if false_alarm_recall >= MIN_RECALL else "max_f1"


def recipe_predictor(seed: int = 0, use_bank: bool = False) -> Predictor:
    """The training recipe as a predictor, for grouped cross-validation."""

    def predict(train: Sequence[Record], test: Sequence[Record]) -> np.ndarray:
        estimator, bank = fit(train, seed=seed, use_bank=use_bank)
        partial = np.array([r.partial for r in test])
        return fail_probability(estimator.predict_proba(with_bank(test, bank))[:, 1], partial)

    return predict


def cv_figures(records: Sequence[Record], scores: np.ndarray, threshold: float) -> dict:
    """Held-out figures: all real frames, the complete ones, synthetic frames, and each real
    family with bad frames."""
    real = np.array([not r.synthetic for r in records])
    labels = np.array([r.label for r in records])
    ok = np.isfinite(scores)
    out = {
        "lofo_real": metrics(labels[real & ok], scores[real & ok], threshold),
        "lofo_synthetic": metrics(labels[~real & ok], scores[~real & ok], threshold),
    }
    # The frames the model itself decides: stopped-early frames are failed by rule.
    complete = real & ok & ~np.array([r.partial for r in records])
    out["lofo_real_complete"] = metrics(labels[complete], scores[complete], threshold)
    families = np.array([r.family for r in records])
    for family in sorted({r.family for r in records if r.label == 1 and not r.synthetic}):
        mask = real & ok & (families == family)
        out[f"lofo_{family}"] = metrics(labels[mask], scores[mask], threshold)
    return out


@dataclass
class TrainResult:
    path: Path
    sidecar: dict
    skipped: list[str]
    # sample families holding both good and bad frames: with none, a model can learn to tell
    # the samples apart rather than good from bad
    mixed_families: list[str]


def train_model(
    good: Path,
    bad: Path,
    out: Path,
    synthetic: int = 1000,
    seed: int = 0,
    use_bank: bool = False,
    false_alarm: float = 0.05,
    rule: str = "auto",
    quiet: bool = False,
    command: str = "",
) -> TrainResult:
    """Score the folders, cross-validate by family, pick the thresholds, fit on all, save."""
    from spmwatch.classify.classifier import save, sidecar_path
    from spmwatch.scoring.scorer import FEATURE_NAMES

    real, skipped = read_folders(good, bad)
    data = build_dataset(real, synthetic, seed=seed, quiet=quiet)
    held, scores = leave_family_out(data.records, recipe_predictor(seed, use_bank))
    labels = np.array([r.label for r in held])
    ok = np.isfinite(scores)
    if len(set(labels[ok])) < 2:
        raise ValueError("cross-validation produced no held-out scores for both classes")
    on_real = ok & np.array([not r.synthetic for r in held])
    points = thresholds(labels[ok], scores[ok], false_alarm, scores[on_real & (labels == 0)])
    at_points = {name: metrics(labels[on_real], scores[on_real], points[name]) for name in RULES}
    rule = choose_rule(rule, at_points["false_alarm"]["recall"])
    threshold = points[rule]
    figures = cv_figures(held, scores, threshold)
    figures["lofo_real_at_thresholds"] = at_points
    estimator, bank = fit(data.records, seed=seed, use_bank=use_bank)
    paths = list_scans(good) + list_scans(bad)
    sidecar = {
        "feature_names": list(feature_names(bank=bank is not None)),
        "line_feature_names": list(FEATURE_NAMES),
        "threshold": threshold,
        "threshold_rule": rule,
        "thresholds": points,
        "metrics": figures,
        "estimator": "CalibratedClassifierCV(sigmoid): StandardScaler + LogisticRegression(C=0.1)",
        "training": {
            "good": str(good),
            "bad": str(bad),
            "n_good": int(sum(1 for _, label, _ in real if label == 0)),
            "n_bad": int(sum(1 for _, label, _ in real if label == 1)),
            "families": sorted({family for _, _, family in real}),
            "synthetic": synthetic,
            "seed": seed,
            "data_sha256": data_digest(paths, synthetic, seed),
            "skipped": skipped,
            "command": command,
        },
        "cv": "leave-one-family-out",
    }
    path = save(out, estimator, sidecar, bank)
    mixed = {f for _, label, f in real if label == 0} & {f for _, label, f in real if label == 1}
    side = json.loads(sidecar_path(path).read_text("utf-8"))
    return TrainResult(path, side, skipped, sorted(mixed))
