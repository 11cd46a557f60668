"""`noduleclip evaluate` end to end on a tiny trained run: every output, the report's content, atomicity."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train_run import BASE, read_rows, write_cohort

from noduleclip.cli import main as cli_main
from noduleclip.data.manifest import NoduleManifest
from noduleclip import report as report_module
from noduleclip.evaluate import zero_shot
from noduleclip.evaluate.cohort import EvaluationOptions, evaluate_cohort
from noduleclip.evaluate.metrics import classification_metrics
from noduleclip.preprocess.cache import ViewCache
from noduleclip.train import TrainConfig, load_run, train_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    manifest = write_cohort(root / "data")
    result = train_run(manifest, root / "run", TrainConfig(**{**BASE, "epochs": 1}, cache=str(root / "cache")))
    return result.run, manifest


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    run, manifest = tiny_run
    root = tmp_path_factory.mktemp("external")
    rows = read_rows(manifest)
    rng = np.random.default_rng(0)
    with open(root / "other.csv", "w", newline="") as handle:  # another model, two nodules short
        writer = csv.writer(handle)
        writer.writerow(["nodule_id", "probability"])
        writer.writerows([r["nodule_id"], rng.random()] for r in rows[:-2])
    out = root / "out"
    code = cli_main(["evaluate", str(run), str(manifest), "--out", str(out), "--perturb", "smooth=2+noise=30",
                     "--compare", f"other={root / 'other.csv'}", "--gallery", "1", "--bootstrap", "30",
                     "--workers", "1", "--no-progress"])
    assert code == 0
    return out, manifest, rows


def test_the_evaluation_writes_every_output(evaluated, tiny_run):
    out, manifest, rows = evaluated
    for name in ("report.html", "report.json", "metrics.json", "predictions.csv", "patient_predictions.csv",
                 "calibration.png", "roc.png", "roc_patient.png", "gallery.png", "perturbed_predictions.csv"):
        assert (out / name).is_file(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging or temporary files left
    report = json.loads((out / "report.json").read_text())
    predictions = read_rows(out / "predictions.csv")
    assert [r["nodule_id"] for r in predictions] == [r["nodule_id"] for r in rows]
    nodule = classification_metrics([r["label"] for r in predictions], [float(r["ensemble"]) for r in predictions],
                                    n_bootstrap=0)
    assert report["metrics"]["nodule"]["auroc"] == nodule["auroc"] and report["metrics"]["nodule"]["brier"] == \
        pytest.approx(nodule["brier"])
    assert report["metrics"] == json.loads((out / "metrics.json").read_text())
    assert sum(report["calibration"]["count"]) == nodule["n"]

    features = {r["feature"]: r for r in report["zero_shot"]["rows"]}
    assert set(features) == {"consistency", "margins", "pleural_attachment"}  # what the cohort labels
    assert features["pleural_attachment"]["n_missing"] == sum(r["pleural_attachment"] == "" for r in rows)
    assert all(0 <= r["auroc"][s] <= 1 for r in features.values() for s in ("paper", "ensemble"))
    config, models = load_run(tiny_run[0])  # the public API from the views gives the report's table
    views = ViewCache(out / "cache", config.views, create=False).load_many([r["nodule_id"] for r in rows])
    table = json.loads(json.dumps(zero_shot.zero_shot_table(models, views, list(NoduleManifest.read(manifest)))))
    assert [r["auroc"] for r in table] == [pytest.approx(r["auroc"]) for r in report["zero_shot"]["rows"]]
    assert [r["classes"] for r in table] == [r["classes"] for r in report["zero_shot"]["rows"]]

    robustness = {r["perturbation"]: r for r in report["robustness"]}
    assert list(robustness) == ["none", "smooth=2+noise=30"]
    shifted = read_rows(out / "perturbed_predictions.csv")
    shift = np.abs([float(r["smooth=2+noise=30"]) - float(r["unperturbed"]) for r in shifted])
    assert robustness["smooth=2+noise=30"]["shift_median"] == pytest.approx(np.median(shift)) and shift.max() > 0

    (comparison,) = report["comparisons"]
    assert comparison["missing"] == [r["nodule_id"] for r in rows[-2:]] and "no score for 2" in report["warnings"][0]
    assert comparison["levels"]["nodule"]["delong"]["p"] is not None
    kinds = [t["kind"] for t in report["gallery"]]
    assert kinds == ["false positive", "false negative"] and all(len(t["findings"]) == 3 for t in report["gallery"])

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # ROC twice, calibration, gallery: all embedded
    for title in ("Malignancy", "Zero-shot semantic features", "Robustness", "Error analysis", "DeLong p vs ours",
                  "highest threshold whose recall reaches r", "no score for 2 of the 22 evaluated nodules"):
        assert title in page, title


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_evaluation_report_passes_the_layout_check(evaluated):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "check_report.py"), str(evaluated[0] / "report.html"),
                           "--widths", "1280"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_single_class_set_without_text_tower_says_why(tiny_run, tmp_path, monkeypatch):
    run, manifest = tiny_run
    rows = [r for r in read_rows(manifest) if r["label"] != "1"]
    for r in rows:
        r["image"] = str(manifest.parent / r["image"])
    with open(tmp_path / "benign.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    monkeypatch.setattr(zero_shot, "has_text_path", lambda models: False)  # as a vision-only run's models
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "perturbed_predictions.csv").write_text("from an earlier evaluation")
    result = evaluate_cohort(run, tmp_path / "benign.csv", tmp_path / "out",
                             EvaluationOptions(bootstrap=0, gallery=1, workers=1, progress=False))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["metrics"]["nodule"]["auroc"] is None
    assert "only 13 benign nodules" in report["metrics"]["nodule"]["reason"]
    assert "vision-only" in report["zero_shot"]["note"] and report["zero_shot"]["rows"] == []
    assert [t["kind"] for t in report["gallery"]] == ["false positive"] and result.report == report
    assert not (tmp_path / "out" / "perturbed_predictions.csv").exists()  # no stale robustness results
    page = (tmp_path / "out" / "report.html").read_text()
    assert "only 13 benign nodules" in page and ">nan<" not in page.lower()


def test_a_failed_evaluation_leaves_no_results_behind(tiny_run, tmp_path, monkeypatch):
    run, manifest = tiny_run

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_module, "write_report", broken)  # the last step, after every other file
    with pytest.raises(RuntimeError, match="disk full"):
        evaluate_cohort(run, manifest, tmp_path / "out",
                        EvaluationOptions(workers=1, progress=False, gallery=0, zero_shot=False, bootstrap=0))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cache"]  # only the reusable view cache
    assert cli_main(["evaluate", str(run), str(manifest), "--out", str(tmp_path / "x"), "--perturb", "blur=2"]) == 2
    assert not (tmp_path / "x").exists()  # a bad option stops it before any work
