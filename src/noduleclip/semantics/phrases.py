"""How each feature value is worded: adjectives, noun phrases and findings sentences, plus synonyms.

The report generator and the zero-shot prompt ensembles both draw from this one table, so the
prompts speak the language the text tower was trained on. A value's wording never names another
value of the same feature (tests check this), and nothing here names malignancy.
"""

from __future__ import annotations

from dataclasses import dataclass

from noduleclip.semantics.schema import ABSENT, BINARY, FEATURE_BY_NAME, PRESENT


@dataclass(frozen=True)
class Phrasing:
    """Wordings of one (feature, value): before "nodule", after "with"/"no", and as a sentence."""

    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    sentences: tuple[str, ...]


def _p(adjectives=(), nouns=(), sentences=()) -> Phrasing:
    return Phrasing(tuple(adjectives), tuple(nouns), tuple(sentences))


_CATEGORICAL: dict[tuple[str, str], Phrasing] = {
    ("consistency", "solid"): _p(
        ["solid"], ["solid attenuation", "solid consistency"],
        ["The nodule is solid.", "It is solid in attenuation.", "Consistency is solid."]),
    ("consistency", "pure ground glass"): _p(
        ["pure ground glass", "pure ground-glass"], ["pure ground-glass attenuation", "pure ground glass consistency"],
        ["The nodule is pure ground glass.", "It is a pure ground-glass opacity.",
         "Consistency is pure ground glass."]),
    ("consistency", "semiconsolidation"): _p(
        ["semiconsolidated"], ["semiconsolidation", "semiconsolidative attenuation"],
        ["The nodule shows semiconsolidation.", "Its attenuation is semiconsolidative.",
         "Consistency is semiconsolidation."]),
    ("consistency", "part-solid"): _p(
        ["part-solid"], ["part-solid consistency", "a part-solid component"],
        ["The nodule is part-solid.", "It has a part-solid consistency.", "Consistency is part-solid."]),
    ("consistency", "peri-cystic"): _p(
        ["peri-cystic"], ["peri-cystic consistency", "a peri-cystic configuration"],
        ["The nodule is peri-cystic.", "It is peri-cystic, along the wall of a cyst.", "Consistency is peri-cystic."]),
    ("margin_conspicuity", "well marginated"): _p(
        ["well-marginated", "well marginated"], ["a well-marginated edge", "crisp margination"],
        ["The nodule is well marginated.", "Its edge is well marginated.", "Margin conspicuity: well marginated."]),
    ("margin_conspicuity", "poorly marginated"): _p(
        ["poorly marginated", "poorly-marginated"], ["a poorly marginated edge", "poor margination"],
        ["The nodule is poorly marginated.", "Its edge is poorly marginated.",
         "Margin conspicuity: poorly marginated."]),
    ("margins", "spiculated"): _p(
        ["spiculated"], ["spiculated margins", "spiculation"],
        ["The margins are spiculated.", "There is marginal spiculation.", "Margins: spiculated."]),
    ("margins", "smooth"): _p(
        ["smooth", "smoothly contoured"], ["smooth margins", "a smooth contour"],
        ["The margins are smooth.", "It has a smooth contour.", "Margins: smooth."]),
    ("margins", "lobulated"): _p(
        ["lobulated"], ["lobulated margins", "lobulation"],
        ["The margins are lobulated.", "Its contour is lobulated.", "Margins: lobulated."]),
    ("margins", "ill-defined"): _p(
        ["ill-defined"], ["ill-defined margins", "an ill-defined contour"],
        ["The margins are ill-defined.", "Its contour is ill-defined.", "Margins: ill-defined."]),
    ("margins", "notched"): _p(
        ["notched"], ["notched margins", "a notched contour"],
        ["The margins are notched.", "Its contour is notched.", "Margins: notched."]),
    ("shape", "ovoid"): _p(
        ["ovoid", "oval"], ["an ovoid shape", "an oval shape"],
        ["The nodule is ovoid.", "It has an ovoid shape.", "Shape: ovoid."]),
    ("shape", "round"): _p(
        ["round", "rounded"], ["a round shape", "a rounded shape"],
        ["The nodule is round.", "It has a round shape.", "Shape: round."]),
    ("shape", "irregular"): _p(
        ["irregular", "irregularly shaped"], ["an irregular shape"],
        ["The nodule is irregular in shape.", "It has an irregular shape.", "Shape: irregular."]),
    ("shape", "polygonal"): _p(
        ["polygonal"], ["a polygonal shape"],
        ["The nodule is polygonal.", "It has a polygonal shape.", "Shape: polygonal."]),
    ("pleural_retraction", "absent"): _p(
        [], ["pleural retraction", "pleural dimpling"],
        ["No pleural retraction.", "There is no pleural retraction.", "No pleural dimpling is seen."]),
    ("pleural_retraction", "mild dimpling"): _p(
        [], ["mild pleural retraction", "mild pleural dimpling"],
        ["There is mild pleural retraction.", "Mild dimpling of the adjacent pleura is seen.",
         "Pleural retraction: mild dimpling."]),
    ("pleural_retraction", "obvious dimpling"): _p(
        [], ["obvious pleural retraction", "obvious pleural dimpling"],
        ["There is obvious pleural retraction.", "Obvious dimpling of the adjacent pleura is seen.",
         "Pleural retraction: obvious dimpling."]),
    ("calcification_pattern", "popcorn"): _p(
        [], ["popcorn calcification"], ["There is popcorn calcification.", "Calcification has a popcorn pattern."]),
    ("calcification_pattern", "laminated"): _p(
        [], ["laminated calcification"], ["There is laminated calcification.", "Calcification is laminated."]),
    ("calcification_pattern", "diffuse"): _p(
        ["diffusely calcified"], ["diffuse calcification"],
        ["The nodule is diffusely calcified.", "There is diffuse calcification."]),
    ("calcification_pattern", "non-central"): _p(
        [], ["non-central calcification"], ["There is non-central calcification.", "Calcification is non-central."]),
    ("calcification_pattern", "central"): _p(
        [], ["central calcification"], ["There is central calcification.", "Calcification is central."]),
    ("calcification_pattern", "absent"): _p(
        ["non-calcified"], ["calcification"], ["No calcification.", "The nodule is not calcified."]),
}
for _value in FEATURE_BY_NAME["suspicion"].values:
    _CATEGORICAL[("suspicion", _value)] = _p(
        [], [f"a {_value} level of suspicion"],
        [f"The level of suspicion is {_value}.", f"Level of suspicion: {_value}."])

