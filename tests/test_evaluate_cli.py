"""`noduleclip evaluate` end to end on a tiny trained run: every output, the report's content, atomicity."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from helpers import REPO, delong_p, feature_auroc_by_hand, read_rows
from noduleclip import report as report_module
from noduleclip.cli import main as cli_main
from noduleclip.data.manifest import NoduleManifest
from noduleclip.ensemble import RunEnsemble
from noduleclip.evaluate import zero_shot
from noduleclip.evaluate.cohort import EvaluationOptions, evaluate_cohort
from noduleclip.metrics.classification import classification_metrics
from noduleclip.preprocess.cache import ViewCache
from noduleclip.semantics.prompts import ENSEMBLE, PAPER, build_prompts


@pytest.fixture(scope="module")
def trained(tiny_run, tiny_cohort):
    """(run folder, manifest): the session's tiny run (conftest.py, read only) and the cohort it was trained on."""
    return tiny_run.run, tiny_cohort.manifest


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    run, manifest = trained
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


def test_the_evaluation_writes_every_output(evaluated, trained):
    out, manifest, rows = evaluated
    for name in ("report.html", "report.json", "metrics.json", "predictions.csv", "patient_predictions.csv",
                 "calibration.png", "roc.png", "roc_patient.png", "gallery.png", "perturbed_predictions.csv"):
        assert (out / name).is_file(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging or temporary files left
    report = json.loads((out / "report.json").read_text())
    predictions = read_rows(out / "predictions.csv")
    assert [r["nodule_id"] for r in predictions] == [r["nodule_id"] for r in rows]
    labelled = [r for r in predictions if r["label"] != ""]
    y, risk = np.array([int(r["label"]) for r in labelled]), np.array([float(r["ensemble"]) for r in labelled])
    for r in predictions:  # the ensemble is the mean of the fold models
        assert float(r["ensemble"]) == pytest.approx((float(r["fold_0"]) + float(r["fold_1"])) / 2, abs=1e-12)
    assert report["metrics"]["nodule"]["auroc"] == pytest.approx(roc_auc_score(y, risk), abs=1e-12)
    assert report["metrics"]["nodule"]["brier"] == pytest.approx(np.mean((risk - y) ** 2), abs=1e-12)
    nodule = classification_metrics([r["label"] for r in predictions], [float(r["ensemble"]) for r in predictions],
                                    n_bootstrap=0)
    assert report["metrics"] == json.loads((out / "metrics.json").read_text())
    assert sum(report["calibration"]["count"]) == nodule["n"]

    features = {r["feature"]: r for r in report["zero_shot"]["rows"]}
    assert set(features) == {"consistency", "margins", "pleural_attachment"}  # what the cohort labels
    assert features["pleural_attachment"]["n_missing"] == sum(r["pleural_attachment"] == "" for r in rows)
    ensemble = RunEnsemble.load(trained[0])  # the public API from the views gives the report's table
    views = ViewCache(out / "cache", ensemble.settings.views, create=False).load_many([r["nodule_id"] for r in rows])
    scores = ensemble.score(views)
    assert scores.risk == pytest.approx([float(r["ensemble"]) for r in predictions], abs=1e-9)
    for style in (PAPER, ENSEMBLE):  # each feature's AUROC by hand from the ensemble's zero-shot probabilities
        prompts = build_prompts(style, features=sorted(features), include_suspicion=True)
        for name, (values, probabilities) in ensemble.zero_shot(scores, prompts).items():
            truth = [r[name] for r in rows]
            assert features[name]["auroc"][style] == pytest.approx(
                feature_auroc_by_hand(values, probabilities, truth), abs=1e-9), (style, name)
    table = json.loads(json.dumps(zero_shot.zero_shot_table(ensemble, views, list(NoduleManifest.read(manifest)))))
    assert [r["auroc"] for r in table] == [pytest.approx(r["auroc"]) for r in report["zero_shot"]["rows"]]
    assert [r["classes"] for r in table] == [r["classes"] for r in report["zero_shot"]["rows"]]

    robustness = {r["perturbation"]: r for r in report["robustness"]}
    assert list(robustness) == ["none", "smooth=2+noise=30"]
    shifted = read_rows(out / "perturbed_predictions.csv")
    shift = np.abs([float(r["smooth=2+noise=30"]) - float(r["unperturbed"]) for r in shifted])
    assert robustness["smooth=2+noise=30"]["shift_median"] == pytest.approx(np.median(shift)) and shift.max() > 0

    (comparison,) = report["comparisons"]
    assert comparison["missing"] == [r["nodule_id"] for r in rows[-2:]] and "no score for 2" in report["warnings"][0]
    other = {r["nodule_id"]: float(r["probability"]) for r in read_rows(out.parent / "other.csv")}
    scored = [r for r in labelled if r["nodule_id"] in other]  # the labelled nodules both models score
    y_both = np.array([int(r["label"]) for r in scored])
    ours, theirs = np.array([float(r["ensemble"]) for r in scored]), np.array([other[r["nodule_id"]] for r in scored])
    delong = comparison["levels"]["nodule"]["delong"]
    assert delong["auc_ours"] == pytest.approx(roc_auc_score(y_both, ours), abs=1e-12)
    assert delong["auc_other"] == pytest.approx(roc_auc_score(y_both, theirs), abs=1e-12)
    assert delong["p"] == pytest.approx(delong_p(y_both, ours, theirs), rel=1e-6)
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


def test_a_single_class_set_without_text_tower_says_why(trained, tmp_path, monkeypatch):
    run, manifest = trained
    rows = [r for r in read_rows(manifest) if r["label"] != "1"]
    for r in rows:
        r["image"] = str(manifest.parent / r["image"])
    with open(tmp_path / "benign.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    monkeypatch.setattr(RunEnsemble, "has_text", property(lambda self: False))  # as a vision-only run's models
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


def test_a_failed_evaluation_leaves_no_results_behind(trained, tmp_path, monkeypatch):
    run, manifest = trained

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_module, "write_report", broken)  # the last step, after every other file
    with pytest.raises(RuntimeError, match="disk full"):
        evaluate_cohort(run, manifest, tmp_path / "out",
                        EvaluationOptions(workers=1, progress=False, gallery=0, zero_shot=False, bootstrap=0))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cache"]  # only the reusable view cache
    assert cli_main(["evaluate", str(run), str(manifest), "--out", str(tmp_path / "x"), "--perturb", "blur=2"]) == 2
    assert not (tmp_path / "x").exists()  # a bad option stops it before any work
