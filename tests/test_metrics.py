"""Metrics on hand-made predictions whose values are known."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from noduleclip.errors import InputError
from noduleclip.metrics.classification import (
    bootstrap_auroc_auprc,
    calibration_curve,
    classification_metrics,
    patient_level,
)

# A hand-worked ranking: 10 malignant, 7 benign; two cases tie at 0.30 (one of each class).
WORKED = [
    (0.95, 1), (0.90, 1), (0.85, 0), (0.80, 1), (0.75, 1), (0.70, 1), (0.65, 0), (0.60, 1), (0.55, 1),
    (0.50, 0), (0.45, 0), (0.40, 1), (0.35, 0), (0.30, 1), (0.30, 0), (0.20, 1), (0.10, 0),
]
W_SCORE = np.array([s for s, _ in WORKED])
W_LABEL = np.array([y for _, y in WORKED])


def test_operating_points_on_the_worked_example():
    m = classification_metrics(W_LABEL, W_SCORE, recalls=(0.6, 0.7, 0.8, 0.9, 0.85), n_bootstrap=0)
    expected = {  # (threshold, recall, FP among the 7 benign, TP + FP called)
        "0.6": (0.60, 0.6, 2, 8), "0.7": (0.55, 0.7, 2, 9), "0.8": (0.40, 0.8, 4, 12), "0.9": (0.30, 0.9, 6, 15),
        "0.85": (0.30, 0.9, 6, 15),  # the tie at 0.30 jumps from recall 0.8 to 0.9
    }
    for key, (threshold, recall, fp, called) in expected.items():
        point = m["at_recall"][key]
        assert point["threshold"] == threshold
        assert point["recall"] == pytest.approx(recall, abs=1e-12)
        assert point["fpr"] == pytest.approx(fp / 7, abs=1e-12)
        assert point["precision"] == pytest.approx(round(recall * 10) / called, abs=1e-12)
    assert (m["n"], m["n_pos"], m["n_neg"], m["n_unknown"]) == (17, 10, 7, 0)
    assert m["prevalence"] == pytest.approx(10 / 17)


def test_auroc_and_auprc_on_the_worked_example_by_hand():
    m = classification_metrics(W_LABEL, W_SCORE, n_bootstrap=0)
    pairs = [(p, n) for p, yp in WORKED if yp == 1 for n, yn in WORKED if yn == 0]
    auroc = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert m["auroc"] == pytest.approx(auroc, abs=1e-12)
    # average precision: each distinct threshold adds (recall gained) x (precision there)
    steps = [(1, 1), (1, 2), (1, 4), (1, 5), (1, 6), (1, 8), (1, 9), (1, 12), (1, 15), (1, 16)]
    hits = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    ap = sum(Fraction(gain, 10) * Fraction(tp, called) for (gain, called), tp in zip(steps, hits, strict=True))
    assert m["auprc"] == pytest.approx(float(ap), abs=1e-12)


def test_perfect_inverted_and_tied_predictions():
    y = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    perfect = classification_metrics(y, y * 0.5 + 0.25, n_bootstrap=0)
    assert perfect["auroc"] == 1.0 and perfect["auprc"] == 1.0
    assert all(p["fpr"] == 0.0 and p["precision"] == 1.0 for p in perfect["at_recall"].values())
    assert classification_metrics(y, 1 - y, n_bootstrap=0)["auroc"] == 0.0
    tied = classification_metrics(y, np.full(8, 0.3), n_bootstrap=200)
    assert tied["auroc"] == 0.5
    assert tied["auprc"] == pytest.approx(3 / 8)  # = prevalence
    assert tied["at_recall"]["0.6"]["fpr"] == 1.0 and tied["at_recall"]["0.6"]["precision"] == pytest.approx(3 / 8)
    assert tied["auroc_ci"] == [0.5, 0.5]


def test_brier_score():
    assert classification_metrics([1, 0], [0.8, 0.4], n_bootstrap=0)["brier"] == pytest.approx(0.1)
    assert classification_metrics([1, 0], [1.0, 0.0], n_bootstrap=0)["brier"] == 0.0
    assert classification_metrics([1, 0], [2.5, -1.0], n_bootstrap=0)["brier"] is None  # logits, not probabilities


def test_unknown_labels_are_excluded_and_counted():
    y = [1, np.nan, 0, None, 1, -1, 0, 0]
    s = [0.9, 0.1, 0.2, float("nan"), 0.7, 0.99, 0.8, 0.3]
    m = classification_metrics(y, s, n_bootstrap=100)
    ref = classification_metrics([1, 0, 1, 0, 0], [0.9, 0.2, 0.7, 0.8, 0.3], n_bootstrap=100)
    assert m["n_unknown"] == 3 and m["n"] == 5
    assert {k: v for k, v in m.items() if k != "n_unknown"} == {k: v for k, v in ref.items() if k != "n_unknown"}
    with pytest.raises(InputError, match="not 1 \\(malignant\\)"):
        classification_metrics([1, 2, 0], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="finite score"):
        classification_metrics([1, 0, 0], [0.1, np.nan, 0.3])


def test_single_class_set_says_why():
    with pytest.raises(InputError, match="AUROC needs both malignant and benign nodules; this set has only 4 benign"):
        classification_metrics([0, 0, 0, 0, None], [0.1, 0.2, 0.3, 0.4, 0.5])
    m = classification_metrics([1, 1], [0.1, 0.2], allow_single_class=True, unit="patients")
    assert m["auroc"] is None and m["auprc"] is None and m["at_recall"]["0.8"] is None
    assert "only 2 malignant patients" in m["reason"]
    json.dumps(m, allow_nan=False)


def test_bootstrap_ci_contains_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(int)
    s = 1 / (1 + np.exp(-(rng.normal(size=300) + 1.2 * y)))
    a = classification_metrics(y, s, n_bootstrap=500, seed=4)
    b = classification_metrics(y, s, n_bootstrap=500, seed=4)
    c = classification_metrics(y, s, n_bootstrap=500, seed=5)
    assert a == b and a["auroc_ci"] != c["auroc_ci"]
    for key in ("auroc", "auprc"):
        lo, hi = a[f"{key}_ci"]
        assert lo < a[key] < hi and hi - lo < 0.3
    assert a["n_bootstrap_used"] == 500
    text = json.dumps(a, allow_nan=False)  # plain floats, ints, None
    assert json.loads(text) == a


def test_vectorised_bootstrap_equals_sklearn_on_each_resample():
    rng = np.random.default_rng(1)
    y = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0])
    s = np.round(rng.random(12), 1)  # coarse scores, so resamples hold ties
    aucs, aps = bootstrap_auroc_auprc(y, s, 60, seed=9)
    draws = np.random.default_rng(9).integers(0, 12, size=(60, 12))  # the same draws, in order
    kept = [i for i in draws if 0 < y[i].sum() < 12]
    assert len(aucs) == len(kept) < 60  # some single-class resamples were skipped
    assert aucs == pytest.approx([roc_auc_score(y[i], s[i]) for i in kept], abs=1e-12)
    assert aps == pytest.approx([average_precision_score(y[i], s[i]) for i in kept], abs=1e-12)


def test_patient_level_takes_the_max():
    pids, labels, risks = patient_level(
        nodule_ids=["n1", "n2", "n3", "n4", "n5", "n6"],
        patient_ids=["B", "A", "B", "C", "A", "C"],
        y_true=[0, None, 1, None, 0, -1],
        y_score=[0.2, 0.9, 0.4, 0.3, 0.1, 0.6],
    )
    assert pids == ["B", "A", "C"]
    assert labels[:2].tolist() == [1.0, 0.0] and np.isnan(labels[2])
    assert risks.tolist() == [0.4, 0.9, 0.6]  # A's risk comes from its unlabelled nodule
    m = classification_metrics(labels, risks, n_bootstrap=0, unit="patients")
    assert (m["n"], m["n_unknown"], m["auroc"]) == (2, 1, 0.0)
    with pytest.raises(InputError, match="appears twice"):
        patient_level(["n1", "n1"], ["A", "B"], [0, 1], [0.1, 0.2])


def test_calibration_bins():
    y = [0, 0, 1, 0, 1, 1, None]
    p = [0.05, 0.15, 0.12, 0.55, 0.58, 0.95, 0.5]
    cal = calibration_curve(y, p, n_bins=2)
    assert cal["count"] == [3, 3] and cal["n_unknown"] == 1
    assert cal["prob_true"] == pytest.approx([1 / 3, 2 / 3])
    assert cal["prob_pred"] == pytest.approx([(0.05 + 0.15 + 0.12) / 3, (0.55 + 0.58 + 0.95) / 3])
    with pytest.raises(InputError, match="probabilities"):
        calibration_curve([0, 1], [-1.0, 2.0])
