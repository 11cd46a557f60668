"""Run folders, model folders, calibrators and --out names that used to end in a traceback: each is refused with
one sentence that names the file, the key and what was expected, and a command given one exits 2 and writes
nothing. Also: CSV cells that a spreadsheet would run as formulas, and the choice of one CT series of several.

Same table as test_bad_inputs.py: how each bad input is built in tmp_path, the function or command it is given
to, and the words the InputError (or the command's error output) must hold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from helpers import Case, full_ct, make_volume, refusal, write_ct_series
from noduleclip.atomic import plain_cell, spreadsheet_safe, write_csv
from noduleclip.cli import main
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.io import Volume, write_volume
from noduleclip.metrics.calibration import Calibrator, read_validation_predictions
from noduleclip.model.checkpoint import load_model, read_model_config
from noduleclip.model.model import ModelConfig
from noduleclip.train.config import TrainConfig

PREDICT = ("predict", "INPUT", "SCAN", "--coord", "0,0,0", "--out", "OUT")
VIEWS_TO = ("views", "INPUT", "--coord", "0,0,0", "--out")


def run_folder(tmp_path: Path, **train) -> Path:
    """A run folder whose config.json holds the default training settings changed by `train`, beside a scan."""
    full_ct(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    settings = TrainConfig(backbone="tiny").to_dict()
    for key, value in train.items():
        if isinstance(value, dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    document = {"format": "noduleclip-run", "format_version": 1, "train": settings}
    (run / "config.json").write_text(json.dumps(document))
    return run


def model_folder(tmp_path: Path, **config) -> Path:
    """A model folder whose model.json holds the default model settings changed by `config`."""
    folder = tmp_path / "model"
    folder.mkdir()
    settings = ModelConfig(backbone="tiny", random_init=True).to_dict()
    for key, value in config.items():
        settings[key] = {**settings[key], **value} if isinstance(value, dict) else value
    document = {"format": "noduleclip-model", "format_version": 1, "config": settings, "towers_saved": False}
    (folder / "model.json").write_text(json.dumps(document))
    return folder


def pickled_weights(tmp_path: Path) -> Path:
    """A model folder whose model.json names a weights folder that holds only a small pytorch_model.bin."""
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not to be unpickled")
    (weights / "config.json").write_text("{}")
    return model_folder(tmp_path, backbone="clip-vit-b-32", random_init=False, weights=str(weights))


def calibrator(tmp_path: Path, **changes) -> Path:
    document = Calibrator("isotonic", "fitted", 60, 20, [0.1, 0.5, 0.9], [0.05, 0.4, 0.95]).to_dict()
    document.update(changes)
    path = tmp_path / "calibrator.json"
    path.write_text(json.dumps(document))
    return path


def scan_and_out_folder(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    return full_ct(tmp_path)


def two_series(tmp_path: Path) -> Path:
    """A DICOM folder holding two CT series, 1.2.3.4 (8 slices) and 1.2.3.5 (5 slices)."""
    volume = make_volume(shape=(8, 40, 40), spacing=(1.0, 1.0, 2.0), angles=(0, 0, 0))
    write_ct_series(volume, tmp_path / "ct" / "a", series_uid="1.2.3.4")
    shorter = Volume(volume.array[:5], volume.origin, volume.spacing)
    write_ct_series(shorter, tmp_path / "ct" / "b", series_uid="1.2.3.5")
    return tmp_path / "ct"


CONFIG = "config.json (its 'train' settings)"
CASES = {
    # a run's config.json
    "folds as a string, predict": Case(lambda t: run_folder(t, folds="5"), (CONFIG, "'folds'", "not an integer",
                                                                            "train the run again"), command=PREDICT),
    "folds 0, predict": Case(lambda t: run_folder(t, folds=0), (CONFIG, "folds=0", "at least 2 folds"),
                             command=PREDICT),
    "unknown key in views, predict": Case(lambda t: run_folder(t, views={"zoom": 2}),
                                          (CONFIG, "'views.zoom'", "size, spacing_mm"), command=PREDICT),
    "views not an object, predict": Case(lambda t: run_folder(t, views=[50]), (CONFIG, "'views'", "not an object"),
                                         command=PREDICT),
    "nonsense backbone, predict": Case(lambda t: run_folder(t, backbone="resnet-9000"), (
        CONFIG, "unknown backbone 'resnet-9000'", "clip-vit-b-32, dinov2-s+minilm, tiny"), command=PREDICT),
    # a model folder's model.json
    "unknown key in lora": Case(lambda t: model_folder(t, lora={"scale": 2}), ("model.json (its 'config')",
                                                                              "'lora.scale'", "rank, alpha"),
                                call=read_model_config),
    "rank as text in lora": Case(lambda t: model_folder(t, lora={"rank": "2"}), ("'lora.rank'", "not an integer"),
                                 call=read_model_config),
    "nonsense backbone in model.json": Case(lambda t: model_folder(t, backbone="resnet-9000"), (
        "model.json", "unknown backbone 'resnet-9000'", "tiny"), call=read_model_config),
    "pickled tower weights": Case(pickled_weights, ("model.json names tower weights", "pytorch_model.bin",
                                                    "never loads pickled", "safetensors"), call=load_model),
    # a run's calibrator.json
    "calibrator with an extra key": Case(lambda t: calibrator(t, smoothing=0.1), (
        "calibrator.json has unknown settings", "'smoothing'", "calibrate_run"), call=Calibrator.load),
    "calibrator with text knots": Case(lambda t: calibrator(t, knots_x=["a", "b", "c"]), (
        "calibrator.json", "'knots_x'", "not a list of numbers"), call=Calibrator.load),
    "calibrator with knots of two lengths": Case(lambda t: calibrator(t, knots_y=[0.1]), (
        "calibrator.json", "unusable isotonic knots"), call=Calibrator.load),
    "calibrator that is a list": Case(lambda t: (t / "calibrator.json").write_text("[1, 2]") and t / "calibrator.json",
                                      ("calibrator.json holds a JSON list", "calibrate_run"), call=Calibrator.load),
    # views --out
    "views --out a folder": Case(scan_and_out_folder, ("--out", "is a folder", "views.png"),
                                 command=VIEWS_TO + ("OUT",)),
    "views --out not a png": Case(full_ct, ("--out", "views.jpg is not a .png name"),
                                  command=VIEWS_TO + ("OUT/views.jpg",)),
    # two CT series in one folder
    "two series, views": Case(two_series, ("holds 2 CT series", "--series-uid UID", "series_uid column"),
                              command=VIEWS_TO + ("OUT/views.png",)),
    "series not there, views": Case(two_series, ("series 9.9 is not in", "--series-uid"),
                                    command=VIEWS_TO + ("OUT/views.png", "--series-uid", "9.9")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_run_file_is_refused_in_one_sentence(name, tmp_path, capsys):
    case = CASES[name]
    message = refusal(case, case.build(tmp_path), tmp_path, capsys)
    assert "\n" not in message and message.count("; ") >= 1, message
    assert "Traceback" not in message
    for word in case.words:
        assert word in message, message


def test_a_good_run_configuration_reads_back():
    config = TrainConfig(backbone="tiny", folds=3)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())), "x") == config
    model = ModelConfig(backbone="tiny")
    assert ModelConfig.from_dict(json.loads(json.dumps(model.to_dict()))) == model


def test_views_reads_the_series_it_is_given(tmp_path, capsys):
    folder = two_series(tmp_path)
    out = tmp_path / "views.png"
    assert main(["views", str(folder), "--out", str(out), "--series-uid", "1.2.3.5"]) == 0
    assert out.is_file()


def test_the_manifest_series_uid_column_chooses_the_series(tmp_path):
    folder = two_series(tmp_path)
    path = tmp_path / "m.csv"
    scan = write_volume(make_volume(), tmp_path / "s.nii.gz")
    path.write_text(f"patient_id,nodule_id,image,coord_x,coord_y,coord_z,label,series_uid\n"
                    f"p1,n1,{folder},,,,1,1.2.3.5\np2,n2,{scan},,,,0,1.2\n")
    first, second = NoduleManifest.read(path)
    assert first.series_uid == "1.2.3.5"
    assert second.series_uid is None  # a file holds one series


FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "-12", "+1", "@SUM(A1)", "'=already", "'plain", "plain"]


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted(tmp_path):
    path = write_csv(tmp_path / "p.csv", ["nodule_id", "risk"], [[text, -0.5] for text in FORMULAS])
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert [r[0] for r in rows] == ["'=HYPERLINK(\"http://x\",\"y\")", "'-12", "'+1", "'@SUM(A1)", "''=already",
                                    "'plain", "plain"]
    assert {r[1] for r in rows} == {"-0.5"}  # a number stays a number
    assert [plain_cell(r[0]) for r in rows] == FORMULAS  # read back as written
    assert spreadsheet_safe(-12) == -12


def test_a_manifest_with_formula_ids_round_trips(tmp_path):
    scan = full_ct(tmp_path)
    rows = [{"patient_id": "-p1", "nodule_id": "=HYPERLINK(\"x\")", "image": scan, "coord_x": -12.5,
             "coord_y": 3.0, "coord_z": -40.0, "label": 1},
            {"patient_id": "p2", "nodule_id": "-12", "image": scan, "coord_x": 1.0, "coord_y": 2.0, "coord_z": 3.0,
             "label": 0}]
    path = NoduleManifest.write(tmp_path / "m.csv", rows)
    text = path.read_text()
    assert "'=HYPERLINK" in text and "'-12" in text and "'-p1" in text and ",-12.5," in text
    records = NoduleManifest.read(path)
    assert [(r.patient_id, r.nodule_id) for r in records] == [("-p1", "=HYPERLINK(\"x\")"), ("p2", "-12")]
    assert records[0].coord[0] == pytest.approx(-12.5)


def test_quoted_labels_of_val_predictions_read_back(tmp_path):
    path = write_csv(tmp_path / "val_predictions.csv", ["fold", "patient_id", "nodule_id", "label", "probability"],
                     [[0, "-p", "=n", 1, 0.25], [1, "q", "m", "", 0.5]])
    risk, labels = read_validation_predictions(path)
    assert risk.tolist() == [0.25, 0.5] and labels[0] == 1


def test_splits_with_formula_ids_are_written_quoted_and_read_back_as_they_were(tmp_path):
    from noduleclip.train.splits import SplitPlan, SplitRow

    rows = [SplitRow("=p1", "=n1", "train", 0), SplitRow("-p2", "-n2", "train", 1), SplitRow("p3", "n3", "test", -1)]
    path = SplitPlan(rows, n_folds=2).write_csv(tmp_path / "splits.csv")
    assert "'=p1" in path.read_text() and ",-1\n" in path.read_text()  # the fold number stays a number
    assert SplitPlan.read_csv(path).rows == rows


def test_training_refuses_pickled_tower_weights_before_anything_is_built(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(InputError, match="--weights names tower weights .* pytorch_model.bin .* safetensors"):
        TrainConfig(weights=str(folder)).validate()


def test_preprocess_reads_the_series_the_manifest_names(tmp_path):
    from noduleclip.preprocess.cache import ViewCache
    from noduleclip.preprocess.pipeline import preprocess_manifest

    folder = two_series(tmp_path)
    path = tmp_path / "m.csv"
    path.write_text("patient_id,nodule_id,image,coord_x,coord_y,coord_z,label,series_uid\n"
                    f"p1,n1,{folder},,,,1,1.2.3.5\n")
    report = preprocess_manifest(NoduleManifest.read(path), ViewCache(tmp_path / "cache"), workers=1, progress=False)
    assert report.done == ["n1"] and not report.failed  # without the column: "holds 2 CT series"
