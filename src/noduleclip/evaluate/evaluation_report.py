"""The external evaluation's report: the blocks of each section, and report.html + report.json.

    html, js = write_evaluation_report(stage, run, manifest_path, ensemble, evaluation, data, options, tiles, figure)

Sections: Data, Malignancy (Table 2 with fixed-recall points, the curves, the fold table), Zero-shot
semantic features (Table 3), Robustness (with --perturb) and Error analysis (the gallery). Presentation
only: the numbers, rows and PNGs come computed from `evaluate.cohort` and the analysis modules
(`compare`, `zero_shot`, `perturb`, `gallery`); report.json holds `data` as given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from noduleclip import report
from noduleclip.ensemble import RunEnsemble
from noduleclip.evaluate.compare import RECALLS
from noduleclip.evaluate.gallery import GalleryTile
from noduleclip.evaluate.zero_shot import STYLES
from noduleclip.preprocess.acquisition import UNSHARP_SIGMA_MM
from noduleclip.report import Figure, Section, Table, Text
from noduleclip.semantics.prompts import ENSEMBLE, PAPER

if TYPE_CHECKING:  # the report is built from what evaluate.cohort computed (and cohort imports this module)
    from noduleclip.evaluate.cohort import CohortEvaluation, EvaluationOptions

OURS = "noduleclip ensemble"  # our model's name in the report, its tables and its figures
STYLE_TITLES = {PAPER: "paper's prompts", ENSEMBLE: "prompt ensembles"}


def data_blocks(e: CohortEvaluation, ensemble: RunEnsemble, run: str | os.PathLike,
                manifest_path: str | os.PathLike, warnings: Sequence[str] = ()) -> list:
    """The Data section: the run, the evaluated nodules and their labels, the nodules left out, and the
    comparisons' warnings."""
    known = ~np.isnan(e.labels)
    model = ensemble.network.config
    blocks = [Text(f"Run {Path(run).resolve()}: {len(e.fold_risk)} fold models ({model.backbone}, {model.tuning}); "
                   f"their mean malignancy probability is the ensemble's. Manifest {Path(manifest_path).resolve()}: "
                   f"{len(e.ids)} nodules of {len(set(e.patients))} patients evaluated, {int(np.nansum(e.labels))} "
                   f"malignant, {int(known.sum() - np.nansum(e.labels))} benign, {int((~known).sum())} without a "
                   "label (left out of every metric). Per-nodule predictions: predictions.csv; per patient: "
                   "patient_predictions.csv.")]
    if e.failed:
        blocks.append(Table(["nodule", "why it was left out"], [list(f) for f in e.failed],
                            caption=f"{len(e.failed)} nodule(s) could not be read"))
    blocks.extend(Text(f"Warning: {w}.") for w in warnings)
    return blocks


def curve_figures(folder: Path) -> list[Figure]:
    """The Malignancy section's figures: roc.png, roc_patient.png and calibration.png in `folder`."""
    return [Figure(folder / "roc.png", "ROC and precision-recall curves, nodule level"),
            Figure(folder / "roc_patient.png", "ROC and precision-recall curves, patient level"),
            Figure(folder / "calibration.png", "Reliability diagram (10 equal-width bins) and the distribution "
                   "of the predicted probabilities of the labelled nodules")]


def fold_table(folds: Sequence[dict], metrics: dict, ours: str = OURS) -> Table:
    """AUROC and AUPRC of each fold model (`folds`: brief scores) and of the ensemble, nodule level."""
    rows = [[f"fold {k}", f["auroc"], f["auprc"]] for k, f in enumerate(folds)]
    rows.append([ours, metrics["nodule"]["auroc"], metrics["nodule"]["auprc"]])
    return Table(["model", "AUROC", "AUPRC"], rows, caption="Each fold model and the ensemble, nodule level")


def _ci_text(ci: Sequence[float] | None) -> str | None:
    """A 95% interval as text, its ends with three decimals and an en dash between; None when there is none."""
    return None if not ci else f"{ci[0]:.3f}\u2013{ci[1]:.3f}"


