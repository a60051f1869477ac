"""Load the pass/fail model safely and turn a frame's scores into a verdict.

A model is two files: `<name>.skops` (the fitted estimator, in skops' format, which is loaded
without executing code) and `<name>.json` (the sidecar: feature names, spmwatch version,
training-data digest, thresholds, metrics and the SHA-256 of the .skops file). Loading refuses
anything that does not match: a changed .skops file, a sidecar written for other features, or
an object of a type outside a short allow-list. Nothing here uses pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
import site
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from spmwatch import __version__
from spmwatch.classify.features import (
    MEANINGS,
    ChannelStatsAccumulator,
    LineBank,
    feature_names,
    frame_vector,
)
from spmwatch.model import FrameScores, Reason, Rule, Scan, Verdict

SIDECAR_FORMAT = "spmwatch-model/1"
DEFAULT_NAME = "default"
# A verdict names at most this many features as its reasons, each moving the log-odds of
# failure by at least MIN_REASON (a factor of ~1.6 in the odds): a clean frame names none.
MAX_REASONS = 3
MIN_REASON = 0.5

# Types skops may rebuild besides its own defaults (numpy, builtins, common sklearn estimators).
# Anything else in a model file is refused before it is loaded.
TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.calibration.CalibratedClassifierCV",
        "sklearn.isotonic.IsotonicRegression",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.Interval",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss._loss.CyHalfBinomialLoss",
        "sklearn.utils._bunch.Bunch",
        "numpy.dtype",
        "builtins.bytes",
    }
)


def stopped_early(frame: FrameScores, finished: bool) -> bool:
    """A finished frame whose last lines never came (the scorer's partial_frame event; lines
    lost in between do not make one). A frame in progress is never partial."""
    return finished and any(event.kind == "partial_frame" for event in frame.events)


def alerted(frame: FrameScores, closed: bool) -> bool:
    """A closed frame (finished, or cut by the daemon) during which the online monitor raised
    an alert. A frame so far never counts, so the probability an alert carries is the
    model's own."""
    return closed and frame.alert is not None


def rule_failing(frame: FrameScores, finished: bool, closed: bool | None = None) -> Rule | None:
    """The rule that fails the frame before the model is asked (`alert` or `stopped_early`),
    or None when the model decides; the rules in one place.

    A frame stopped early is a failed frame by label (an operator or the responder stopped it,
    and it is not a usable image); so is a finished frame whose scan raised an online alert
    (several lines of evidence, none on the 38 good real scans; the responder may have acted on
    it, and a frame the monitor stopped must not be reported as usable). Training and
    cross-validation apply only the first rule (`stopped_early`), since the model is fitted on
    complete frames. `closed` (default: `finished`): the scan is over, though its frame may
    be cut (paused through, evicted, the daemon stopping): the alert rule applies, the
    stopped-early rule does not.
    """
    # the more telling of the two when both apply
    if alerted(frame, finished if closed is None else closed):
        return "alert"
    return "stopped_early" if stopped_early(frame, finished) else None


def fail_probability(model_probability: np.ndarray | float, by_rule: np.ndarray | bool):
    """Where a rule meets the model's probability: a frame failed by rule fails with
    probability 1 whatever the model says; the model decides everything else."""
    return np.where(by_rule, 1.0, model_probability)


