"""The semantic-features-only baseline: logistic regression on the radiologist's ratings, no image.

    model = fit_semantic_baseline(train_records, labels)       # NoduleRecords or plain dicts
    risk = model.predict(test_records)
    cv = semantic_cv(manifest, plan)                           # the neural runs' splits, folds and test set
    table = semantic_cv_table(rows, labels, groups, folds=5)   # rating rows without images (e.g. LIDC XML)

Encoding (fitted on the training rows only):
- unordered categorical features (consistency, margins, shape, ...; LIDC internal_structure and
  calcification, whose grades name kinds, not amounts) are one-hot, with "missing" as a level of its own;
- ordered features (binary absent/present = 0/1, pleural retraction 0-2; LIDC subtlety, sphericity,
  margin, lobulation, spiculation, texture as their grades) and sizes (long/short diameter, LIDC
  diameter_mm) are numbers: a missing value takes the training mean and gets a 0/1 missing indicator;
- then every column is standardised and an L2 logistic regression (C = 1) is fitted.
A NoduleRecord contributes its parsed schema features (`record.features`: LIDC grades harmonised);
a plain dict contributes any schema or LIDC column it has. The LIDC `malignancy` rating is the label's
source and is never a feature; the level of suspicion is nearly the label and is left out unless asked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from noduleclip.atomic import jsonable
from noduleclip.data.manifest import label_array
from noduleclip.errors import InputError
from noduleclip.semantics.lidc import LIDC_DIAMETER, LIDC_SCALES, parse_lidc_grade
from noduleclip.semantics.schema import (
    BINARY,
    CATEGORICAL,
    FEATURE_BY_NAME,
    FEATURES,
    SUSPICION,
    is_blank,
    normalise_value,
)
from noduleclip.train.results import brief_scores

MISSING = "missing"
NEVER_FEATURES = frozenset({"malignancy"})  # the label's source
LIDC_CATEGORICAL = ("internal_structure", "calcification")
LIDC_ORDINAL = ("subtlety", "sphericity", "margin", "lobulation", "spiculation", "texture")


@dataclass(frozen=True)
class SemanticConfig:
    """Settings of the semantic-only logistic regression."""

    C: float = 1.0  # inverse L2 strength on standardised columns
    include_suspicion: bool = False  # the level of suspicion is nearly the label
    max_iter: int = 2000


def column_kinds(include_suspicion: bool = False) -> dict[str, str]:
    """Every column the baseline may read -> "categorical" (one-hot) or "number" (ordinal/numeric)."""
    kinds: dict[str, str] = {}
    for feature in FEATURES:
        if feature.name == SUSPICION and not include_suspicion:
            continue
        unordered = feature.kind == CATEGORICAL and not feature.ordered
        kinds[feature.name] = "categorical" if unordered else "number"
    kinds.update({c: "categorical" for c in LIDC_CATEGORICAL})
    kinds.update({c: "number" for c in LIDC_ORDINAL + (LIDC_DIAMETER,)})
    assert not NEVER_FEATURES & set(kinds), "the malignancy rating must never be a feature"
    return kinds


_ALL_KINDS = column_kinds(include_suspicion=True)


def _cell(column: str, raw: object, where: str) -> str | float:
    """One cell as a one-hot level (str) or a number (float, NaN when missing)."""
    kind = _ALL_KINDS[column]
    if column in LIDC_SCALES:
        grade = None if is_blank(raw) else parse_lidc_grade(column, str(raw).strip(), where)
        if kind == "categorical":
            return MISSING if grade is None else str(grade)
        return math.nan if grade is None else float(grade)
    if column == LIDC_DIAMETER:
        try:
            return math.nan if is_blank(raw) else float(raw)
        except ValueError:
            raise InputError(f"{where}: {column} {raw!r} is not a number of millimetres") from None
    feature = FEATURE_BY_NAME[column]
    value = normalise_value(feature, raw, where)
    if kind == "categorical":
        return MISSING if value is None else str(value)
    if value is None:
        return math.nan
    if feature.is_numeric:
        return float(value)
    return float(feature.values.index(value)) if feature.kind != BINARY else float(value == "present")


def feature_rows(items: Iterable, include_suspicion: bool = False) -> pd.DataFrame:
    """One row per NoduleRecord (its parsed features) or dict (its known columns), every known column."""
    kinds = column_kinds(include_suspicion)
    data = []
    for n, item in enumerate(items):
        if isinstance(item, dict):
            cells, where = {str(k).strip().lower(): v for k, v in item.items()}, f"row {n}"
        else:
            cells, where = dict(item.features), item.where
        data.append({c: _cell(c, cells.get(c), where) for c in kinds})
    return pd.DataFrame(data, columns=list(kinds))


def _informative(frame: pd.DataFrame, kinds: dict[str, str]) -> list[str]:
    """Columns with at least one known value in `frame`."""
    return [c for c in frame.columns
            if ((frame[c] != MISSING).any() if kinds[c] == "categorical" else frame[c].notna().any())]


@dataclass
class SemanticBaseline:
    """A fitted semantic-only model: the input columns it reads, its sklearn pipeline."""

    pipeline: Pipeline
    columns: list[str]
    config: SemanticConfig = field(default_factory=SemanticConfig)

    def predict(self, items: Iterable) -> np.ndarray:
        """Malignancy probability of each record or row."""
        frame = feature_rows(items, self.config.include_suspicion)
        return self.pipeline.predict_proba(frame[self.columns])[:, 1]

    def coefficients(self) -> dict[str, float]:
        """Encoded column name -> logistic-regression weight (on the standardised column)."""
        names = self.pipeline.named_steps["encode"].get_feature_names_out()
        weights = self.pipeline.named_steps["classify"].coef_[0]
        return {str(n): float(w) for n, w in zip(names, weights, strict=True)}


def fit_semantic_baseline(records_train: Sequence, labels: Sequence,
                          config: SemanticConfig | None = None) -> SemanticBaseline:
    """Fit the logistic regression on training records/rows and their labels (unknown labels left out)."""
    config = config or SemanticConfig()
    y = label_array(labels)
    items = list(records_train)
    if len(items) != len(y):
        raise InputError(f"{len(items)} training rows but {len(y)} labels; give one label per row")
    known = ~np.isnan(y)
    frame = feature_rows([r for r, k in zip(items, known, strict=True) if k], config.include_suspicion)
    y = y[known].astype(int)
    if len(np.unique(y)) < 2:
        raise InputError(f"the semantic baseline's training set has {len(y)} labelled rows of one class only; "
                         "it needs malignant and benign nodules")
    kinds = column_kinds(config.include_suspicion)
    columns = _informative(frame, kinds)
    if not columns:
        raise InputError("the training rows have no semantic feature values; add feature columns to the manifest "
                         "or leave the semantic model out")
    categorical = [c for c in columns if kinds[c] == "categorical"]
    numbers = [c for c in columns if kinds[c] == "number"]
    encode = ColumnTransformer([
        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
        ("number", SimpleImputer(strategy="mean", add_indicator=True), numbers),
    ])
    pipeline = Pipeline([("encode", encode), ("scale", StandardScaler()),
                         ("classify", LogisticRegression(C=config.C, max_iter=config.max_iter))])
    pipeline.fit(frame[columns], y)
    return SemanticBaseline(pipeline, columns, config)


@dataclass
class SemanticCV:
    """Cross-validated semantic baseline on a split plan, in the shapes `write_results` takes."""

    validation: dict  # ids, patients, labels, risk, fold (per training nodule), folds (per-fold summaries)
    test: dict | None  # ids, patients, labels, fold_risk (folds, N); None without a test set
    models: list[SemanticBaseline]


def semantic_cv(manifest_or_records, plan, config: SemanticConfig | None = None) -> SemanticCV:
    """One model per fold of `plan` (a SplitPlan) on its training nodules, scored on its validation fold and
    on the test set, exactly as the neural runs are (the ensemble is the mean of the fold models)."""
    records = list(manifest_or_records)
    by_id = {r.nodule_id: r for r in records}
    plan.check_matches(by_id)
    labels = {r.nodule_id: (math.nan if r.label is None else float(r.label)) for r in records}
    validation = {"ids": [], "patients": [], "labels": [], "risk": [], "fold": [], "folds": []}
    models = []
    for k in range(plan.n_folds):
        train_ids, val_ids = plan.fold(k)
        model = fit_semantic_baseline([by_id[n] for n in train_ids], [labels[n] for n in train_ids], config)
        models.append(model)
        risk = model.predict([by_id[n] for n in val_ids])
        val_labels = np.array([labels[n] for n in val_ids])
        validation["ids"] += val_ids
        validation["patients"] += [by_id[n].patient_id for n in val_ids]
        validation["labels"] += list(val_labels)
        validation["risk"] += list(risk)
        validation["fold"] += [k] * len(val_ids)
        validation["folds"].append({"fold": k, "n_train": len(train_ids), "columns": model.columns,
                                    **brief_scores(val_labels, risk)})
    validation["labels"], validation["risk"] = np.array(validation["labels"]), np.array(validation["risk"])
    test_ids = plan.test_ids()
    test = None
    if test_ids:
        test_records = [by_id[n] for n in test_ids]
        test = {"ids": test_ids, "patients": [r.patient_id for r in test_records],
                "labels": np.array([labels[n] for n in test_ids]),
                "fold_risk": np.stack([m.predict(test_records) for m in models])}
    return SemanticCV(validation, test, models)


def semantic_cv_table(rows: list[dict], labels: Sequence, groups: Sequence, folds: int = 5, seed: int = 0,
                      config: SemanticConfig | None = None) -> dict:
    """Patient-grouped stratified k-fold CV (StratifiedGroupKFold) of the baseline on plain rating rows.

    Returns per-fold AUROC/AUPRC, their mean and sample SD, the pooled out-of-fold AUROC/AUPRC, each
    row's out-of-fold probability and fold (NaN and -1 for unknown labels) and the input columns used.
    Keys other than schema/LIDC rating columns (ids, `malignancy`, ...) are ignored.
    """
    y = label_array(labels)
    groups = np.asarray([str(g) for g in groups])
    if not len(rows) == len(y) == len(groups):
        raise InputError(f"got {len(rows)} rows, {len(y)} labels and {len(groups)} groups; give one of each per row")
    known = np.flatnonzero(~np.isnan(y))
    n_patients = len(set(groups[known]))
    if n_patients < folds:
        raise InputError(f"{n_patients} labelled patients cannot fill {folds} folds; lower folds or add patients")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    oof, fold_of = np.full(len(y), np.nan), np.full(len(y), -1)
    per_fold, used = [], set()
    for k, (train, val) in enumerate(splitter.split(np.zeros((len(known), 1)), y[known], groups[known])):
        train_at, val_at = known[train], known[val]
        model = fit_semantic_baseline([rows[i] for i in train_at], y[train_at], config)
        used.update(model.columns)
        oof[val_at] = model.predict([rows[i] for i in val_at])
        fold_of[val_at] = k
        per_fold.append({"fold": k, "n_train": len(train_at), "n_val": len(val_at),
                         "patients_val": len(set(groups[val_at])), **brief_scores(y[val_at], oof[val_at])})
    assert not NEVER_FEATURES & used, "the malignancy rating must never be a feature"

    def spread(name):
        values = [f[name] for f in per_fold if f[name] is not None]
        return (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None) \
            if values else (None, None)

    pooled = brief_scores(y[known], oof[known])
    (auroc_mean, auroc_sd), (auprc_mean, auprc_sd) = spread("auroc"), spread("auprc")
    return jsonable({
        "n": len(known), "n_pos": int(np.nansum(y)), "n_unknown": int(len(y) - len(known)),
        "n_patients": n_patients, "folds": per_fold, "auroc_mean": auroc_mean, "auroc_sd": auroc_sd,
        "auprc_mean": auprc_mean, "auprc_sd": auprc_sd, "pooled_auroc": pooled["auroc"],
        "pooled_auprc": pooled["auprc"], "oof_probability": oof, "oof_fold": fold_of, "features": sorted(used),
        "excluded": sorted(NEVER_FEATURES | ({SUSPICION} if not (config and config.include_suspicion) else set())),
        "seed": seed,
    })