def _row(level: str, model: str, m: dict, p: float | None) -> list:
    """One row of Table 2: a model's counts, AUROC and AUPRC with intervals, Brier score and DeLong p."""
    return [level, model, m["n"], m["n_pos"], m["auroc"], _ci_text(m["auroc_ci"]), m["auprc"],
            _ci_text(m["auprc_ci"]), m["brier"], p]


def malignancy_blocks(metrics: dict, comparisons: Sequence[dict], ours: str = OURS) -> list:
    """The report's Table 2: our ensemble and every compared model, per level, with DeLong's p against ours;
    then FPR and precision at fixed recall, with their definition."""
    rows, bold, notes = [], set(), []
    for level, unit in (("nodule", "nodules"), ("patient", "patients")):
        rows.append(_row(unit, ours, metrics[level], None))
        if metrics[level]["reason"]:
            notes.append(Text(f"{unit.capitalize()}: {metrics[level]['reason']}."))
        for c in comparisons:
            paired = c["levels"].get(level)
            if paired is None:
                continue
            if c["missing"]:
                rows.append(_row(unit, f"{ours} (cases {c['name']} scores)", paired["ours"], None))
            p = paired["delong"]["p"] if paired["delong"] else None
            if p is not None and p < 0.05:
                bold.add((len(rows), 9))
            rows.append(_row(unit, c["name"], paired["other"], p))
    table = Table(["level", "model", "n", "malignant", "AUROC", "95% CI", "AUPRC", "95% CI", "Brier",
                   "DeLong p vs ours"], rows, bold=bold,
                  caption="Malignancy: AUROC and AUPRC with 95% bootstrap intervals (as the paper's Table 2)")
    recall_rows = []
    for level, unit in (("nodule", "nodules"), ("patient", "patients")):
        for r in RECALLS:
            point = (metrics[level]["at_recall"] or {}).get(f"{r:g}") or {}
            recall_rows.append([unit, r, point.get("threshold"), point.get("recall"), point.get("fpr"),
                                point.get("precision"), point.get("tp"), point.get("fp")])
    points = Table(["level", "target recall", "threshold", "recall reached", "FPR", "precision", "TP", "FP"],
                   recall_rows, caption=f"{ours}: false positive rate and precision at fixed recall")
    definition = Text(
        "A case is called malignant when its score is at or above a threshold. FPR and precision at recall r are "
        "taken at the highest threshold whose recall reaches r, i.e. with the fewest cases called malignant; cases "
        "with tied scores are called together, so the achieved recall (shown) can exceed r. FPR = false positives / "
        "benign cases, precision = true positives / cases called malignant, at that threshold. A patient's risk is "
        "the maximum over its nodules and its label the maximum of its known nodule labels. Intervals: percentile "
        "bootstrap over cases. DeLong p: DeLong's test of equal AUROC on the same cases (bold below 0.05); a model "
        "that lacks some cases is compared on the cases it scores, and our ensemble is also shown on those cases.")
    return [table, *notes, definition, points]


def classes_text(classes: Mapping[str, int]) -> str:
    """'solid (12), part-solid (3)' in schema order."""
    return ", ".join(f"{value} ({count})" for value, count in classes.items())


def zero_shot_blocks(rows: Sequence[dict], styles: Sequence[str] = STYLES, note: str = "") -> list:
    """The report's Table 3: feature | classes with counts | AUROC for each prompt style."""
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


def small(value: float | None) -> float | str | None:
    """A change too small for three decimals in scientific notation (so that it does not read as zero)."""
    return f"{value:.1e}" if value is not None and 0 < abs(value) < 5e-4 else value


