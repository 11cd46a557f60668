"""A trained run's fold ensemble on any manifest: views, per-nodule predictions, metrics.

    from noduleclip.evaluate.cohort import evaluate_manifest
    result = evaluate_manifest("runs/a", "external/manifest.csv", "runs/a-external")

Writes into `out`: cache/ (the views), predictions.csv (each fold model and the ensemble),
patient_predictions.csv (a patient's risk is the max over its nodules), metrics.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noduleclip.atomic import write_text
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.evaluate.metrics import jsonable
from noduleclip.preprocess.cache import ViewCache
from noduleclip.preprocess.pipeline import default_workers, preprocess_manifest


@dataclass
class CohortEvaluation:
    """Predictions and metrics of a run's ensemble on one manifest."""

    ids: list[str]
    patients: list[str]
    labels: np.ndarray  # 1, 0 or NaN (unknown)
    fold_risk: np.ndarray  # (folds, N)
    failed: list[tuple[str, str]]
    metrics: dict

    @property
    def risk(self) -> np.ndarray:
        return self.fold_risk.mean(axis=0)


def evaluate_manifest(run: str | os.PathLike, manifest_path: str | os.PathLike, out: str | os.PathLike,
                      workers: int | None = None, bootstrap: int = 1000, seed: int = 0,
                      progress: bool = True) -> CohortEvaluation:
    """Cut the manifest's views as the run did, score them with every fold model, write and return the results."""
    from noduleclip.train.cv import fold_predictions, load_run
    from noduleclip.train.results import scored_set, write_predictions

    config, models = load_run(run)
    manifest = NoduleManifest.read(manifest_path)
    out = Path(out)
    cache = ViewCache(out / "cache", config.views)
    report = preprocess_manifest(manifest, cache, workers=workers or default_workers(), progress=progress)
    failed = dict(report.failed)
    records = [r for r in manifest if r.nodule_id not in failed]
    if not records:
        first = next(iter(failed.items()))
        raise InputError(f"no nodule of {manifest_path} could be read (first: {first[0]}: {first[1]})")
    ids = [r.nodule_id for r in records]
    patients = [r.patient_id for r in records]
    labels = np.array([np.nan if r.label is None else float(r.label) for r in records])
    fold_risk = fold_predictions(models, cache.load_many(ids), config.eval_batch_size)
    ensemble = write_predictions(out, ids, patients, labels, fold_risk)
    metrics = jsonable({**scored_set(ids, patients, labels, ensemble, bootstrap, seed),
                        "run": str(Path(run).resolve()), "manifest": str(Path(manifest_path).resolve()),
                        "failed": [{"nodule_id": n, "reason": r} for n, r in report.failed]})
    write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return CohortEvaluation(ids, patients, labels, fold_risk, report.failed, metrics)
