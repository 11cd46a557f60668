"""Which radiologist features a run's risk follows, beside the synthetic cohort's own risk model.

    python scripts/synthetic_feature_weights.py RUN MANIFEST

For a run trained on a synthetic cohort, whose log-odds of malignancy are a known sum of feature
weights (`noduleclip.synth.risk`), the run's log-odds of every nodule it scored (out of fold and on
the held-out test) are regressed on the cohort's features. Each weight is printed on the cohort's
scale, the size weight set to the cohort's 4.8 per doubling of the diameter, beside the cohort's
true weight. A feature that the model does not read has a weight near 0; one read backwards has the
wrong sign. Also printed: how much of the model's log-odds the features explain (R^2), and the AUROC
of the model, of the true risk, of the diameter alone and of the model's own feature weights without
its unexplained part.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression
from sklearn.metrics import roc_auc_score

from noduleclip.synth.risk import BINARY_TERMS, SIZE_PER_DOUBLING, TERMS

SIZE = "log2 diameter / 10 mm"


def design(manifest: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """The features of each nodule as regressors, and the cohort's true weight of each column.

    Columns: log2 of the long diameter over 10 mm, and a 0/1 column per weighted feature value. Where
    every nodule has one of a feature's weighted values (margins), the lowest-weighted value is the
    reference: it gets no column, and the other values' weights are relative to it.
    """
    missing = [c for c in ["long_diameter_mm", *TERMS, *BINARY_TERMS] if c not in manifest.columns]
    if missing:
        raise ValueError(f"the manifest has no {', '.join(missing)} column(s); "
                         "give the manifest of a synthetic cohort (noduleclip synth)")
    X = pd.DataFrame({SIZE: np.log2(manifest["long_diameter_mm"].astype(float) / 10.0)}, index=manifest.index)
    truth = {SIZE: SIZE_PER_DOUBLING}
    for name, table in TERMS.items():
        covered = set(manifest[name].dropna()) <= set(table)
        reference = min(table, key=table.get) if covered else None
        for value, weight in table.items():
            if value != reference:
                label = f"{name} = {value}" + (f" (vs {reference})" if reference else "")
                X[label] = (manifest[name] == value).astype(float)
                truth[label] = weight - (table[reference] if reference else 0.0)
    for name, weight in BINARY_TERMS.items():
        X[name] = (manifest[name] == "present").astype(float)
        truth[name] = weight
    return X, truth


def feature_weights(logit: pd.Series, X: pd.DataFrame) -> tuple[dict[str, float], float, float, pd.Series]:
    """Least-squares weights of `logit` on the features that vary, rescaled so that size weighs as in the cohort.

    Returns (weights, scale = the model's size weight / the cohort's, R^2, the fitted log-odds).
    """
    varying = [c for c in X.columns if X[c].nunique() > 1]
    if SIZE not in varying:
        raise ValueError("every nodule has the same diameter: the weights cannot be put on the cohort's scale")
    fit = LinearRegression().fit(X[varying], logit)
    scale = float(fit.coef_[varying.index(SIZE)] / SIZE_PER_DOUBLING)
    if scale <= 0:
        raise ValueError(f"the model's log-odds do not rise with the diameter (size weight {scale * SIZE_PER_DOUBLING:.3g}), "
                         "so its weights cannot be put on the cohort's scale")
    weights = {c: float(w / scale) for c, w in zip(varying, fit.coef_)}
    fitted = pd.Series(fit.predict(X[varying]), index=X.index)
    return weights, scale, float(fit.score(X[varying], logit)), fitted


def run_probabilities(run: Path) -> pd.DataFrame:
    """nodule_id, label, probability and set ('out of fold' or 'test') of every nodule the run scored."""
    parts = []
    validation, test = run / "val_predictions.csv", run / "predictions.csv"
    if validation.exists():
        v = pd.read_csv(validation)
        parts.append(v[["nodule_id", "label", "probability"]].assign(set="out of fold"))
    if test.exists():
        t = pd.read_csv(test)
        parts.append(t[["nodule_id", "label"]].assign(probability=t["ensemble"], set="test"))
    if not parts:
        raise ValueError(f"{run} has neither val_predictions.csv nor predictions.csv; give a finished run folder")
    return pd.concat(parts, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder (noduleclip train --out)")
    parser.add_argument("manifest", type=Path, help="the synthetic cohort's manifest the run was trained on")
    args = parser.parse_args(argv)
    try:
        scored = run_probabilities(args.run)
        manifest = pd.read_csv(args.manifest).set_index("nodule_id")
        unknown = sorted(set(scored.nodule_id) - set(manifest.index))
        if unknown:
            raise ValueError(f"{len(unknown)} nodule(s) of the run, e.g. {unknown[0]}, are not in {args.manifest}; "
                             "give the manifest the run was trained on")
        X, truth = design(manifest.loc[scored.nodule_id])
        X.index = scored.index
        p = scored.probability.clip(1e-6, 1 - 1e-6)
        weights, scale, r2, fitted = feature_weights(np.log(p / (1 - p)), X)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(X)} nodules; the features explain R^2 = {r2:.3f} of the model's log-odds; "
          f"its size weight is {scale:.3f} x the cohort's")
    print(f"{'feature':52s} {'nodules':>7s} {'model':>7s} {'cohort':>7s}")
    for name, weight in weights.items():
        count = len(X) if name == SIZE else int(X[name].sum())
        print(f"{name:52s} {count:7d} {weight:7.2f} {truth[name]:7.2f}")
    true_logit = X[list(truth)] @ pd.Series(truth)  # the true log-odds up to a constant
    for name, rows in scored.groupby("set").groups.items():
        y = scored.label[rows]
        if y.nunique() < 2:
            continue
        auroc = {what: roc_auc_score(y, values[rows]) for what, values in
                 (("model", p), ("true risk", true_logit), ("diameter", X[SIZE]), ("model's feature weights", fitted))}
        print(f"{name} ({len(rows)}): AUROC " + ", ".join(f"{k} {v:.3f}" for k, v in auroc.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
