"""benchmarks/lidc.py --quick end to end on real LIDC crops (tiny random towers, 20 patients, 2 folds, 1 epoch)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sklearn.metrics import roc_auc_score

from helpers import REPO, read_log, read_rows


def printed(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def auroc(rows: list[dict], score: str) -> float:
    """AUROC of `score` over the rows with a label, by sklearn."""
    known = [r for r in rows if r["label"] != ""]
    return roc_auc_score([int(r["label"]) for r in known], [float(r[score]) for r in known])


def model_block(stdout: str, model: str) -> list[str]:
    """The lines the benchmark prints under a model's name (up to the next blank line)."""
    lines = stdout.split("=== LIDC benchmark", 1)[1].splitlines()
    start = lines.index(model) + 1
    return lines[start:lines.index("", start)]


@pytest.mark.slow
def test_quick_benchmark_scores_every_nodule_once_out_of_fold(shared_data, tmp_path):
    out = tmp_path / "lidc"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lidc.py"), "--quick", "--threads", "1",
                           "--data", str(shared_data), "--out", str(out), "--levers", "--tta", "--perturb"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "zero-shot margins" in done.stdout and "diameter alone (same folds)" in done.stdout
    document = json.loads((out / "lidc_benchmark.json").read_text())
    rows = read_rows(out / "manifest.csv")
    labelled = sum(r["label"] != "" for r in rows)
    assert document["settings"]["folds"] == 2 and document["settings"]["nodules"] == len(rows)
    # test-time augmentation: one row per neural model, compared on the same nodules with that model's own
    # out-of-fold scores (whose AUROC is the model's pooled AUROC)
    assert [r["model"] for r in document["tta"]] == [m for m in document["settings"]["models"] if m != "semantic"]
    assert sorted(r["model"] for r in document["tta"]) == ["lora", "probe", "vision-only"]
    for row in document["tta"]:
        assert row["against_plain"]["n"] == labelled
        assert row["against_plain"]["other_auroc"] == pytest.approx(document["models"][row["model"]]["nodule"]["auroc"])
        assert row["against_diameter"]["auroc"] == pytest.approx(row["against_plain"]["auroc"])

    # every labelled nodule is scored once, by the one fold model that did not train on it; each AUROC is that of
    # the model's written out-of-fold predictions (by sklearn), per fold and pooled, and is the one printed
    for model in ("lora", "probe", "vision-only", "semantic"):
        summary = document["models"][model]
        assert len(summary["folds"]) == 2
        assert sum(f["n"] for f in summary["folds"]) == summary["nodule"]["n"] == labelled
        val = read_rows(out / "ablation" / model / "val_predictions.csv")
        assert summary["nodule"]["auroc"] == pytest.approx(auroc(val, "probability"), abs=1e-12)
        block = model_block(done.stdout, model)
        pooled_line = next(line for line in block if line.strip().startswith("out-of-fold, pooled, nodules"))
        assert f"AUROC {printed(summary['nodule']['auroc'])} [" in pooled_line, pooled_line
        log = [e for e in read_log(out / "ablation" / model) if e["event"] == "epoch"] if model != "semantic" else []
        for f in summary["folds"]:
            fold_rows = [r for r in val if int(r["fold"]) == f["fold"]]
            assert f["auroc"] == pytest.approx(auroc(fold_rows, "probability"), abs=1e-12)
            fold_line = next(line for line in block if line.strip().startswith(f"fold {f['fold']}:"))
            assert f"AUROC {printed(f['auroc'])} " in fold_line, fold_line
            if model != "semantic":  # the last epoch's validation AUROC, as its log has it
                assert f["last_epoch_auroc"] == [e["val"]["auroc"] for e in log if e["fold"] == f["fold"]][-1]
                assert fold_line.endswith(f"last-epoch AUROC {printed(f['last_epoch_auroc'])})"), fold_line

    # diameter carries real signal on these labels (0.88 on all LIDC crops): a misaligned label would give ~0.5
    diameter = document["same_fold_baselines"]["diameter"]["pooled"]
    assert diameter["auroc"] > 0.75 and diameter["n"] == labelled
    # (no test set: every labelled nodule is in a validation fold)
    assert diameter["auroc"] == pytest.approx(auroc(rows, "diameter_mm"), abs=1e-12)
    assert f"pooled AUROC {printed(diameter['auroc'])}" in next(
        line for line in done.stdout.splitlines() if line.startswith("diameter alone (same folds)"))

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
        assert (out / "levers" / str(n) / "probe" / "splits.csv").read_text() == \
            (out / "ablation" / "splits.csv").read_text()
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

    # robustness: every neural model scored out of fold on re-rendered crops, against its own plain scores
    robust = document["robustness"]
    assert robust["perturbations"] == ["noise=30", "smooth=1.5", "sharp=1", "thick=3"]
    for model, block in robust["models"].items():
        assert [r["perturbation"] for r in block["rows"]] == robust["perturbations"]
        for row in block["rows"]:
            assert row["n"] == labelled
            assert row["plain_auroc"] == pytest.approx(document["models"][model]["nodule"]["auroc"])
            assert row["delta_auroc"] == pytest.approx(row["auroc"] - row["plain_auroc"])
    assert sum(t.startswith("lora robust to acquisition") for t in texts) == 1


@pytest.mark.slow
def test_quick_benchmark_compares_a_lever_with_an_earlier_run_on_the_same_splits(shared_data, tmp_path):
    """A second run with the two training levers (acquisition augmentation, semantic heads) against the first."""
    def run(out, *extra):
        return subprocess.run([sys.executable, str(REPO / "benchmarks" / "lidc.py"), "--quick", "--threads", "1",
                               "--data", str(shared_data), "--out", str(out), "--models", "lora", *extra],
                              capture_output=True, text=True, timeout=600)
    first = run(tmp_path / "plain")
    assert first.returncode == 0, first.stderr[-2000:]
    second = run(tmp_path / "levers", "--acquisition-augmentation", "--semantic-weight", "0.5",
                 "--baseline", str(tmp_path / "plain"))
    assert second.returncode == 0, second.stderr[-2000:]
    plain = json.loads((tmp_path / "plain" / "lidc_benchmark.json").read_text())
    levers = json.loads((tmp_path / "levers" / "lidc_benchmark.json").read_text())
    trained = json.loads((tmp_path / "levers" / "ablation" / "lora" / "config.json").read_text())["train"]
    assert trained["acquisition_augmentation"] is True and trained["semantic_weight"] == 0.5
    epochs = [e for e in read_log(tmp_path / "levers" / "ablation" / "lora") if e["event"] == "epoch"]
    assert all(e["train"]["semantic"] > 0 for e in epochs)
    row = levers["against_baseline"]["models"]["lora"]
    assert row["delong"]["auroc"] == pytest.approx(levers["models"]["lora"]["nodule"]["auroc"])
    assert row["delong"]["other_auroc"] == pytest.approx(plain["models"]["lora"]["nodule"]["auroc"])
    assert row["fold_auroc"][1] == [f["auroc"] for f in plain["models"]["lora"]["folds"]]
