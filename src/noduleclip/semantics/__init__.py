"""The language side of noduleclip: feature schema, LIDC harmonisation, report text and zero-shot prompts.

    from noduleclip.semantics import parse_features, record_text, build_prompts
    features = parse_features(record.columns, record.where)      # {"consistency": "solid", ...}
    text = record_text(record, seed=epoch)                        # what the text tower reads
    prompts = build_prompts("paper"); probs = prompts.probabilities(similarity, logit_scale)
"""

from noduleclip.semantics.augment import Augmentation, augment_text, substitute_synonyms
from noduleclip.semantics.lidc import LIDC_COLUMNS, LIDC_SCALES, harmonise_lidc, lidc_meaning
from noduleclip.semantics.parse import feature_distribution, parse_features, record_features
from noduleclip.semantics.phrases import SYNONYM_GROUPS, phrasing
from noduleclip.semantics.prompts import ENSEMBLE, PAPER, Prompt, PromptSet, build_prompts
from noduleclip.semantics.schema import (
    FEATURE_BY_NAME,
    FEATURE_NAMES,
    FEATURES,
    NLST_FEATURES,
    SUSPICION,
    Feature,
    get_feature,
    validate_features,
)
from noduleclip.semantics.sources import TextConfig, features_text, impression_section, record_text
from noduleclip.semantics.text import (
    DEFAULT_TOKEN_BUDGET,
    Report,
    estimate_tokens,
    fit_to_budget,
    generate_report,
    impression_text,
    tokenizer_counter,
)

__all__ = [
    "Augmentation", "augment_text", "substitute_synonyms",
    "LIDC_COLUMNS", "LIDC_SCALES", "harmonise_lidc", "lidc_meaning",
    "feature_distribution", "parse_features", "record_features",
    "SYNONYM_GROUPS", "phrasing",
    "ENSEMBLE", "PAPER", "Prompt", "PromptSet", "build_prompts",
    "FEATURE_BY_NAME", "FEATURE_NAMES", "FEATURES", "NLST_FEATURES", "SUSPICION", "Feature", "get_feature",
    "validate_features",
    "TextConfig", "features_text", "impression_section", "record_text",
    "DEFAULT_TOKEN_BUDGET", "Report", "estimate_tokens", "fit_to_budget", "generate_report", "impression_text",
    "tokenizer_counter",
]
