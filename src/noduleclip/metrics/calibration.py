"""Calibration of the fold ensemble's malignancy probability, fitted on the run's out-of-fold predictions.

    calibrator = calibrate_run("runs/a")            # reads val_predictions.csv, writes calibrator.json
    calibrator = load_calibrator("runs/a")          # None when the run has no calibrator.json
    risk = calibrator.apply(ensemble_probability)

Each training nodule has one out-of-fold probability (from the fold model that did not train on it),
so these are honest scores to calibrate on. With enough cases (50 or more, at least 10 of each class)
the map is isotonic regression: monotone, free-form, interpolated linearly between its knots and kept
within [1/(n+1), n/(n+1)] so that n cases never claim certainty. With fewer, it is Platt scaling: a
logistic regression on the logit of the score with Platt's smoothed targets and a non-negative slope,
which is monotone by construction and stable on a handful of cases. With only one class there is
nothing to calibrate on: the calibrator says so and returns the scores unchanged.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from noduleclip.atomic import plain_cell, write_text
from noduleclip.errors import InputError
from noduleclip.typed_json import read_json_object, typed_fields

CALIBRATOR_FILE = "calibrator.json"
FORMAT = "noduleclip-calibrator"
FORMAT_VERSION = 1
METHODS = ("isotonic", "platt", "none")
_EPS = 1e-6
_REFIT = "fit it again with noduleclip.metrics.calibrate_run(RUN)"


@dataclass(frozen=True)
class CalibrationSettings:
    """When isotonic regression is trusted over Platt scaling."""

    min_cases: int = 50  # labelled out-of-fold cases
    min_per_class: int = 10  # malignant and benign each


@dataclass
class Calibrator:
    """A monotone map from the ensemble probability to a calibrated probability."""

    method: str  # isotonic | platt | none
    reason: str
    n_cases: int = 0
    n_malignant: int = 0
    knots_x: list[float] = field(default_factory=list)  # isotonic
    knots_y: list[float] = field(default_factory=list)
    slope: float = 1.0  # platt: sigmoid(slope * logit(p) + intercept)
    intercept: float = 0.0
    brier_before: float | None = None  # on the out-of-fold predictions it was fitted on (in-sample)
    brier_after: float | None = None
    source: str = "val_predictions.csv"

    @property
    def fitted(self) -> bool:
        """Whether the map changes anything (False for method "none")."""
        return self.method != "none"

    def apply(self, risk) -> np.ndarray:
        """Calibrated probabilities for uncalibrated ones (any shape)."""
        p = np.asarray(risk, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(p, self.knots_x, self.knots_y)
        if self.method == "platt":
            return _sigmoid(self.slope * _logit(p) + self.intercept)
        return p.copy()

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, where: str = "calibrator") -> Calibrator:
        """A calibrator from `to_dict` output, refusing unknown keys, wrong types and unusable knots in one sentence."""
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{where} is not a noduleclip calibrator of format version {FORMAT_VERSION}; "
                             f"{_REFIT}")
        values = typed_fields(cls, {k: v for k, v in data.items() if k not in ("format", "format_version")}, where,
                              _REFIT)
        if values.get("method") not in METHODS:
            raise InputError(f"{where} names an unknown calibration method {values.get('method')!r}; {_REFIT}")
        calibrator = cls(**values)
        xs, ys = calibrator.knots_x, calibrator.knots_y
        if calibrator.method == "isotonic" and (len(xs) != len(ys) or not xs or np.any(np.diff(xs) < 0)
                                                or not np.all(np.isfinite(xs + ys))):
            raise InputError(f"{where} has unusable isotonic knots (knots_x and knots_y must be equally long, "
                             f"non-empty, finite, knots_x increasing); {_REFIT}")
        return calibrator

    def save(self, path: str | os.PathLike) -> Path:
        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibrator:
        """Read a calibrator.json written by `save`."""
        return cls.from_dict(read_json_object(path, _REFIT), str(path))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _fit_platt(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt (1999): logistic fit on logit(score) with smoothed targets; the slope is kept >= 0 (monotone)."""
    positives, negatives = labels.sum(), len(labels) - labels.sum()
    target = np.where(labels == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    z = _logit(scores)

    def loss(params):
        a, b = params
        f = a * z + b
        nll = np.sum(np.logaddexp(0, f) - target * f)
        p = _sigmoid(f)
        grad = p - target
        return nll, np.array([np.sum(grad * z), np.sum(grad)])

    prior = math.log((positives + 1) / (negatives + 1))
    from scipy.optimize import minimize  # imported on first use: applying a calibrator needs numpy only

    fit = minimize(loss, x0=np.array([1.0, prior]), jac=True, method="L-BFGS-B", bounds=[(0.0, None), (None, None)])
    return float(fit.x[0]), float(fit.x[1])


def _fit_isotonic(scores: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float]]:
    n = len(labels)
    low, high = 1.0 / (n + 1), n / (n + 1.0)
    from sklearn.isotonic import IsotonicRegression  # imported on first use: scikit-learn loads in about 1 s

    fit = IsotonicRegression(y_min=low, y_max=high, increasing=True, out_of_bounds="clip").fit(scores, labels)
    return [float(v) for v in fit.X_thresholds_], [float(v) for v in fit.y_thresholds_]


