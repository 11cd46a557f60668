"""A fixed blur of every scan before its views are cut (`ViewConfig.smooth_mm`, `--smooth-mm`): millimetres
whatever the voxel spacing, the same values as blurring the whole scan, the robustness check's re-rendering on
top of it, and the setting carried from the command line through the run to predict."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage
from scipy.special import erf

from helpers import add_sphere
from noduleclip.cli import build_parser
from noduleclip.commands.train import train_config
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.io import read_volume, write_volume
from noduleclip.io.volume import Volume
from noduleclip.predict import NoduleClip
from noduleclip.preprocess.acquisition import Perturbation, Step, perturb_volume, perturbed_views
from noduleclip.preprocess.cache import ViewCache
from noduleclip.preprocess.views import ViewConfig, crop_for_views, sample_planes
from noduleclip.train import TrainConfig
from noduleclip.train.model_card import CARD_FILE, write_model_card

SMOOTH = ViewConfig(smooth_mm=1.5)


def step_edge(spacing: tuple[float, float, float], extent_mm: float = 60.0) -> Volume:
    """-1000 HU for x < 30 mm, 0 HU beyond: a wall along x, on voxels of `spacing` (x, y, z) mm."""
    nx, ny, nz = (int(round(extent_mm / s)) for s in spacing)
    x = np.arange(nx) * spacing[0]
    array = np.where(x < 30.0 - spacing[0] / 2, -1000.0, 0.0).astype(np.float32)
    array = np.broadcast_to(array, (nz, ny, nx)).copy()
    return Volume(array, origin=(0.0, 0.0, 0.0), spacing=spacing)


@pytest.mark.parametrize("spacing", [(0.5, 0.5, 1.25), (1.0, 1.0, 2.5)])
def test_the_blur_is_in_millimetres_whatever_the_voxels(spacing):
    """Across a wall the axial view's profile is a Gaussian's integral of 1.5 mm on either voxel size: a blur
    counted in voxels would be twice as wide on the coarse grid as on the fine one."""
    volume = step_edge(spacing)
    center = (30.0 - spacing[0] / 2, 30.0, 30.0)  # on the wall, halfway between two voxel centres
    axial = sample_planes(volume, center, SMOOTH)[0]
    x_mm = np.arange(50) - 25  # the view's columns, 1 mm apart, run along x
    profile = axial[25]
    expected = (0.5 * (1 + erf(x_mm / (1.5 * np.sqrt(2)))) * 1000.0 - 1000.0 + 1000.0) / 1500.0  # windowed
    np.testing.assert_allclose(profile[15:35], expected[15:35], atol=0.02)
    sharp = sample_planes(volume, center)[0][25]
    assert sharp[23] < expected[23] - 0.05  # without the setting the wall stays sharper than the blur


def test_blurring_around_the_nodule_equals_blurring_the_whole_scan():
    """The views blur only the part of the scan they sample, widened by the kernel's reach; every sampled voxel
    gets the value that blurring the whole scan gives it, near the scan's edge too."""
    rng = np.random.default_rng(0)
    array = rng.normal(-600.0, 300.0, (30, 70, 70)).astype(np.float32)
    volume = Volume(array, origin=(-10.0, 5.0, -40.0), spacing=(0.8, 0.8, 2.0))
    whole = Volume(ndimage.gaussian_filter(array, 1.5 / np.array([2.0, 0.8, 0.8]), mode="nearest"),
                   volume.origin, volume.spacing)
    for ijk in ([35, 35, 15], [5, 60, 2]):  # the middle, and a corner where the views leave the scan
        center = volume.index_to_world(ijk)
        np.testing.assert_allclose(sample_planes(volume, center, SMOOTH), sample_planes(whole, center),
                                   atol=2e-5)


def test_the_robustness_check_re_renders_before_the_fixed_blur(tmp_path):
    """`evaluate --perturb` re-renders the scan as another scanner would and then cuts views as the run does:
    its own blur comes on top of the perturbation's, over a crop wide enough for both."""
    rng = np.random.default_rng(1)  # texture everywhere, so that a crop too narrow for the blur shows
    scan = Volume(rng.normal(-700.0, 200.0, (40, 90, 90)).astype(np.float32), origin=(-30.0, -30.0, -50.0),
                  spacing=(0.7, 0.7, 2.5))
    add_sphere(scan, (0.0, 0.0, 0.0), 4.0, hu=50.0)
    write_volume(scan, tmp_path / "scan.nii.gz")
    (tmp_path / "nodules.csv").write_text("patient_id,nodule_id,image,coord_x,coord_y,coord_z,label\n"
                                          "P0,P0-a,scan.nii.gz,0,0,0,1\nP0,P0-b,scan.nii.gz,6,-4,3,0\n")
    records = list(NoduleManifest.read(tmp_path / "nodules.csv"))
    smoother = Perturbation((Step("smooth", 1.0),))
    views = perturbed_views(records, [Perturbation(()), smoother], SMOOTH)
    for i, record in enumerate(records):
        volume = read_volume(record.image)
        assert crop_for_views(volume, record.coord, SMOOTH, 6.0).shape_ijk != volume.shape_ijk  # crops, not scans
        np.testing.assert_allclose(views["none"][i].astype(np.float32), sample_planes(volume, record.coord, SMOOTH),
                                   atol=1e-3)  # float16, as the cache
        expected = sample_planes(perturb_volume(volume, smoother), record.coord, SMOOTH)
        np.testing.assert_allclose(views["smooth=1"][i].astype(np.float32), expected, atol=1e-3)
        assert not np.allclose(expected, sample_planes(perturb_volume(volume, smoother), record.coord), atol=0.01)


