"""Other models' scores matched by id: reading, order, missing ids, labels, DeLong, the report's tables."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from noduleclip.errors import InputError
from noduleclip.evaluate.compare import compare_model, parse_compare_spec, read_scores
from noduleclip.evaluate.evaluation_report import malignancy_blocks
from noduleclip.evaluate.stats import delong_test
from noduleclip.metrics.classification import classification_metrics
from noduleclip.report import Table, Text
from noduleclip.train.results import scored_set

IDS = [f"N{i}" for i in range(12)]
PATIENTS = [f"P{i // 2}" for i in range(12)]  # two nodules per patient
LABELS = np.array([1, 0, 0, 0, 1, 1, 0, 0, 1, 0, np.nan, 0], dtype=float)
OURS = np.array([0.9, 0.2, 0.3, 0.1, 0.7, 0.35, 0.4, 0.15, 0.8, 0.5, 0.6, 0.05])
THEIRS = np.array([0.6, 0.5, 0.1, 0.3, 0.4, 0.7, 0.2, 0.45, 0.65, 0.55, 0.3, 0.25])


def write(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_specs_and_score_columns(tmp_path):
    assert parse_compare_spec("brock=a.csv") == ("brock", Path("a.csv"), None)
    assert parse_compare_spec("brock=a.csv:malignancy") == ("brock", Path("a.csv"), "malignancy")
    with pytest.raises(InputError, match="NAME=FILE"):
        parse_compare_spec("a.csv")
    path = write(tmp_path / "s.csv", ["nodule_id", "fold_0", "ensemble", "label"], [["N0", 0.1, 0.3, 1]])
    scores = read_scores(f"run2={path}")
    assert (scores.level, scores.column, scores.scores, scores.labels) == ("nodule", "ensemble", {"N0": 0.3}, {"N0": 1})
    assert read_scores(f"run2={path}:fold_0").scores == {"N0": 0.1}
    write(tmp_path / "p.csv", ["patient_id", "probability"], [["P0", 0.4]])
    assert read_scores(f"x={tmp_path / 'p.csv'}").level == "patient"
    for rows, header, message in [([["N0", 0.1], ["N0", 0.2]], ["nodule_id", "risk"], "appears twice"),
                                  ([["N0", "high"]], ["nodule_id", "risk"], "not a number"),
                                  ([["N0", 0.1]], ["nodule_id", "logit"], "no score column"),
                                  ([["N0", 0.1]], ["case", "risk"], "neither a nodule_id nor a patient_id")]:
        with pytest.raises(InputError, match=message):
            read_scores(f"x={write(tmp_path / 'bad.csv', header, rows)}")
    with pytest.raises(InputError, match="does not exist"):
        read_scores(f"x={tmp_path / 'missing.csv'}")


def test_matching_is_by_id_so_the_file_order_does_not_matter(tmp_path):
    rows = [[i, s] for i, s in zip(IDS, THEIRS, strict=True)]
    straight = read_scores(f"other={write(tmp_path / 'a.csv', ['nodule_id', 'score'], rows)}")
    order = np.random.default_rng(0).permutation(len(rows))
    shuffled = read_scores(f"other={write(tmp_path / 'b.csv', ['nodule_id', 'score'], [rows[i] for i in order])}")
    a = compare_model(straight, IDS, PATIENTS, LABELS, OURS, bootstrap=50, seed=1)
    b = compare_model(shuffled, IDS, PATIENTS, LABELS, OURS, bootstrap=50, seed=1)
    assert {k: v for k, v in a.items() if k != "file"} == {k: v for k, v in b.items() if k != "file"}
    nodule = a["levels"]["nodule"]
    assert nodule["other"]["auroc"] == classification_metrics(LABELS, THEIRS, n_bootstrap=0)["auroc"]
    assert nodule["ours"] == scored_set(IDS, PATIENTS, LABELS, OURS, 50, 1)["nodule"]  # ours on all cases
    assert nodule["delong"]["p"] == pytest.approx(delong_test(LABELS, OURS, THEIRS).p)
    assert a["missing"] == [] and a["warning"] is None
    patient = a["levels"]["patient"]  # a patient's score: the max over its nodules, for both models
    assert patient["n_cases"] == 6
    assert patient["other"]["auroc"] == classification_metrics(
        np.nanmax(LABELS.reshape(6, 2), 1), THEIRS.reshape(6, 2).max(1), n_bootstrap=0)["auroc"]


def test_missing_ids_compare_on_the_shared_cases_with_a_warning(tmp_path):
    keep = [0, 1, 2, 3, 4, 5, 6, 7, 8]  # N9, N10, N11 missing
    rows = [[IDS[i], THEIRS[i]] for i in keep] + [["extra", 0.5]]  # an id we do not evaluate: ignored
    compared = read_scores(f"other={write(tmp_path / 'a.csv', ['nodule_id', 'risk'], rows)}")
    result = compare_model(compared, IDS, PATIENTS, LABELS, OURS, bootstrap=0)
    assert result["missing"] == ["N9", "N10", "N11"]
    assert "no score for 3 of the 12 evaluated nodules (N9, N10, N11)" in result["warning"]
    nodule = result["levels"]["nodule"]
    assert nodule["n_cases"] == 9 and nodule["ours"]["n"] == 9  # ours re-scored on the same cases
    assert nodule["delong"]["p"] == pytest.approx(delong_test(LABELS[keep], OURS[keep], THEIRS[keep]).p)
    with pytest.raises(InputError, match="no nodule id of .* matches"):
        compare_model(read_scores(f"x={write(tmp_path / 'none.csv', ['nodule_id', 'risk'], [['Z', 0.1]])}"),
                      IDS, PATIENTS, LABELS, OURS)
    contradicting = write(tmp_path / "l.csv", ["nodule_id", "risk", "label"], [["N0", 0.3, 0], ["N1", 0.2, 0]])
    with pytest.raises(InputError, match="label 0 but the manifest 1"):
        compare_model(read_scores(f"x={contradicting}"), IDS, PATIENTS, LABELS, OURS)


def test_per_patient_scores_compare_at_patient_level_only(tmp_path):
    rows = [[f"P{p}", s] for p, s in enumerate([0.9, 0.1, 0.6, 0.3, 0.8])]  # P5 missing
    result = compare_model(read_scores(f"brock={write(tmp_path / 'p.csv', ['patient_id', 'score'], rows)}"),
                           IDS, PATIENTS, LABELS, OURS, bootstrap=0)
    assert list(result["levels"]) == ["patient"] and result["missing"] == ["P5"]
    patient = result["levels"]["patient"]
    labels = np.nanmax(LABELS.reshape(6, 2), 1)[:5]
    other_by_hand = classification_metrics(labels, [0.9, 0.1, 0.6, 0.3, 0.8], n_bootstrap=0)
    ours_by_hand = classification_metrics(labels, OURS.reshape(6, 2).max(1)[:5], n_bootstrap=0)
    assert patient["other"]["auroc"] == other_by_hand["auroc"]
    assert patient["ours"]["auroc"] == ours_by_hand["auroc"]


def test_the_malignancy_table_holds_every_model_and_marks_significant_p(tmp_path):
    rows = [[i, s] for i, s in zip(IDS[:10], LABELS[:10] * 0.8 + 0.1, strict=True)]  # a perfect model on ten nodules
    compared = read_scores(f"oracle={write(tmp_path / 'o.csv', ['nodule_id', 'risk'], rows)}")
    metrics = scored_set(IDS, PATIENTS, LABELS, OURS, 0, 0)
    result = json.loads(json.dumps(compare_model(compared, IDS, PATIENTS, LABELS, OURS, bootstrap=0)))
    table, definition, points = malignancy_blocks(metrics, [result])
    models = [row[:2] for row in table.rows]
    assert models == [["nodules", "noduleclip ensemble"], ["nodules", "noduleclip ensemble (cases oracle scores)"],
                      ["nodules", "oracle"], ["patients", "noduleclip ensemble"],
                      ["patients", "noduleclip ensemble (cases oracle scores)"], ["patients", "oracle"]]
    p = table.rows[2][9]
    assert p == pytest.approx(result["levels"]["nodule"]["delong"]["p"])
    assert ((2, 9) in table.bold) == (p < 0.05)
    assert "highest threshold whose recall reaches r" in definition.text
    assert isinstance(points, Table) and points.rows[0][:2] == ["nodules", 0.6]


def test_a_single_class_set_says_why_instead_of_showing_nan():
    labels = np.array([0, 0, 0, np.nan])
    metrics = scored_set(["a", "b", "c", "d"], ["1", "2", "3", "4"], labels, np.array([0.1, 0.2, 0.3, 0.4]), 0, 0)
    blocks = malignancy_blocks(metrics, [])
    notes = [b.text for b in blocks if isinstance(b, Text)]
    assert any("needs both malignant and benign nodules; this set has only 3 benign nodules" in n for n in notes)
    table = blocks[0]
    assert table.rows[0][4] is None and not any(isinstance(v, float) and np.isnan(v) for r in table.rows for v in r)
