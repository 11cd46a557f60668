"""A trained run's fold ensemble on any manifest: views, per-nodule predictions, metrics, and the full report.

    result = evaluate_manifest("runs/a", "external/manifest.csv", "runs/a-external")      # predictions, metrics
    full = evaluate_cohort("runs/a", "external/manifest.csv", "runs/a-external",
                           EvaluationOptions(perturb=("noise=20,thick=3",), compare=("brock=brock.csv",)))

`evaluate_manifest` writes into `out`: cache/ (the views), predictions.csv (each fold model and the
ensemble), patient_predictions.csv (a patient's risk is the max over its nodules), metrics.json.
`evaluate_cohort` writes the same and roc.png, roc_patient.png, calibration.png, gallery.png,
perturbed_predictions.csv (with perturbations), report.html and report.json; everything but the view
cache appears together at the end (staged), so a failed evaluation leaves the folder as it was.

`evaluate_cohort` by job: `_parse_options` (user errors before any work), `score_manifest` (views and
fold-model scores), `write_scores` (predictions and metrics), `_analyse` (comparisons, curves, zero-shot,
robustness, gallery: numbers and PNGs), then `evaluation_report.write_evaluation_report` (report.html/json).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from noduleclip.atomic import jsonable, staged_dir, write_csv, write_text
from noduleclip.data.manifest import NoduleManifest, record_labels
from noduleclip.ensemble import EnsembleScores, RunEnsemble
from noduleclip.errors import InputError
from noduleclip.evaluate import compare, gallery, perturb, zero_shot
from noduleclip.evaluate.compare import ComparedScores, aligned_scores
from noduleclip.evaluate.evaluation_report import OURS, write_evaluation_report
from noduleclip.evaluate.gallery import GalleryTile
from noduleclip.metrics.classification import calibration_curve, patient_level
from noduleclip.plots import plot_calibration, plot_roc_pr
from noduleclip.preprocess.acquisition import Perturbation, parse_perturbations
from noduleclip.preprocess.cache import ViewCache
from noduleclip.preprocess.pipeline import default_workers, preprocess_manifest
from noduleclip.train.results import brief_scores, scored_set, write_predictions

OPTIONAL_OUTPUTS = ("gallery.png", "perturbed_predictions.csv")


@dataclass
class CohortEvaluation:
    """Predictions and metrics of a run's ensemble on one manifest."""

    ids: list[str]
    patients: list[str]
    labels: np.ndarray  # 1, 0 or NaN (unknown)
    fold_risk: np.ndarray  # (folds, N)
    failed: list[tuple[str, str]]
    metrics: dict
    records: list = field(default_factory=list, repr=False)
    views: np.ndarray | None = field(default=None, repr=False)  # (N, 9, S, S)
    scores: EnsembleScores | None = field(default=None, repr=False)  # the fold models' risks, embeddings, attention
    report: dict = field(default_factory=dict, repr=False)  # evaluate_cohort: report.json's content

    @property
    def risk(self) -> np.ndarray:
        """The ensemble's malignancy probability (N,): the mean over the fold models."""
        return self.fold_risk.mean(axis=0)


@dataclass
class EvaluationOptions:
    """What `evaluate_cohort` adds to the plain evaluation, and how it runs."""

    workers: int | None = None  # preprocessing processes (default: up to 4)
    bootstrap: int = 1000  # resamples for the 95% intervals
    seed: int = 0  # bootstrap and perturbation noise
    progress: bool = True
    perturb: tuple[str, ...] = ()  # e.g. ("noise=20,thick=3", "smooth=1+noise=10")
    compare: tuple[str, ...] = ()  # NAME=FILE or NAME=FILE:COLUMN
    gallery: int = 4  # false positives and false negatives shown (0: no gallery)
    zero_shot: bool = True
    include_suspicion: bool = False  # zero-shot prediction of the level of suspicion too


def score_manifest(run: str | os.PathLike, manifest_path: str | os.PathLike, cache_root: str | os.PathLike,
                   workers: int | None = None, progress: bool = True) -> tuple[RunEnsemble, CohortEvaluation]:
    """The run's fold ensemble and its CohortEvaluation of the manifest (views, fold probabilities, embeddings;
    no metrics yet), cutting the views into `cache_root`."""
    ensemble = RunEnsemble.load(run)
    manifest = NoduleManifest.read(manifest_path)
    cache = ViewCache(cache_root, ensemble.settings.views)
    report = preprocess_manifest(manifest, cache, workers=workers or default_workers(), progress=progress)
    failed = dict(report.failed)
    records = [r for r in manifest if r.nodule_id not in failed]
    if not records:
        first = next(iter(failed.items()))
        raise InputError(f"no nodule of {manifest_path} could be read (first: {first[0]}: {first[1]})")
    ids = [r.nodule_id for r in records]
    views = cache.load_many(ids)
    scores = ensemble.score(views)
    evaluation = CohortEvaluation(ids, [r.patient_id for r in records], record_labels(records), scores.fold_risk,
                                  report.failed, {}, records, views, scores)
    return ensemble, evaluation


