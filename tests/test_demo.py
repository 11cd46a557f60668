"""The demo end to end on a tiny configuration: cohorts, training, internal and external evaluation."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from noduleclip.data.manifest import NoduleManifest
from noduleclip.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    config = DemoConfig(train_patients=12, external_patients=4, backbone="tiny", random_init=True, folds=2,
                        epochs=1, batch_size=4, workers=1, image_size=28, lora_image_blocks=1, augment_variants=3)
    summary = run_demo(tmp_path, config)
    trained = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (trained["augment_variants"], trained["image_augmentation"], trained["lora_image_blocks"]) == (3, True, 1)
    table = capsys.readouterr().out
    assert "internal test, nodules" in table and "external contrast, patients" in table
    for name in ("demo.json", "roc.png", "run/metrics.json", "run/splits.csv", "external/predictions.csv"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"
    external = NoduleManifest.read(tmp_path / "cohort-contrast" / "manifest.csv")
    with open(tmp_path / "external" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["nodule_id"] for r in rows) == sorted(r.nodule_id for r in external)
    for r in rows:  # the ensemble is the mean of the fold models
        assert float(r["ensemble"]) == pytest.approx(np.mean([float(r["fold_0"]), float(r["fold_1"])]))
    labelled = [r for r in rows if r["label"] != ""]  # the printed external AUROC is that of these predictions
    assert summary["external"]["nodule"]["auroc"] == pytest.approx(
        roc_auc_score([int(r["label"]) for r in labelled], [float(r["ensemble"]) for r in labelled]), abs=1e-12)
    # The external cohort's patients never appear in training, and the two cohorts share no patient.
    internal = NoduleManifest.read(tmp_path / "cohort-screening" / "manifest.csv")
    assert not {r.patient_id for r in internal} & {r.patient_id for r in external}
    assert summary["external"]["nodule"]["n"] + summary["external"]["nodule"]["n_unknown"] == len(external)
    on_disk = json.loads((tmp_path / "demo.json").read_text())
    assert on_disk["internal_test"]["nodule"]["auroc"] == summary["internal_test"]["nodule"]["auroc"]
    # where the time went: every stage once, the epochs those of the run's log, together within the wall time
    stages = on_disk["stage_seconds"]
    assert list(stages) == ["cohort, screening", "cohort, contrast", "training: epochs",
                            "training: views, frozen blocks, test set", "external evaluation", "figures and summary"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert stages["training: epochs"] == pytest.approx(sum(e["seconds"] for e in logged if e["event"] == "epoch"),
                                                       abs=0.11)
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) <= on_disk["wall_seconds"] + 0.5
    assert "where the time went" in table and "training: epochs" in table
    # `evaluate` on the same manifest reproduces the demo's external predictions.
    from noduleclip.cli import main

    assert main(["evaluate", str(tmp_path / "run"), str(tmp_path / "cohort-contrast" / "manifest.csv"),
                 "--out", str(tmp_path / "again"), "--workers", "1"]) == 0
    reproduced = (tmp_path / "again" / "predictions.csv").read_text()
    assert reproduced == (tmp_path / "external" / "predictions.csv").read_text()
    assert (tmp_path / "again" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["evaluate", str(tmp_path / "cohort-contrast"), str(tmp_path / "cohort-contrast" / "manifest.csv"),
                 "--out", str(tmp_path / "bad")]) == 2
    assert "not a noduleclip run folder" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    log = (tmp_path / "run" / "log.jsonl").read_text()
    run_demo(tmp_path, config)  # a second run reuses the cohorts and the finished folds
    assert (tmp_path / "run" / "log.jsonl").read_text() == log


def test_demo_refuses_an_unknown_precision_before_writing_anything(tmp_path, capsys):
    from noduleclip.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), "--mixed-precision", "fp16"]) == 2
    assert "mixed precision 'fp16' is not one of auto, no, bf16" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it():
    from noduleclip.train.config import native_bf16

    assert native_bf16("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert native_bf16("flags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert not native_bf16("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert not native_bf16("processor\t: 0\n")  # no flags line (another OS's format): stay in float32


def test_demo_options_without_a_default_take_whole_numbers():
    from noduleclip.cli import build_parser

    args = build_parser("demo").parse_args(["demo", "--lora-text-blocks", "2", "--lora-image-blocks", "1"])
    assert args.lora_text_blocks == 2 and args.lora_image_blocks == 1
    assert build_parser("demo").parse_args(["demo"]).lora_text_blocks is None
