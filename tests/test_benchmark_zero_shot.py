"""benchmarks/zero_shot.py --quick end to end: a tiny lora run on a small synthetic cohort, Table 3 two ways."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from helpers import REPO, feature_auroc_by_hand, read_rows
from noduleclip.ensemble import RunEnsemble
from noduleclip.preprocess.cache import ViewCache
from noduleclip.semantics.prompts import ENSEMBLE, PAPER, build_prompts


def printed(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def labelled_auroc(rows: list[dict], score: str) -> float:
    known = [r for r in rows if r["label"] != ""]
    return roc_auc_score([int(r["label"]) for r in known], [float(r[score]) for r in known])


@pytest.mark.slow
def test_quick_zero_shot_benchmark_scores_test_and_out_of_fold_nodules_once(tmp_path):
    out = tmp_path / "zs"
    command = [sys.executable, str(REPO / "benchmarks" / "zero_shot.py"), "--quick", "--threads", "1", "--workers", "1",
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "goal: zero-shot margins >= 0.75" in done.stdout and "QUICK: not a result" in done.stdout
    document = json.loads((out / "zero_shot_benchmark.json").read_text())
    splits = read_rows(out / "run" / "splits.csv")
    test_ids = [r["nodule_id"] for r in splits if r["role"] == "test"]
    assert document["settings"]["test_nodules"] == len(test_ids) > 0
    assert document["settings"]["nodules"] == len(splits)

    # the ensemble table covers exactly the held-out nodules; the out-of-fold one every other nodule, once
    margins_test = next(r for r in document["test"] if r["feature"] == "margins")
    assert margins_test["n"] + margins_test["n_missing"] == len(test_ids)
    pooled = next(r for r in document["out_of_fold"]["pooled"] if r["feature"] == "margins")
    assert pooled["n"] + pooled["n_missing"] == len(splits) - len(test_ids)
    per_fold = [next(r for r in f["rows"] if r["feature"] == "margins") for f in document["out_of_fold"]["folds"]]
    assert len(per_fold) == 2
    assert sum(r["n"] + r["n_missing"] for r in per_fold) == len(splits) - len(test_ids)

    # every zero-shot AUROC again, by hand, from the run folder it wrote: the fold ensemble on the test nodules, and
    # each fold model on its own validation nodules, pooled
    truth = {r["nodule_id"]: r for r in read_rows(out / "cohort" / "manifest.csv")}
    ensemble = RunEnsemble.load(out / "run")
    cache = ViewCache(out / "run" / "cache", ensemble.settings.views, create=False)
    features = sorted({r["feature"] for r in document["test"] + document["out_of_fold"]["pooled"]})
    folds = [[r["nodule_id"] for r in splits if r["role"] != "test" and int(r["fold"]) == k] for k in (0, 1)]
    for style in (PAPER, ENSEMBLE):
        prompts = build_prompts(style, features=features, include_suspicion=True)
        on_test = ensemble.zero_shot(ensemble.score(cache.load_many(test_ids)), prompts)
        for row in document["test"]:
            values, p = on_test[row["feature"]]
            assert row["auroc"][style] == pytest.approx(
                feature_auroc_by_hand(values, p, [truth[n][row["feature"]] for n in test_ids]), abs=1e-9), row
        own = [ensemble.zero_shot(ensemble.score(cache.load_many(ids), folds=[k]), prompts)
               for k, ids in enumerate(folds)]
        for row in document["out_of_fold"]["pooled"]:
            values = own[0][row["feature"]][0]
            p = np.concatenate([o[row["feature"]][1] for o in own])
            feature_truth = [truth[n][row["feature"]] for ids in folds for n in ids]
            assert row["auroc"][style] == pytest.approx(feature_auroc_by_hand(values, p, feature_truth), abs=1e-9), row

    # the printed numbers are those of the files: the table's rows, and the malignancy AUROCs (by hand from the
    # run's predictions.csv and val_predictions.csv)
    pooled_by_feature = {r["feature"]: r for r in document["out_of_fold"]["pooled"]}
    for row in document["test"]:
        other = pooled_by_feature.get(row["feature"])
        cells = [f"{printed(r['auroc'][PAPER])} / {printed(r['auroc'][ENSEMBLE])}" if r else "-" for r in (row, other)]
        expected = " ".join(cells).split()  # internal test, then out of fold, each "paper / ensembles"
        line = next(s for s in done.stdout.splitlines() if s.split()[:1] == [row["feature"]])
        assert line.split()[-len(expected):] == expected, (line, cells)
    test_auroc = labelled_auroc(read_rows(out / "run" / "predictions.csv"), "ensemble")
    oof_auroc = labelled_auroc(read_rows(out / "run" / "val_predictions.csv"), "probability")
    assert document["malignancy"]["test"]["auroc"] == pytest.approx(test_auroc, abs=1e-12)
    assert document["malignancy"]["out_of_fold"]["auroc"] == pytest.approx(oof_auroc, abs=1e-12)
    shown = re.search(r"internal test AUROC (\S+) \(n=(\d+)\), out of fold (\S+)", done.stdout)
    assert shown.groups() == (printed(test_auroc), str(document["malignancy"]["test"]["n"]), printed(oof_auroc))

    # run again: the finished run and the cohort are reused, and the numbers are the same
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    second = json.loads((out / "zero_shot_benchmark.json").read_text())
    assert second["test"] == document["test"] and second["out_of_fold"] == document["out_of_fold"]
    assert second["seconds"]["train"] < document["seconds"]["train"]