class ModelError(Exception):
    """A model file that cannot be used; the message names the file and what is wrong."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_file(path: Path) -> Path:
    """The .skops file a model name stands for: `lab_v1.1` is `lab_v1.1.skops` (a suffix is
    added, never replaced, so versioned names do not collide)."""
    return path if path.suffix == ".skops" else path.with_name(path.name + ".skops")


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def expected_feature_names(bank: bool) -> tuple[str, ...]:
    """The frame feature names this version of spmwatch computes."""
    return feature_names(bank=bank)


def _check_line_features(path: Path, sidecar: dict[str, Any]) -> None:
    """A memory bank holds the scorer's per-line features: they must be today's columns."""
    from spmwatch.scoring.scorer import FEATURE_NAMES

    stored = list(sidecar.get("line_feature_names", []))
    if stored != list(FEATURE_NAMES):
        raise ModelError(
            f"{path}: its memory bank holds other per-line features than this scorer computes: "
            f"{_describe_mismatch(stored, FEATURE_NAMES)}; retrain it with `spmwatch train`"
        )


def _check_types(path: Path) -> None:
    try:
        found = sio.get_untrusted_types(file=path)
    except Exception as exc:  # skops raises several types for a damaged archive
        raise ModelError(f"{path}: not a readable skops model file ({exc})") from exc
    unknown = sorted(set(found) - TRUSTED_TYPES)
    if unknown:
        raise ModelError(
            f"{path}: refusing to load: it contains types outside the trusted allow-list: "
            + ", ".join(unknown)
        )


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        raise ModelError(f"{path}: sidecar {side.name} is missing; a model needs both files")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{side}: sidecar is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ModelError(f"{side}: not an spmwatch model sidecar (format != {SIDECAR_FORMAT!r})")
    for key in ("feature_names", "model_sha256", "threshold", "spmwatch_version"):
        if key not in data:
            raise ModelError(f"{side}: sidecar lacks the key {key!r}")
    threshold = data["threshold"]
    # a probability: above 1 no frame could fail, at 0 or below every frame would
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 < threshold <= 1
    ):
        raise ModelError(f"{side}: threshold {threshold!r} is not a probability in (0, 1]")
    return data


def _describe_mismatch(stored: list[str], expected: tuple[str, ...]) -> str:
    missing = [n for n in expected if n not in stored]
    extra = [n for n in stored if n not in expected]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if extra:
        parts.append(f"unknown {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    return "; ".join(parts) or "same names in a different order"


@dataclass(frozen=True)
class LinearSigmoid:
    """A fitted CalibratedClassifierCV(method="sigmoid") of StandardScaler + LogisticRegression,
    evaluated with numpy from its parameters: sklearn's predict_proba spends about a
    millisecond validating and dispatching a single row, this a few microseconds.

    One row of each array per calibrated classifier; their probabilities are averaged, as
    sklearn does.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    a: np.ndarray
    b: np.ndarray

    @classmethod
    def extract(cls, estimator: Any) -> LinearSigmoid | None:
        """The parameters when `estimator` has exactly that structure (binary), else None."""
        if type(estimator) is not CalibratedClassifierCV or estimator.method != "sigmoid":
            return None
        classes = list(getattr(estimator, "classes_", []))
        parts = [_linear_parts(c, classes) for c in estimator.calibrated_classifiers_]
        if len(classes) != 2 or not parts or any(p is None for p in parts):
            return None
        return cls(*(np.array([p[i] for p in parts], dtype=float) for i in range(6)))

    @property
    def n_features(self) -> int:
        return self.coef.shape[1]

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Probability of the second class (a failed frame) for each row."""
        total = np.zeros(len(rows))
        for k in range(len(self.coef)):
            decision = ((rows - self.mean[k]) / self.scale[k]) @ self.coef[k] + self.intercept[k]
            total += expit(-(self.a[k] * decision + self.b[k]))
        return total / len(self.coef)

    def log_odds_shares(self, row: np.ndarray) -> np.ndarray:
        """Each feature's share of the log-odds of failure for one row, against a frame at
        the training frames' mean (where every share is 0), averaged over the calibrated
        classifiers. Exact for each of them: their log-odds is a sum of these terms plus a
        constant, so a positive share is how far that feature moved the frame toward failing.
        """
        z = (row - self.mean) / self.scale
        return (-self.a[:, None] * self.coef * z).mean(axis=0)


def _linear_parts(calibrated: Any, classes: list) -> tuple | None:
    """(mean, scale, coef, intercept, a, b) of one calibrated StandardScaler +
    LogisticRegression, or None for any other structure."""
    pipeline = getattr(calibrated, "estimator", None)
    calibrators = getattr(calibrated, "calibrators", [])
    if type(pipeline) is not Pipeline or len(pipeline.steps) != 2 or len(calibrators) != 1:
        return None
    (_, scaler), (_, logistic) = pipeline.steps
    sigmoid = calibrators[0]
    if (
        type(scaler) is not StandardScaler
        or type(logistic) is not LogisticRegression
        or type(sigmoid) is not _SigmoidCalibration
        or getattr(calibrated, "method", None) != "sigmoid"
        or list(calibrated.classes) != classes
        or list(logistic.classes_) != classes
        or logistic.coef_.shape[0] != 1
    ):
        return None
    n = logistic.coef_.shape[1]
    mean = scaler.mean_ if scaler.mean_ is not None else np.zeros(n)
    scale = scaler.scale_ if scaler.scale_ is not None else np.ones(n)
    return mean, scale, logistic.coef_[0], logistic.intercept_[0], sigmoid.a_, sigmoid.b_


class Classifier:
    """A loaded, verified model: frame features in, probability of a failed frame out."""

    def __init__(self, path: Path, estimator: Any, sidecar: dict[str, Any], bank: LineBank | None):
        self.path = path
        self.estimator = estimator
        self.sidecar = sidecar
        self.bank = bank
        self.threshold = float(sidecar["threshold"])
        self.feature_names: tuple[str, ...] = tuple(sidecar["feature_names"])
        self.name = path.stem
        self.linear = LinearSigmoid.extract(estimator)  # the fast path, when it applies

    def identity(self) -> dict[str, Any]:
        """Which model decides: its name, the start of its file's SHA-256 and its threshold.

        The name alone cannot tell a retrained `default` from the shipped one, nor show a
        threshold edited in the sidecar; status, heartbeats and the logs carry all three.
        """
        return {
            "model": self.name,
            "model_sha256": str(self.sidecar["model_sha256"])[:12],
            "threshold": self.threshold,
        }

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        """Load and verify `path` (a .skops file with its .json sidecar); ModelError if unusable."""
        path = Path(path)
        if path.is_dir():
            raise ModelError(f"{path}: a folder; name the model's .skops file (.json beside it)")
        if path.suffix != ".skops" and path.is_file():
            raise ModelError(
                f"{path}: not a .skops file; a model is NAME.skops with NAME.json beside it"
            )
        path = model_file(path)
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        sidecar = _read_sidecar(path)
        actual = sha256_of(path)
        if actual != sidecar["model_sha256"]:
            raise ModelError(
                f"{path}: SHA-256 {actual[:16]}... does not match the sidecar's "
                f"{str(sidecar['model_sha256'])[:16]}...: the file was changed or replaced"
            )
        has_bank = bool(sidecar.get("bank", False))
        expected = expected_feature_names(has_bank)
        if list(sidecar["feature_names"]) != list(expected):
            raise ModelError(
                f"{path}: trained for other features than this spmwatch "
                f"({__version__}) computes: "
                f"{_describe_mismatch(sidecar['feature_names'], expected)}"
                f"; retrain it with `spmwatch train`"
            )
        if has_bank:
            _check_line_features(path, sidecar)
        _check_types(path)
        try:
            payload = sio.load(path, trusted=sorted(TRUSTED_TYPES))
        except Exception as exc:  # skops and sklearn raise many types for a bad payload
            raise ModelError(f"{path}: could not rebuild the model ({exc})") from exc
        estimator = payload.get("estimator") if isinstance(payload, dict) else None
        if estimator is None or not hasattr(estimator, "predict_proba"):
            raise ModelError(f"{path}: holds no estimator with predict_proba")
        n_in = getattr(estimator, "n_features_in_", len(expected))
        if n_in != len(expected):
            raise ModelError(
                f"{path}: estimator takes {n_in} features, sidecar names {len(expected)}"
            )
        bank = None
        if has_bank:
            bank = LineBank(
                vectors=np.asarray(payload["bank"], dtype=float),
                center=np.asarray(payload["bank_center"], dtype=float),
                scale=np.asarray(payload["bank_scale"], dtype=float),
                radius=float(payload["bank_radius"]),
            )
        return cls(path, estimator, sidecar, bank)

    def features(
        self,
        frame: FrameScores,
        channels: Mapping[str, np.ndarray] | Scan | ChannelStatsAccumulator | None = None,
    ) -> np.ndarray:
        """The model's input row for a frame (so far) and its channel data, if at hand: the
        arrays, or the accumulator the frame's lines were pushed to (much cheaper mid-frame)."""
        if isinstance(channels, Scan):
            channels = channels.channels
        return frame_vector(frame, channels, bank=self.bank)

    def predict_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Probability of failure for rows of frame features.

        Through `LinearSigmoid` when the model has that structure and the rows are plain
        finite numbers; anything else goes to sklearn, which also names what is wrong.
        """
        rows = np.atleast_2d(vectors)
        fast = self.linear
        if (
            fast is not None
            and rows.ndim == 2
            and rows.shape[1] == fast.n_features
            and rows.dtype.kind == "f"
            and np.isfinite(rows).all()
        ):
            return fast.predict(rows)
        return self.estimator.predict_proba(rows)[:, 1]

    def reasons(self, row: np.ndarray) -> tuple[Reason, ...]:
        """The features that moved this frame furthest toward failing (at most
        MAX_REASONS, largest first, each with its share of the log-odds: `log_odds_shares`);
        none for a model of another structure, whose decision has no such split."""
        if self.linear is None or not np.isfinite(row).all():
            return ()
        shares = self.linear.log_odds_shares(np.asarray(row, dtype=float).ravel())
        order = np.argsort(-shares, kind="stable")[:MAX_REASONS]
        picked = [(self.feature_names[i], shares[i]) for i in order if shares[i] >= MIN_REASON]
        return tuple(
            Reason(name, round(float(share), 2), MEANINGS.get(name, name)) for name, share in picked
        )

    def predict_proba(
        self,
        frame: FrameScores,
        channels: Mapping[str, np.ndarray] | Scan | ChannelStatsAccumulator | None = None,
        finished: bool = True,
    ) -> float:
        """Probability that the frame (so far) is a failed scan, the rules applied."""
        return self.verdict(frame, channels, finished).probability

    def verdict(
        self,
        frame: FrameScores,
        channels: Mapping[str, np.ndarray] | Scan | ChannelStatsAccumulator | None = None,
        finished: bool = True,
        closed: bool | None = None,
    ) -> Verdict:
        """Pass/fail at the shipped threshold, with what decided it: a rule, or the model and
        the features that moved it most. `channels`: the frame's data so far, if at hand;
        `finished` and `closed` as in `rule_failing`."""
        rule = rule_failing(frame, finished, closed)
        model_p = 0.0
        reasons: tuple[Reason, ...] = ()
        if rule is None:
            row = self.features(frame, channels)
            model_p = float(self.predict_vectors(row)[0])
            reasons = self.reasons(row)
        p = float(fail_probability(model_p, rule is not None))
        return Verdict(
            scan_id=frame.scan_id,
            verdict="fail" if p >= self.threshold else "pass",
            probability=p,
            threshold=self.threshold,
            model=self.name,
            decided_by=rule or "model",
            reasons=reasons,
        )


def default_model_path() -> Path:
    """Where the shipped model is: the repository's models/ folder in a source checkout or
    editable install, else the copy a wheel installs under <data>/share/spmwatch/models, where
    <data> is the environment's prefix or, for `pip install --user`, the user base."""
    shipped = Path("share") / "spmwatch" / "models" / f"{DEFAULT_NAME}.skops"
    candidates = [
        Path(__file__).resolve().parents[2] / "models" / f"{DEFAULT_NAME}.skops",
        Path(sys.prefix) / shipped,
        Path(site.getuserbase()) / shipped,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ModelError(
        "the default model was not found; looked at " + ", ".join(str(c) for c in candidates)
    )


def load_default() -> Classifier:
    """The shipped model (models/default.skops), verified."""
    return Classifier.load(default_model_path())


def load_model(path: str | Path | None = None) -> Classifier:
    """The classifier at `path`, or the shipped one; ModelError when it cannot be used."""
    return Classifier.load(path) if path else load_default()


def save(
    path: str | Path,
    estimator: Any,
    sidecar: dict[str, Any],
    bank: LineBank | None = None,
) -> Path:
    """Write `<path>.skops` and its sidecar; the sidecar gains the file's SHA-256."""
    path = model_file(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"estimator": estimator}
    if bank is not None:
        payload.update(
            bank=bank.vectors,
            bank_center=bank.center,
            bank_scale=bank.scale,
            bank_radius=bank.radius,
        )
    sio.dump(payload, path)
    _check_types(path)
    side = {
        "format": SIDECAR_FORMAT,
        "spmwatch_version": __version__,
        "model_file": path.name,
        "model_sha256": sha256_of(path),
        "bank": bank is not None,
        **sidecar,
    }
    text = json.dumps(_undefined_as_null(side), indent=2, sort_keys=True, allow_nan=False)
    sidecar_path(path).write_text(text + "\n", "utf-8")
    return path


def _undefined_as_null(value: Any) -> Any:
    """NaN (an undefined metric, e.g. precision with nothing failed) as null: strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _undefined_as_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_undefined_as_null(v) for v in value]
    return value
