"""A run's results: per-nodule predictions, metrics.json and the printed summary table.

predictions.csv: one row per held-out test nodule with each fold model's probability and the
ensemble (their mean). patient_predictions.csv: a patient's risk is the max over its nodules.
val_predictions.csv: every training nodule's probability from the fold model that did not train on
it (out-of-fold), for calibration. metrics.json: AUROC and AUPRC with bootstrap 95% intervals, FPR
and precision at recall 0.6/0.7/0.8/0.9, at nodule and patient level (`classification_metrics`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from noduleclip.atomic import jsonable, write_csv, write_text
from noduleclip.metrics.classification import classification_metrics, patient_level

RECALLS = (0.6, 0.7, 0.8, 0.9)


def label_text(label: float) -> str:
    return "" if np.isnan(label) else str(int(label))


def scored_set(ids: Sequence[str], patients: Sequence[str], labels: np.ndarray, risk: np.ndarray,
               bootstrap: int, seed: int) -> dict:
    """Nodule- and patient-level metrics of one set of scores (None metrics with a reason if a class is missing)."""
    _, patient_labels, patient_risk = patient_level(ids, patients, labels, risk)
    options: dict[str, Any] = dict(recalls=RECALLS, n_bootstrap=bootstrap, seed=seed, allow_single_class=True)
    return {
        "nodule": classification_metrics(labels, risk, unit="nodules", **options),
        "patient": classification_metrics(patient_labels, patient_risk, unit="patients", **options),
    }


def brief_scores(labels: np.ndarray, risk: np.ndarray) -> dict:
    """AUROC and AUPRC without intervals (per-fold rows of the summary)."""
    m = classification_metrics(labels, risk, n_bootstrap=0, allow_single_class=True)
    return {"auroc": m["auroc"], "auprc": m["auprc"], "n": m["n"]}


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(metrics: dict, name: str) -> str:
    value, ci = metrics.get(name), metrics.get(f"{name}_ci")
    text = _num(value)
    return text + (f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else "")


def format_summary(metrics: dict) -> str:
    """The summary table printed at the end of `noduleclip train`."""
    lines = ["fold  best epoch  epochs  val AUROC  test AUROC  test AUPRC"]
    test = metrics.get("test")
    for fold in metrics["validation"]["folds"]:
        k = fold["fold"]
        on_test = test["folds"][f"fold_{k}"] if test else {}
        lines.append(f"{k:>4}  {fold['best_epoch']:>10}  {fold['epochs_run']:>6}  {_num(fold['auroc']):>9}  "
                     f"{_num(on_test.get('auroc')):>10}  {_num(on_test.get('auprc')):>10}")
    sets = [("out-of-fold validation", metrics["validation"])] + ([("ensemble on the test set", test)] if test else [])
    for title, scored in sets:
        for level in ("nodule", "patient"):
            m = scored[level]
            head = f"{title}, {level}s (n={m['n']}, {m['n_pos']} malignant)"
            if m["auroc"] is None:
                lines.append(f"{head}: {m['reason']}")
                continue
            lines.append(f"{head}: AUROC {_ci(m, 'auroc')}  AUPRC {_ci(m, 'auprc')}")
    if test and test["nodule"]["auroc"] is not None:
        lines.append("recall  FPR nodule  precision nodule  FPR patient  precision patient")
        for r in RECALLS:
            n, p = test["nodule"]["at_recall"].get(f"{r:g}") or {}, test["patient"]["at_recall"].get(f"{r:g}") or {}
            lines.append(f"{r:>6}  {_num(n.get('fpr')):>10}  {_num(n.get('precision')):>16}  "
                         f"{_num(p.get('fpr')):>11}  {_num(p.get('precision')):>17}")
    return "\n".join(lines)


def write_predictions(folder: Path, ids: Sequence[str], patients: Sequence[str], labels: np.ndarray,
                      fold_risk: np.ndarray) -> np.ndarray:
    """Write predictions.csv (each fold model and the ensemble) and patient_predictions.csv; return the ensemble."""
    fold_risk = np.asarray(fold_risk)
    ensemble = fold_risk.mean(axis=0)
    header = ["patient_id", "nodule_id", "label"] + [f"fold_{k}" for k in range(len(fold_risk))] + ["ensemble"]
    write_csv(folder / "predictions.csv", header,
              [[p, n, label_text(y), *fold_risk[:, i], ensemble[i]]
               for i, (p, n, y) in enumerate(zip(patients, ids, labels, strict=True))])
    pids, patient_labels, patient_risk = patient_level(ids, patients, labels, ensemble)
    write_csv(folder / "patient_predictions.csv", ["patient_id", "label", "risk"],
              [[p, label_text(y), r] for p, y, r in zip(pids, patient_labels, patient_risk, strict=True)])
    return ensemble


def write_results(run: Path, test: dict | None, validation: dict, bootstrap: int, seed: int) -> dict:
    """Write the prediction CSVs and metrics.json of a finished run; return the metrics.

    `test`: ids, patients, labels, fold_risk (K, N) or None without a test set; `validation`:
    ids, patients, labels, risk, fold (one entry per training nodule) and `folds` (done.json summaries).
    """
    val_rows = zip(validation["fold"], validation["patients"], validation["ids"],
                   map(label_text, validation["labels"]), validation["risk"], strict=True)
    write_csv(run / "val_predictions.csv", ["fold", "patient_id", "nodule_id", "label", "probability"], list(val_rows))
    val_scores = scored_set(validation["ids"], validation["patients"], validation["labels"], validation["risk"],
                            bootstrap, seed)
    metrics: dict = {"validation": {**val_scores, "folds": validation["folds"]}, "test": None}
    if test is not None and len(test["ids"]):
        fold_risk = np.asarray(test["fold_risk"])
        ensemble = write_predictions(run, test["ids"], test["patients"], test["labels"], fold_risk)
        metrics["test"] = {
            **scored_set(test["ids"], test["patients"], test["labels"], ensemble, bootstrap, seed),
            "folds": {f"fold_{k}": brief_scores(test["labels"], fold_risk[k]) for k in range(len(fold_risk))},
        }
    metrics = jsonable(metrics)
    write_text(run / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
