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

    rows = zero_shot_table(models, views, records)       # or per-fold image embeddings instead of views
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from noduleclip.semantics.prompts import ENSEMBLE, PAPER, build_prompts
from noduleclip.semantics.schema import BINARY, FEATURE_BY_NAME, NEGATIVE_VALUES, PRESENT, text_features

STYLES = (PAPER, ENSEMBLE)
STYLE_TITLES = {PAPER: "paper's prompts", ENSEMBLE: "prompt ensembles"}
Probabilities = dict[str, tuple[tuple[str, ...], np.ndarray]]  # feature -> (class values, N x V)


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


def image_embeddings(models: Sequence, views, batch_size: int = 32) -> list[np.ndarray]:
    """Each fold model's unit-norm image embeddings (N, D) of views (N, 9, S, S)."""
    from noduleclip.train.cv import fold_outputs

    return [p.image_embeds.detach().cpu().double().numpy() for p in fold_outputs(list(models), views, batch_size)]


def ensemble_probabilities(models: Sequence, embeds_per_fold: Sequence, features: Sequence[str],
                           style: str) -> Probabilities:
    """{feature: (values, N x V)}: the class softmax of each fold model (its own logit scale), averaged over folds."""
    prompt_set = build_prompts(style, features=features, include_suspicion=True)
    total: dict[str, np.ndarray] = {}
    for model, embeds in zip(models, embeds_per_fold, strict=True):
        prompt_embeds = model.prompt_embeddings(prompt_set.texts).detach().cpu().double().numpy()
        similarity = np.asarray(embeds, dtype=np.float64) @ prompt_embeds.T
        scale = float(model.scale().detach())
        for feature, (_, p) in prompt_set.probabilities(similarity, scale, prompt_embeddings=prompt_embeds).items():
            total[feature] = total.get(feature, 0.0) + p
    return {f: (prompt_set.values(f), total[f] / len(models)) for f in prompt_set.features}


def has_text_path(models: Sequence) -> bool:
    """Whether the models have a text tower (a vision-only run has none: no zero-shot prediction)."""
    return all(getattr(m, "text", None) is not None for m in models)


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


def zero_shot_table(models: Sequence, embeds_or_views, records: Sequence, styles: Sequence[str] = STYLES,
                    include_suspicion: bool = False, batch_size: int = 32) -> list[dict]:
    """Zero-shot AUROC per labelled feature for the fold ensemble; `embeds_or_views` is a list of per-fold
    image embeddings (N, D) or the views (N, 9, S, S). Empty for vision-only models or unlabelled features."""
    if not has_text_path(models):
        return []
    features = labelled_features(records, include_suspicion)
    if not features:
        return []
    embeds = embeds_or_views
    if getattr(embeds[0], "ndim", np.ndim(embeds[0])) != 2 or len(embeds) != len(models):
        embeds = image_embeddings(models, embeds_or_views, batch_size)
    return zero_shot_rows({s: ensemble_probabilities(models, embeds, features, s) for s in styles}, records)


def out_of_fold_zero_shot(models: Sequence, records: Sequence, plan, cache, batch_size: int = 32) -> dict:
    """Zero-shot AUROC of each fold model (`models[k]`, e.g. from `load_run`) on its own validation nodules.

    `plan` is the run's SplitPlan and `cache` the ViewCache holding the nodules' views. No nodule is
    scored by a model that trained on it; the test nodules are left out (score those with the ensemble).
    Returns {"folds": [{"fold": k, "rows": Table 3 rows}], "pooled": Table 3 rows over all folds}.
    """
    import torch

    by_id = {r.nodule_id: r for r in records}
    features = labelled_features([by_id[n] for k in range(plan.n_folds) for n in plan.fold(k)[1]])
    folds, pooled_records, parts = [], [], {s: {} for s in STYLES}
    for k, model in enumerate(models):
        val_ids = plan.fold(k)[1]
        fold_records = [by_id[n] for n in val_ids]
        views = torch.from_numpy(cache.load_many(val_ids))
        prefix = model.image_prefix(views, batch_size) if model.frozen_image_blocks else None
        embeds = model.predict(views, batch_size, prefix=prefix).image_embeds.double().numpy()
        probabilities = {s: ensemble_probabilities([model], [embeds], features, s) for s in STYLES}
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


def classes_text(classes: Mapping[str, int]) -> str:
    """'solid (12), part-solid (3)' in schema order."""
    return ", ".join(f"{value} ({count})" for value, count in classes.items())


def zero_shot_blocks(rows: Sequence[dict], styles: Sequence[str] = STYLES, note: str = "") -> list:
    """The report's Table 3: feature | classes with counts | AUROC for each prompt style."""
    from noduleclip.report import Table, Text

    if not rows:
        return [Text(note or "No feature of the schema has two or more classes among this set's known values, "
                     "so there is nothing to predict zero-shot.")]
    table = Table(["feature", "classes (count)", "missing"] + [f"AUROC, {STYLE_TITLES[s]}" for s in styles],
                  [[r["display"], classes_text(r["classes"]), r["n_missing"], *(r["auroc"][s] for s in styles)]
                   for r in rows],
                  caption="Zero-shot semantic feature prediction by the fold ensemble (as the paper's Table 3)")
    explain = Text(
        "Each class is scored by the cosine similarity of the image embedding with its prompt(s) times the model's "
        "logit scale, with a softmax over the feature's classes; the fold models' probabilities are averaged. "
        "Paper's prompts: \"This nodule <feature> is <value>.\", and \"There is <feature>.\" vs \"No findings.\" "
        "for binary features. Prompt ensembles add the report generator's wordings of each value (class embedding "
        "= re-normalised mean of its prompt embeddings). AUROC: binary features P(present); categorical features "
        "one-vs-rest AUROC per class weighted by the class counts, over the classes that occur. Nodules with the "
        "feature missing are left out. " + note)
    return [explain, table]
