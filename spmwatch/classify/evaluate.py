"""Honest figures for the classifier: grouped splits, a baseline, synthetic per-kind detection.

Splits never put one sample family on both sides. `lofo` refits the recipe once per real
family with that family held out (synthetic scans derived from its good scans are held out too)
and pools the held-out predictions; `lofo:<family>` is the slice of those predictions for one
family, e.g. the perovskite family where every real bad scan comes from. `within:<family>`
refits with stratified folds inside that family (the setting of ofdspm's within-family figure).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import (
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from spmwatch import synth
from spmwatch.classify.classifier import Classifier
from spmwatch.classify.splits import Predictor, leave_family_out, metrics, within_family
from spmwatch.classify.train import (
    Record,
    build_dataset,
    default_scorer,
    progress,
    read_folders,
    recipe_predictor,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BASELINE_NAME = "ofdspm-rf"  # the ofdspm-like baseline model, in the splits and the plot

SUMMARY_FIELDS = (
    "split",
    "model",
    "n_good",
    "n_bad",
    "threshold",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "false_alarm",
    "auroc",
    "pr_auc",
    "latency_ms",
    "detection_rate",
    "median_delay_lines",
    "early_fail_rate",
)


@dataclass
class SplitResult:
    split: str
    model: str
    names: list[str]
    labels: np.ndarray
    scores: np.ndarray
    threshold: float
    latency_ms: float = float("nan")


def baseline_predictor(seed: int = 0) -> Predictor:
    from spmwatch.classify.baseline import make_baseline

    def predict(train: Sequence[Record], test: Sequence[Record]) -> np.ndarray:
        labels = np.array([r.label for r in train])
        forest = make_baseline(seed).fit(np.array([r.baseline for r in train]), labels)
        return forest.predict_proba(np.array([r.baseline for r in test]))[:, 1]

    return predict


def summary_row(result: SplitResult, extra: dict[str, float] | None = None) -> dict[str, object]:
    row: dict[str, object] = {"split": result.split, "model": result.model}
    row.update(metrics(result.labels, result.scores, result.threshold))
    row["threshold"] = result.threshold
    row["latency_ms"] = result.latency_ms
    row.update(extra or {})
    return {k: _fmt(row.get(k, "")) for k in SUMMARY_FIELDS}


def _fmt(value: object) -> object:
    if isinstance(value, float):
        return "" if np.isnan(value) else round(value, 4)
    return value


def write_summary(rows: list[dict[str, object]], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_table(results: list[SplitResult], path: Path) -> Path:
    """Per-file table: one row per (split, model, file)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "model", "file", "label", "probability", "verdict"])
        for r in results:
            for name, label, score in zip(r.names, r.labels, r.scores, strict=True):
                verdict = "fail" if score >= r.threshold else "pass"
                row = [r.split, r.model, name, int(label), round(float(score), 4), verdict]
                writer.writerow(row)
    return path


def plot_curves(results: list[SplitResult], path: Path) -> Path:
    """Write the ROC and precision-recall curves (curves_figure) as a PNG."""
    curves_figure(results).savefig(path, dpi=110)
    return path


def curves_figure(results: list[SplitResult]) -> Figure:
    """ROC and precision-recall curves of every split with both classes, one legend below
    both (inside either, it hid curves). Splits whose curves coincide (perfect ones, often)
    are one curve named by all of them: drawn apart, the last one hid the others."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    roc_ax, pr_ax = fig.subplots(1, 2)
    # one entry per distinct curve: the splits that drew it, its arrays and its AUROC
    curves: dict[tuple[bytes, ...], tuple[list[str], tuple[np.ndarray, ...], float]] = {}
    for r in results:
        ok = np.isfinite(r.scores)
        labels, scores = r.labels[ok], r.scores[ok]
        if not 0 < labels.sum() < len(labels):
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        precision, recall, _ = precision_recall_curve(labels, scores)
        arrays = (fpr, tpr, recall, precision)
        key = (r.model.encode(), *(a.tobytes() for a in arrays))
        auroc = float(roc_auc_score(labels, scores))
        curves.setdefault(key, ([], arrays, auroc))[0].append(r.split)
    for key, (splits, (fpr, tpr, recall, precision), auroc) in curves.items():
        model = key[0].decode()
        style = {"lw": 1.2, "ls": "--"} if model == BASELINE_NAME else {"lw": 1.8, "ls": "-"}
        label = f"{', '.join(splits)} / {model} (AUROC {auroc:.3f})"
        (line,) = roc_ax.plot(fpr, tpr, label=label, **style)
        pr_ax.plot(recall, precision, color=line.get_color(), **style)
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    roc_ax.set(
        xlabel="false-positive rate (good frames failed)", ylabel="true-positive rate", title="ROC"
    )
    pr_ax.set(xlabel="recall (bad frames failed)", ylabel="precision", title="Precision-recall")
    if curves:
        fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return fig


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of `fn` in milliseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


@dataclass
class OnlineRun:
    """What the daemon's verdicts on one streamed scan would have been."""

    first: int | None  # first position at or after `watch_from` whose frame-so-far fails
    early: bool  # a frame-so-far failed before `watch_from` (before the fault began)
    final: float  # probability of the finished frame
    times: list[float]  # ms per probability (channel statistics of the lines so far + model)


