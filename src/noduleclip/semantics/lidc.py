"""The nine LIDC-IDRI characteristics, their official scales, and their harmonisation into the schema.

Scales as in the LIDC-IDRI reader instructions (McNitt-Gray et al., Acad. Radiol. 2007; the
labels pylidc uses). Harmonisation into the schema's vocabulary (`harmonise_lidc`):

- texture -> consistency: 1 Non-Solid/GGO and 2 Non-Solid/Mixed -> "pure ground glass" (the reader
  saw a predominantly non-solid nodule); 3 Part Solid/Mixed -> "part-solid"; 4 Solid/Mixed ->
  "semiconsolidation" (mostly solid with a minor non-solid component: an attenuation between
  part-solid and solid, which NLST calls semiconsolidation); 5 Solid -> "solid". Studies that follow
  Lung-RADS often fold 4 into solid; change `TEXTURE_TO_CONSISTENCY` for that.
- margin -> margin_conspicuity: 1-2 (poorly / near poorly defined) -> "poorly marginated",
  4-5 (near sharp / sharp) -> "well marginated", 3 (medium) -> missing (the scale does not decide).
- spiculation, lobulation, margin -> margins, first rule that applies: spiculation >= 3 (medium or
  more) -> "spiculated"; else lobulation >= 3 -> "lobulated"; else margin <= 2 -> "ill-defined";
  else "smooth". A rule needs every scale it reads past the first to be known, else margins is
  missing. LIDC has no counterpart of "notched".
- sphericity -> shape: 4-5 (ovoid/round, round) -> "round"; 2-3 (ovoid/linear, ovoid) -> "ovoid";
  1 (linear) -> missing (no schema value describes a linear opacity).
- calcification -> calcification_pattern: 1 popcorn, 2 laminated, 3 solid -> "diffuse",
  4 non-central, 5 central, 6 absent; and eccentric_calcification "present" for 4 (non-central),
  "absent" for every other grade (calcified centrally or in a benign pattern, or not calcified).
- diameter_mm -> long_diameter_mm.
- subtlety (how hard the nodule is to see) and internal_structure (soft tissue / fluid / fat / air)
  have no counterpart among the schema's features and are not harmonised.
- malignancy is the rating behind the label; it never becomes a feature or text.

Every schema feature LIDC does not rate (reticulation, necrosis, pleural attachment, ...) stays
missing, never "absent".
"""

from __future__ import annotations

from noduleclip.errors import InputError

LIDC_SCALES: dict[str, dict[int, str]] = {
    "subtlety": {
        1: "Extremely Subtle", 2: "Moderately Subtle", 3: "Fairly Subtle", 4: "Moderately Obvious", 5: "Obvious",
    },
    "internal_structure": {1: "Soft Tissue", 2: "Fluid", 3: "Fat", 4: "Air"},
    "calcification": {1: "Popcorn", 2: "Laminated", 3: "Solid", 4: "Non-central", 5: "Central", 6: "Absent"},
    "sphericity": {1: "Linear", 2: "Ovoid/Linear", 3: "Ovoid", 4: "Ovoid/Round", 5: "Round"},
    "margin": {1: "Poorly Defined", 2: "Near Poorly Defined", 3: "Medium Margin", 4: "Near Sharp", 5: "Sharp"},
    "lobulation": {
        1: "No Lobulation", 2: "Nearly No Lobulation", 3: "Medium Lobulation",
        4: "Near Marked Lobulation", 5: "Marked Lobulation",
    },
    "spiculation": {
        1: "No Spiculation", 2: "Nearly No Spiculation", 3: "Medium Spiculation",
        4: "Near Marked Spiculation", 5: "Marked Spiculation",
    },
    "texture": {1: "Non-Solid/GGO", 2: "Non-Solid/Mixed", 3: "Part Solid/Mixed", 4: "Solid/Mixed", 5: "Solid"},
    "malignancy": {
        1: "Highly Unlikely", 2: "Moderately Unlikely", 3: "Indeterminate",
        4: "Moderately Suspicious", 5: "Highly Suspicious",
    },
}
LIDC_DIAMETER = "diameter_mm"
LIDC_COLUMNS: tuple[str, ...] = tuple(LIDC_SCALES) + (LIDC_DIAMETER,)