def fit_calibrator(risk, labels, settings: CalibrationSettings = CalibrationSettings()) -> Calibrator:
    """Fit isotonic regression (enough cases of each class) or Platt scaling on scores and 1/0/NaN labels."""
    risk, labels = np.asarray(risk, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    if risk.shape != labels.shape:
        raise ValueError(f"{len(risk)} scores but {len(labels)} labels")
    known = np.isfinite(labels) & np.isfinite(risk)
    scores, y = risk[known], labels[known]
    n, positives = len(y), int(y.sum())
    negatives = n - positives
    counts = f"{n} labelled out-of-fold cases ({positives} malignant, {negatives} benign)"
    if positives == 0 or negatives == 0:
        return Calibrator("none", f"{counts}: both classes are needed, so the scores are left uncalibrated",
                          n, positives)
    enough = n >= settings.min_cases and min(positives, negatives) >= settings.min_per_class
    if enough:
        xs, ys = _fit_isotonic(scores, y)
        calibrator = Calibrator("isotonic", f"{counts}: at least {settings.min_cases} cases and "
                                f"{settings.min_per_class} per class, so isotonic regression", n, positives, xs, ys)
    else:
        slope, intercept = _fit_platt(scores, y)
        calibrator = Calibrator("platt", f"{counts}: fewer than {settings.min_cases} cases or "
                                f"{settings.min_per_class} per class, so Platt scaling (logistic on the logit)",
                                n, positives, slope=slope, intercept=intercept)
    from noduleclip.metrics.classification import brier_score  # imported on first use: it loads scikit-learn

    calibrator.brier_before = brier_score(y, scores)
    calibrator.brier_after = brier_score(y, calibrator.apply(scores))
    return calibrator


def read_validation_predictions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(probability, label with NaN for unknown) of a run's val_predictions.csv."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is missing; calibration needs the out-of-fold predictions a finished training "
                         "run writes")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        risk = np.array([float(r["probability"]) for r in rows])
        labels = np.array([float(plain_cell(r["label"])) if r["label"].strip() else np.nan for r in rows])
    except (KeyError, ValueError) as exc:
        raise InputError(f"{path} is not a validation-predictions file ({exc}); it is damaged") from None
    return risk, labels


def calibrate_run(run: str | os.PathLike, settings: CalibrationSettings = CalibrationSettings()) -> Calibrator:
    """Fit the calibrator of a finished run on its val_predictions.csv and write RUN/calibrator.json."""
    run = Path(run)
    risk, labels = read_validation_predictions(run / "val_predictions.csv")
    calibrator = fit_calibrator(risk, labels, settings)
    calibrator.save(run / CALIBRATOR_FILE)
    return calibrator


def load_calibrator(run: str | os.PathLike) -> Calibrator | None:
    """A run's calibrator, or None when it has no calibrator.json."""
    path = Path(run) / CALIBRATOR_FILE
    return Calibrator.load(path) if path.is_file() else None
