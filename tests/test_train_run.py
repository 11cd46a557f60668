"""End-to-end training runs on a tiny synthetic cohort: run folder, splits, metrics, determinism, resume,
user errors, and data-parallel training matching a single process."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from helpers import BASE, REPO, assert_same_results, cli_args, comparable_log, read_log, read_rows
from noduleclip.cli import main as cli_main
from noduleclip.ensemble import RunEnsemble
from noduleclip.errors import InputError
from noduleclip.model import load_model
from noduleclip.preprocess.cache import ViewCache
from noduleclip.train import SplitPlan, TrainConfig, train_run
from noduleclip.train import loop as loop_module
from noduleclip.version import __version__


@pytest.fixture
def cohort(tiny_cohort):
    """(manifest, view cache) of the session's tiny cohort (conftest.py); every run here shares the cache."""
    return tiny_cohort.manifest, tiny_cohort.cache


@pytest.fixture
def reference(tiny_run):
    """The session's uninterrupted tiny run with BASE (conftest.py), read only. The tests below that train again
    with BASE do so on purpose: the same settings must give exactly its results (after a resume, a kill -9)."""
    return tiny_run


def operating_point(labels: np.ndarray, risk: np.ndarray, recall: float) -> dict:
    """FPR and precision at the highest risk threshold whose recall reaches `recall`, by counting."""
    for threshold in sorted(set(risk), reverse=True):
        called = risk >= threshold
        tp, fp = int((called & (labels == 1)).sum()), int((called & (labels == 0)).sum())
        if tp >= recall * (labels == 1).sum() - 1e-9:
            return {"recall": tp / (labels == 1).sum(), "fpr": fp / (labels == 0).sum(), "precision": tp / (tp + fp)}
    raise AssertionError("no threshold reaches the recall")


