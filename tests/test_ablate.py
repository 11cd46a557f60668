"""`noduleclip ablate` end to end on a tiny cohort: five model folders on identical splits, model subsets,
reuse of finished models and folds, the report, and Table 4 against the runs' own metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import BASE, cli_args, read_rows
from noduleclip.ablate.runner import MODELS, run_ablation
from noduleclip.ablate.tables import read_model_scores
from noduleclip.cli import main as cli_main
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.train import SplitPlan, TrainConfig, make_splits
from noduleclip.train import cv as cv_module

# every test here uses the `ablation` fixture: four trainings of two folds and the ablation report
pytestmark = pytest.mark.slow

OPTIONS = {**BASE, "epochs": 1}


class Trainings:
    """Counts `train_run` calls (per run folder) and fold trainings while active."""

    def __init__(self, monkeypatch):
        self.runs: list[str] = []
        self.folds: list[tuple[str, int]] = []
        train_run, train_fold = cv_module.train_run, cv_module.train_fold

        def counted_run(manifest, out, config):
            self.runs.append(Path(out).name)
            return train_run(manifest, out, config)

        def counted_fold(k, config, data, folder, *args):
            self.folds.append((Path(folder).parent.name, k))
            return train_fold(k, config, data, folder, *args)

        monkeypatch.setattr(cv_module, "train_run", counted_run)
        monkeypatch.setattr(cv_module, "train_fold", counted_fold)


def ablate_args(manifest, out, cache, **extra):
    return ["ablate", *cli_args(manifest, out, cache, **OPTIONS, **extra)[1:]]


@pytest.fixture(scope="module")
def cohort(tiny_cohort):
    """(manifest, view cache) of the session's tiny cohort (conftest.py)."""
    return tiny_cohort.manifest, tiny_cohort.cache


@pytest.fixture(scope="module")
def ablation(cohort, tmp_path_factory):
    """One full ablation through the command line, trainings counted.

    Its own trainings, not the session's tiny run: the ablation trains four tuning modes (one epoch each, to keep
    it short) into its own folder, and the tests count those trainings and reuse them."""
    manifest, cache = cohort
    out = tmp_path_factory.mktemp("full") / "ablation"
    with pytest.MonkeyPatch.context() as patch:
        counts = Trainings(patch)
        code = cli_main(ablate_args(manifest, out, cache))
    assert code == 0
    return out, counts


def test_every_model_trains_in_its_folder_on_the_same_splits(ablation, cohort):
    out, counts = ablation
    assert counts.runs == ["finetune", "probe", "lora", "vision-only"]
    assert counts.folds == [(m, k) for m in counts.runs for k in (0, 1)]
    shared = SplitPlan.read_csv(out / "splits.csv").rows
    assert len({r.role for r in shared}) == 2
    for model in MODELS:
        assert SplitPlan.read_csv(out / model / "splits.csv").rows == shared, model
        assert (out / model / "metrics.json").is_file() and (out / model / "val_predictions.csv").is_file()
    for model in counts.runs:
        document = json.loads((out / model / "config.json").read_text())
        assert document["train"]["tuning"] == model and document["model"]["tuning"] == model
        others = TrainConfig.from_dict(document["train"])
        assert TrainConfig.from_dict(json.loads((out / "lora" / "config.json").read_text())["train"]).differences(
            others) == ([] if model == "lora" else [f"tuning: 'lora' -> {model!r}"])
    test_ids = [r["nodule_id"] for r in read_rows(out / "lora" / "predictions.csv")]
    semantic = read_rows(out / "semantic" / "predictions.csv")
    assert [r["nodule_id"] for r in semantic] == test_ids and set(semantic[0]) == {
        "patient_id", "nodule_id", "label", "fold_0", "fold_1", "ensemble"}
    val = read_rows(out / "semantic" / "val_predictions.csv")
    fold_of = {r.nodule_id: r.fold for r in shared}
    assert all(int(r["fold"]) == fold_of[r["nodule_id"]] for r in val)
    assert len(val) == sum(f >= 0 for f in fold_of.values())
    assert (out / "report.html").is_file() and (out / "fold_auroc.png").read_bytes()[:4] == b"\x89PNG"


