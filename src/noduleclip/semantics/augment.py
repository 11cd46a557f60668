"""Training-time text augmentation: synonym substitution, sentence reordering, dropping a finding.

The report generator already varies wording and order with its seed; `Augmentation` adds the
synonym table and the chance to drop one finding. `augment_text` does the same to any text (a real
report, a user generator's output): it reorders sentences, may drop one, and substitutes synonyms.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

from noduleclip.semantics.phrases import SYNONYM_GROUPS

Seed = int | random.Random | np.random.Generator | None


@dataclass(frozen=True)
class Augmentation:
    """Text augmentation for training; every field off gives the plain generated text."""

    synonym_prob: float = 0.3  # chance that each synonym-table term is replaced by another of its group
    drop_prob: float = 0.3  # chance that one finding (or sentence) is left out
    reorder: bool = True  # shuffle sentences of given text (generated text is always seed-ordered)
    keep_first: bool = True  # augment_text keeps the first sentence (usually the nodule's size) in place


def make_rng(seed: Seed) -> random.Random:
    """A `random.Random` from an int, a Random, a numpy Generator or None (seed 0)."""
    if isinstance(seed, random.Random):
        return seed
    if isinstance(seed, np.random.Generator):
        return random.Random(int(seed.integers(0, 2**63 - 1)))
    return random.Random(0 if seed is None else int(seed))


_GROUP_OF: dict[str, tuple[str, ...]] = {term.lower(): group for group in SYNONYM_GROUPS for term in group}
_TERMS = sorted(_GROUP_OF, key=len, reverse=True)
_TERM_PATTERN = re.compile(r"(?<![\w-])(" + "|".join(re.escape(t) for t in _TERMS) + r")(?![\w-])", re.IGNORECASE)


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def substitute_synonyms(text: str, rng: random.Random, prob: float) -> str:
    """Replace each synonym-table term in `text` with probability `prob` by another of its group."""
    if prob <= 0:
        return text

    def replace(match: re.Match) -> str:
        found = match.group(0)
        if rng.random() >= prob:
            return found
        others = [t for t in _GROUP_OF[found.lower()] if t.lower() != found.lower()]
        return _match_case(found, rng.choice(others))

    return _TERM_PATTERN.sub(replace, text)


_SENTENCE_END = re.compile(r"(?<=[.;!?])\s+(?=\S)")


def split_sentences(text: str) -> list[str]:
    """Sentences of a report-like text (split after '.', ';', '!' or '?')."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def augment_text(text: str, seed: Seed, augmentation: Augmentation) -> str:
    """Any report-like text augmented: sentences reordered, one perhaps dropped, synonyms substituted."""
    rng = make_rng(seed)
    sentences = split_sentences(text)
    head = sentences[:1] if augmentation.keep_first else []
    rest = sentences[len(head):]
    if augmentation.reorder:
        rng.shuffle(rest)
    if rest and len(head) + len(rest) > 1 and rng.random() < augmentation.drop_prob:
        rest.pop(rng.randrange(len(rest)))
    return substitute_synonyms(" ".join(head + rest), rng, augmentation.synonym_prob)