def test_run_folder_splits_predictions_and_metrics(reference, cohort):
    run, (_, cache) = reference.run, cohort
    for name in ("config.json", "splits.csv", "log.jsonl", "predictions.csv", "val_predictions.csv", "metrics.json"):
        assert (run / name).is_file(), name
    for k in (0, 1):
        for part in ("best/model.safetensors", "best/model.json", "last/model.safetensors", "resume/state.safetensors",
                     "done.json"):
            assert (run / f"fold_{k}" / part).is_file(), (k, part)
    assert len(list((cache / "views").glob("*.npz"))) == 22  # the run preprocessed the cohort first

    document = json.loads((run / "config.json").read_text())
    assert document["package_version"] == __version__ and document["model"]["random_init"] is True
    assert TrainConfig.from_dict(document["train"]) == reference.config

    plan = SplitPlan.read_csv(run / "splits.csv")  # refuses a patient on two sides
    side = {}
    for row in plan.rows:
        assert side.setdefault(row.patient_id, (row.role, row.fold)) == (row.role, row.fold)
    test_ids = plan.test_ids()
    assert {"P07-0"} <= set(test_ids)  # the manifest's split column forced patient P07 into the test set
    predictions = read_rows(run / "predictions.csv")
    assert [r["nodule_id"] for r in predictions] == test_ids and len({side[r["patient_id"]] for r in predictions}) == 1
    for r in predictions:
        assert float(r["ensemble"]) == pytest.approx((float(r["fold_0"]) + float(r["fold_1"])) / 2, abs=1e-12)
    val = read_rows(run / "val_predictions.csv")
    fold_of = {r.nodule_id: r.fold for r in plan.rows}
    assert sorted(r["nodule_id"] for r in val) == sorted(n for n, f in fold_of.items() if f >= 0)
    assert all(int(r["fold"]) == fold_of[r["nodule_id"]] for r in val)

    metrics = reference.metrics
    assert metrics == json.loads((run / "metrics.json").read_text())
    # every number recomputed with sklearn from the predictions the run wrote: nodules from predictions.csv,
    # patients (a patient's risk is the max over its nodules) from patient_predictions.csv, checked by hand first
    patients = read_rows(run / "patient_predictions.csv")
    grouped: dict[str, list[dict]] = {}
    for r in predictions:
        grouped.setdefault(r["patient_id"], []).append(r)
    assert [r["patient_id"] for r in patients] == list(grouped)
    for row in patients:
        assert float(row["risk"]) == max(float(r["ensemble"]) for r in grouped[row["patient_id"]])
        known = [int(r["label"]) for r in grouped[row["patient_id"]] if r["label"] != ""]
        assert row["label"] == (str(max(known)) if known else "")
    for level, rows, score in (("nodule", predictions, "ensemble"), ("patient", patients, "risk")):
        m = metrics["test"][level]
        labelled = [r for r in rows if r["label"] != ""]
        labels = np.array([int(r["label"]) for r in labelled])
        risk = np.array([float(r[score]) for r in labelled])
        assert (m["n"], m["n_pos"], m["n_unknown"]) == (len(labelled), labels.sum(), len(rows) - len(labelled))
        assert 0 < labels.sum() < len(labels), f"the {level} test set lacks a class: the checks below would be empty"
        assert m["auroc"] == pytest.approx(roc_auc_score(labels, risk), abs=1e-12)
        assert m["auprc"] == pytest.approx(average_precision_score(labels, risk), abs=1e-12)
        assert m["auroc_ci"][0] <= m["auroc"] <= m["auroc_ci"][1] and m["auprc_ci"][0] <= m["auprc"] <= m["auprc_ci"][1]
        assert set(m["at_recall"]) == {"0.6", "0.7", "0.8", "0.9"}
        for r, point in m["at_recall"].items():
            assert {k: point[k] for k in ("recall", "fpr", "precision")} == pytest.approx(
                operating_point(labels, risk, float(r))), (level, r)
    test_labels = np.array([int(r["label"]) if r["label"] else -1 for r in predictions])
    for k in (0, 1):  # each fold model alone on the test set
        fold_risk = np.array([float(r[f"fold_{k}"]) for r in predictions])
        assert metrics["test"]["folds"][f"fold_{k}"]["auroc"] == pytest.approx(
            roc_auc_score(test_labels[test_labels >= 0], fold_risk[test_labels >= 0]), abs=1e-12)
    val_labelled = [r for r in val if r["label"] != ""]
    assert metrics["validation"]["nodule"]["auroc"] == pytest.approx(roc_auc_score(
        [int(r["label"]) for r in val_labelled], [float(r["probability"]) for r in val_labelled]), abs=1e-12)

    # the log: one line per epoch; the epoch each fold kept is the one with the best validation AUROC, and that
    # AUROC is the one its saved validation predictions (done.json) give
    epochs = [e for e in read_log(run) if e["event"] == "epoch"]
    assert [(e["fold"], e["epoch"]) for e in epochs] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(np.isfinite(e["train"]["total"]) and e["train"]["total"] > 0 for e in epochs)
    label_of = {r["nodule_id"]: r["label"] for r in read_rows(cohort[0])}
    for k in (0, 1):
        done = json.loads((run / f"fold_{k}" / "done.json").read_text())
        logged = {e["epoch"]: e["val"]["auroc"] for e in epochs if e["fold"] == k}
        assert done["best_epoch"] == max(logged, key=lambda epoch: (logged[epoch], -epoch))  # ties: the earlier
        saved = zip(done["val"]["nodule_id"], done["val"]["probability"], strict=True)
        pairs = [(int(label_of[n]), p) for n, p in saved if label_of[n] != ""]
        assert logged[done["best_epoch"]] == pytest.approx(roc_auc_score(*zip(*pairs, strict=True)), abs=1e-9)
    assert "ensemble on the test set, nodules" in reference.summary


