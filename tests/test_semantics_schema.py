"""Schema, value validation, parse_features and the documented LIDC harmonisation (table-driven)."""

from __future__ import annotations

import pytest

from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.semantics import FEATURE_BY_NAME, LIDC_SCALES, NLST_FEATURES, harmonise_lidc, parse_features
from noduleclip.semantics.lidc import margins_from_lidc

BINARY_NAMES = [
    "reticulation", "cyst_like_spaces", "intranodular_bronchiectasis", "necrosis", "cavitation",
    "eccentric_calcification", "airway_cutoff", "pleural_attachment", "vascular_convergence",
    "septal_stretching", "paracicatricial_emphysema",
]


def test_the_nineteen_nlst_features_have_the_fixed_names_and_values():
    assert [f.name for f in NLST_FEATURES] == [
        "long_diameter_mm", "short_diameter_mm", "consistency", "margin_conspicuity", "margins", "shape",
        *BINARY_NAMES, "pleural_retraction", "suspicion",
    ]
    values = {f.name: f.values for f in NLST_FEATURES}
    assert values["consistency"] == ("solid", "pure ground glass", "semiconsolidation", "part-solid", "peri-cystic")
    assert values["margin_conspicuity"] == ("well marginated", "poorly marginated")
    assert values["margins"] == ("spiculated", "smooth", "lobulated", "ill-defined", "notched")
    assert values["shape"] == ("ovoid", "round", "irregular", "polygonal")
    assert values["pleural_retraction"] == ("absent", "mild dimpling", "obvious dimpling")
    assert values["suspicion"] == ("very low", "moderately low", "intermediate", "moderately high", "high")
    assert all(values[n] == ("absent", "present") for n in BINARY_NAMES)
    assert FEATURE_BY_NAME["cyst_like_spaces"].display == "cyst-like spaces"
    assert FEATURE_BY_NAME["airway_cutoff"].display == "airway cut-off"


@pytest.mark.parametrize(
    "raw, expected",
    [("present", "present"), ("1", "present"), ("yes", "present"), ("TRUE", "present"),
     ("absent", "absent"), ("0", "absent"), ("No", "absent"), ("false", "absent"), ("", None), ("nan", None)],
)
def test_binary_cells_accept_the_documented_spellings(raw, expected):
    assert parse_features({"cavitation": raw}, "row 2").get("cavitation") == expected


def test_categorical_cells_ignore_case_spaces_and_hyphens():
    got = parse_features(
        {"consistency": "Part Solid", "margins": "ILL DEFINED", "shape": " round ",
         "margin_conspicuity": "well-marginated"},
        "row 2",
    )
    assert got == {"consistency": "part-solid", "margin_conspicuity": "well marginated", "margins": "ill-defined",
                   "shape": "round"}


def test_unrelated_columns_are_ignored_and_blank_is_missing_not_absent():
    got = parse_features({"series_uid": "1.2.3", "readers": "4", "notes": "anything", "necrosis": ""}, "row 2")
    assert got == {}


@pytest.mark.parametrize(
    "column, raw, allowed",
    [("consistency", "glassy", "solid | pure ground glass"),
     ("cavitation", "maybe", "absent | present"),
     ("long_diameter_mm", "-3", "positive number of mm"),
     ("texture", "7", "1 (Non-Solid/GGO)"),
     ("calcification", "2.5", "6 (Absent)")],
)
def test_unknown_values_name_row_column_and_allowed_values(column, raw, allowed):
    with pytest.raises(InputError) as info:
        parse_features({column: raw}, "manifest.csv row 7")
    message = str(info.value)
    assert "manifest.csv row 7" in message and repr(column) in message and allowed in message


def test_lidc_scales_are_the_official_ones():
    sizes = {name: sorted(scale) for name, scale in LIDC_SCALES.items()}
    assert sizes == {
        "subtlety": [1, 2, 3, 4, 5], "internal_structure": [1, 2, 3, 4], "calcification": [1, 2, 3, 4, 5, 6],
        "sphericity": [1, 2, 3, 4, 5], "margin": [1, 2, 3, 4, 5], "lobulation": [1, 2, 3, 4, 5],
        "spiculation": [1, 2, 3, 4, 5], "texture": [1, 2, 3, 4, 5], "malignancy": [1, 2, 3, 4, 5],
    }
    assert LIDC_SCALES["texture"][1] == "Non-Solid/GGO" and LIDC_SCALES["texture"][5] == "Solid"
    assert LIDC_SCALES["calcification"][6] == "Absent" and LIDC_SCALES["sphericity"][1] == "Linear"
    assert LIDC_SCALES["lobulation"][1] == "No Lobulation" and LIDC_SCALES["margin"][5] == "Sharp"


