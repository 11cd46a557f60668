"""benchmarks/lidc.py --quick end to end on real LIDC crops (tiny random towers, 20 patients, 2 folds, 1 epoch)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_scores_every_nodule_once_out_of_fold(shared_data, tmp_path):
    out = tmp_path / "lidc"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lidc.py"), "--quick", "--threads", "1",
                           "--data", str(shared_data), "--out", str(out), "--levers"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "zero-shot margins" in done.stdout and "diameter alone (same folds)" in done.stdout
    document = json.loads((out / "lidc_benchmark.json").read_text())
    with open(out / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    labelled = sum(r["label"] != "" for r in rows)
    assert document["settings"]["folds"] == 2 and document["settings"]["nodules"] == len(rows)

    # every labelled nodule is scored once, by the one fold model that did not train on it
    for model in ("lora", "probe", "vision-only", "semantic"):
        summary = document["models"][model]
        assert len(summary["folds"]) == 2
        assert sum(f["n"] for f in summary["folds"]) == summary["nodule"]["n"] == labelled
        assert 0 <= summary["nodule"]["auroc"] <= 1
    assert document["models"]["lora"]["folds"][0]["last_epoch_auroc"] is not None

    # diameter carries real signal on these labels (0.88 on all LIDC crops): a misaligned label would give ~0.5
    assert document["same_fold_baselines"]["diameter"]["pooled"]["auroc"] > 0.75
    assert document["same_fold_baselines"]["diameter"]["pooled"]["n"] == labelled

    # zero-shot: the pooled table covers every nodule (labelled or not) exactly once
    zero_shot = document["zero_shot"]
    assert len(zero_shot["folds"]) == 2
    consistency = next(r for r in zero_shot["pooled"] if r["feature"] == "consistency")
    assert consistency["n"] + consistency["n_missing"] == len(rows)

    # the lever table: one probe run per row, each with the settings of every row above it, on the same splits
    levers = document["levers"]
    assert [row["lever"].split(":")[0] for row in levers][:1] == ["before"] and len(levers) == 5
    for n, row in enumerate(levers):
        trained = json.loads((out / "levers" / str(n) / "probe" / "config.json").read_text())["train"]
        assert trained["size_weight"] == (1.0 if n >= 2 else 0.0)
        assert trained["field_of_view"] == {3: 24, 4: 16}.get(n)
        assert trained["sampler"] == ("semantic" if n == 0 else "none")
        assert (out / "levers" / str(n) / "probe" / "splits.csv").read_text() == (out / "ablation" / "splits.csv").read_text()
        assert row["against_diameter"]["n"] == labelled
    # the goals: one line per model for the AUROC and the DeLong test against diameter, and the text comparison
    texts = [line["text"] for line in document["goal_lines"]]
    assert sum(t.startswith("lora against diameter alone") for t in texts) == 1
    assert any(t.startswith("text earns its place") and ": lora " in t for t in texts)
    text = document["text_against_vision"]
    assert text["delong"]["n"] == labelled and len(text["fold_auroc"][0]) == 2

    # the size strata split the labelled nodules once, each with every model's and the diameter's AUROC
    strata = document["size_strata"]
    assert sum(row["n"] for row in strata) == labelled
    assert all(set(row["auroc"]) == {"lora", "probe", "vision-only", "semantic", "diameter alone"} for row in strata)

    # the XML semantic-only LR never reads the malignancy rating, and the ratings predict the label
    xml = document["xml_semantic"]
    assert "malignancy" not in xml["features"] and "diameter_mm" in xml["features"]
    assert xml["pooled_auroc"] > 0.75