def test_the_run_ensemble_gives_the_fold_models_that_made_the_predictions(reference, cohort):
    ensemble = RunEnsemble.load(reference.run)
    assert ensemble.folds == 2 and ensemble.settings.views == reference.config.views
    predictions = read_rows(reference.run / "predictions.csv")
    cache = ViewCache(cohort[1], reference.config.views, create=False)
    views = cache.load_many([r["nodule_id"] for r in predictions])
    scores = ensemble.score(views)
    assert scores.risk == pytest.approx([float(r["ensemble"]) for r in predictions], abs=1e-6)
    for k in range(2):  # each fold model loaded on its own gives its column
        alone = load_model(reference.run / f"fold_{k}" / "best").predict_risk(torch.from_numpy(views)).numpy()
        assert scores.fold_risk[k] == pytest.approx(alone, abs=1e-6)
        assert scores.fold_risk[k] == pytest.approx([float(r[f"fold_{k}"]) for r in predictions], abs=1e-6)


def test_the_same_seed_gives_the_same_run(reference, cohort, tmp_path):
    again = train_run(cohort[0], tmp_path / "again", TrainConfig(**BASE, cache=str(cohort[1])))
    assert_same_results(reference.run, again.run)
    other_seed = train_run(cohort[0], tmp_path / "seed1", TrainConfig(**{**BASE, "seed": 1}, cache=str(cohort[1])))
    assert other_seed.metrics != reference.metrics


def test_a_run_interrupted_after_an_epoch_resumes_to_the_same_result(reference, cohort, tmp_path, monitor_saves):
    run = tmp_path / "run"
    config = TrainConfig(**BASE, cache=str(cohort[1]))
    monitor_saves.fail_after = (1, 1)  # fold 1, right after its first epoch's resume file
    with pytest.raises(Interrupted):
        train_run(cohort[0], run, config)
    assert (run / "fold_0" / "done.json").is_file() and not (run / "fold_1" / "done.json").is_file()
    monitor_saves.fail_after = None
    monitor_saves.calls.clear()
    train_run(cohort[0], run, config)
    assert monitor_saves.calls == [(1, 2)]  # fold 0 skipped, fold 1 went on from epoch 2
    assert_same_results(reference.run, run)


class Interrupted(Exception):
    pass


@pytest.fixture
def monitor_saves(monkeypatch):
    """Records (fold, epochs done) of each resume file written; can stop the run right after one."""
    class Monitor:
        calls: list = []
        fail_after = None

    original = loop_module.save_resume_state

    def save(folder, model, optimizer, scheduler, progress):
        path = original(folder, model, optimizer, scheduler, progress)
        key = (int(Path(folder).parent.name.split("_")[1]), progress["epochs_done"])
        Monitor.calls.append(key)
        if key == Monitor.fail_after:
            raise Interrupted(f"stopped after epoch {key[1]} of fold {key[0]}")
        return path

    Monitor.calls = []
    monkeypatch.setattr(loop_module, "save_resume_state", save)
    return Monitor



