"""Zero-shot prompt sets: the paper's wording, full coverage, and similarities -> per-feature probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from noduleclip.semantics import FEATURES, build_prompts

CLASS_FEATURES = [f for f in FEATURES if not f.is_numeric and f.name != "suspicion"]


def test_paper_prompts_follow_the_paper_templates():
    prompts = build_prompts("paper")
    texts = {(p.feature, p.value): p.text for p in prompts.prompts}
    assert texts[("consistency", "pure ground glass")] == "This nodule consistency is pure ground glass."
    assert texts[("margins", "spiculated")] == "This nodule margins is spiculated."
    assert texts[("pleural_retraction", "mild dimpling")] == "This nodule pleural retraction is mild dimpling."
    assert texts[("pleural_attachment", "present")] == "There is pleural attachment."
    assert texts[("cavitation", "absent")] == "No findings."
    assert len(prompts) == sum(len(f.values) for f in CLASS_FEATURES)
    assert prompts.features == tuple(f.name for f in CLASS_FEATURES)


@pytest.mark.parametrize("style", ["paper", "ensemble"])
def test_every_value_has_prompts_and_indices_map_back(style):
    prompts = build_prompts(style)
    for feature in CLASS_FEATURES:
        assert prompts.values(feature.name) == feature.values
        for value in feature.values:
            columns = prompts.columns(feature.name, value)
            assert columns and all(prompts.prompts[i].feature == feature.name for i in columns)
            assert all(prompts.prompts[i].value == value for i in columns)
            assert [prompts.prompts[i].prompt_id for i in columns] == list(range(len(columns)))
    assert len(prompts.texts) == len(prompts)
    if style == "ensemble":
        assert all(len(prompts.columns(f.name, v)) >= 3 for f in CLASS_FEATURES for v in f.values)


@pytest.mark.parametrize("style", ["paper", "ensemble"])
def test_a_value_with_the_highest_similarity_wins_its_feature(style):
    prompts = build_prompts(style)
    for feature in CLASS_FEATURES:
        similarity = np.full((len(feature.values), len(prompts)), 0.1)
        for row, value in enumerate(feature.values):
            similarity[row, prompts.columns(feature.name, value)] = 0.3
        values, probs = prompts.probabilities(similarity, logit_scale=50.0)[feature.name]
        assert values == feature.values
        assert probs.shape == (len(values), len(values))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0)
        assert list(probs.argmax(axis=1)) == list(range(len(values)))
        assert np.all(probs.diagonal() > 0.99)


def test_suspicion_prompts_only_when_asked():
    assert "suspicion" not in build_prompts("ensemble").features
    assert not any("suspicion" in t for t in build_prompts("ensemble").texts)
    asked = build_prompts("paper", include_suspicion=True)
    assert asked.values("suspicion")[-1] == "high"
    assert "This nodule level of suspicion is high." in asked.texts


def test_feature_selection_and_bad_requests():
    prompts = build_prompts("paper", features=["margins", "cavitation"])
    assert prompts.features == ("margins", "cavitation") and len(prompts) == 7
    with pytest.raises(ValueError, match="numeric"):
        build_prompts("paper", features=["long_diameter_mm"])
    with pytest.raises(ValueError, match="style"):
        build_prompts("fancy")
    with pytest.raises(ValueError, match="prompts"):
        prompts.probabilities(np.zeros((2, 3)))


def test_logit_scale_sharpens_the_softmax():
    prompts = build_prompts("paper", features=["margin_conspicuity"])
    similarity = np.array([[0.30, 0.25]])
    _, soft = prompts.probabilities(similarity, logit_scale=1.0)["margin_conspicuity"]
    _, sharp = prompts.probabilities(similarity, logit_scale=100.0)["margin_conspicuity"]
    np.testing.assert_allclose(soft[0, 0], 1 / (1 + np.exp(-0.05)))
    np.testing.assert_allclose(sharp[0, 0], 1 / (1 + np.exp(-5.0)))


def test_ensemble_with_embeddings_equals_clip_style_class_embeddings():
    prompts = build_prompts("ensemble", features=["consistency", "cavitation"])
    rng = np.random.default_rng(0)
    prompt_embeddings = rng.normal(size=(len(prompts), 16))
    prompt_unit = prompt_embeddings / np.linalg.norm(prompt_embeddings, axis=1, keepdims=True)
    images = rng.normal(size=(5, 16))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    similarity = images @ prompt_unit.T
    probs = prompts.probabilities(torch.tensor(similarity), 30.0, prompt_embeddings=torch.tensor(prompt_embeddings))
    classes = prompts.class_embeddings(prompt_embeddings)
    for feature in ("consistency", "cavitation"):
        values, class_vectors = classes[feature]
        logits = 30.0 * images @ class_vectors.T
        expected = np.exp(logits - logits.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(probs[feature][1], expected, rtol=1e-10)
        mean_only = prompts.probabilities(similarity, 30.0)[feature][1]
        assert not np.allclose(mean_only, expected)  # the two documented ensembling rules differ


def test_labels_index_values_and_mark_missing():
    prompts = build_prompts("paper", features=["consistency", "cavitation"])
    labels = prompts.labels([{"consistency": "part-solid", "cavitation": "present"}, {"consistency": "solid"}])
    assert list(labels["consistency"]) == [3, 0]
    assert list(labels["cavitation"]) == [1, -1]