def robustness_blocks(rows: Sequence[dict], n_nodules: int, seed: int) -> list:
    """The report's robustness table and how to read it."""
    columns = ["perturbation", "AUROC", "\u0394 AUROC", "DeLong p", "AUPRC", "\u0394 AUPRC", "Brier", "\u0394 Brier",
               "|\u0394 risk| median", "|\u0394 risk| 95th percentile"]
    table_rows, bold = [], set()
    for i, r in enumerate(rows):
        table_rows.append([r["perturbation"], r["auroc"], small(r["delta_auroc"]), r["delong_p"], r["auprc"],
                           small(r["delta_auprc"]), r["brier"], small(r["delta_brier"]), small(r["shift_median"]),
                           small(r["shift_p95"])])
        if r["delong_p"] is not None and r["delong_p"] < 0.05:
            bold.add((i, 3))
    text = Text(
        f"Every scan re-rendered before the views were cut, then scored by the same fold ensemble ({n_nodules} "
        f"nodules, seed {seed}). noise=S: Gaussian noise of S HU (noise=S:C correlated over C mm); thick=T: each "
        f"voxel the mean over T mm along the slice axis; smooth=S: Gaussian blur of S mm; sharp=A: unsharp mask "
        f"v + A(v - blur of {UNSHARP_SIGMA_MM:g} mm). Applied in the order written when joined by '+'. "
        "\u0394 is perturbed minus unperturbed on the same nodules; "
        "DeLong p tests the AUROC change (paired; bold below 0.05); |\u0394 risk| is each nodule's absolute change "
        "of the ensemble's malignancy probability, over all nodules (labelled or not).")
    notes = [Text(rows[0]["reason"])] if rows and rows[0]["reason"] else []
    return [text, *notes, Table(columns, table_rows, caption="Robustness to acquisition changes (nodule level)",
                                bold=bold)]


def gallery_blocks(figure: Path | None, tiles: Sequence[GalleryTile], n: int, note: str = "") -> list:
    """The report's error-analysis figure and a table of the nodules it shows."""
    if figure is None:
        return [Text(note or "No gallery: the set has no labelled nodules.")]
    counts = {k: sum(t.kind == k for t in tiles) for k in ("false positive", "false negative")}
    text = Text(f"The {counts['false positive']} benign nodules with the highest malignancy probability (false "
                f"positives) and the {counts['false negative']} malignant nodules with the lowest (false negatives), "
                f"up to {n} of each, most confident first. Views in each tile: axial, coronal, sagittal (top row), "
                "then the six 45\u00b0 planes. Captions: the three non-negative findings with the highest zero-shot "
                "probability (paper's prompts). " + note)
    table = Table(["kind", "nodule", "label", "risk", "zero-shot findings"],
                  [[t.kind, t.nodule_id, t.label, t.risk, "; ".join(t.findings)] for t in tiles],
                  caption="Nodules in the error gallery")
    return [text, Figure(figure, "Most confident false positives (red) and false negatives (blue)"), table]


def write_evaluation_report(folder: Path, run: str | os.PathLike, manifest_path: str | os.PathLike,
                            ensemble: RunEnsemble, evaluation: CohortEvaluation, data: dict,
                            options: EvaluationOptions, tiles: Sequence[GalleryTile] = (),
                            gallery_figure: Path | None = None) -> tuple[Path, Path]:
    """Write folder/report.html and folder/report.json (`data`, report.json's content, as given) from the computed
    evaluation; the curves' and the gallery's PNGs must already be in `folder`."""
    e = evaluation
    sections = [Section("Data", data_blocks(e, ensemble, run, manifest_path, data["warnings"])),
                Section("Malignancy", [*malignancy_blocks(e.metrics, data["comparisons"], OURS),
                                       *curve_figures(folder), fold_table(data["folds"], e.metrics, OURS)]),
                Section("Zero-shot semantic features",
                        zero_shot_blocks(data["zero_shot"]["rows"], note=data["zero_shot"]["note"] or ""))]
    if "robustness" in data:
        sections.append(Section("Robustness", robustness_blocks(data["robustness"], len(e.ids), options.seed)))
    if options.gallery:
        sections.append(Section("Error analysis", gallery_blocks(gallery_figure, tiles, options.gallery)))
    # report.write_report, looked up at call time, so that a test can make this last step fail
    return report.write_report(folder / "report.html",
                               f"External evaluation of {Path(run).name} on {Path(manifest_path).name}",
                               sections, data, subtitle=f"noduleclip evaluate: the fold ensemble of "
                                                        f"{data['n_folds']} models on {len(e.ids)} nodules of "
                                                        f"{len(set(e.patients))} patients")
