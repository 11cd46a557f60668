"""Brier score, expected calibration error, the calibration plot, and which mistakes the gallery shows."""

import numpy as np
import pytest

from noduleclip.errors import InputError
from noduleclip.evaluate.gallery import gallery_tiles, pick_errors
from noduleclip.metrics.classification import brier_score, calibration_curve
from noduleclip.plots import plot_calibration


def test_brier_score_of_known_values():
    assert brier_score([1, 0, 1, 0], [0.8, 0.4, 1.0, 0.0]) == pytest.approx((0.04 + 0.16 + 0 + 0) / 4)
    assert brier_score([1, None, 0, -1], [0.5, 0.9, 0.5, 0.1]) == pytest.approx(0.25)  # unknown labels left out
    with pytest.raises(InputError, match="probabilities in \\[0, 1\\]"):
        brier_score([1, 0], [1.5, 0.2])
    with pytest.raises(InputError, match="labelled cases"):
        brier_score([None, None], [0.2, 0.3])


def test_expected_calibration_error_weights_each_bin_by_its_cases():
    y = [0, 0, 1, 0, 1, 1, 1, 1]
    p = [0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.7]  # bins [0, .5): 4 cases, 1/4 malignant; [.5, 1]: 4, all malignant
    cal = calibration_curve(y, p, n_bins=2)
    assert cal["count"] == [4, 4]
    assert cal["ece"] == pytest.approx(0.5 * abs(0.25 - 0.1) + 0.5 * abs(1.0 - 0.85))
    assert cal["brier"] == pytest.approx(brier_score(y, p))
    perfect = calibration_curve([0, 1], [0.0, 1.0], n_bins=4)
    assert perfect["ece"] == 0.0 and perfect["count"] == [1, 1]


def test_calibration_plot_skips_scores_that_are_not_probabilities(tmp_path):
    path = plot_calibration({"ours": ([0, 1, 1, 0], [0.2, 0.7, 0.9, 0.4]), "logits": ([0, 1], [-2.0, 3.0])},
                            tmp_path / "c.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_the_gallery_shows_the_most_confident_mistakes_first():
    labels = np.array([0, 1, 0, 1, 0, np.nan, 1, 0])
    risk = np.array([0.9, 0.2, 0.95, 0.1, 0.3, 0.99, 0.8, 0.5])
    assert pick_errors(labels, risk, 2) == ([2, 0], [3, 1])  # benign by highest risk, malignant by lowest
    assert pick_errors(labels, risk, 10) == ([2, 0, 7, 4], [3, 1, 6])  # the unlabelled nodule never appears
    tiles = gallery_tiles([f"n{i}" for i in range(8)], labels, risk, 1, [[f"finding {i}"] for i in range(8)])
    assert [(t.kind, t.nodule_id, t.label, t.risk, t.findings) for t in tiles] == [
        ("false positive", "n2", 0, 0.95, ["finding 2"]), ("false negative", "n3", 1, 0.1, ["finding 3"])]
    assert gallery_tiles(["a"], np.array([np.nan]), np.array([0.5]), 3) == []
