"""The synthetic cohort: patients with chest CTs (DICOM series) and a nodule manifest whose truth is known.

    from noduleclip.synth import make_cohort
    manifest = make_cohort("synth", patients=200, seed=0, preset="screening", workers=2)

For each patient: a body, a scan geometry and scanner settings (preset), one to three nodules with
semantic features, their malignancy drawn from the logistic model of `risk.py`, the CT rendered
(anatomy, vessels and airways, nodules, findings), acquired (slice profile, kernel, noise) and written
as DICOM under `images/<patient_id>/`. `manifest.csv` lists every nodule (the manifest format; world
LPS coordinates; schema feature columns); `cohort.json` records the settings, the risk model, each
nodule's true risk and the achieved prevalence. Each patient's random stream depends only on the seed,
the preset and its index, so the files are byte-identical for a seed whatever the number of workers.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from noduleclip.atomic import staged_dir
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.progress import progress_bar
from noduleclip.semantics.schema import FEATURE_NAMES
from noduleclip.synth.anatomy import Tissue, render_anatomy, sample_body
from noduleclip.synth.dicom import SeriesIdentity, write_series
from noduleclip.synth.features import count_nodules, sample_features
from noduleclip.synth.findings import paint_findings
from noduleclip.synth.nodules import render_nodule
from noduleclip.synth.placement import place_nodules
from noduleclip.synth.presets import AcquisitionPreset, get_preset
from noduleclip.synth.risk import (
    BINARY_TERMS,
    SIZE_PER_DOUBLING,
    TERMS,
    calibrate_intercept,
    malignancy_risk,
    suspicion_level,
)
from noduleclip.synth.scanner import acquire, render_grid, sample_position, sample_scan
from noduleclip.synth.trees import airway_tree, paint_trees, vessel_tree

MANIFEST_NAME = "manifest.csv"
OUTPUTS = ("images", MANIFEST_NAME, "cohort.json")


@dataclass(frozen=True)
class PatientJob:
    """Everything one worker needs to synthesise one patient."""

    index: int
    seed: int
    preset: AcquisitionPreset
    intercept: float
    folder: str  # the cohort's staging folder


def patient_id(preset: AcquisitionPreset, seed: int, index: int) -> str:
    """Unique within a cohort, and across cohorts of other seeds or presets."""
    return f"syn-{preset.name}-s{seed}-{index + 1:04d}"


def sample_tissue(rng: np.random.Generator, preset: AcquisitionPreset) -> Tissue:
    """One patient's tissue densities under the preset's contrast and enhancement."""
    contrast = rng.uniform(*preset.contrast_hu) if preset.contrast else 0.0
    enhancement = rng.uniform(*preset.enhancement_hu) if preset.contrast else 0.0
    return Tissue(
        lung=rng.uniform(-870, -830), gravity=rng.uniform(15, 35), soft=45.0 + 0.6 * enhancement,
        blood=40.0 + contrast, nodule_solid=rng.uniform(28, 42) + enhancement, necrosis=rng.uniform(-10, 12),
    )


def synthesize_patient(job: PatientJob) -> tuple[list[dict], list[dict]]:
    """Render and write one patient; returns its manifest rows and per-nodule truth."""
    preset = job.preset
    rng = np.random.default_rng([job.seed, zlib.crc32(preset.name.encode()), job.index])
    pid = patient_id(preset, job.seed, job.index)
    position, tilt_deg = sample_position(rng, preset)
    body = sample_body(rng, prone=position == "HFP")
    scan = sample_scan(rng, preset, body, position, tilt_deg)
    tissue = sample_tissue(rng, preset)
    features = [sample_features(rng) for _ in range(count_nodules(rng))]
    placements = place_nodules(rng, body, scan, features)
    risks = [malignancy_risk(f, job.intercept) for f in features]
    labels = [int(rng.random() < r) for r in risks]
    suspicions = [suspicion_level(r, rng) for r in risks]
    fine = render_grid(scan)
    render_anatomy(fine, body, scan.offset, tissue)
    vessels = vessel_tree(rng, body)
    paint_trees(fine, scan.offset, vessels, airway_tree(rng, body, vessels), tissue)
    for f, place in zip(features, placements, strict=True):
        outline = render_nodule(fine, f, place, tissue, rng)
        paint_findings(fine, f, place, outline, tissue, rng)
    hu = acquire(fine, scan, rng)
    who = SeriesIdentity(
        patient_id=pid, uid_key=f"{job.seed}/{preset.name}/{job.index}", index=job.index,
        sex="F" if rng.random() < 0.45 else "M", age=int(rng.integers(50, 80)), contrast=preset.contrast,
        description=f"synthetic chest CT, {preset.name}",
    )
    write_series(Path(job.folder) / "images" / pid, hu, scan, who)
    rows, truth = [], []
    for n, (f, place, risk, label, suspicion) in enumerate(zip(features, placements, risks, labels, suspicions,
                                                               strict=True)):
        nid = f"{pid}-n{n + 1}"
        coord = [round(float(v), 3) for v in place.centre]
        rows.append({
            "patient_id": pid, "nodule_id": nid, "image": f"images/{pid}",
            "coord_x": coord[0], "coord_y": coord[1], "coord_z": coord[2], "label": label,
            **f.columns(suspicion),
        })
        truth.append({
            "nodule_id": nid, "risk": round(risk, 5), "label": label, "pleura_distance_mm":
            None if place.pleura_distance is None else round(place.pleura_distance, 2),
            "patient_position": scan.position, "tilt_deg": scan.tilt_deg,
            "slice_thickness_mm": scan.thickness, "pixel_spacing_mm": scan.spacing[0],
            "noise_hu": round(scan.noise_hu, 2),
        })
    return rows, truth


def _check(out: Path, patients: int, seed: int, workers: int, prevalence: float | None, overwrite: bool) -> None:
    if isinstance(patients, bool) or not isinstance(patients, (int, np.integer)) or patients < 1:
        raise InputError(f"--patients must be a whole number of at least 1, got {patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"--seed must be a non-negative whole number, got {seed!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise InputError(f"--workers must be a whole number of at least 1, got {workers!r}")
    if prevalence is not None and not 0.01 <= prevalence <= 0.99:
        raise InputError(f"--prevalence must lie between 0.01 and 0.99, got {prevalence!r}")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is an existing file; give a new or empty folder for the cohort")
    if out.is_dir() and not overwrite and any(not p.name.startswith(".staging-") for p in out.iterdir()):
        raise InputError(f"output folder {out} is not empty; choose a new folder or pass --overwrite to replace its "
                         "cohort")


def make_cohort(out: str | os.PathLike, patients: int, seed: int = 0, preset: str | AcquisitionPreset = "screening",
                workers: int = 1, *, prevalence: float | None = None, overwrite: bool = False,
                progress: bool = False) -> Path:
    """Write a synthetic cohort (DICOM series, manifest.csv, cohort.json) into `out`; returns the manifest path."""
    out = Path(out).expanduser()
    chosen = get_preset(preset)
    _check(out, patients, seed, workers, prevalence, overwrite)
    target = chosen.prevalence if prevalence is None else float(prevalence)
    intercept = calibrate_intercept(round(target, 6))
    with staged_dir(out) as stage:
        jobs = [PatientJob(i, int(seed), chosen, intercept, str(stage)) for i in range(int(patients))]
        rows: list[dict] = []
        truth: list[dict] = []
        bar = progress_bar(total=len(jobs), desc="synth", unit="patient", disable=not progress)
        if workers == 1 or len(jobs) == 1:
            results = map(synthesize_patient, jobs)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=get_context("spawn"))
            results = pool.map(synthesize_patient, jobs)
        try:
            for patient_rows, patient_truth in results:
                rows += patient_rows
                truth += patient_truth
                bar.update(1)
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        columns = ["patient_id", "nodule_id", "image", "coord_x", "coord_y", "coord_z", "label"]
        columns += [name for name in FEATURE_NAMES if name in rows[0]]
        NoduleManifest.write(stage / MANIFEST_NAME, rows, fieldnames=columns)
        labels = [r["label"] for r in rows]
        by_patient: dict[str, int] = {}
        for r in rows:
            by_patient[r["patient_id"]] = max(by_patient.get(r["patient_id"], 0), r["label"])
        summary = {
            "generator": "noduleclip.synth", "preset": asdict(chosen), "seed": int(seed), "patients": int(patients),
            "nodules": len(rows), "target_prevalence": target, "nodule_prevalence": float(np.mean(labels)),
            "patient_prevalence": float(np.mean(list(by_patient.values()))),
            "risk_model": {"intercept": intercept, "size_per_doubling_from_10mm": SIZE_PER_DOUBLING,
                           "terms": TERMS, "binary_terms": BINARY_TERMS},
            "nodule_truth": truth,
        }
        (stage / "cohort.json").write_text(json.dumps(summary, indent=1) + "\n")
    return out / MANIFEST_NAME
