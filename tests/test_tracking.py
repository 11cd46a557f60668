"""`noduleclip train --log-with tensorboard|mlflow|wandb`: accelerate's experiment trackers get every epoch's
training losses and validation scores; TensorBoard's event files go into RUN/tracking; a tracker whose package is
missing stops the command before any work, in one sentence."""

from __future__ import annotations

import json

import pytest

from helpers import BASE, assert_same_results, cli_args, read_log
from noduleclip.cli import main as cli_main
from noduleclip.train import cv
from noduleclip.train.config import TrainConfig


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files of `folder`: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_every_epoch_of_every_fold_and_the_results_do_not_change(tiny_run, tiny_cohort, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    assert cli_main(cli_args(tiny_cohort.manifest, run, tiny_cohort.cache, log_with="tensorboard")) == 0
    assert_same_results(tiny_run.run, run)  # tracking changes no number of the run

    folder = run / cv.TRACKING_FOLDER / cv.TRACKING_PROJECT
    logged = scalars(folder)
    epochs = [e for e in read_log(run) if e["event"] == "epoch"]
    assert len(epochs) == BASE["folds"] * BASE["epochs"]
    for entry in epochs:
        fold, step = entry["fold"], entry["epoch"]
        for term, value in entry["train"].items():
            assert dict(logged[f"fold_{fold}/train/{term}"])[step] == pytest.approx(value, rel=1e-6), (fold, term)
        for name in ("auroc", "auprc", "loss"):
            if entry["val"][name] is not None:
                assert dict(logged[f"fold_{fold}/val/{name}"])[step] == pytest.approx(entry["val"][name], rel=1e-6)
        assert dict(logged[f"fold_{fold}/lr"])[step] == pytest.approx(entry["lr"])
    for fold in range(BASE["folds"]):  # one point per epoch, steps 1..epochs
        assert [step for step, _ in logged[f"fold_{fold}/train/total"]] == list(range(1, BASE["epochs"] + 1))
        assert {"clip", "image", "text"} <= {tag.rsplit("/", 1)[1] for tag in logged if tag.startswith(f"fold_{fold}/")}

    metrics = json.loads((run / "metrics.json").read_text())
    assert logged["run/validation/nodule/auroc"][0][1] == pytest.approx(metrics["validation"]["nodule"]["auroc"])
    assert logged["run/test/nodule/auroc"][0][1] == pytest.approx(metrics["test"]["nodule"]["auroc"])
    hparams = list(folder.rglob("hparams.yml"))  # accelerate keeps the run's settings beside the events
    assert hparams and "backbone: tiny" in hparams[0].read_text()


def test_a_missing_tracker_package_is_one_sentence_before_any_work(tiny_cohort, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(cv._TRACKER_PACKAGES, "wandb", ("wandb", lambda: False))
    run = tmp_path / "run"
    assert cli_main(cli_args(tiny_cohort.manifest, run, tmp_path / "cache", log_with="wandb")) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert "--log-with wandb needs the wandb package, which is not installed" in message
    assert not run.exists() and not (tmp_path / "cache").exists()  # nothing was started


def test_an_unknown_tracker_is_refused_by_the_command_line(tiny_cohort, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main(cli_args(tiny_cohort.manifest, tmp_path / "run", tiny_cohort.cache, log_with="comet"))
    assert stop.value.code == 2 and "invalid choice: 'comet'" in capsys.readouterr().err


def test_without_a_tracker_nothing_is_written_for_one(tiny_run):
    assert tiny_run.config == TrainConfig(**{**BASE, "cache": tiny_run.config.cache})
    assert tiny_run.config.log_with == "none" and not (tiny_run.run / cv.TRACKING_FOLDER).exists()