def write_scores(folder: Path, evaluation: CohortEvaluation, run, manifest_path, bootstrap: int, seed: int) -> dict:
    """predictions.csv, patient_predictions.csv and metrics.json into `folder`; the metrics."""

    e = evaluation
    ensemble = write_predictions(folder, e.ids, e.patients, e.labels, e.fold_risk)
    metrics = jsonable({**scored_set(e.ids, e.patients, e.labels, ensemble, bootstrap, seed),
                        "run": str(Path(run).resolve()), "manifest": str(Path(manifest_path).resolve()),
                        "failed": [{"nodule_id": n, "reason": r} for n, r in e.failed]})
    write_text(folder / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def evaluate_manifest(run: str | os.PathLike, manifest_path: str | os.PathLike, out: str | os.PathLike,
                      workers: int | None = None, bootstrap: int = 1000, seed: int = 0,
                      progress: bool = True) -> CohortEvaluation:
    """Cut the manifest's views as the run did, score them with every fold model, write and return the results."""
    out = Path(out)
    _, evaluation = score_manifest(run, manifest_path, out / "cache", workers, progress)
    evaluation.metrics = write_scores(out, evaluation, run, manifest_path, bootstrap, seed)
    return evaluation


def _parse_options(options: EvaluationOptions) -> tuple[list[Perturbation], list[ComparedScores]]:
    """The perturbations and the compared models' scores that `options` names, checked: user errors before any work."""

    perturbations = parse_perturbations(options.perturb)
    compared = [compare.read_scores(spec) for spec in options.compare]
    if len({c.name for c in compared}) < len(compared):
        raise InputError("two --compare models have the same NAME; give each its own name")
    if options.gallery < 0:
        raise InputError(f"--gallery {options.gallery} is negative; give how many of each mistake to show (0: none)")
    return perturbations, compared


def _header(run: str | os.PathLike, manifest_path: str | os.PathLike, ensemble: RunEnsemble, e: CohortEvaluation,
            options: EvaluationOptions) -> dict:
    """report.json's first keys: the run, the manifest, how many nodules, patients and folds, the views, the options."""
    return {"run": str(Path(run).resolve()), "manifest": str(Path(manifest_path).resolve()),
            "n_nodules": len(e.ids), "n_patients": len(set(e.patients)), "n_folds": ensemble.folds,
            "views": ensemble.settings.views.to_dict(),
            "options": {k: v for k, v in vars(options).items() if k != "progress"}}


def _curves(folder: Path, e: CohortEvaluation, compared: Sequence[ComparedScores], ours: str = OURS) -> dict:
    """roc.png, roc_patient.png, calibration.png (compared models overlaid) into `folder`; the calibration bins."""

    _, patient_labels, patient_risk = patient_level(e.ids, e.patients, e.labels, e.risk)
    sets = {"nodule": {ours: (e.labels, e.risk)}, "patient": {ours: (patient_labels, patient_risk)}}
    for c in compared:
        levels, missing, _ = aligned_scores(c, e.ids, e.patients, e.labels, e.risk)
        for level, (labels, _, theirs) in levels.items():
            sets[level][c.name + (" (the cases it scores)" if missing else "")] = (labels, theirs)
    plot_roc_pr(sets["nodule"], folder / "roc.png", title="nodule level")
    plot_roc_pr(sets["patient"], folder / "roc_patient.png", title="patient level (max over nodules)")
    plot_calibration(sets["nodule"], folder / "calibration.png", title="calibration, nodule level")
    try:
        return calibration_curve(e.labels, e.risk)
    except InputError as exc:
        return {"reason": str(exc)}


def _zero_shot(ensemble: RunEnsemble, e: CohortEvaluation, options: EvaluationOptions) -> tuple[dict, str]:
    """{prompt style: the fold ensemble's class probabilities} of the labelled features, and why there are none
    ("" when there are or when no feature is labelled)."""

    probabilities, note = {}, ""
    if not options.zero_shot:
        note = "Zero-shot prediction was not asked for (--no-zero-shot)."
    elif not ensemble.has_text:
        note = "This run is vision-only: its models have no text tower, so there is no zero-shot prediction."
    else:
        features = zero_shot.labelled_features(e.records, options.include_suspicion)
        if features:
            probabilities = {s: zero_shot.style_probabilities(ensemble, e.scores, features, s)
                             for s in zero_shot.STYLES}
    return probabilities, note


def _robustness(folder: Path, ensemble: RunEnsemble, e: CohortEvaluation, perturbations: Sequence[Perturbation],
                options: EvaluationOptions) -> list[dict]:
    """Score the re-rendered scans and write perturbed_predictions.csv into `folder`; the robustness rows."""

    shifted = perturb.perturbed_risk(ensemble, e.records, perturbations, options.seed,
                                     options.workers or default_workers())
    write_csv(folder / "perturbed_predictions.csv", ["nodule_id", "label", "unperturbed", *shifted],
              [[n, "" if np.isnan(y) else int(y), r, *(s[i] for s in shifted.values())]
               for i, (n, y, r) in enumerate(zip(e.ids, e.labels, e.risk, strict=True))])
    return perturb.robustness_rows(e.labels, e.risk, shifted)


def _gallery(folder: Path, e: CohortEvaluation, probabilities: dict, ensemble: RunEnsemble,
             n: int) -> tuple[list[GalleryTile], Path | None]:
    """The `n` most confident mistakes of each kind, captioned with their zero-shot findings, and gallery.png in
    `folder` (None when there is no mistake to show)."""

    findings = None
    if probabilities:
        findings = [zero_shot.top_findings(probabilities[zero_shot.PAPER], i) for i in range(len(e.ids))]
    tiles = gallery.gallery_tiles(e.ids, e.labels, e.risk, n, findings)
    figure = gallery.plot_gallery(e.views, tiles, folder / "gallery.png",
                                  field_of_view=ensemble.field_of_view) if tiles else None
    return tiles, figure


def _analyse(folder: Path, data: dict, ensemble: RunEnsemble, e: CohortEvaluation,
             compared: Sequence[ComparedScores], perturbations: Sequence[Perturbation],
             options: EvaluationOptions) -> tuple[list[GalleryTile], Path | None]:
    """Every analysis of the scores into `data` (report.json's keys, in order) and its files into `folder`; the
    gallery's tiles and PNG."""

    data["folds"] = [brief_scores(e.labels, r) for r in e.fold_risk]
    data["comparisons"] = [compare.compare_model(c, e.ids, e.patients, e.labels, e.risk, options.bootstrap,
                                                 options.seed) for c in compared]
    data["calibration"] = _curves(folder, e, compared)
    probabilities, note = _zero_shot(ensemble, e, options)
    data["zero_shot"] = {"rows": zero_shot.zero_shot_rows(probabilities, e.records), "note": note or None}
    if perturbations:
        data["robustness"] = _robustness(folder, ensemble, e, perturbations, options)
    tiles, figure = [], None
    if options.gallery:
        tiles, figure = _gallery(folder, e, probabilities, ensemble, options.gallery)
        data["gallery"] = [vars(t) for t in tiles]
    data["warnings"] = [c["warning"] for c in data["comparisons"] if c["warning"]]
    return tiles, figure


def _drop_stale_outputs(stage: Path, out: Path) -> None:
    """Delete an earlier evaluation's optional output in `out` that this one does not replace (it would mislead)."""
    for name in OPTIONAL_OUTPUTS:
        if not (stage / name).exists() and (out / name).is_file():
            (out / name).unlink()


def evaluate_cohort(run: str | os.PathLike, manifest_path: str | os.PathLike, out: str | os.PathLike,
                    options: EvaluationOptions | None = None) -> CohortEvaluation:
    """The full external evaluation: metrics with intervals, curves, calibration, zero-shot features, robustness,
    comparisons and the error gallery, written into `out` with report.html and report.json."""
    options = options or EvaluationOptions()

    perturbations, compared = _parse_options(options)  # user errors before any work
    out = Path(out)
    ensemble, e = score_manifest(run, manifest_path, out / "cache", options.workers, options.progress)
    data = _header(run, manifest_path, ensemble, e, options)
    with staged_dir(out) as stage:
        e.metrics = data["metrics"] = write_scores(stage, e, run, manifest_path, options.bootstrap, options.seed)
        tiles, figure = _analyse(stage, data, ensemble, e, compared, perturbations, options)
        write_evaluation_report(stage, run, manifest_path, ensemble, e, data, options, tiles, figure)  # the last file
        _drop_stale_outputs(stage, out)
    e.report = jsonable(data)
    return e