@pytest.mark.parametrize(
    "column, grade, feature, value",
    [("texture", 1, "consistency", "pure ground glass"), ("texture", 2, "consistency", "pure ground glass"),
     ("texture", 3, "consistency", "part-solid"), ("texture", 4, "consistency", "semiconsolidation"),
     ("texture", 5, "consistency", "solid"),
     ("margin", 1, "margin_conspicuity", "poorly marginated"), ("margin", 2, "margin_conspicuity", "poorly marginated"),
     ("margin", 3, "margin_conspicuity", None), ("margin", 4, "margin_conspicuity", "well marginated"),
     ("margin", 5, "margin_conspicuity", "well marginated"),
     ("sphericity", 1, "shape", None), ("sphericity", 2, "shape", "ovoid"), ("sphericity", 3, "shape", "ovoid"),
     ("sphericity", 4, "shape", "round"), ("sphericity", 5, "shape", "round"),
     ("calcification", 1, "calcification_pattern", "popcorn"),
     ("calcification", 2, "calcification_pattern", "laminated"),
     ("calcification", 3, "calcification_pattern", "diffuse"),
     ("calcification", 4, "calcification_pattern", "non-central"),
     ("calcification", 5, "calcification_pattern", "central"), ("calcification", 6, "calcification_pattern", "absent"),
     ("calcification", 4, "eccentric_calcification", "present"),
     ("calcification", 5, "eccentric_calcification", "absent"),
     ("calcification", 6, "eccentric_calcification", "absent"),
     ("calcification", 3, "eccentric_calcification", "absent")],
)
def test_lidc_grades_map_as_documented(column, grade, feature, value):
    assert harmonise_lidc({column: grade}).get(feature) == value
    assert parse_features({column: f"{grade}.0"}, "row 2").get(feature) == value


@pytest.mark.parametrize(
    "spiculation, lobulation, margin, expected",
    [(3, 1, 5, "spiculated"), (5, 5, 1, "spiculated"), (3, None, None, "spiculated"),
     (2, 3, 5, "lobulated"), (1, 5, 1, "lobulated"), (2, 2, 2, "ill-defined"), (1, 1, 1, "ill-defined"),
     (2, 2, 3, "smooth"), (1, 1, 5, "smooth"), (None, 1, 5, None), (2, None, 5, None), (1, 1, None, None)],
)
def test_margins_rules_from_spiculation_lobulation_margin(spiculation, lobulation, margin, expected):
    assert margins_from_lidc(spiculation, lobulation, margin) == expected


def test_lidc_row_leaves_unrated_features_missing_and_drops_malignancy():
    row = {"diameter_mm": "12.5", "subtlety": "5", "internal_structure": "1", "calcification": "6", "sphericity": "3",
           "margin": "4", "lobulation": "1", "spiculation": "5", "texture": "5", "malignancy": "5"}
    got = parse_features(row, "row 2")
    assert got == {
        "long_diameter_mm": 12.5, "consistency": "solid", "margin_conspicuity": "well marginated",
        "margins": "spiculated", "shape": "ovoid", "eccentric_calcification": "absent",
        "calcification_pattern": "absent",
    }
    assert got == parse_features({**row, "malignancy": "1"}, "row 2")
    assert parse_features({**row, "malignancy": "not a grade"}, "row 2") == got


def test_schema_columns_win_over_lidc_columns():
    got = parse_features({"texture": "1", "consistency": "solid", "diameter_mm": "9", "long_diameter_mm": "11",
                          "spiculation": "5", "lobulation": "1", "margin": "5", "margins": ""}, "row 2")
    assert got["consistency"] == "solid" and got["long_diameter_mm"] == 11.0
    assert got["margins"] == "spiculated"  # a blank schema cell does not hide the LIDC value


def test_real_lidc_manifest_harmonises_like_its_integer_columns(shared_data):
    manifest = NoduleManifest.read(shared_data / "lidc-crops" / "manifest.csv")
    rows = [parse_features(r.columns, r.where) for r in manifest]
    textures = [int(r.columns["texture"]) for r in manifest]
    assert sum(f.get("consistency") == "solid" for f in rows) == textures.count(5)
    assert sum(f.get("consistency") == "pure ground glass" for f in rows) == textures.count(1) + textures.count(2)
    assert all(f["long_diameter_mm"] == float(r.columns["diameter_mm"]) for f, r in zip(rows, manifest, strict=True))
    assert not any("reticulation" in f or "pleural_attachment" in f or "suspicion" in f for f in rows)
