"""Report-like text from semantic features: findings in varied order and wording, and a short impression.

`generate_report` writes a findings section (every known feature, for display) and an impression
(what the text tower reads: the impression alone, within CLIP's 77-token text
context). The impression is budgeted: findings enter in order of information (size, consistency,
margins, margin conspicuity, shape, calcification pattern, then the remaining positives, then
negatives) while the text stays within `token_budget` by `count_tokens`. Missing features are never
mentioned; the level of suspicion only with `include_suspicion=True`. Deterministic for a seed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from noduleclip.semantics.augment import Augmentation, Seed, make_rng, substitute_synonyms
from noduleclip.semantics.phrases import phrasing
from noduleclip.semantics.schema import NEGATIVE_VALUES, SUSPICION, text_features, validate_features

TokenCounter = Callable[[str], int]
DEFAULT_TOKEN_BUDGET = 77  # CLIP's text context; MiniLM allows 512 but the same budget keeps texts comparable

PRIORITY: tuple[str, ...] = (
    "size", SUSPICION, "consistency", "margins", "margin_conspicuity", "shape", "calcification_pattern",
    "pleural_retraction", "vascular_convergence", "airway_cutoff", "cavitation", "pleural_attachment", "necrosis",
    "intranodular_bronchiectasis", "cyst_like_spaces", "reticulation", "septal_stretching",
    "eccentric_calcification", "paracicatricial_emphysema",
)

# Words that WordPiece (MiniLM/BERT uncased) and CLIP's BPE both keep whole (tests verify MiniLM).
COMMON_WORDS = frozenset(
    "the a an is are with no of and or there it its in on at to by mm seen noted identified margins margin "
    "border borders solid round shape edge level consistency pure glass ground well poorly mild obvious central "
    "diffuse pattern present absent has shows contains measuring measures long short axis adjacent vessels cut "
    "off vascular attached within internal focus not lung pulmonary component sharply stretched findings "
    "impression suspicion low high very moderately intermediate evidence without this spaces wall change".split()
)
_PIECES = re.compile(r"[A-Za-z]+|\S")


def estimate_tokens(text: str) -> int:
    """A conservative token count (special tokens included) for MiniLM's WordPiece and CLIP's BPE.

    Common words count 1, other words (letters + 2) // 2, every digit and punctuation mark 1.
    """
    count = 2
    for piece in _PIECES.findall(text):
        if piece[0].isascii() and piece[0].isalpha():
            count += 1 if piece.lower() in COMMON_WORDS else (len(piece) + 2) // 2
        else:
            count += 1
    return count


def tokenizer_counter(tokenizer) -> TokenCounter:
    """A token counter from a Hugging Face tokenizer (special tokens included, no truncation)."""
    return lambda text: len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])


@dataclass(frozen=True)
class Finding:
    """One feature value as worded for this text (`feature` is 'size' for the two diameters)."""

    feature: str
    value: object
    negative: bool
    adjective: str | None
    noun: str
    sentence: str


@dataclass(frozen=True)
class Report:
    """A generated report: findings sentences (all known features) and the budgeted impression."""

    findings: tuple[str, ...]
    impression: str
    impression_features: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"FINDINGS: {' '.join(self.findings)}\nIMPRESSION: {self.impression}"


def format_mm(value: float) -> str:
    """A diameter as a radiologist writes it: whole millimetres from 3 mm, else one decimal."""
    return str(int(math.floor(value + 0.5))) if value >= 3 else f"{value:.1f}"


def _size_finding(features: dict, rng) -> Finding | None:
    long, short = features.get("long_diameter_mm"), features.get("short_diameter_mm")
    if long is None and short is None:
        return None
    if long is not None and short is not None:
        size = f"{format_mm(long)} x {format_mm(short)} mm"
        sentences = [f"There is a {size} nodule.", f"The nodule measures {size}."]
    elif long is not None:
        size = f"{format_mm(long)} mm"
        sentences = [
            f"There is a {size} nodule.", f"The nodule measures {size}.", f"The nodule measures {size} in long axis."
        ]
    else:
        size = f"{format_mm(short)} mm short-axis"
        sentences = [f"The nodule measures {format_mm(short)} mm in short axis."]
    return Finding("size", (long, short), False, size, size, rng.choice(sentences))


def _findings(features: dict, rng, include_suspicion: bool, synonym_prob: float) -> list[Finding]:
    found = []
    size = _size_finding(features, rng)
    if size is not None:
        found.append(size)
    for feature in text_features(include_suspicion):
        value = features.get(feature.name)
        if value is None or feature.is_numeric:
            continue
        if feature.name == "eccentric_calcification" and "calcification_pattern" in features:
            continue  # the pattern says more, and says it once
        words = phrasing(feature.name, value)
        use_adjective = bool(words.adjectives) and (not words.nouns or rng.random() < 0.5)
        adjective = rng.choice(words.adjectives) if use_adjective else None
        noun, sentence = rng.choice(words.nouns), rng.choice(words.sentences)
        adjective, noun, sentence = (
            None if adjective is None else substitute_synonyms(adjective, rng, synonym_prob),
            substitute_synonyms(noun, rng, synonym_prob),
            substitute_synonyms(sentence, rng, synonym_prob),
        )
        negative = NEGATIVE_VALUES.get(feature.name) == value
        found.append(Finding(feature.name, value, negative, adjective, noun, sentence))
    return found


def _join(items: list[str], last: str) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _impression(chosen: list[Finding], head_noun: str, size_first: bool, negatives_apart: bool) -> str:
    size = next((f.adjective for f in chosen if f.feature == "size"), None)
    others = [f for f in chosen if f.feature not in ("size", SUSPICION)]
    adjectives = [f.adjective for f in others if f.adjective]
    positives = [f.noun for f in others if not f.adjective and not f.negative]
    negatives = [f.noun for f in others if not f.adjective and f.negative]
    described = (", " if len(adjectives) > 2 else " ").join(adjectives)
    head = " ".join(p for p in (size if size_first else None, described, head_noun) if p)
    if size and not size_first:
        head += f" measuring {size}"
    if positives:
        head += " with " + _join(positives, "and")
    sentences = [head]
    if negatives:
        if negatives_apart:
            sentences.append("No " + _join(negatives, "or"))
        else:
            sentences[0] += ", without " + _join(negatives, "or")
    sentences += [f.sentence[:-1] for f in chosen if f.feature == SUSPICION]
    return " ".join(_capital(s) + "." for s in sentences)


def _rank(finding: Finding) -> tuple[int, int]:
    return (int(finding.negative), PRIORITY.index(finding.feature))


def generate_report(
    features: dict,
    seed: Seed = 0,
    *,
    token_budget: int | None = DEFAULT_TOKEN_BUDGET,
    count_tokens: TokenCounter = estimate_tokens,
    include_suspicion: bool = False,
    augmentation: Augmentation | None = None,
) -> Report:
    """A report for one nodule's features (any subset; see `parse_features`), deterministic for `seed`."""
    features = validate_features(features)
    rng = make_rng(seed)
    synonym_prob = augmentation.synonym_prob if augmentation else 0.0
    found = _findings(features, rng, include_suspicion, synonym_prob)
    rng.shuffle(found)
    found.sort(key=lambda f: f.feature != "size")  # the size opens; the rest keep the shuffled order
    head_noun = rng.choice(["nodule", "nodule", "pulmonary nodule", "lung nodule"])
    head_noun = substitute_synonyms(head_noun, rng, synonym_prob)
    size_first, negatives_apart = rng.random() < 0.7, rng.random() < 0.6
    if augmentation and found and rng.random() < augmentation.drop_prob:
        found.pop(rng.randrange(len(found)))
    display = {id(f): i for i, f in enumerate(found)}
    chosen: list[Finding] = []
    for finding in sorted(found, key=_rank):
        trial = sorted(chosen + [finding], key=lambda f: display[id(f)])
        text = _impression(trial, head_noun, size_first, negatives_apart)
        if token_budget is None or count_tokens(text) <= token_budget:
            chosen = trial
    impression = _impression(chosen, head_noun, size_first, negatives_apart)
    if token_budget is not None:
        impression = fit_to_budget(impression, token_budget, count_tokens)
    opener = [] if found and found[0].feature == "size" else [f"There is a {head_noun}."]
    return Report(tuple(opener + [f.sentence for f in found]), impression, tuple(f.feature for f in chosen))


def impression_text(features: dict, seed: Seed = 0, **options) -> str:
    """The budgeted impression of `generate_report` (options as there): what the text tower reads."""
    return generate_report(features, seed, **options).impression


def fit_to_budget(text: str, token_budget: int, count_tokens: TokenCounter = estimate_tokens) -> str:
    """`text` cut to `token_budget` tokens: whole leading sentences, else the leading words that fit."""
    if count_tokens(text) <= token_budget:
        return text
    sentences = re.split(r"(?<=[.;!?])\s+", text.strip())
    kept = ""
    for sentence in sentences:
        trial = f"{kept} {sentence}".strip()
        if count_tokens(trial) > token_budget:
            break
        kept = trial
    if kept:
        return kept
    words = text.split()
    low, high = 0, len(words)  # the longest word prefix that fits
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if count_tokens(" ".join(words[:mid])) <= token_budget else (low, mid - 1)
    return " ".join(words[:low])
