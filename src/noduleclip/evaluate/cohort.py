"""A trained run's fold ensemble on any manifest: views, per-nodule predictions, metrics, and the full report.

    from noduleclip.evaluate.cohort import EvaluationOptions, evaluate_cohort, evaluate_manifest
    result = evaluate_manifest("runs/a", "external/manifest.csv", "runs/a-external")      # predictions, metrics
    full = evaluate_cohort("runs/a", "external/manifest.csv", "runs/a-external",
                           EvaluationOptions(perturb=("noise=20,thick=3",), compare=("brock=brock.csv",)))

`evaluate_manifest` writes into `out`: cache/ (the views), predictions.csv (each fold model and the
ensemble), patient_predictions.csv (a patient's risk is the max over its nodules), metrics.json.
`evaluate_cohort` writes the same and roc.png, roc_patient.png, calibration.png, gallery.png,
perturbed_predictions.csv (with perturbations), report.html and report.json; everything but the view
cache appears together at the end (staged), so a failed evaluation leaves the folder as it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from noduleclip.atomic import staged_dir, write_text
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.evaluate.metrics import jsonable
from noduleclip.preprocess.cache import ViewCache
from noduleclip.preprocess.pipeline import default_workers, preprocess_manifest


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
    fold_embeds: list[np.ndarray] = field(default_factory=list, repr=False)  # per fold (N, D)
    report: dict = field(default_factory=dict, repr=False)  # evaluate_cohort: report.json's content

    @property
    def risk(self) -> np.ndarray:
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
                   workers: int | None = None, progress: bool = True) -> tuple:
    """(run config, fold models, CohortEvaluation with views, fold probabilities and embeddings; no metrics yet),
    cutting the views into `cache_root`."""
    from noduleclip.train.cv import fold_outputs, load_run

    config, models = load_run(run)
    manifest = NoduleManifest.read(manifest_path)
    cache = ViewCache(cache_root, config.views)
    report = preprocess_manifest(manifest, cache, workers=workers or default_workers(), progress=progress)
    failed = dict(report.failed)
    records = [r for r in manifest if r.nodule_id not in failed]
    if not records:
        first = next(iter(failed.items()))
        raise InputError(f"no nodule of {manifest_path} could be read (first: {first[0]}: {first[1]})")
    ids = [r.nodule_id for r in records]
    views = cache.load_many(ids)
    predictions = fold_outputs(models, views, config.eval_batch_size)
    fold_risk = np.stack([p.risk.detach().cpu().double().numpy() for p in predictions])
    embeds = [p.image_embeds.detach().cpu().double().numpy() for p in predictions]
    labels = np.array([np.nan if r.label is None else float(r.label) for r in records])
    evaluation = CohortEvaluation(ids, [r.patient_id for r in records], labels, fold_risk, report.failed, {},
                                  records, views, embeds)
    return config, models, evaluation


def write_scores(folder: Path, evaluation: CohortEvaluation, run, manifest_path, bootstrap: int, seed: int) -> dict:
    """predictions.csv, patient_predictions.csv and metrics.json into `folder`; the metrics."""
    from noduleclip.train.results import scored_set, write_predictions

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
    _, _, evaluation = score_manifest(run, manifest_path, out / "cache", workers, progress)
    evaluation.metrics = write_scores(out, evaluation, run, manifest_path, bootstrap, seed)
    return evaluation


def _curves(folder: Path, e: CohortEvaluation, compared: list, ours: str) -> tuple[list, dict]:
    """roc.png, roc_patient.png, calibration.png (compared models overlaid); their report figures, the bins."""
    from noduleclip.evaluate.compare import aligned_scores
    from noduleclip.evaluate.metrics import calibration_curve, patient_level
    from noduleclip.plots import plot_calibration, plot_roc_pr
    from noduleclip.report import Figure

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
        bins = calibration_curve(e.labels, e.risk)
    except InputError as exc:
        bins = {"reason": str(exc)}
    figures = [Figure(folder / "roc.png", "ROC and precision-recall curves, nodule level"),
               Figure(folder / "roc_patient.png", "ROC and precision-recall curves, patient level"),
               Figure(folder / "calibration.png", "Reliability diagram (10 equal-width bins) and the distribution "
                      "of the predicted probabilities of the labelled nodules")]
    return figures, bins


def _data_blocks(e: CohortEvaluation, config, run, manifest_path) -> list:
    from noduleclip.report import Table, Text

    known = ~np.isnan(e.labels)
    blocks = [Text(f"Run {Path(run).resolve()}: {len(e.fold_risk)} fold models ({config.backbone}, {config.tuning}); "
                   f"their mean malignancy probability is the ensemble's. Manifest {Path(manifest_path).resolve()}: "
                   f"{len(e.ids)} nodules of {len(set(e.patients))} patients evaluated, {int(np.nansum(e.labels))} "
                   f"malignant, {int(known.sum() - np.nansum(e.labels))} benign, {int((~known).sum())} without a "
                   "label (left out of every metric). Per-nodule predictions: predictions.csv; per patient: "
                   "patient_predictions.csv.")]
    if e.failed:
        blocks.append(Table(["nodule", "why it was left out"], [list(f) for f in e.failed],
                            caption=f"{len(e.failed)} nodule(s) could not be read"))
    return blocks


def evaluate_cohort(run: str | os.PathLike, manifest_path: str | os.PathLike, out: str | os.PathLike,
                    options: EvaluationOptions = EvaluationOptions()) -> CohortEvaluation:
    """The full external evaluation: metrics with intervals, curves, calibration, zero-shot features, robustness,
    comparisons and the error gallery, written into `out` with report.html and report.json."""
    from noduleclip.evaluate import compare, gallery, perturb, zero_shot
    from noduleclip.report import Section, Table, Text, write_report
    from noduleclip.atomic import write_csv
    from noduleclip.train.results import brief_scores

    perturbations = perturb.parse_perturbations(options.perturb)  # user errors before any work
    compared = [compare.read_scores(spec) for spec in options.compare]
    if len({c.name for c in compared}) < len(compared):
        raise InputError("two --compare models have the same NAME; give each its own name")
    if options.gallery < 0:
        raise InputError(f"--gallery {options.gallery} is negative; give how many of each mistake to show (0: none)")
    out, ours = Path(out), "noduleclip ensemble"
    config, models, e = score_manifest(run, manifest_path, out / "cache", options.workers, options.progress)
    data: dict = {"run": str(Path(run).resolve()), "manifest": str(Path(manifest_path).resolve()),
                  "n_nodules": len(e.ids), "n_patients": len(set(e.patients)), "n_folds": len(models),
                  "views": config.views.to_dict(),
                  "options": {k: v for k, v in vars(options).items() if k != "progress"}}
    with staged_dir(out) as stage:
        e.metrics = data["metrics"] = write_scores(stage, e, run, manifest_path, options.bootstrap, options.seed)
        folds = [brief_scores(e.labels, r) for r in e.fold_risk]
        data["folds"] = folds
        comparisons = data["comparisons"] = [
            compare.compare_model(c, e.ids, e.patients, e.labels, e.risk, options.bootstrap, options.seed)
            for c in compared]
        figures, data["calibration"] = _curves(stage, e, compared, ours)
        fold_table = Table(["model", "AUROC", "AUPRC"], [[f"fold {k}", f["auroc"], f["auprc"]]
                                                         for k, f in enumerate(folds)] +
                           [[ours, e.metrics["nodule"]["auroc"], e.metrics["nodule"]["auprc"]]],
                           caption="Each fold model and the ensemble, nodule level")
        sections = [Section("Data", _data_blocks(e, config, run, manifest_path)),
                    Section("Malignancy", [*compare.malignancy_blocks(e.metrics, comparisons, ours), *figures,
                                           fold_table])]

        probabilities, note = {}, ""
        if not options.zero_shot:
            note = "Zero-shot prediction was not asked for (--no-zero-shot)."
        elif not zero_shot.has_text_path(models):
            note = "This run is vision-only: its models have no text tower, so there is no zero-shot prediction."
        else:
            features = zero_shot.labelled_features(e.records, options.include_suspicion)
            if features:
                probabilities = {s: zero_shot.ensemble_probabilities(models, e.fold_embeds, features, s)
                                 for s in zero_shot.STYLES}
        rows = zero_shot.zero_shot_rows(probabilities, e.records)
        data["zero_shot"] = {"rows": rows, "note": note or None}
        sections.append(Section("Zero-shot semantic features", zero_shot.zero_shot_blocks(rows, note=note)))

        if perturbations:
            shifted = perturb.perturbed_risk(models, e.records, perturbations, config.views, options.seed,
                                             options.workers or default_workers(), config.eval_batch_size)
            write_csv(stage / "perturbed_predictions.csv", ["nodule_id", "label", "unperturbed", *shifted],
                      [[n, "" if np.isnan(y) else int(y), r, *(s[i] for s in shifted.values())]
                       for i, (n, y, r) in enumerate(zip(e.ids, e.labels, e.risk))])
            rows = data["robustness"] = perturb.robustness_rows(e.labels, e.risk, shifted)
            sections.append(Section("Robustness", perturb.robustness_blocks(rows, len(e.ids), options.seed)))

        if options.gallery:
            findings = None
            if probabilities:
                findings = [zero_shot.top_findings(probabilities[zero_shot.PAPER], i) for i in range(len(e.ids))]
            tiles = gallery.gallery_tiles(e.ids, e.labels, e.risk, options.gallery, findings)
            figure = gallery.plot_gallery(e.views, tiles, stage / "gallery.png",
                                          field_of_view=config.field_of_view) if tiles else None
            data["gallery"] = [vars(t) for t in tiles]
            sections.append(Section("Error analysis", gallery.gallery_blocks(figure, tiles, options.gallery)))

        warnings = data["warnings"] = [c["warning"] for c in comparisons if c["warning"]]
        sections[0].blocks.extend(Text(f"Warning: {w}.") for w in warnings)
        write_report(stage / "report.html", f"External evaluation of {Path(run).name} on {Path(manifest_path).name}",
                     sections, data, subtitle=f"noduleclip evaluate: the fold ensemble of {len(models)} models on "
                                              f"{len(e.ids)} nodules of {len(set(e.patients))} patients")
        for name in OPTIONAL_OUTPUTS:  # an earlier evaluation's file that this one does not replace would mislead
            if not (stage / name).exists() and (out / name).is_file():
                (out / name).unlink()
    e.report = jsonable(data)
    return e

