"""`noduleclip predict` and `NoduleClip`: the same numbers from the CLI and the API, calibration, the ways to give
nodules, the panel, the DICOM SR round trip, every bad input (one sentence, exit 2, nothing in --out), real LIDC data.

The run is the session's tiny run (conftest.py `tiny_run`: the `tiny` backbone, two folds, two epochs on the
synthetic cohort of helpers.write_cohort), read only: a test that changes a run works on `copy_run`."""

import csv
import json
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from helpers import BASE, lidc0001_nodule_center, write_ct_series
from noduleclip.cli import main as cli_main
from noduleclip.errors import InputError
from noduleclip.io import read_volume, write_volume
from noduleclip.metrics.calibration import CALIBRATOR_FILE, Calibrator
from noduleclip.predict import NoduleClip
from noduleclip.predict.panel import PANEL_SIZE_PX, draw_panel
from noduleclip.predict.sites import locate_nodules
from noduleclip.preprocess.views import PLANE_NAMES, sample_planes
from noduleclip.train import TrainConfig, train_run

# p00 of the synthetic cohort: 32^3 voxels of 2 mm from (-32, -32, -32); nodules at these LPS centres.
NODULE_A, NODULE_B = (-8.0, -8.0, 0.0), (12.0, 8.0, 0.0)


def copy_run(run: Path, to: Path) -> Path:
    """A copy of a run folder without its view cache and training state (what predicting needs)."""
    return Path(shutil.copytree(run, to, ignore=shutil.ignore_patterns("cache", "last", "resume")))


@pytest.fixture(scope="module")
def trained(tiny_cohort, tiny_run, tmp_path_factory):
    """The session's tiny run; p00 of its cohort as NIfTI and, written here, as a DICOM series; `root` for outputs."""
    root = tmp_path_factory.mktemp("predict")
    image = tiny_cohort.data / "p00.nii.gz"
    write_ct_series(read_volume(image), root / "dicom")
    return SimpleNamespace(root=root, run=tiny_run.run, nifti=image, dicom=root / "dicom",
                           manifest=tiny_cohort.manifest, cache=tiny_cohort.cache)


