"""The risk calibrator: better Brier score on held-out miscalibrated scores, monotone, JSON round trip, choice rule."""

import csv

import numpy as np
import pytest

from noduleclip.errors import InputError
from noduleclip.metrics.calibration import CALIBRATOR_FILE, Calibrator, calibrate_run, fit_calibrator, load_calibrator
from noduleclip.metrics.classification import brier_score


def miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores that rank well but are overconfident and shifted: sigmoid(2.5 logit(p) - 1.5) for true risk p."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    labels = (rng.uniform(size=n) < p).astype(float)
    return 1 / (1 + np.exp(-(2.5 * np.log(p / (1 - p)) - 1.5))), labels


@pytest.mark.parametrize("n, method, named", [(400, "isotonic", "isotonic regression"), (30, "platt", "Platt scaling")])
def test_calibration_improves_brier_score_on_held_out_cases(n, method, named):
    scores, labels = miscalibrated(n, seed=1)
    held_scores, held_labels = miscalibrated(5000, seed=2)
    calibrator = fit_calibrator(scores, labels)
    assert calibrator.method == method and calibrator.fitted
    assert f"{n} labelled out-of-fold cases" in calibrator.reason and named in calibrator.reason
    before, after = brier_score(held_labels, held_scores), brier_score(held_labels, calibrator.apply(held_scores))
    assert after < before - 0.01, (before, after)


@pytest.mark.parametrize("n", [400, 30])
def test_calibrator_is_monotone_and_stays_inside_zero_one(n):
    scores, labels = miscalibrated(n, seed=3)
    calibrator = fit_calibrator(scores, labels)
    grid = np.linspace(0, 1, 2001)
    mapped = calibrator.apply(grid)
    assert np.all(np.diff(mapped) >= -1e-12)
    assert 0 < mapped.min() and mapped.max() < 1


def test_anti_correlated_scores_give_a_flat_not_a_reversed_map():
    scores, labels = miscalibrated(30, seed=4)
    calibrator = fit_calibrator(1 - scores, labels)  # higher score = lower risk
    assert calibrator.method == "platt" and calibrator.slope == 0.0
    assert np.ptp(calibrator.apply(np.linspace(0.01, 0.99, 50))) < 1e-12


@pytest.mark.parametrize("n", [400, 30])
def test_calibrator_round_trips_through_json(tmp_path, n):
    scores, labels = miscalibrated(n, seed=5)
    calibrator = fit_calibrator(scores, labels)
    path = calibrator.save(tmp_path / CALIBRATOR_FILE)
    again = Calibrator.load(path)
    assert again == calibrator
    grid = np.linspace(0, 1, 101)
    assert np.array_equal(again.apply(grid), calibrator.apply(grid))


def test_choice_rule_needs_enough_cases_of_each_class():
    scores, labels = miscalibrated(200, seed=6)
    labels[:] = 0
    labels[:8] = 1  # 200 cases but only 8 malignant
    assert fit_calibrator(scores, labels).method == "platt"
    one_class = fit_calibrator(scores, np.zeros(200))
    assert one_class.method == "none" and not one_class.fitted and "both classes" in one_class.reason
    assert np.array_equal(one_class.apply(scores), scores)


def test_unknown_labels_are_left_out():
    scores, labels = miscalibrated(60, seed=7)
    labels[::3] = np.nan
    calibrator = fit_calibrator(scores, labels)
    assert calibrator.n_cases == int(np.isfinite(labels).sum())


def test_calibrate_run_reads_val_predictions_and_writes_calibrator_json(tmp_path):
    scores, labels = miscalibrated(80, seed=8)
    with open(tmp_path / "val_predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fold", "patient_id", "nodule_id", "label", "probability"])
        for i, (s, y) in enumerate(zip(scores, labels, strict=True)):
            writer.writerow([i % 5, f"P{i}", f"N{i}", "" if i == 0 else int(y), repr(float(s))])
    assert load_calibrator(tmp_path) is None
    calibrator = calibrate_run(tmp_path)
    assert calibrator.n_cases == 79 and load_calibrator(tmp_path) == calibrator


def test_damaged_or_foreign_calibrator_is_refused(tmp_path):
    (tmp_path / CALIBRATOR_FILE).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_calibrator(tmp_path)
    (tmp_path / CALIBRATOR_FILE).write_text('{"format": "noduleclip-calibrator", "format_version": 9}')
    with pytest.raises(InputError, match="format version 1"):
        load_calibrator(tmp_path)
    with pytest.raises(InputError, match="val_predictions.csv is missing"):
        calibrate_run(tmp_path)
