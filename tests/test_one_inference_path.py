"""Training, `evaluate` and `predict` apply a run through one path (noduleclip.ensemble): for the same nodules
they give the same numbers, each fold model's and the ensemble's."""

from __future__ import annotations

import pytest

from helpers import read_rows
from noduleclip.data.manifest import NoduleManifest
from noduleclip.evaluate.cohort import evaluate_manifest
from noduleclip.predict import NoduleClip


@pytest.fixture(scope="module")
def evaluated(tiny_run, tiny_cohort, tmp_path_factory):
    """`evaluate_manifest` of the whole tiny cohort with the session's tiny run: {nodule_id: predictions.csv row}."""
    out = tmp_path_factory.mktemp("evaluated")
    evaluate_manifest(tiny_run.run, tiny_cohort.manifest, out, workers=1, bootstrap=0, progress=False)
    return {r["nodule_id"]: r for r in read_rows(out / "predictions.csv")}


def test_the_test_set_scores_of_training_evaluate_and_predict_agree(tiny_run, tiny_cohort, evaluated):
    trained = {r["nodule_id"]: r for r in read_rows(tiny_run.run / "predictions.csv")}
    folds = tiny_run.config.folds
    assert trained and set(trained) < set(evaluated)  # the test set, and the rest of the cohort besides
    model = NoduleClip.load(tiny_run.run)
    records = {r.nodule_id: r for r in NoduleManifest.read(tiny_cohort.manifest)}
    for nodule_id, row in trained.items():
        record = records[nodule_id]
        predicted = model.predict(record.image, coords=[tuple(record.coord)])[0]
        for k in range(folds):
            column = f"fold_{k}"
            assert float(evaluated[nodule_id][column]) == pytest.approx(float(row[column]), abs=1e-6)
            assert predicted.fold_risks[k] == pytest.approx(float(row[column]), abs=1e-6)
        assert float(evaluated[nodule_id]["ensemble"]) == pytest.approx(float(row["ensemble"]), abs=1e-6)
        assert predicted.risk_uncalibrated == pytest.approx(float(row["ensemble"]), abs=1e-6)
    # the fold models differ, so agreeing columns are no accident of one model scored twice
    assert any(abs(float(r["fold_0"]) - float(r["fold_1"])) > 1e-4 for r in trained.values())


def test_out_of_fold_scores_of_training_are_the_fold_models_scores_in_evaluate(tiny_run, evaluated):
    """val_predictions.csv holds each training nodule's score from the fold model that did not train on it,
    computed at the end of that fold; `evaluate` gives the same fold model's score for it."""
    rows = read_rows(tiny_run.run / "val_predictions.csv")
    assert {r["fold"] for r in rows} == {str(k) for k in range(tiny_run.config.folds)}
    for r in rows:
        assert float(evaluated[r["nodule_id"]][f"fold_{r['fold']}"]) == pytest.approx(float(r["probability"]),
                                                                                   abs=1e-6)