def online_run(classifier: Classifier, scan, step: int = 4, watch_from: int = 0) -> OnlineRun:
    """Stream a scan line by line as the daemon does, judging the frame so far every `step`
    lines. A fail before `watch_from` (the fault's first line) is an early, false fail, kept
    apart: counted as a delay it gave negative delays for faults never detected."""
    from spmwatch.scoring.scorer import ScanScorer

    scorer = ScanScorer(scan.scan_id, list(scan.channels), scan.n_points, scan.expected_lines)
    order = scan.acquisition_order()
    first, early, times = None, False, []
    for line in scan.lines():
        scorer.push(line)
        seen = line.position + 1
        if first is None and seen % step == 0:
            so_far = {name: data[order[:seen]] for name, data in scan.channels.items()}
            start = time.perf_counter()
            p = classifier.predict_proba(scorer.frame(), so_far, finished=False)
            times.append((time.perf_counter() - start) * 1e3)
            if p >= classifier.threshold:
                if line.position >= watch_from:
                    first = line.position
                else:
                    early = True
    final = classifier.predict_proba(scorer.finish(), scan.channels, finished=True)
    if first is None and final >= classifier.threshold:
        first = scan.n_lines
    return OnlineRun(first, early, final, times)


def synthetic_rows(
    classifier: Classifier,
    per_kind: int,
    seed: int,
    lines: int = 256,
    points: int = 256,
    quiet: bool = False,
) -> list[dict[str, object]]:
    """Per-kind detection rate and median alert delay (lines after the fault starts)."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind in (*synth.FAULT_KINDS, "clean"):
        detected, delays, names, times, early = [], [], [], [], []
        for i in progress(range(per_kind), f"synthetic {kind}", quiet):
            base = synth.clean_scan(
                int(rng.integers(2**31)),
                lines,
                points,
                traces=bool(i % 2),
                scan_down=bool(i % 3 == 0),
            )
            if kind == "clean":
                scan, truth = base, synth.clean_truth(base)
            else:
                scan, truth = synth.inject(
                    base, kind, int(rng.integers(2**31)), at=float(rng.uniform(0.2, 0.6))
                )
            onset = truth.first_position
            run = online_run(classifier, scan, watch_from=onset or 0)
            times += run.times
            detected.append(run.final >= classifier.threshold)
            names.append(scan.scan_id)
            early.append(run.early)
            if run.first is not None and onset is not None:
                delays.append(run.first - onset)
        labels = np.full(per_kind, 0 if kind == "clean" else 1)
        result = SplitResult(
            f"synthetic:{kind}",
            classifier.name,
            names,
            labels,
            np.array(detected, dtype=float),
            classifier.threshold,
            float(np.median(times)) if times else float("nan"),
        )
        rows.append(
            summary_row(
                result,
                {
                    "detection_rate": float(np.mean(detected)),
                    "median_delay_lines": float(np.median(delays)) if delays else float("nan"),
                    "early_fail_rate": float(np.mean(early)),
                },
            )
        )
    return rows


def run_evaluation(
    good: Path,
    bad: Path,
    out: Path,
    classifier: Classifier,
    synthetic: int = 300,
    per_kind: int = 10,
    seed: int = 0,
    cv: bool = True,
    quiet: bool = False,
) -> tuple[list[dict[str, object]], list[str]]:
    """Everything `spmwatch evaluate` writes: summary.csv, per_file.csv, roc_pr.png, and
    skipped.txt naming the files that could not be read. Returns (summary rows, skipped)."""
    out.mkdir(parents=True, exist_ok=True)
    real, skipped = read_folders(good, bad)
    score = default_scorer()
    names, labels, scores, latency = [], [], [], []
    for scan, label, _family in progress(real, "scoring", quiet):
        frame = score(scan)
        scores.append(classifier.predict_proba(frame, scan))
        latency.append(timed(lambda f=frame, s=scan: classifier.predict_proba(f, s), 3))
        names.append(Path(scan.path or scan.scan_id).name)
        labels.append(label)
    results = [
        SplitResult(
            "given",
            classifier.name,
            names,
            np.array(labels),
            np.array(scores),
            classifier.threshold,
            float(np.median(latency)) if latency else float("nan"),
        )
    ]
    if cv:
        results += cross_validated(real, classifier, synthetic, seed, quiet, results[0].latency_ms)
    rows = [summary_row(r) for r in results]
    if per_kind:
        rows += synthetic_rows(classifier, per_kind, seed + 7919, quiet=quiet)
    write_summary(rows, out / "summary.csv")
    write_table(results, out / "per_file.csv")
    plot_curves(results, out / "roc_pr.png")
    if skipped:
        (out / "skipped.txt").write_text("\n".join(skipped) + "\n", "utf-8")
    return rows, skipped


def baseline_latency(real: list, data, seed: int) -> float:
    """Median ms for the baseline to judge one real frame: its 22 statistics + the forest."""
    from spmwatch.classify.baseline import baseline_vector, make_baseline

    labels = np.array([r.label for r in data.records])
    forest = make_baseline(seed).fit(np.array([r.baseline for r in data.records]), labels)
    return float(
        np.median(
            [
                timed(lambda s=scan: forest.predict_proba([baseline_vector(s)]), 3)
                for scan, _label, _family in real[:10]
            ]
        )
    )


def cross_validated(
    real: list, classifier: Classifier, synthetic: int, seed: int, quiet: bool, latency: float
) -> list[SplitResult]:
    """Refit the recipe and the baseline on grouped splits; both see the same training data.

    `latency` is the recipe's measured time per frame (the given model's: same features and
    estimator); the baseline's is measured here."""
    data = build_dataset(real, synthetic, seed=seed, quiet=quiet)
    latencies = {"spmwatch": latency, BASELINE_NAME: baseline_latency(real, data, seed)}
    models: list[tuple[str, Predictor, float]] = [
        ("spmwatch", recipe_predictor(seed, classifier.bank is not None), classifier.threshold),
        (BASELINE_NAME, baseline_predictor(seed), 0.5),
    ]
    bad_families = sorted({r.family for r in data.records if r.label == 1 and not r.synthetic})
    results = []
    for model, predict, threshold in models:
        held, scores = leave_family_out(data.records, predict)
        real_mask = np.array([not r.synthetic for r in held])
        results.append(_result("lofo", model, held, scores, threshold, real_mask))
        for family in bad_families:
            mask = real_mask & np.array([r.family == family for r in held])
            results.append(_result(f"lofo:{family}", model, held, scores, threshold, mask))
            inside, within = within_family(data.records, family, predict, seed=seed)
            results.append(_result(f"within:{family}", model, inside, within, threshold))
    only_real = [r for r in data.records if not r.synthetic]
    for family in bad_families:
        inside, within = within_family(only_real, family, baseline_predictor(seed), seed=seed)
        results.append(_result(f"within:{family}:real-only", BASELINE_NAME, inside, within, 0.5))
    for result in results:
        result.latency_ms = latencies[result.model]
    return results


def _result(split, model, records, scores, threshold, mask=None) -> SplitResult:
    mask = np.ones(len(records), bool) if mask is None else mask
    mask = mask & np.isfinite(scores)
    chosen = [r for r, keep in zip(records, mask, strict=True) if keep]
    return SplitResult(
        split,
        model,
        [r.name for r in chosen],
        np.array([r.label for r in chosen]),
        np.asarray(scores)[mask],
        threshold,
    )