# Binary features: (noun phrases, sentences when present, plural?)
_BINARY: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    "reticulation": (("reticulation", "internal reticulation"),
                     ("There is reticulation within the nodule.", "Internal reticulation is seen."), False),
    "cyst_like_spaces": (("cyst-like spaces", "internal cyst-like spaces"),
                         ("Cyst-like spaces are seen within the nodule.", "It contains cyst-like spaces."), True),
    "intranodular_bronchiectasis": (("intra-nodular bronchiectasis", "bronchiectasis within the nodule"),
                                    ("There is intra-nodular bronchiectasis.",
                                     "Bronchiectasis is seen within the nodule."), False),
    "necrosis": (("necrosis", "internal necrosis"),
                 ("There is internal necrosis.", "Necrosis is seen within the nodule."), False),
    "cavitation": (("cavitation",), ("There is cavitation.", "The nodule shows cavitation."), False),
    "eccentric_calcification": (("eccentric calcification",),
                                ("There is eccentric calcification.",
                                 "An eccentric focus of calcification is seen."), False),
    "airway_cutoff": (("airway cut-off", "cut-off of an airway"),
                      ("There is airway cut-off at the nodule.", "An airway is cut off at the nodule."), False),
    "pleural_attachment": (("pleural attachment", "attachment to the pleura"),
                           ("The nodule is attached to the pleura.", "There is pleural attachment."), False),
    "vascular_convergence": (("vascular convergence", "converging vessels"),
                             ("Vessels converge on the nodule.", "There is vascular convergence."), False),
    "septal_stretching": (("septal stretching", "stretching of the adjacent septa"),
                          ("There is septal stretching.", "The adjacent interlobular septa are stretched."), False),
    "paracicatricial_emphysema": (("paracicatricial emphysema",),
                                  ("There is paracicatricial emphysema around the nodule.",
                                   "Paracicatricial emphysema is seen."), False),
}


def _binary_phrasing(name: str, value: str) -> Phrasing:
    nouns, sentences, plural = _BINARY[name]
    if value == PRESENT:
        return Phrasing((), nouns, sentences)
    verb = "are" if plural else "is"
    negatives = tuple(f"No {n}." for n in nouns) + (f"No {nouns[0]} {verb} seen.",)
    return Phrasing((), nouns, negatives)


def phrasing(feature: str, value: str) -> Phrasing:
    """The wordings of a categorical or binary feature value."""
    if FEATURE_BY_NAME[feature].kind == BINARY:
        if value not in (ABSENT, PRESENT):
            raise KeyError(f"{feature} takes 'absent' or 'present', not {value!r}")
        return _binary_phrasing(feature, value)
    return _CATEGORICAL[(feature, value)]


# Curated radiology synonyms: any member of a group may replace another (whole words, any case).
SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    ("nodule", "lesion"),
    ("margins", "borders"),
    ("margin", "border"),
    ("ground-glass opacity", "ground glass opacity", "GGO"),
    ("ground glass", "ground-glass"),
    ("well marginated", "well-marginated", "well circumscribed", "sharply marginated"),
    ("poorly marginated", "poorly-marginated", "poorly circumscribed"),
    ("ill-defined", "indistinct"),
    ("round", "spherical"),
    ("ovoid", "oval"),
    ("cavitation", "cavitary change"),
    ("pleural attachment", "pleural contact"),
    ("vascular convergence", "vessel convergence"),
    ("airway cut-off", "airway cutoff", "bronchial cut-off"),
    ("cyst-like spaces", "cystic spaces", "bubble-like lucencies"),
    ("pleural retraction", "pleural indentation"),
    ("paracicatricial emphysema", "scar-associated emphysema"),
    ("septal stretching", "stretching of septa"),
    ("intra-nodular bronchiectasis", "intranodular bronchiectasis"),
    ("reticulation", "reticular change"),
    ("seen", "noted", "identified"),
)