@pytest.fixture(scope="module")
def cli_output(trained):
    """`noduleclip predict` on the DICOM copy of p00, two nodules, with a DICOM SR."""
    out = trained.root / "cli-out"
    code = cli_main(["predict", str(trained.run), str(trained.dicom), "--coord", "-8,-8,0", "--coord", "12,8,0",
                     "--out", str(out), "--dicom-sr"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def model(trained):
    return NoduleClip.load(trained.run)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_and_api_give_identical_predictions(trained, cli_output, model):
    document = json.loads((cli_output / "predictions.json").read_text())
    api = model.predict(trained.dicom, coords=[NODULE_A, NODULE_B])
    assert [n["nodule_id"] for n in document["nodules"]] == ["n1", "n2"]
    for ours, written in zip(api, document["nodules"], strict=True):
        assert {k: v for k, v in written.items() if k != "panel"} == ours.to_dict()
    rows = read_csv(cli_output / "predictions.csv")
    assert [r["nodule_id"] for r in rows] == ["n1", "n2"]
    for row, ours in zip(rows, api, strict=True):
        assert [float(row["fold_0"]), float(row["fold_1"])] == ours.fold_risks
        assert float(row["risk"]) == ours.risk and row["margins"] == ours.semantics["margins"][0]
        assert float(row["margins_probability"]) == ours.semantics["margins"][1]
    assert document["series_uid"] == pydicom.dcmread(next(trained.dicom.iterdir())).SeriesInstanceUID


def test_several_coordinates_are_cut_from_one_read_at_their_own_centres(trained, model):
    nodules = model.predict(trained.nifti, coords=[NODULE_A, NODULE_B])
    volume = read_volume(trained.nifti)
    assert [n.nodule_id for n in nodules] == ["n1", "n2"]
    for nodule, centre in zip(nodules, (NODULE_A, NODULE_B), strict=True):
        assert nodule.center_lps == centre
        assert np.array_equal(nodule.views, sample_planes(volume, centre, model.views))
        assert list(nodule.view_attention) == list(PLANE_NAMES)
        assert sum(nodule.view_attention.values()) == pytest.approx(1.0)
        assert nodule.risk_uncalibrated == pytest.approx(np.mean(nodule.fold_risks), abs=1e-15)
        for feature, distribution in nodule.semantic_distribution.items():
            assert sum(distribution.values()) == pytest.approx(1.0)
            assert nodule.semantics[feature] == max(distribution.items(), key=lambda item: item[1])
    assert {"margins", "consistency", "pleural_attachment"} <= set(nodules[0].semantics)
    assert not np.array_equal(nodules[0].views, nodules[1].views)
    assert model.timings.keys() >= {"read", "views", "model", "zero_shot"}


def test_semantic_profile_is_the_fold_average_of_zero_shot_with_the_paper_prompts(trained, model):
    import torch

    from noduleclip.model import load_model
    from noduleclip.semantics import build_prompts

    nodule = model.predict(trained.nifti, coords=[NODULE_A])[0]
    prompts, expected = build_prompts("paper"), []
    for k in range(model.ensemble.folds):  # each fold model loaded on its own, apart from the ensemble's network
        network = load_model(trained.run / f"fold_{k}" / "best")
        with torch.inference_mode():
            image = network.predict(torch.from_numpy(nodule.views[None])).image_embeds
            similarity = image @ network.encode_text(prompts.texts).t()
        expected.append(prompts.probabilities(similarity, float(network.scale().detach()))["margins"][1][0])
    assert list(nodule.semantic_distribution["margins"]) == list(prompts.values("margins"))
    assert list(nodule.semantic_distribution["margins"].values()) == pytest.approx(np.mean(expected, axis=0), abs=1e-6)


def test_calibrated_and_uncalibrated_risk(trained, model, tmp_path):
    calibrator = Calibrator.load(trained.run / CALIBRATOR_FILE)
    calibrated = model.predict(trained.nifti, coords=[NODULE_A, NODULE_B])
    assert model.calibration == calibrator.method == "platt"  # 16 out-of-fold cases: too few for isotonic
    bare = copy_run(trained.run, tmp_path / "bare")
    (bare / CALIBRATOR_FILE).unlink()
    raw = NoduleClip.load(bare).predict(trained.nifti, coords=[NODULE_A, NODULE_B])
    for c, r in zip(calibrated, raw, strict=True):
        assert c.calibration == "platt" and r.calibration is None
        assert r.risk == r.risk_uncalibrated == c.risk_uncalibrated
        assert c.risk == pytest.approx(float(calibrator.apply(c.risk_uncalibrated)), abs=1e-15)
        assert any(note.startswith("uncalibrated") for note in r.notes)
        assert not any(note.startswith("uncalibrated") for note in c.notes)
    out = tmp_path / "out"
    assert cli_main(["predict", str(bare), str(trained.nifti), "--coord", "-8,-8,0", "--out", str(out)]) == 0
    document = json.loads((out / "predictions.json").read_text())
    assert document["calibration"] is None and document["nodules"][0]["risk"] == raw[0].risk
    assert read_csv(out / "predictions.csv")[0]["calibration"] == "none"


def write_mask(trained, centre, path: Path) -> Path:
    """A sphere of radius 4 mm at `centre` on p00's grid."""
    volume = read_volume(trained.nifti)
    k, j, i = np.indices(volume.array.shape)
    world = volume.index_to_world(np.stack([i, j, k], axis=-1).reshape(-1, 3)).reshape(volume.array.shape + (3,))
    image = sitk.GetImageFromArray((np.linalg.norm(world - centre, axis=-1) <= 4.0).astype(np.uint8))
    image.SetSpacing(tuple(volume.spacing))
    image.SetOrigin(tuple(volume.origin))
    sitk.WriteImage(image, str(path))
    return path


def test_nodule_table_with_coordinates_and_masks(trained, model, tmp_path):
    write_mask(trained, NODULE_B, tmp_path / "b.nii.gz")
    table = tmp_path / "nodules.csv"
    table.write_text("nodule_id,coord_x,coord_y,coord_z,mask\nA,-8,-8,0,\nB,,,,b.nii.gz\n")
    nodules = model.predict(trained.nifti, nodules=table)
    assert [n.nodule_id for n in nodules] == ["A", "B"]
    assert np.allclose(nodules[1].center_lps, NODULE_B, atol=0.01)
    by_coords = model.predict(trained.nifti, coords=[NODULE_A])
    assert nodules[0].risk_uncalibrated == pytest.approx(by_coords[0].risk_uncalibrated, abs=1e-6)  # batch of 2 vs 1
    assert nodules[0].semantics["margins"][1] == pytest.approx(by_coords[0].semantics["margins"][1], abs=1e-6)


def test_mask_gives_its_centroid(trained, tmp_path):
    mask = write_mask(trained, NODULE_B, tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    assert cli_main(["predict", str(trained.run), str(trained.nifti), "--mask", str(mask), "--out", str(out)]) == 0
    nodule = json.loads((out / "predictions.json").read_text())["nodules"][0]
    assert np.allclose(nodule["center_lps"], NODULE_B, atol=0.01)


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_one_panel_per_nodule_of_the_stated_size(cli_output):
    document = json.loads((cli_output / "predictions.json").read_text())
    panels = [n["panel"] for n in document["nodules"]]
    assert panels == ["nodule_n1.png", "nodule_n2.png"]
    for name in panels:
        assert png_size(cli_output / name) == PANEL_SIZE_PX
    assert sorted(p.name for p in cli_output.iterdir()) == sorted(
        ["predictions.json", "predictions.csv", "structured_report.dcm", *panels])


def sr_group(path: Path):
    import highdicom as hd

    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(path))
    groups = report.content.get_volumetric_roi_measurement_groups()
    return report, groups


def test_dicom_sr_round_trip(trained, cli_output):
    from pydicom.sr.codedict import codes

    document = json.loads((cli_output / "predictions.json").read_text())
    report, groups = sr_group(cli_output / "structured_report.dcm")
    source = pydicom.dcmread(next(trained.dicom.iterdir()), stop_before_pixels=True)
    series_sops = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in trained.dicom.iterdir()}
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500" and report.Modality == "SR"
    assert report.StudyInstanceUID == source.StudyInstanceUID and report.SeriesInstanceUID != source.SeriesInstanceUID
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source.SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in evidence.ReferencedSOPSequence} <= series_sops
    assert len(groups) == 2
    for group, nodule in zip(groups, document["nodules"], strict=True):
        assert group.tracking_identifier == f"Nodule {nodule['nodule_id']}"
        risk = group.get_measurements(name=codes.DCM.ProbabilityOfCancer)[0]
        assert risk.value == pytest.approx(nodule["risk"], rel=1e-9) and risk.method.value == "CAL-PLATT"
        roi = group.roi
        assert roi.graphic_type.value == "POINT" and roi.frame_of_reference_uid == source.FrameOfReferenceUID
        assert np.allclose(roi.graphic_data[0], nodule["center_lps"], atol=1e-4)
        sources = {s.referenced_sop_instance_uid for s in roi.source_images_for_segmentation}
        assert sources <= series_sops and len(sources) >= 20  # the 2 mm slices within the views' +-25 mm in z
        evaluations = {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()}
        assert evaluations["Margins"] == nodule["semantics"]["margins"]["value"]
        assert evaluations["Pleural attachment"].lower() == nodule["semantics"]["pleural_attachment"]["value"]