def test_caches_and_runs_made_before_the_setting_stay_current_and_blurred_ones_are_kept_apart(tmp_path):
    assert "smooth_mm" not in ViewConfig().to_dict()
    assert ViewConfig(smooth_mm=1.0).to_dict()["smooth_mm"] == 1.0
    blurred = ViewCache(tmp_path / "blurred", ViewConfig(smooth_mm=1.0))
    with pytest.raises(InputError, match="other settings"):
        ViewCache(blurred.root, ViewConfig())
    with pytest.raises(InputError, match="other settings"):
        ViewCache(blurred.root, ViewConfig(smooth_mm=1.5))


def resolved(*argv: str):
    return train_config(build_parser("train").parse_args(["train", *argv]))


def test_the_option_reaches_the_training_settings_overrides_a_file_and_refuses_nonsense(tmp_path):
    assert resolved().views.smooth_mm == 0.0
    assert resolved("--smooth-mm", "1").views == ViewConfig(smooth_mm=1.0)
    settings = tmp_path / "settings.yaml"
    settings.write_text("views:\n  smooth_mm: 0.7\n  mark_outside: true\n")
    assert resolved("--config", str(settings)).views == ViewConfig(smooth_mm=0.7, mark_outside=True)
    assert resolved("--config", str(settings), "--smooth-mm", "0").views == ViewConfig(mark_outside=True)
    for bad in ("-1", "6"):
        with pytest.raises(InputError, match="--smooth-mm"):
            resolved("--smooth-mm", bad)
    with pytest.raises(InputError, match="blur"):
        TrainConfig(views=ViewConfig(smooth_mm=9.0)).validate()


def test_predict_cuts_views_as_the_run_was_trained(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run.run, tmp_path / "run", ignore=shutil.ignore_patterns("cache", "last", "resume"))
    config_path = run / "config.json"
    config = json.loads(config_path.read_text())
    config["train"]["views"]["smooth_mm"] = 1.5
    config_path.write_text(json.dumps(config, indent=2))
    scan = Volume(np.full((30, 60, 60), -800.0, np.float32), origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.5))
    center = tuple(scan.index_to_world([30, 30, 15]))
    add_sphere(scan, center, 3.0, hu=40.0)
    plain = NoduleClip.load(tiny_run.run).predict(scan, coords=[center])[0]
    blurred = NoduleClip.load(run).predict(scan, coords=[center])[0]
    np.testing.assert_array_equal(plain.views, sample_planes(scan, center))
    np.testing.assert_array_equal(blurred.views, sample_planes(scan, center, SMOOTH))
    assert blurred.views[0, 25, 25] < plain.views[0, 25, 25]  # a 3 mm nodule's centre fades under the blur
    card = (write_model_card(run), (run / CARD_FILE).read_text())[1]
    assert "the scan blurred by 1.5 mm first" in card
    assert "blurred" not in (tiny_run.run / CARD_FILE).read_text()


def test_the_views_command_draws_blurred_views_and_refuses_a_blur_too_wide(tmp_path, capsys):
    from noduleclip.cli import main

    scan = Volume(np.full((30, 60, 60), -800.0, np.float32), origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.5))
    add_sphere(scan, tuple(scan.index_to_world([30, 30, 15])), 3.0, hu=40.0)
    image = write_volume(scan, tmp_path / "scan.nii.gz")
    coord = ",".join(f"{c:g}" for c in scan.index_to_world([30, 30, 15]))
    assert main(["views", str(image), "--coord", coord, "--smooth-mm", "1.5", "--out", str(tmp_path / "v.png")]) == 0
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["views", str(image), "--coord", coord, "--smooth-mm", "9", "--out", str(tmp_path / "w.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith("--smooth-mm 9 is not a blur of 0 to 5 mm") and "\n" not in error
    assert not (tmp_path / "w.png").exists()
