"""`noduleclip train --config FILE` and `--print-config`: every training setting from a YAML or JSON file (a run's own
config.json too), options given on the command line on top, the file checked as strictly as a run's config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noduleclip.cli import build_parser
from noduleclip.cli import main as cli_main
from noduleclip.commands.train import train_config
from noduleclip.errors import InputError
from noduleclip.train.config import TrainConfig, recipe


def resolved(*argv: str) -> TrainConfig:
    """The TrainConfig that `noduleclip train ARGV` would train with."""
    return train_config(build_parser("train").parse_args(["train", *argv]))


def test_a_runs_config_json_gives_back_the_runs_settings(tiny_run, tmp_path, capsys):
    config_json = tiny_run.run / "config.json"
    assert resolved("--config", str(config_json)) == tiny_run.config
    assert resolved("--config", str(tiny_run.run)) == tiny_run.config  # the run folder names its config.json
    # --print-config's YAML is a config file of its own: the same settings come back from it
    assert cli_main(["train", "--config", str(config_json), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "backbone: tiny" in printed and "epochs: 2" in printed
    copy = tmp_path / "settings.yaml"
    copy.write_text(printed)
    assert resolved("--config", str(copy)) == tiny_run.config
    # the 'train' object alone, as JSON, is a config file too
    plain = tmp_path / "train.json"
    plain.write_text(json.dumps(json.loads(config_json.read_text())["train"]))
    assert resolved("--config", str(plain)) == tiny_run.config


def test_options_given_on_the_command_line_override_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("backbone: tiny\nfolds: 3\nepochs: 7\nlr: 1e-3  # YAML 1.1 reads 1e-3 as text; ours a number\n"
                    "views:\n  hu_min: -900\n  spacing_mm: 1.0\n")
    from_file = resolved("--config", str(path))
    assert (from_file.folds, from_file.epochs, from_file.lr, from_file.views.hu_min) == (3, 7, 1e-3, -900)
    assert from_file.batch_size == TrainConfig().batch_size  # a key left out keeps its default

    # --epochs 100 is the default, given explicitly: it still overrides the file's 7
    config = resolved("--config", str(path), "--epochs", "100", "--no-text-augmentation", "--spacing-mm", "0.5")
    assert config.epochs == 100 and config.text_augmentation is False
    assert config.folds == 3 and config.lr == 1e-3  # not given: the file's
    assert config.views.spacing_mm == 0.5 and config.views.size == 100  # the file's 50 mm cube at 0.5 mm
    assert config.views.hu_min == -900 and config.views.hu_max == TrainConfig().views.hu_max

    # without --config nothing changes: the defaults and the options
    plain = resolved("m.csv", "--out", "r", "--epochs", "3")
    assert plain == TrainConfig(epochs=3)


@pytest.mark.parametrize("text, words", [
    ("epoch: 3\n", ["'epoch'", "unknown", "epochs"]),
    ("epochs: three\n", ["'epochs'", "three", "integer"]),
    ("views:\n  size: big\n", ["'views.size'", "integer"]),
    ("backbone: resnet\n", ["unknown backbone", "'resnet'"]),
    ("folds: 1\n", ["folds=1", "at least 2 folds"]),
    ("- epochs\n", ["not a mapping"]),
    ("epochs: [3\n", ["not valid YAML"]),
])
def test_a_bad_key_or_value_is_one_sentence_naming_the_key_and_the_file(tmp_path, capsys, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = tmp_path / "run"
    assert cli_main(["train", "manifest.csv", "--out", str(out), "--config", str(path)]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and str(path) in message, message
    for word in words:
        assert word in message, (word, message)
    assert not out.exists()


def test_a_file_setting_that_cannot_work_may_be_fixed_on_the_command_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("folds: 1\n")
    assert resolved("--config", str(path), "--folds", "3").folds == 3
    # a setting that the command line breaks is the command line's: the message does not blame the file
    path.write_text("folds: 3\n")
    with pytest.raises(InputError, match="folds=1") as error:
        resolved("--config", str(path), "--folds", "1")
    assert str(path) not in str(error.value)


def test_other_documents_and_missing_files_are_refused(tmp_path, capsys):
    other = tmp_path / "config.json"
    other.write_text(json.dumps({"format": "noduleclip-model", "format_version": 1, "config": {}}))
    with pytest.raises(InputError, match="not a 'noduleclip-run'"):
        resolved("--config", str(other))
    with pytest.raises(InputError, match="does not exist"):
        resolved("--config", str(tmp_path / "missing.yaml"))
    # training (not printing) still needs a manifest and a run folder
    good = tmp_path / "ok.yaml"
    good.write_text("epochs: 1\n")
    assert cli_main(["train", "--config", str(good)]) == 2
    assert "needs a MANIFEST and --out RUN" in capsys.readouterr().err


def test_print_config_trains_nothing_and_prints_yaml(tmp_path, capsys):
    import yaml

    out = tmp_path / "run"
    assert cli_main(["train", "manifest-that-is-not-there.csv", "--out", str(out), "--backbone", "tiny",
                     "--lr", "0.003", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(TrainConfig(backbone="tiny", lr=0.003).to_dict()))
    assert not out.exists()


def test_the_tracker_is_a_setting_that_does_not_change_results():
    base = TrainConfig(backbone="tiny")
    assert base.differences(TrainConfig(backbone="tiny", log_with="tensorboard")) == []
    assert TrainConfig.from_dict({"backbone": "tiny"}).log_with == "none"  # runs trained before the setting
    with pytest.raises(InputError, match="log with 'comet'"):
        TrainConfig(log_with="comet").validate()


def test_the_view_window_from_a_file_is_checked(tmp_path):
    path = Path(tmp_path / "views.yaml")
    path.write_text("views:\n  hu_min: 500\n  hu_max: -1000\n")
    with pytest.raises(InputError, match="HU window"):
        resolved("--config", str(path))


def test_the_real_ct_recipe_ships_with_noduleclip_and_options_override_it(tmp_path, monkeypatch, capsys):
    """`--config real-ct` is the settings that cross-validation on LIDC chose; a file of that name in the working
    folder still wins, since a path is what the user gave."""
    monkeypatch.chdir(tmp_path)
    config = resolved("--config", "real-ct")
    assert config == recipe("real-ct")
    assert (config.field_of_view, config.size_weight, config.sampler, config.lr, config.batch_size,
            config.lora_image_blocks, config.epochs, config.patience) == (16, 1.0, "none", 3e-4, 8, 1, 20, 5)
    assert config.tuning == "lora" and config.backbone == "dinov2-s+minilm"
    defaults = TrainConfig()
    assert config.folds == defaults.folds and config.test_fraction == defaults.test_fraction  # not named: defaults
    assert resolved("--config", "real-ct", "--epochs", "40", "--field-of-view", "24") == TrainConfig(
        **{**config.__dict__, "epochs": 40, "field_of_view": 24})
    (tmp_path / "real-ct").write_text("epochs: 3\n")
    assert resolved("--config", "real-ct").epochs == 3
    assert cli_main(["train", "--config", "real-cts", "--print-config"]) == 2
    assert "a recipe (real-ct)" in capsys.readouterr().err
    with pytest.raises(InputError, match="no recipe 'nosuch'; the recipes are real-ct"):
        recipe("nosuch")
