"""Semantic features from a manifest row: schema columns, LIDC columns (harmonised), nothing else."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from noduleclip.errors import InputError
from noduleclip.semantics.lidc import LIDC_COLUMNS, LIDC_DIAMETER, harmonise_lidc, parse_lidc_grade
from noduleclip.semantics.schema import FEATURE_BY_NAME, FEATURES, NUMERIC, Feature, is_blank, normalise_value

Features = dict[str, "str | float"]
_LIDC_READ = tuple(c for c in LIDC_COLUMNS if c != "malignancy")
_DIAMETER = Feature(LIDC_DIAMETER, "diameter", NUMERIC, unit="mm")


def parse_features(columns: dict[str, str], where: str) -> Features:
    """A row's semantic features {feature: value} from its non-core columns (NoduleRecord.columns).

    Schema columns are validated; LIDC integer columns are validated and harmonised (see
    `noduleclip.semantics.lidc`); where both give a feature, the schema column wins. Other columns
    (and LIDC `malignancy`, the label's source) are ignored. Blank cells are missing, not absent.
    An unknown value raises InputError naming `where`, the column and the allowed values.
    """
    cells = {str(k).strip().lower(): v for k, v in columns.items()}
    schema_values: Features = {}
    for feature in FEATURES:
        if feature.name in cells:
            value = normalise_value(feature, cells[feature.name], where)
            if value is not None:
                schema_values[feature.name] = value
    grades: dict[str, int | float] = {}
    for column in _LIDC_READ:
        raw = cells.get(column)
        if is_blank(raw):
            continue
        if column == LIDC_DIAMETER:
            grades[column] = normalise_value(_DIAMETER, raw, where)
        else:
            grades[column] = parse_lidc_grade(column, str(raw).strip(), where)
    merged = {**harmonise_lidc(grades), **schema_values}
    return {f.name: merged[f.name] for f in FEATURES if f.name in merged}


def record_features(record) -> Features:
    """The semantic features of a `NoduleRecord` (its columns, errors naming its row)."""
    return parse_features(record.columns, record.where)


def feature_distribution(rows: Iterable[Features]) -> dict[str, Counter]:
    """Counts of each categorical/binary feature's values over rows, 'missing' included."""
    rows = list(rows)
    out: dict[str, Counter] = {}
    for feature in FEATURES:
        if feature.is_numeric:
            continue
        counts = Counter(str(r.get(feature.name, "missing")) for r in rows)
        out[feature.name] = Counter({v: counts.get(v, 0) for v in (*feature.values, "missing")})
    return out


def check_feature_names(names: Iterable[str]) -> list[str]:
    """The given names, each checked against the schema (InputError for an unknown one)."""
    names = list(names)
    unknown = [n for n in names if n not in FEATURE_BY_NAME]
    if unknown:
        raise InputError(
            f"{', '.join(map(repr, unknown))} are not semantic features; use some of {', '.join(FEATURE_BY_NAME)}"
        )
    return names