@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_result(reference, cohort, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen([sys.executable, "-m", "noduleclip", *cli_args(cohort[0], run, cohort[1])], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = run / "fold_0" / "resume" / "state.safetensors"
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists(), process.stderr.read().decode()[-2000:]
    assert not (run / "metrics.json").exists(), "the run finished before it could be killed"
    leftovers = [run / "fold_0" / "resume" / ".state.safetensors.x1.tmp.safetensors", run / ".metrics.json.x2.tmp.json"]
    for path in leftovers:  # what a kill during a write leaves behind
        path.write_bytes(b"partial")
    (run / "fold_0" / "best" / ".staging-x3").mkdir()
    resumed = train_run(cohort[0], run, TrainConfig(**BASE, cache=str(cohort[1])))
    assert_same_results(reference.run, resumed.run)
    assert not [p for p in run.rglob(".*") if "cache" not in p.parts]


def test_user_errors_are_one_sentence(reference, cohort, tmp_path, capsys):
    manifest, cache = cohort
    with pytest.raises(InputError, match="does not exist"):
        train_run(tmp_path / "missing.csv", tmp_path / "a", TrainConfig(**BASE))
    unlabelled = tmp_path / "unlabelled.csv"
    rows = read_rows(manifest)
    with open(unlabelled, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "label": "", "image": str(manifest.parent / r["image"])} for r in rows)
    with pytest.raises(InputError, match="no labels"):
        train_run(unlabelled, tmp_path / "b", TrainConfig(**BASE))
    with pytest.raises(InputError, match="folds need at least"):
        train_run(manifest, tmp_path / "c", TrainConfig(**{**BASE, "folds": 6}, cache=str(cache)))
    leaky = tmp_path / "leaky"
    leaky.mkdir()
    split_rows = read_rows(reference.run / "splits.csv")
    first_test = next(i for i, r in enumerate(split_rows) if r["role"] == "test")
    twin = next(i for i, r in enumerate(split_rows) if r["role"] == "train")
    split_rows[twin]["patient_id"] = split_rows[first_test]["patient_id"]  # one patient on both sides
    with open(leaky / "splits.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["patient_id", "nodule_id", "role", "fold"])
        writer.writeheader()
        writer.writerows(split_rows)
    with pytest.raises(InputError, match="leaks"):
        train_run(manifest, leaky, TrainConfig(**BASE, cache=str(cache)))
    code = cli_main(cli_args(manifest, reference.run, cache, epochs=3))
    message = capsys.readouterr().err.strip()
    assert code == 2 and len(message.splitlines()) == 1
    assert "other options" in message and "epochs: 2 -> 3" in message


DETERMINISTIC_TINY = """
import dataclasses, sys
from noduleclip.model.backbones import BACKBONES, TINY, register_backbone
if "tiny-no-dropout" not in BACKBONES:
    register_backbone(dataclasses.replace(TINY, name="tiny-no-dropout", text_config={
        **TINY.text_config, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
if __name__ == "__main__":
    from noduleclip.cli import main
    raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_data_parallel_processes_train_like_one(cohort, tmp_path, backbone_registry):
    """torchrun with 2 CPU processes (gloo) against one process, same global batch.

    Dropout draws its masks per process, so with dropout the two layouts are equally valid but not
    equal runs; this test turns every dropout off (LoRA, projections and the tiny text tower's own)
    so that only summation order differs. `accelerate launch --cpu --num_processes 2` starts ONE
    process unless given an MPI hostfile (accelerate 1.x), so the CPU launch here is torchrun.
    """
    script = tmp_path / "tiny_no_dropout.py"
    script.write_text(DETERMINISTIC_TINY)
    # registers tiny-no-dropout in this process too, for the single-process run; `backbone_registry` removes it
    exec(compile(DETERMINISTIC_TINY, str(script), "exec"), {"__name__": "register"})
    assert "tiny-no-dropout" in backbone_registry
    options = dict(backbone="tiny-no-dropout", lora_dropout=0.0, projection_dropout=0.0, threads=None)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), *cli_args(cohort[0], two, cohort[1], **options)[0:]], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one = train_run(cohort[0], tmp_path / "one", TrainConfig(**{**BASE, **options, "threads": 1}, cache=str(cohort[1])))
    for name in ("predictions.csv", "val_predictions.csv"):
        rows_one, rows_two = read_rows(one.run / name), read_rows(two / name)
        assert [r["nodule_id"] for r in rows_one] == [r["nodule_id"] for r in rows_two]
        for column in [c for c in rows_one[0] if c.startswith(("fold_", "ensemble", "probability"))]:
            assert [float(r[column]) for r in rows_two] == pytest.approx([float(r[column]) for r in rows_one],
                                                                         abs=1e-6), (name, column)
    metrics_two = json.loads((two / "metrics.json").read_text())
    assert metrics_two["test"]["nodule"]["auroc"] == one.metrics["test"]["nodule"]["auroc"]
    assert metrics_two["validation"]["nodule"]["auroc"] == one.metrics["validation"]["nodule"]["auroc"]
    losses_one = [e["train"]["total"] for e in comparable_log(one.run) if e["event"] == "epoch"]
    losses_two = [e["train"]["total"] for e in comparable_log(two) if e["event"] == "epoch"]
    assert losses_two == pytest.approx(losses_one, abs=1e-5)


def test_vision_only_training_has_no_text_losses(cohort, tmp_path):
    config = TrainConfig(**{**BASE, "epochs": 1, "tuning": "vision-only", "sampler": "none",
                            "text_augmentation": False}, cache=str(cohort[1]))
    result = train_run(cohort[0], tmp_path / "run", config)
    epochs = [e for e in comparable_log(result.run) if e["event"] == "epoch"]
    assert len(epochs) == 2 and all(e["train"]["clip"] == e["train"]["text"] == 0 < e["train"]["image"] for e in epochs)
    ensemble = RunEnsemble.load(result.run)
    assert not ensemble.has_text and ensemble.network.text is None


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_training_on_precomputed_frozen_blocks_matches_the_saved_models(cohort, tmp_path, augment):
    """LoRA on the top image block only: the blocks below run once per nodule (once per augmented version with
    image augmentation), and the validation predictions made that way during training are those the saved
    fold models give on the views as they are."""
    config = TrainConfig(**{**BASE, "epochs": 1, "lora_image_blocks": 1, "image_augmentation": augment},
                         cache=str(cohort[1]))
    result = train_run(cohort[0], tmp_path / "run", config)
    models = [load_model(result.run / f"fold_{k}" / "best") for k in range(2)]
    assert all(model.frozen_image_blocks == 1 for model in models)
    cache = ViewCache(cohort[1], config.views, create=False)
    for k, model in enumerate(models):
        done = json.loads((result.run / f"fold_{k}" / "done.json").read_text())
        risk = model.predict_risk(torch.from_numpy(cache.load_many(done["val"]["nodule_id"]))).numpy()
        assert risk == pytest.approx(done["val"]["probability"], abs=1e-6)
    # the fold models share their frozen blocks: the ensemble computes them once per batch for all, same predictions
    views = torch.from_numpy(cache.load_many([r["nodule_id"] for r in read_rows(result.run / "predictions.csv")]))
    each = np.stack([model.predict_risk(views).numpy() for model in models])
    assert RunEnsemble.load(result.run).score(views, batch_size=3).fold_risk == pytest.approx(each, abs=1e-6)


def test_image_augmentation_changes_training_and_repeats_exactly(reference, cohort, tmp_path):
    """Augmented views (on the fly with every block tuned, as fixed versions over frozen blocks) change what a
    fold learns from the first step, and the same settings give the same run again."""
    settings = {**BASE, "epochs": 1, "image_augmentation": True}

    def first_losses(run):
        return [e["train"]["total"] for e in comparable_log(run) if e["event"] == "epoch"]

    plain = first_losses(reference.run)[:1] + first_losses(reference.run)[2:3]  # epoch 1 of each fold
    for extra in ({}, {"lora_image_blocks": 1}):
        runs = [train_run(cohort[0], tmp_path / f"{name}{len(extra)}", TrainConfig(**settings, **extra,
                                                                                   cache=str(cohort[1])))
                for name in ("one", "two")]
        assert_same_results(runs[0].run, runs[1].run)
        if not extra:
            assert first_losses(runs[0].run) != pytest.approx(plain, abs=1e-6)


def test_bf16_autocast_trains_close_to_float32_and_repeats_exactly(cohort, tmp_path):
    """bf16 autocast (the demo's choice on CPUs with native bf16) really runs the matrix products in bf16: the
    predictions move a little from the float32 run's, not a lot, and the same settings give the same run."""
    settings = {**BASE, "epochs": 1, "lora_image_blocks": 1}
    single = train_run(cohort[0], tmp_path / "fp32", TrainConfig(**settings, cache=str(cohort[1])))
    half = train_run(cohort[0], tmp_path / "bf16",
                     TrainConfig(**settings, mixed_precision="bf16", cache=str(cohort[1])))
    again = train_run(cohort[0], tmp_path / "bf16-again",
                      TrainConfig(**settings, mixed_precision="bf16", cache=str(cohort[1])))
    for k in range(settings["folds"]):
        p32, p16, p16b = (np.array(json.loads((r.run / f"fold_{k}" / "done.json").read_text())["val"]["probability"])
                          for r in (single, half, again))
        assert np.array_equal(p16, p16b)
        assert 0 < np.abs(p16 - p32).max() < 0.05
    assert json.loads((half.run / "config.json").read_text())["train"]["mixed_precision"] == "bf16"