def bad_run(trained, tmp_path, change: str) -> Path:
    run = copy_run(trained.run, tmp_path / "run")
    if change == "no-config":
        (run / "config.json").unlink()
    elif change == "no-weights":
        (run / "fold_1" / "best" / "model.safetensors").unlink()
    elif change == "version":
        document = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**document, "format_version": 99, "package_version": "9.0"}))
    return run


def shifted(trained, tmp_path: Path) -> Path:
    """p00 moved so that its world extent (-100..-38 mm) no longer covers its voxel index range (0..31)."""
    volume = read_volume(trained.nifti)
    volume.origin = np.array([-100.0, -100.0, -100.0])
    return write_volume(volume, tmp_path / "shifted.nii.gz")


def not_ct(tmp_path: Path) -> Path:
    image = sitk.GetImageFromArray(np.tile(np.arange(32, dtype=np.uint8)[None, None] * 8, (8, 32, 1)))
    sitk.WriteImage(image, str(tmp_path / "photo.nii.gz"))
    return tmp_path / "photo.nii.gz"


BAD_INPUTS = {
    "outside the scan": (None, ["--coord", "20,20,20", "IMAGE=shifted"],
                         ["lies outside the scan", "x -100.0..-38.0", "look like voxel indices"]),
    "run without config.json": ("no-config", ["--coord", "-8,-8,0"],
                                ["not a noduleclip run folder", "config.json is missing"]),
    "run without fold weights": ("no-weights", ["--coord", "-8,-8,0"], ["fold_1/best/model.safetensors is missing"]),
    "run of another version": ("version", ["--coord", "-8,-8,0"], ["run format version 99", "reads version 1"]),
    "not a CT": (None, ["--coord", "0,0,0", "IMAGE=photo"], ["does not look like CT"]),
    "unreadable CSV row": (None, ["--nodules", "CSV"], ["nodules.csv row 3", "coord_y 'abc' is not a number"]),
    "SR of a NIfTI": (None, ["--coord", "-8,-8,0", "--dicom-sr"], ["DICOM SR needs a DICOM source", "p00.nii.gz"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_sentence_exit_2_and_nothing_in_out(trained, tmp_path, capsys, case):
    change, extra, expected = BAD_INPUTS[case]
    run = bad_run(trained, tmp_path, change) if change else trained.run
    image = not_ct(tmp_path) if "IMAGE=photo" in extra else shifted(trained, tmp_path) if "IMAGE=shifted" in extra \
        else trained.nifti
    table = tmp_path / "nodules.csv"
    table.write_text("nodule_id,coord_x,coord_y,coord_z\nA,-8,-8,0\nB,1,abc,2\n")
    extra = [str(table) if a == "CSV" else a for a in extra if not a.startswith("IMAGE=")]
    out = tmp_path / "out"
    code = cli_main(["predict", str(run), str(image), *extra, "--out", str(out)])
    message = capsys.readouterr().err.strip()
    assert code == 2 and message.count("\n") == 0, message
    for fragment in expected:
        assert fragment in message, message
    assert not out.exists()


def test_a_failure_while_writing_leaves_no_partial_output(trained, tmp_path, monkeypatch):
    def broken_panel(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("noduleclip.predict.panel.draw_panel", broken_panel)  # after the JSON and CSV are staged
    for out, existed in ((tmp_path / "new", False), (tmp_path / "existing", True)):
        if existed:
            out.mkdir()
        with pytest.raises(RuntimeError, match="disk full"):
            cli_main(["predict", str(trained.run), str(trained.nifti), "--coord", "-8,-8,0", "--out", str(out)])
        assert out.exists() == existed and (not existed or list(out.iterdir()) == [])


def test_nodules_must_be_given_exactly_one_way(trained):
    volume = read_volume(trained.nifti)
    with pytest.raises(InputError, match="one way"):
        locate_nodules(volume)
    with pytest.raises(InputError, match="one way .got coords and mask"):
        locate_nodules(volume, coords=[NODULE_A], mask="m.nii.gz")
    with pytest.raises(InputError, match="not a list of"):
        locate_nodules(volume, coords=[(1.0, 2.0)])


def test_vision_only_run_has_no_semantic_profile(trained, tmp_path):
    run = tmp_path / "vision-only"
    # a run of its own: vision-only has no text tower, which is what this test is about
    train_run(trained.manifest, run, TrainConfig(**{**BASE, "tuning": "vision-only", "epochs": 1,
                                                    "cache": str(trained.cache)}))
    nodule = NoduleClip.load(run).predict(trained.nifti, coords=[NODULE_A])[0]
    assert nodule.semantics == {} and nodule.semantic_distribution == {}
    assert any("vision-only" in note for note in nodule.notes)
    assert len(nodule.fold_risks) == 2 and nodule.risk_uncalibrated == pytest.approx(np.mean(nodule.fold_risks))
    assert png_size(draw_panel(nodule, tmp_path / "panel.png")) == PANEL_SIZE_PX


def test_the_profile_lists_only_the_features_the_training_texts_varied(trained, model, tmp_path):
    document = json.loads((trained.run / "config.json").read_text())
    assert document["manifest"]["text_features"] == ["consistency", "margins", "pleural_attachment"]
    nodule = model.predict(trained.nifti, coords=[NODULE_A])[0]
    assert list(nodule.semantics) == document["manifest"]["text_features"]
    older = copy_run(trained.run, tmp_path / "older")  # runs written before the list was kept: every feature
    del document["manifest"]["text_features"]
    (older / "config.json").write_text(json.dumps(document))
    profiled = NoduleClip.load(older).predict(trained.nifti, coords=[NODULE_A])[0]
    assert {"margins", "shape", "cavitation", "reticulation"} <= set(profiled.semantics)
    assert profiled.semantics["margins"][0] == nodule.semantics["margins"][0]
    assert profiled.semantics["margins"][1] == pytest.approx(nodule.semantics["margins"][1], abs=1e-6)


def test_real_lidc_0001_nodule_centre_and_sr_references(shared_data, trained, tmp_path):
    series = next((shared_data / "lidc-idri-0001").glob("CT_*"))
    volume = read_volume(shared_data / "lidc-idri-0001")
    centre = lidc0001_nodule_center(shared_data, volume)
    out = tmp_path / "out"
    coord = ",".join(f"{c:.3f}" for c in centre)
    assert cli_main(["predict", str(trained.run), str(shared_data / "lidc-idri-0001"), "--coord", coord,
                     "--out", str(out), "--dicom-sr"]) == 0
    document = json.loads((out / "predictions.json").read_text())
    assert document["series_uid"] == series.name[len("CT_"):] == volume.metadata["series_uid"]
    report, groups = sr_group(out / "structured_report.dcm")
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.metadata["series_uid"]
    assert report.StudyInstanceUID == volume.metadata["study_uid"] and report.PatientID == "LIDC-IDRI-0001"
    assert groups[0].roi.frame_of_reference_uid == volume.metadata["frame_of_reference_uid"]
    assert np.allclose(groups[0].roi.graphic_data[0], centre, atol=1e-3)
    # the same TID 1500 skeleton as the collection's own measurement reports of this nodule
    reference = pydicom.dcmread(next((shared_data / "lidc-idri-0001").glob("SR_*/*.dcm")))
    for ours in (report, reference):
        assert ours.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        assert ours.ConceptNameCodeSequence[0].CodeValue == "126000"
    top = {i.ConceptNameCodeSequence[0].CodeMeaning for i in report.ContentSequence}
    theirs = {i.ConceptNameCodeSequence[0].CodeMeaning for i in reference.ContentSequence}
    assert theirs - top <= {"Person Observer Name"}
    group_names = {i.ConceptNameCodeSequence[0].CodeMeaning for i in groups[0][0].ContentSequence}
    assert {"Tracking Identifier", "Tracking Unique Identifier", "Finding", "Finding Site"} <= group_names


def test_predict_names_the_model_from_its_card(trained, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["predict", str(trained.run), str(trained.nifti), "--coord", "-8,-8,0", "--out", str(out)]) == 0
    card = json.loads((trained.run / "model_card.json").read_text())
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("model: "))
    assert line.startswith(f"model: tiny ({card['model']['tuning']}), ")
    assert f"trained on {card['training_data']['cross_validation']['nodules']} nodules" in line
