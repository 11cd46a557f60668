"""Zero-shot prompts for semantic features, and similarities -> per-feature probabilities.

Two prompt styles:
- "paper": the paper's prompt per value. Categorical: "This nodule <feature> is <value>." (the
  display name without a leading "nodule", so "This nodule consistency is solid."); binary:
  "There is <feature>." (present) vs "No findings." (absent).
- "ensemble": the paper's prompt plus the report generator's own wordings of the value (sentences,
  "A <adjective> nodule.", "A nodule with <noun>." / "A nodule without <noun>."), several per value.

Use: embed `prompt_set.texts` once (P prompts), compute cosine similarities of N image embeddings
with them (N x P), and call `prompt_set.probabilities(similarity, logit_scale)` for
{feature: (values, probabilities N x V)}: softmax over a feature's classes of logit_scale x class
similarity. A class's similarity is the mean of its prompts' similarities; given the prompt
embeddings, it is instead the cosine with the re-normalised mean prompt embedding (CLIP's prompt
ensembling), which is that mean divided by the norm of the mean embedding. With one prompt per
class (the paper's set) both are the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from noduleclip.semantics.parse import check_feature_names
from noduleclip.semantics.phrases import phrasing
from noduleclip.semantics.schema import BINARY, FEATURE_BY_NAME, NEGATIVE_VALUES, PRESENT, Feature, text_features

PAPER, ENSEMBLE = "paper", "ensemble"
NO_FINDINGS = "No findings."


@dataclass(frozen=True)
class Prompt:
    """One prompt: the feature and value it stands for, its number within that value, its text."""

    feature: str
    value: str
    prompt_id: int
    text: str


def _prompt_name(feature: Feature) -> str:
    return feature.display[len("nodule "):] if feature.display.startswith("nodule ") else feature.display


def paper_prompt(feature: Feature, value: str) -> str:
    """The paper's prompt for one feature value."""
    if feature.kind == BINARY:
        return f"There is {feature.display}." if value == PRESENT else NO_FINDINGS
    return f"This nodule {_prompt_name(feature)} is {value}."


def ensemble_prompts(feature: Feature, value: str) -> list[str]:
    """The paper's prompt and the generator's wordings of one feature value, without repeats."""
    words = phrasing(feature.name, value)
    texts = [paper_prompt(feature, value), *words.sentences]
    texts += [f"A {adjective} nodule." for adjective in words.adjectives]
    negative = NEGATIVE_VALUES.get(feature.name) == value
    texts += [f"A nodule {'without' if negative else 'with'} {noun}." for noun in words.nouns]
    return list(dict.fromkeys(texts))


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class PromptSet:
    """A flat list of prompts with their (feature, value, prompt id), and the maps back to features."""

    def __init__(self, prompts: Sequence[Prompt], style: str):
        self.prompts = tuple(prompts)
        self.style = style
        self.texts = [p.text for p in self.prompts]
        self._columns: dict[str, dict[str, list[int]]] = {}
        for i, p in enumerate(self.prompts):
            self._columns.setdefault(p.feature, {}).setdefault(p.value, []).append(i)
        self.features = tuple(self._columns)

    def __len__(self) -> int:
        return len(self.prompts)

    def values(self, feature: str) -> tuple[str, ...]:
        """The classes of a feature, in the order of the probability columns."""
        return tuple(self._columns[feature])

    def columns(self, feature: str, value: str) -> list[int]:
        """Indices (into `texts`) of the prompts of one feature value."""
        return self._columns[feature][value]

    def class_embeddings(self, prompt_embeddings) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        """{feature: (values, V x D)}: each class's mean of L2-normalised prompt embeddings, re-normalised."""
        embeddings = _as_array(prompt_embeddings)
        embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        out = {}
        for feature, by_value in self._columns.items():
            means = np.stack([embeddings[cols].mean(axis=0) for cols in by_value.values()])
            out[feature] = (self.values(feature), means / np.linalg.norm(means, axis=1, keepdims=True))
        return out

    def probabilities(
        self, similarity, logit_scale: float = 100.0, prompt_embeddings=None
    ) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        """{feature: (values, N x V probabilities)} from cosine similarities (N x P, one column per prompt).

        `logit_scale` is the model's learned scale (exp of its log; CLIP clamps it at 100).
        """
        sim = _as_array(similarity)
        if sim.ndim != 2 or sim.shape[1] != len(self.prompts):
            raise ValueError(f"similarity must be nodules x {len(self.prompts)} prompts, got shape {sim.shape}")
        norms = None
        if prompt_embeddings is not None:
            embeddings = _as_array(prompt_embeddings)
            norms = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        out = {}
        for feature, by_value in self._columns.items():
            class_sim = []
            for cols in by_value.values():
                mean = sim[:, cols].mean(axis=1)
                if norms is not None:
                    mean = mean / np.linalg.norm(norms[cols].mean(axis=0))
                class_sim.append(mean)
            out[feature] = (self.values(feature), softmax(logit_scale * np.stack(class_sim, axis=1)))
        return out

    def labels(self, rows: Iterable[dict]) -> dict[str, np.ndarray]:
        """{feature: int array}: each row's class index for the feature (as in `values`), -1 when missing."""
        rows = list(rows)
        out = {}
        for feature in self.features:
            index = {v: i for i, v in enumerate(self.values(feature))}
            out[feature] = np.array([index.get(r.get(feature), -1) for r in rows], dtype=np.int64)
        return out


def build_prompts(
    style: str = PAPER, features: Iterable[str] | None = None, include_suspicion: bool = False
) -> PromptSet:
    """The prompt set of `style` ("paper" or "ensemble") for the categorical and binary features.

    `features` picks some (by column name); by default all, with `suspicion` only if asked.
    """
    if style not in (PAPER, ENSEMBLE):
        raise ValueError(f"prompt style {style!r} is not {PAPER!r} or {ENSEMBLE!r}")
    if features is None:
        chosen = [f for f in text_features(include_suspicion) if not f.is_numeric]
    else:
        chosen = [FEATURE_BY_NAME[n] for n in check_feature_names(features)]
        numeric = [f.name for f in chosen if f.is_numeric]
        if numeric:
            raise ValueError(
                f"{', '.join(numeric)} are numeric; zero-shot prompts exist for categorical and binary features"
            )
    prompts = []
    for feature in chosen:
        for value in feature.values:
            texts = [paper_prompt(feature, value)] if style == PAPER else ensemble_prompts(feature, value)
            prompts += [Prompt(feature.name, value, i, text) for i, text in enumerate(texts)]
    return PromptSet(prompts, style)
