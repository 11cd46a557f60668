"""The semantic feature schema: the NLST features of the paper (its Table S1) and their values.

Each feature is a manifest column with a fixed name, a kind (numeric, categorical or binary) and
the exact strings allowed in the CSV. Binary features take the values "absent" / "present" (readers
also accept 1/0, yes/no, true/false). An empty cell means unknown: a missing feature is simply not
mentioned in any text, which is different from "absent".

`calcification_pattern` is an extension beyond the paper's 19 features: LIDC's calcification scale
names the pattern (popcorn, laminated, ...), which a report would state. `nlst=False` marks it.

The level of suspicion (`suspicion`) is nearly the malignancy label; text and prompts leave it out
unless asked (`include_suspicion=True`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from noduleclip.errors import InputError

NUMERIC, CATEGORICAL, BINARY = "numeric", "categorical", "binary"
ABSENT, PRESENT = "absent", "present"
SUSPICION = "suspicion"


@dataclass(frozen=True)
class Feature:
    """One semantic feature: its column name, display name, kind and allowed values."""

    name: str
    display: str
    kind: str
    values: tuple[str, ...] = ()
    ordered: bool = False
    nlst: bool = True
    unit: str = ""

    @property
    def is_numeric(self) -> bool:
        return self.kind == NUMERIC


def _binary(name: str, display: str) -> Feature:
    return Feature(name, display, BINARY, (ABSENT, PRESENT), ordered=True)


FEATURES: tuple[Feature, ...] = (
    Feature("long_diameter_mm", "long-axis diameter", NUMERIC, unit="mm"),
    Feature("short_diameter_mm", "short-axis diameter", NUMERIC, unit="mm"),
    Feature(
        "consistency",
        "nodule consistency",
        CATEGORICAL,
        ("solid", "pure ground glass", "semiconsolidation", "part-solid", "peri-cystic"),
    ),
    Feature("margin_conspicuity", "margin conspicuity", CATEGORICAL, ("well marginated", "poorly marginated")),
    Feature("margins", "margins", CATEGORICAL, ("spiculated", "smooth", "lobulated", "ill-defined", "notched")),
    Feature("shape", "shape", CATEGORICAL, ("ovoid", "round", "irregular", "polygonal")),
    _binary("reticulation", "reticulation"),
    _binary("cyst_like_spaces", "cyst-like spaces"),
    _binary("intranodular_bronchiectasis", "intra-nodular bronchiectasis"),
    _binary("necrosis", "necrosis"),
    _binary("cavitation", "cavitation"),
    _binary("eccentric_calcification", "eccentric calcification"),
    _binary("airway_cutoff", "airway cut-off"),
    _binary("pleural_attachment", "pleural attachment"),
    _binary("vascular_convergence", "vascular convergence"),
    _binary("septal_stretching", "septal stretching"),
    _binary("paracicatricial_emphysema", "paracicatricial emphysema"),
    Feature(
        "pleural_retraction",
        "pleural retraction",
        CATEGORICAL,
        ("absent", "mild dimpling", "obvious dimpling"),
        ordered=True,
    ),
    Feature(
        SUSPICION,
        "level of suspicion",
        CATEGORICAL,
        ("very low", "moderately low", "intermediate", "moderately high", "high"),
        ordered=True,
    ),
    Feature(
        "calcification_pattern",
        "calcification pattern",
        CATEGORICAL,
        ("popcorn", "laminated", "diffuse", "non-central", "central", "absent"),
        nlst=False,
    ),
)

FEATURE_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
NLST_FEATURES: tuple[Feature, ...] = tuple(f for f in FEATURES if f.nlst)
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURE_BY_NAME)

# A value a feature takes when nothing abnormal is seen: reported as a negative finding.
NEGATIVE_VALUES: dict[str, str] = {
    **{f.name: ABSENT for f in FEATURES if f.kind == BINARY},
    "pleural_retraction": "absent",
    "calcification_pattern": "absent",
}

_TRUE = {"1", "1.0", "present", "yes", "y", "true", "t"}
_FALSE = {"0", "0.0", "absent", "no", "n", "false", "f"}
_ALIASES = {
    "consistency": {"groundglass": "pure ground glass", "ggo": "pure ground glass", "nonsolid": "pure ground glass"},
    "pleural_retraction": {"no": "absent", "0": "absent"},
    "calcification_pattern": {"no": "absent", "eccentric": "non-central", "solid": "diffuse"},
}


def get_feature(name: str) -> Feature:
    """The schema feature called `name` (a column name); KeyError names the known ones."""
    try:
        return FEATURE_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown semantic feature {name!r}; known: {', '.join(FEATURE_NAMES)}") from None


def text_features(include_suspicion: bool = False) -> tuple[Feature, ...]:
    """The features text may mention: all of them, less `suspicion` unless asked."""
    return tuple(f for f in FEATURES if include_suspicion or f.name != SUSPICION)


def head_features() -> tuple[Feature, ...]:
    """The features a semantic head can predict from the image: every categorical and binary text feature."""
    return tuple(f for f in text_features() if not f.is_numeric)


def class_index(feature: Feature, value: object) -> int:
    """The position of a record's (normalised) value among the feature's values; -1 when unknown."""
    return feature.values.index(value) if value in feature.values else -1


def is_blank(raw: object) -> bool:
    """True for an empty cell: None, NaN, '' or 'nan' / 'na' / 'n/a' / 'none' (as the manifest reader)."""
    if raw is None:
        return True
    if isinstance(raw, float) and math.isnan(raw):
        return True
    return isinstance(raw, str) and raw.strip().lower() in {"", "nan", "na", "n/a", "none"}


def _key(text: str) -> str:
    return re.sub(r"[\s_\-]+", "", text.strip().lower())


def allowed_text(feature: Feature) -> str:
    """The allowed values of a feature as a short phrase for error messages."""
    if feature.is_numeric:
        return f"a positive number of {feature.unit or 'units'}"
    return " | ".join(feature.values)


def normalise_value(feature: Feature, raw: object, where: str) -> str | float | None:
    """One cell as the schema's canonical value (str, or float for numeric), None when blank.

    Raises InputError naming `where`, the column and the allowed values for anything else.
    """
    if is_blank(raw):
        return None
    text = str(raw).strip()
    if feature.is_numeric:
        number = text[:-2].strip() if text.lower().endswith("mm") else text
        try:
            value = float(number)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value <= 0:
            raise InputError(
                f"{where}: column {feature.name!r} has {text!r}, which is not {allowed_text(feature)}; "
                "write a number such as 12.5 or leave it empty (unknown)"
            )
        return value
    key = _key(text)
    if feature.kind == BINARY:
        if key in _TRUE:
            return PRESENT
        if key in _FALSE:
            return ABSENT
    else:
        for value in feature.values:
            if _key(value) == key:
                return value
        alias = _ALIASES.get(feature.name, {}).get(key)
        if alias is not None:
            return alias
    raise InputError(
        f"{where}: column {feature.name!r} has {text!r}, which is not one of {allowed_text(feature)}; "
        "use one of these values or leave the cell empty (unknown)"
    )


def validate_features(features: dict[str, object], where: str = "features") -> dict[str, str | float]:
    """A feature dict in canonical form and schema order; unknown names or values raise InputError."""
    out: dict[str, str | float] = {}
    unknown = [k for k in features if k not in FEATURE_BY_NAME]
    if unknown:
        raise InputError(
            f"{where}: {', '.join(map(repr, unknown))} are not semantic features; use {', '.join(FEATURE_NAMES)}"
        )
    for feature in FEATURES:
        if feature.name in features:
            value = normalise_value(feature, features[feature.name], where)
            if value is not None:
                out[feature.name] = value
    return out


def feature_values(record) -> Mapping:
    """A record's semantic features: a NoduleRecord's parsed `features`, or a {feature: value} dict as is."""
    return record.features if hasattr(record, "features") else record


def class_counts(records: Sequence, feature: str) -> Counter:
    """How many records have each value of `feature` (missing values not counted)."""
    return Counter(str(feature_values(r)[feature]) for r in records if feature_values(r).get(feature) is not None)


def labelled_features(records: Sequence, include_suspicion: bool = False) -> list[str]:
    """Categorical and binary schema features with at least two classes among the records' known values."""
    return [f.name for f in text_features(include_suspicion)
            if not f.is_numeric and len(class_counts(records, f.name)) >= 2]
