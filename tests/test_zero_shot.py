"""Zero-shot semantic prediction: AUROC on hand-made probabilities, feature selection, fold averaging."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from noduleclip.evaluate.zero_shot import (
    ensemble_probabilities,
    feature_auroc,
    labelled_features,
    top_findings,
    zero_shot_blocks,
    zero_shot_rows,
    zero_shot_table,
)
from noduleclip.semantics.prompts import build_prompts, softmax


def test_binary_feature_auroc_is_that_of_p_present():
    p_present = np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.7])
    probs = np.stack([1 - p_present, p_present], axis=1)
    truth = ["present", "present", "absent", "absent", "absent", None]  # the last one is missing: left out
    # pairs (present, absent): 0.9 and 0.8 beat all three absent ones except 0.8 vs ... all: 6 of 6
    assert feature_auroc(("absent", "present"), probs, truth) == 1.0
    truth = ["absent", "present", "present", "absent", "absent", "present"]
    expected = roc_auc_score([t == "present" for t in truth], p_present)
    assert feature_auroc(("absent", "present"), probs, truth) == pytest.approx(expected)
    assert feature_auroc(("absent", "present"), probs, ["absent"] * 5 + [None]) is None  # one class: undefined


def test_multiclass_auroc_is_weighted_one_vs_rest():
    values = ("solid", "part-solid", "pure ground glass")
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8],
                      [0.4, 0.4, 0.2], [0.6, 0.1, 0.3]])
    truth = ["solid", "solid", "part-solid", "pure ground glass", "pure ground glass", "part-solid", "solid"]
    codes = [values.index(t) for t in truth]
    sklearn = roc_auc_score(codes, probs, multi_class="ovr", average="weighted")
    assert feature_auroc(values, probs, truth) == pytest.approx(sklearn)
    # by hand: one-vs-rest AUROC of each class column, weighted by the class counts (3, 2, 2)
    by_class = [roc_auc_score([c == k for c in codes], probs[:, k]) for k in range(3)]
    assert feature_auroc(values, probs, truth) == pytest.approx(np.dot(by_class, [3, 2, 2]) / 7)


def test_classes_that_no_nodule_has_are_left_out_of_the_average():
    values = ("spiculated", "smooth", "lobulated", "ill-defined", "notched")
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(size=(8, 5)))
    truth = ["smooth", "spiculated", "smooth", "lobulated", "smooth", "spiculated", None, "lobulated"]
    known = [t is not None for t in truth]
    codes = np.array([values.index(t) for t in truth if t is not None])
    expected = sum((codes == k).sum() * roc_auc_score(codes == k, probs[known][:, k]) for k in (0, 1, 2)) / len(codes)
    assert feature_auroc(values, probs, truth) == pytest.approx(expected)
    # sklearn (1.9) gives absent classes weight 0 when told all the labels: the same number
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sklearn = roc_auc_score(codes, probs[known], multi_class="ovr", average="weighted", labels=[0, 1, 2, 3, 4])
    assert feature_auroc(values, probs, truth) == pytest.approx(sklearn)


def test_labelled_features_need_two_known_classes():
    records = [{"margins": "smooth", "consistency": "solid", "necrosis": "absent", "suspicion": "high"},
               {"margins": "spiculated", "consistency": "solid", "suspicion": "very low", "long_diameter_mm": 5.0},
               {"margins": None, "necrosis": "present", "suspicion": "high", "long_diameter_mm": 9.0}]
    assert labelled_features(records) == ["margins", "necrosis"]  # schema order, no numeric, no suspicion
    assert labelled_features(records, include_suspicion=True) == ["margins", "necrosis", "suspicion"]


class FakeModel:
    """Prompt embeddings at fixed directions and a logit scale: enough for the zero-shot arithmetic."""

    text = object()

    def __init__(self, prompt_embeds: np.ndarray, scale: float):
        self.prompt_embeds, self.logit = prompt_embeds, scale

    def prompt_embeddings(self, texts):
        return torch.as_tensor(self.prompt_embeds[: len(texts)])

    def scale(self):
        return torch.tensor(self.logit)


def test_fold_models_average_their_softmax_probabilities():
    prompts = build_prompts("paper", features=["margin_conspicuity"])  # two prompts: well, poorly marginated
    e = np.eye(2)
    models = [FakeModel(e, 10.0), FakeModel(e[::-1].copy(), 2.0)]  # the second swaps the classes, cooler scale
    embeds = [np.array([[1.0, 0.0], [0.6, 0.8]])] * 2
    probs = ensemble_probabilities(models, embeds, ["margin_conspicuity"], "paper")
    values, p = probs["margin_conspicuity"]
    assert values == prompts.values("margin_conspicuity")
    expected = (softmax(10.0 * embeds[0] @ e.T) + softmax(2.0 * embeds[0] @ e[::-1].T)) / 2
    assert p == pytest.approx(expected)
    records = [{"margin_conspicuity": "well marginated"}, {"margin_conspicuity": "poorly marginated"}]
    rows = zero_shot_rows({"paper": probs}, records)
    assert rows[0]["classes"] == {"well marginated": 1, "poorly marginated": 1} and rows[0]["n_missing"] == 0
    assert rows[0]["auroc"]["paper"] == feature_auroc(values, p, ["well marginated", "poorly marginated"])
    assert zero_shot_table([object()], embeds, records) == []  # a model without a text tower: nothing
    assert top_findings(probs, 0, k=1) == [f"margin conspicuity well marginated {p[0, 0]:.2f}"]


def test_the_report_table_has_counts_and_both_prompt_columns():
    rows = [{"display": "margins", "classes": {"spiculated": 3, "smooth": 9}, "n_missing": 2,
             "auroc": {"paper": 0.81, "ensemble": 0.84}}]
    text, table = zero_shot_blocks(rows)
    assert table.columns[-2:] == ["AUROC, paper's prompts", "AUROC, prompt ensembles"]
    assert table.rows == [["margins", "spiculated (3), smooth (9)", 2, 0.81, 0.84]]
    assert "weighted" in text.text
    assert "nothing to predict" in zero_shot_blocks([])[0].text