def test_table4_numbers_are_the_runs_fold_metrics(ablation):
    out, _ = ablation
    table = json.loads((out / "report.json").read_text())["table4"]
    assert table["models"] == list(MODELS) and table["reference"] == "lora"
    for model in MODELS:
        metrics = json.loads((out / model / "metrics.json").read_text())
        val = [f["auroc"] for f in metrics["validation"]["folds"]]
        test = [metrics["test"]["folds"][f"fold_{k}"]["auprc"] for k in (0, 1)]
        for values, scored in ((val, table["scores"][model]["validation"]["auroc"]),
                               (test, table["scores"][model]["test"]["auprc"])):
            known = [v for v in values if v is not None]
            assert scored["folds"] == values
            assert scored["mean"] == pytest.approx(np.mean(known))
            assert scored["sd"] == (pytest.approx(np.std(known, ddof=1)) if len(known) > 1 else None)
        row = table["rows"][table["models"].index(model)]
        ensemble = metrics["test"]["nodule"]
        assert row[5].startswith(f"{ensemble['auroc']:.3f} [{ensemble['auroc_ci'][0]:.3f}")
    assert any("2 folds" in note for note in table["notes"])  # too few folds to reach p < 0.05, and it says so
    scores = read_model_scores(out / "probe")
    probe = json.loads((out / "probe" / "metrics.json").read_text())
    assert scores.ensemble["auroc"] == probe["test"]["nodule"]["auroc"]


def test_a_second_run_reuses_every_finished_model(ablation, cohort, monkeypatch):
    out, _ = ablation
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".csv")
              and p.parent != out}
    counts, lines = Trainings(monkeypatch), []
    result = run_ablation(cohort[0], out, TrainConfig(**OPTIONS, cache=str(cohort[1])), MODELS, echo=lines.append)
    assert counts.runs == [] and counts.folds == []
    assert result.reused == list(MODELS) and result.trained == []
    assert all("reused" in line for line in lines) and len(lines) == len(MODELS)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_subset_then_more_models_reuse_finished_models_and_folds(ablation, cohort, tmp_path, monkeypatch):
    manifest, cache = cohort
    out = tmp_path / "ablation"
    counts = Trainings(monkeypatch)
    assert cli_main(ablate_args(manifest, out, cache, models="probe,semantic")) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["probe", "semantic"]  # the cache is named
    assert counts.runs == ["probe"] and len(counts.folds) == 2
    table = json.loads((out / "report.json").read_text())["table4"]
    assert table["models"] == ["probe", "semantic"] and table["reference"] == "probe"  # lora is not there

    (out / "probe" / "metrics.json").unlink()  # an interrupted evaluation: folds done, metrics not written
    (out / "probe" / "fold_1" / "done.json").unlink()  # ... or a fold left unfinished
    shutil.rmtree(out / "probe" / "fold_1" / "resume")
    counts.runs.clear(), counts.folds.clear()
    run_ablation(manifest, out, TrainConfig(**OPTIONS, cache=str(cache)), ["lora", "probe"], echo=lambda _: None)
    assert counts.runs == ["probe", "lora"] and counts.folds == [("probe", 1), ("lora", 0), ("lora", 1)]
    assert SplitPlan.read_csv(out / "lora" / "splits.csv").rows == SplitPlan.read_csv(out / "splits.csv").rows


def test_refusals_are_one_sentence(ablation, cohort, tmp_path, capsys):
    manifest, cache = cohort
    out, _ = ablation
    assert cli_main(ablate_args(manifest, tmp_path / "x", cache, models="lora,clip")) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "'clip' is not an ablation model" in message
    other = tmp_path / "other"
    shutil.copytree(out / "semantic", other / "semantic")  # a model folder made on the full run's splits
    plan = make_splits(NoduleManifest.read(manifest).records, test_fraction=OPTIONS["test_fraction"],
                       folds=OPTIONS["folds"], seed=1)
    assert plan.rows != SplitPlan.read_csv(out / "splits.csv").rows
    plan.write_csv(other / "splits.csv")  # ... in an ablation folder whose splits differ
    with pytest.raises(InputError, match="differs from the ablation's"):
        run_ablation(manifest, other, TrainConfig(**OPTIONS, cache=str(cache)), ["semantic"])
    with pytest.raises(InputError, match="other settings"):
        run_ablation(manifest, out, TrainConfig(**{**OPTIONS, "bootstrap": 7}, cache=str(cache)), ["semantic"])
