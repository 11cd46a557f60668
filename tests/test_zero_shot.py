"""Zero-shot semantic prediction: AUROC on hand-made probabilities, feature selection, fold averaging."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from noduleclip.ensemble import EnsembleScores, RunEnsemble
from noduleclip.evaluate.evaluation_report import zero_shot_blocks
from noduleclip.evaluate.zero_shot import (
    feature_auroc,
    labelled_features,
    style_probabilities,
    top_findings,
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


class FakeNetwork:
    """Each fold's prompt embeddings at fixed directions and its logit scale: enough for the zero-shot arithmetic
    of the real RunEnsemble (each fold's state names the fold it belongs to)."""

    def __init__(self, prompt_embeds: list[np.ndarray], scales: list[float], text: bool = True):
        self.prompt_embeds, self.scales, self.fold = prompt_embeds, scales, None
        self.text = object() if text else None
        self.image_only = False  # built with its text tower (when it has one)

    def eval(self):
        return self

    def load_state_dict(self, state, strict=True):
        self.fold = int(state["fold"])

    def encode_text(self, texts):
        return torch.as_tensor(self.prompt_embeds[self.fold][: len(texts)])

    def scale(self):
        return torch.tensor(self.scales[self.fold])


def test_fold_models_average_their_softmax_probabilities():
    prompts = build_prompts("paper", features=["margin_conspicuity"])  # two prompts: well, poorly marginated
    e = np.eye(2)
    # the second fold swaps the classes and has a cooler scale
    ensemble = RunEnsemble(FakeNetwork([e, e[::-1].copy()], [10.0, 2.0]), [{"fold": 0}, {"fold": 1}])
    embeds = np.array([[1.0, 0.0], [0.6, 0.8]])
    scores = EnsembleScores(np.zeros((2, 2)), np.stack([embeds, embeds]), np.zeros((2, 2, 9)), folds=(0, 1))
    probs = style_probabilities(ensemble, scores, ["margin_conspicuity"], "paper")
    values, p = probs["margin_conspicuity"]
    assert values == prompts.values("margin_conspicuity")
    expected = (softmax(10.0 * embeds @ e.T) + softmax(2.0 * embeds @ e[::-1].T)) / 2
    assert p == pytest.approx(expected)
    only_second = ensemble.zero_shot(EnsembleScores(np.zeros((1, 2)), embeds[None], np.zeros((1, 2, 9)), folds=(1,)),
                                     prompts)["margin_conspicuity"][1]
    assert only_second == pytest.approx(softmax(2.0 * embeds @ e[::-1].T))  # one fold: its own probabilities
    records = [{"margin_conspicuity": "well marginated"}, {"margin_conspicuity": "poorly marginated"}]
    rows = zero_shot_rows({"paper": probs}, records)
    assert rows[0]["classes"] == {"well marginated": 1, "poorly marginated": 1} and rows[0]["n_missing"] == 0
    assert rows[0]["auroc"]["paper"] == feature_auroc(values, p, ["well marginated", "poorly marginated"])
    vision_only = RunEnsemble(FakeNetwork([e], [1.0], text=False), [{"fold": 0}])
    assert zero_shot_table(vision_only, scores, records) == []  # a run without a text tower: nothing
    assert top_findings(probs, 0, k=1) == [f"margin conspicuity well marginated {p[0, 0]:.2f}"]


def test_the_report_table_has_counts_and_both_prompt_columns():
    rows = [{"display": "margins", "classes": {"spiculated": 3, "smooth": 9}, "n_missing": 2,
             "auroc": {"paper": 0.81, "ensemble": 0.84}}]
    text, table = zero_shot_blocks(rows)
    assert table.columns[-2:] == ["AUROC, paper's prompts", "AUROC, prompt ensembles"]
    assert table.rows == [["margins", "spiculated (3), smooth (9)", 2, 0.81, 0.84]]
    assert "weighted" in text.text
    assert "nothing to predict" in zero_shot_blocks([])[0].text
