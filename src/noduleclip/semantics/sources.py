"""The text of one manifest record: its `report` column, else generated from its features; then a hook.

A user-supplied generator (any callable text -> text, e.g. a local language model that rewrites or
summarises) runs last, on whichever text was chosen. The result is cut to the token budget. Real
report text and a hook's output are the user's: this module cannot keep the diagnosis out of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from noduleclip.errors import InputError
from noduleclip.semantics.augment import Augmentation, Seed, augment_text, make_rng
from noduleclip.semantics.parse import record_features
from noduleclip.semantics.text import (
    DEFAULT_TOKEN_BUDGET,
    TokenCounter,
    estimate_tokens,
    fit_to_budget,
    generate_report,
)

TextHook = Callable[[str], str]


@dataclass(frozen=True)
class TextConfig:
    """How a record's text is made."""

    token_budget: int | None = DEFAULT_TOKEN_BUDGET  # tokens the text tower reads; None = no limit
    include_suspicion: bool = False  # level of suspicion is nearly the label: off for malignancy training
    use_report_column: bool = True  # a record's `report` text replaces the generated one
    form: str = "impression"  # "impression" (what the model reads) or "report" (findings + impression, display)
    augmentation: Augmentation | None = None  # training only

    def __post_init__(self):
        if self.form not in ("impression", "report"):
            raise InputError(f"text form {self.form!r} is not 'impression' or 'report'; choose one of those")
        if self.token_budget is not None and self.token_budget < 8:
            raise InputError(f"token budget {self.token_budget} is too small for any text; use at least 8 (CLIP: 77)")


_IMPRESSION = re.compile(r"\bimpressions?\s*:\s*", re.IGNORECASE)


def impression_section(report: str) -> str:
    """The impression part of a report ('IMPRESSION:' to the end), or the whole text when it has none."""
    parts = _IMPRESSION.split(report, maxsplit=1)
    tail = parts[1].strip() if len(parts) == 2 else ""
    return tail or report.strip()


def features_text(
    features: dict,
    seed: Seed = 0,
    config: TextConfig = TextConfig(),
    count_tokens: TokenCounter = estimate_tokens,
) -> str:
    """Generated text for a feature dict in the configured form (impression or full report)."""
    report = generate_report(
        features,
        seed,
        token_budget=config.token_budget,
        count_tokens=count_tokens,
        include_suspicion=config.include_suspicion,
        augmentation=config.augmentation,
    )
    return report.impression if config.form == "impression" else report.text


def record_text(
    record,
    seed: Seed = 0,
    config: TextConfig = TextConfig(),
    count_tokens: TokenCounter = estimate_tokens,
    hook: TextHook | None = None,
) -> str:
    """The text for one `NoduleRecord`: its report column if present, else generated; then `hook`.

    The report column contributes its impression section when the form is "impression"; with
    augmentation it is reordered, thinned and reworded like generated text. Cut to the budget last.
    """
    rng = make_rng(seed)
    report = getattr(record, "report", None)
    if config.use_report_column and report and report.strip():
        text = impression_section(report) if config.form == "impression" else report.strip()
        if config.augmentation is not None:
            text = augment_text(text, rng, config.augmentation)
    else:
        text = features_text(record_features(record), rng, config, count_tokens)
    if hook is not None:
        where = getattr(record, "where", "this nodule")
        try:
            text = hook(text)
        except Exception as exc:  # a user's generator: report which nodule it failed on
            raise InputError(f"{where}: the text generator hook failed ({exc}); fix or remove the hook") from exc
        if not isinstance(text, str) or not text.strip():
            raise InputError(
                f"{where}: the text generator hook returned {text!r}, not text; it must return a non-empty str"
            )
        text = text.strip()
    if config.token_budget is not None:
        text = fit_to_budget(text, config.token_budget, count_tokens)
    return text
