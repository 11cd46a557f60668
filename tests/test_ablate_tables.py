"""Table 4 on constructed results: fold means and SDs, significance marking at 0.05 (Wilcoxon over folds,
DeLong on the ensembles), Friedman + Nemenyi, and what the table says when the design is too small."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from noduleclip.ablate.tables import ablation_table, format_table, mean_sd, model_scores
from noduleclip.errors import InputError

LORA = [0.90, 0.88, 0.92, 0.91, 0.89, 0.93]
PROBE = [v - d for v, d in zip(LORA, [0.05, 0.03, 0.07, 0.02, 0.04, 0.06], strict=True)]  # lower on every fold
FINETUNE = [v + d for v, d in zip(LORA, [0.01, -0.02, 0.03, -0.01, 0.02, -0.03], strict=True)]  # mixed signs
VALIDATION = [0.80, 0.85, None, 0.75, 0.82, 0.78]  # fold 2's validation set had one class only


def metrics(test_auroc, ensemble_auroc, validation=VALIDATION):
    folds = [{"fold": k, "auroc": v, "auprc": None if v is None else v - 0.1, "n": 12, "best_epoch": 1}
             for k, v in enumerate(validation)]
    on_test = {f"fold_{k}": {"auroc": v, "auprc": v - 0.2, "n": 40} for k, v in enumerate(test_auroc)}
    return {"validation": {"folds": folds},
            "test": {"folds": on_test, "nodule": {"auroc": ensemble_auroc, "auroc_ci": [ensemble_auroc - 0.05, 1.0],
                                                  "auprc": 0.7, "auprc_ci": [0.6, 0.8], "n": 60}}}


def predictions(risk, labels):
    return [{"nodule_id": f"N{i}", "label": str(y), "ensemble": repr(float(r))}
            for i, (r, y) in enumerate(zip(risk, labels, strict=True))]


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(30, int), np.zeros(30, int)]
    lora_risk = labels + rng.normal(0, 0.3, 60)
    scores = [
        model_scores("finetune", metrics(FINETUNE, 0.95), predictions(lora_risk + rng.normal(0, 0.01, 60), labels)),
        model_scores("probe", metrics(PROBE, 0.55), predictions(rng.random(60), labels)),
        model_scores("lora", metrics(LORA, 0.96), predictions(lora_risk, labels)),
    ]
    return ablation_table(scores, reference="lora", alpha=0.05)


def cell(table, model, column):
    return table["rows"][table["models"].index(model)][table["columns"].index(column)]


def test_fold_means_and_sds_are_the_hand_computed_ones(table):
    for name, values in (("lora", LORA), ("probe", PROBE), ("finetune", FINETUNE)):
        scores = table["scores"][name]["test"]["auroc"]
        assert scores["mean"] == pytest.approx(np.mean(values))
        assert scores["sd"] == pytest.approx(np.std(values, ddof=1))
        assert cell(table, name, "test AUROC").startswith(f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}")
        auprc = table["scores"][name]["test"]["auprc"]
        assert auprc["mean"] == pytest.approx(np.mean(values) - 0.2)
    known = [v for v in VALIDATION if v is not None]
    assert mean_sd(VALIDATION) == pytest.approx((np.mean(known), np.std(known, ddof=1), 5))
    assert cell(table, "lora", "validation AUROC") == f"{np.mean(known):.3f} ± {np.std(known, ddof=1):.3f}"
    assert cell(table, "lora", "ensemble test AUROC [95% CI]") == "0.960 [0.910, 1.000]"
    assert mean_sd([None, None]) == (None, None, 0) and mean_sd([0.7]) == (0.7, None, 1)


def test_significance_is_marked_at_005(table):
    wilcoxon = {(w["b"], w["set"], w["metric"]): w for w in table["wilcoxon"]}
    probe, finetune = wilcoxon[("probe", "test", "auroc")], wilcoxon[("finetune", "test", "auroc")]
    assert probe["p"] == pytest.approx(2 / 2 ** 6) and probe["significant"]  # exact: all six folds one way
    assert probe["p"] == pytest.approx(stats.wilcoxon(LORA, PROBE).pvalue)
    assert finetune["p"] > 0.05 and not finetune["significant"]
    assert wilcoxon[("probe", "validation", "auroc")]["p"] == 1.0  # identical validation scores
    assert wilcoxon[("probe", "validation", "auroc")]["n_folds"] == 5  # the fold without a score is left out

    bold = {tuple(b) for b in table["bold"]}
    r_probe, r_finetune = table["models"].index("probe"), table["models"].index("finetune")
    for column in ("test AUROC", "test AUPRC", "Wilcoxon p vs lora (test AUROC)"):
        c = table["columns"].index(column)
        assert (r_probe, c) in bold and (r_finetune, c) not in bold
    assert cell(table, "probe", "test AUROC").endswith(" *") and not cell(table, "finetune", "test AUROC").endswith("*")
    assert not cell(table, "probe", "validation AUROC").endswith("*")

    delong = {d["b"]: d for d in table["delong"]}
    assert delong["probe"]["p"] < 0.05 and delong["finetune"]["p"] > 0.05
    c = table["columns"].index("ensemble test AUROC [95% CI]")
    assert (r_probe, c) in bold and (r_finetune, c) not in bold
    assert cell(table, "probe", table["columns"][c]).endswith("*")
    assert cell(table, "lora", "DeLong p vs lora (ensemble AUROC)") == "reference"


def test_friedman_and_nemenyi_over_the_folds(table):
    entry = next(f for f in table["friedman"] if f["set"] == "test" and f["metric"] == "auroc")
    assert entry["group"] == "all models" and len(table["friedman"]) == 4  # tuning methods = all models here
    expected = stats.friedmanchisquare(FINETUNE, PROBE, LORA)
    assert entry["statistic"] == pytest.approx(expected.statistic) and entry["p"] == pytest.approx(expected.pvalue)
    assert entry["significant"] == (expected.pvalue < 0.05)
    assert entry["average_ranks"]["probe"] == 3.0  # worst on every fold
    assert entry["pairwise_p"]["probe"]["lora"] == pytest.approx(entry["pairwise_p"]["lora"]["probe"])
    assert entry["pairwise_p"]["probe"]["probe"] == 1.0
    text = format_table(table["columns"], table["rows"])
    assert len(text.splitlines()) == 2 + 3 and "reference" in text


def test_a_small_design_says_what_it_cannot_show():
    two_folds = [model_scores(name, metrics(v[:2], 0.8, validation=v[:2]))
                 for name, v in (("finetune", FINETUNE), ("probe", PROBE), ("lora", LORA), ("semantic", PROBE))]
    table = ablation_table(two_folds, reference="lora")
    assert any("Friedman test cannot reach p < 0.05" in n and "2 folds and 4 models" in n for n in table["notes"])
    assert any("Wilcoxon test cannot reach p < 0.05 (smallest possible p 0.500)" in n for n in table["notes"])
    assert {f["group"] for f in table["friedman"]} == {"tuning methods", "all models"}
    assert any("no test nodules" in d["note"] for d in table["delong"])  # no predictions.csv given
    pair = ablation_table(two_folds[1:3], reference="probe")
    assert all("at least 3 models" in f["note"] and f["p"] is None for f in pair["friedman"])
    with pytest.raises(InputError, match="reference model 'lora' is not among"):
        ablation_table(two_folds[:2], reference="lora")