TEXTURE_TO_CONSISTENCY = {
    1: "pure ground glass", 2: "pure ground glass", 3: "part-solid", 4: "semiconsolidation", 5: "solid",
}
MARGIN_TO_CONSPICUITY = {1: "poorly marginated", 2: "poorly marginated", 4: "well marginated", 5: "well marginated"}
SPHERICITY_TO_SHAPE = {2: "ovoid", 3: "ovoid", 4: "round", 5: "round"}
CALCIFICATION_TO_PATTERN = {1: "popcorn", 2: "laminated", 3: "diffuse", 4: "non-central", 5: "central", 6: "absent"}
SPICULATED_FROM, LOBULATED_FROM, ILL_DEFINED_UP_TO = 3, 3, 2


def lidc_meaning(column: str, grade: int) -> str:
    """The official label of one LIDC grade, e.g. lidc_meaning('texture', 1) == 'Non-Solid/GGO'."""
    return LIDC_SCALES[column][grade]


def parse_lidc_grade(column: str, raw: str, where: str) -> int:
    """An LIDC cell ('4' or '4.0') as an integer on its official scale, else InputError."""
    scale = LIDC_SCALES[column]
    try:
        number = float(raw)
    except ValueError:
        number = float("nan")
    if not number.is_integer() or int(number) not in scale:
        allowed = ", ".join(f"{k} ({v})" for k, v in scale.items())
        raise InputError(
            f"{where}: LIDC column {column!r} has {raw!r}, which is not one of {allowed}; "
            "write the integer grade or leave the cell empty (unknown)"
        )
    return int(number)


def margins_from_lidc(spiculation: int | None, lobulation: int | None, margin: int | None) -> str | None:
    """The schema's `margins` from the three LIDC margin scales (rules in the module docstring)."""
    if spiculation is None:
        return None
    if spiculation >= SPICULATED_FROM:
        return "spiculated"
    if lobulation is None:
        return None
    if lobulation >= LOBULATED_FROM:
        return "lobulated"
    if margin is None:
        return None
    return "ill-defined" if margin <= ILL_DEFINED_UP_TO else "smooth"


def harmonise_lidc(grades: dict[str, int | float | None]) -> dict[str, str | float]:
    """Schema features from LIDC grades (column -> integer, or mm for diameter_mm); missing stays missing.

    `malignancy`, `subtlety` and `internal_structure` are read by nobody here: they have no schema
    counterpart (and malignancy is the label).
    """
    get = lambda name: None if grades.get(name) is None else int(grades[name])  # noqa: E731
    out: dict[str, str | float] = {}
    if grades.get(LIDC_DIAMETER) is not None:
        out["long_diameter_mm"] = float(grades[LIDC_DIAMETER])
    texture, margin, sphericity, calcification = get("texture"), get("margin"), get("sphericity"), get("calcification")
    if texture in TEXTURE_TO_CONSISTENCY:
        out["consistency"] = TEXTURE_TO_CONSISTENCY[texture]
    if margin in MARGIN_TO_CONSPICUITY:
        out["margin_conspicuity"] = MARGIN_TO_CONSPICUITY[margin]
    margins = margins_from_lidc(get("spiculation"), get("lobulation"), margin)
    if margins is not None:
        out["margins"] = margins
    if sphericity in SPHERICITY_TO_SHAPE:
        out["shape"] = SPHERICITY_TO_SHAPE[sphericity]
    if calcification in CALCIFICATION_TO_PATTERN:
        out["calcification_pattern"] = CALCIFICATION_TO_PATTERN[calcification]
        out["eccentric_calcification"] = "present" if calcification == 4 else "absent"
    return out
