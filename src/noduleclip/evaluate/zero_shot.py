"""Zero-shot semantic prediction: how well the image embedding alone names each radiological feature.

For every schema feature that the evaluation set labels with at least two classes, each fold model
scores the prompts of every class (`noduleclip.semantics.prompts`: the paper's one prompt per class,
and our prompt ensembles); the softmax probabilities are averaged over the fold models, and the
AUROC is taken against the manifest's values (the layout of the paper's Table 3):
- a binary feature: AUROC of P(present);
- a categorical feature: one-vs-rest AUROC of each class's probability column, averaged with the
  class counts as weights (sklearn's average="weighted"). Classes that no nodule has are left out
  of the average (weight 0) and the others keep their own probability columns (no renormalisation):
  this equals roc_auc_score(y, p, multi_class="ovr", average="weighted", labels=all the classes) in
  scikit-learn 1.9 (tests check both cases), which older versions refuse for absent classes.
The level of suspicion is left out unless asked: it is nearly the malignancy label.

    rows = zero_shot_table(RunEnsemble.load(run), views, records)    # or the ensemble's scores of the views

Computing only: the report's Table 3 is built from these rows in `evaluation_report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from noduleclip.ensemble import EnsembleScores, Probabilities, RunEnsemble
from noduleclip.semantics.prompts import ENSEMBLE, PAPER, build_prompts
from noduleclip.semantics.schema import (
    BINARY,
    FEATURE_BY_NAME,
    NEGATIVE_VALUES,
    PRESENT,
    class_counts,
    feature_values,
    labelled_features,
)

STYLES = (PAPER, ENSEMBLE)


def feature_auroc(values: Sequence[str], probabilities: np.ndarray, truth: Sequence) -> float | None:
    """AUROC of one feature: P(present) for a binary one, weighted one-vs-rest over the classes that occur otherwise.

    `truth` holds each case's value (None = missing, left out); None when fewer than two classes occur.
    """
    p = np.asarray(probabilities, dtype=float)
    known = np.array([t is not None for t in truth])
    if not known.any():
        return None
    index = {v: i for i, v in enumerate(values)}
    y = np.array([index[t] for t in np.asarray(truth, dtype=object)[known]])
    p = p[known]
    present = np.unique(y)
    if len(present) < 2:
        return None
    if len(values) == 2 and PRESENT in index:
        return float(roc_auc_score(y == index[PRESENT], p[:, index[PRESENT]]))
    onehot = (y[:, None] == present[None, :]).astype(int)
    return float(roc_auc_score(onehot, p[:, present], average="weighted"))


def style_probabilities(ensemble: RunEnsemble, scores: EnsembleScores, features: Sequence[str],
                        style: str) -> Probabilities:
    """{feature: (values, N x V)}: the fold models' class softmax with the prompts of `style`, averaged over folds."""
    return ensemble.zero_shot(scores, build_prompts(style, features=features, include_suspicion=True))


def zero_shot_rows(probabilities: Mapping[str, Probabilities], records: Sequence) -> list[dict]:
    """Table 3 rows from {style: probabilities}: feature, kind, class counts, missing, AUROC per style."""
    rows = []
    features = next(iter(probabilities.values())) if probabilities else {}
    for name in features:
        feature = FEATURE_BY_NAME[name]
        truth = [feature_values(r).get(name) for r in records]
        counts = class_counts(records, name)
        rows.append({
            "feature": name, "display": feature.display, "kind": feature.kind,
            "classes": {v: counts[v] for v in feature.values if counts[v]},
            "n": sum(counts.values()), "n_missing": sum(t is None for t in truth),
            "auroc": {style: feature_auroc(*probs[name], truth) for style, probs in probabilities.items()},
        })
    return rows


def zero_shot_table(ensemble: RunEnsemble, scores_or_views, records: Sequence, styles: Sequence[str] = STYLES,
                    include_suspicion: bool = False) -> list[dict]:
    """Zero-shot AUROC per labelled feature for the fold ensemble, from its `score` of the records' views (or the
    views (N, 9, S, S) themselves). Empty for a vision-only run or when no feature has two labelled classes."""
    if not ensemble.has_text:
        return []
    features = labelled_features(records, include_suspicion)
    if not features:
        return []
    scores = scores_or_views if isinstance(scores_or_views, EnsembleScores) else ensemble.score(scores_or_views)
    return zero_shot_rows({s: style_probabilities(ensemble, scores, features, s) for s in styles}, records)


def out_of_fold_zero_shot(ensemble: RunEnsemble, records: Sequence, plan, cache) -> dict:
    """Zero-shot AUROC of each fold model on its own validation nodules.

    `plan` is the run's SplitPlan and `cache` the ViewCache holding the nodules' views. No nodule is
    scored by a model that trained on it; the test nodules are left out (score those with the ensemble).
    Returns {"folds": [{"fold": k, "rows": Table 3 rows}], "pooled": Table 3 rows over all folds}.
    """
    by_id = {r.nodule_id: r for r in records}
    features = labelled_features([by_id[n] for k in range(plan.n_folds) for n in plan.fold(k)[1]])
    folds, pooled_records, parts = [], [], {s: {} for s in STYLES}
    for k in range(ensemble.folds):
        val_ids = plan.fold(k)[1]
        fold_records = [by_id[n] for n in val_ids]
        scores = ensemble.score(cache.load_many(val_ids), folds=[k])
        probabilities = {s: style_probabilities(ensemble, scores, features, s) for s in STYLES}
        own = set(labelled_features(fold_records))  # the fold's table: features with two values in its nodules
        folds.append({"fold": k, "rows": zero_shot_rows(
            {s: {f: p for f, p in by_feature.items() if f in own} for s, by_feature in probabilities.items()},
            fold_records)})
        for style, by_feature in probabilities.items():
            for feature, (values, p) in by_feature.items():
                parts[style].setdefault(feature, (values, []))[1].append(p)
        pooled_records += fold_records
    pooled = {s: {f: (v, np.concatenate(p)) for f, (v, p) in by_feature.items()} for s, by_feature in parts.items()}
    return {"folds": folds, "pooled": zero_shot_rows(pooled, pooled_records)}


def top_findings(probabilities: Probabilities, i: int, k: int = 3) -> list[str]:
    """The `k` most probable non-negative findings of case `i`, e.g. "margins spiculated 0.81"."""
    found = []
    for name, (values, p) in probabilities.items():
        feature = FEATURE_BY_NAME[name]
        for j, value in enumerate(values):
            if value == NEGATIVE_VALUES.get(name):
                continue
            text = feature.display if feature.kind == BINARY else f"{feature.display} {value}"
            found.append((float(p[i, j]), text))
    return [f"{text} {prob:.2f}" for prob, text in sorted(found, reverse=True)[:k]]
