"""Acquisition perturbations: physical units whatever the voxel spacing, seeded noise, and exact crops."""

from pathlib import Path

import numpy as np
import pytest

from helpers import add_sphere, delong_p, make_volume, write_sphere_scans
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.evaluate.perturb import robustness_rows
from noduleclip.io.volume import Volume
from noduleclip.preprocess.acquisition import (
    Perturbation,
    Step,
    parse_perturbations,
    perturb_volume,
    perturbed_views,
    slab_weights,
)
from noduleclip.preprocess.views import ViewConfig, crop_for_views, sample_planes


def flat(shape=(40, 40, 40), spacing=(1.0, 1.0, 1.0), hu=0.0) -> Volume:
    return Volume(np.full(shape, hu, dtype=np.float32), origin=(0, 0, 0), spacing=spacing)


def only(*steps: Step) -> Perturbation:
    return Perturbation(tuple(steps))


def test_parse_specs_one_perturbation_per_item_and_plus_joins():
    found = parse_perturbations(["noise=20,thick=3", "smooth=1.0+sharp=0.5", "noise=20", "noise=10:0.7"])
    assert [p.name for p in found] == ["noise=20", "thick=3", "smooth=1+sharp=0.5", "noise=10:0.7"]
    assert found[2].steps == (Step("smooth", 1.0), Step("sharp", 0.5))
    assert found[3].steps[0].correlation_mm == 0.7
    for bad, message in [("blur=2", "kind one of"), ("noise", "kind one of"), ("noise=x", "not a number"),
                         ("thick=-1", "positive"), ("smooth=1:2", "only noise")]:
        with pytest.raises(InputError, match=message):
            parse_perturbations([bad])


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.6, 0.6, 2.5)])
def test_noise_of_sigma_s_has_std_s_on_a_flat_phantom(spacing):
    volume = flat(spacing=spacing)
    white = perturb_volume(volume, only(Step("noise", 20.0)), seed=1, key="a").array
    assert white.std() == pytest.approx(20.0, rel=0.02) and abs(white.mean()) < 0.5
    # correlated noise keeps its standard deviation and correlates neighbours
    shaped = perturb_volume(flat(shape=(60, 60, 60), spacing=spacing), only(Step("noise", 20.0, 1.0)), 1, "a").array
    inner = shaped[8:-8, 8:-8, 8:-8]
    assert inner.std() == pytest.approx(20.0, rel=0.08)
    neighbour = np.corrcoef(inner[:, :, :-1].ravel(), inner[:, :, 1:].ravel())[0, 1]
    assert neighbour > 0.3 and abs(np.corrcoef(white[:, :, :-1].ravel(), white[:, :, 1:].ravel())[0, 1]) < 0.05


def test_noise_is_deterministic_with_the_seed_and_differs_across_seeds_and_nodules():
    volume = flat((10, 10, 10))
    a = perturb_volume(volume, only(Step("noise", 20.0)), seed=3, key="n1").array
    assert np.array_equal(a, perturb_volume(volume, only(Step("noise", 20.0)), seed=3, key="n1").array)
    assert not np.array_equal(a, perturb_volume(volume, only(Step("noise", 20.0)), seed=4, key="n1").array)
    assert not np.array_equal(a, perturb_volume(volume, only(Step("noise", 20.0)), seed=3, key="n2").array)
    assert np.array_equal(volume.array, np.zeros((10, 10, 10)))  # the input is not touched


def step_in_z(dz: float, length_mm: float = 40.0) -> tuple[Volume, np.ndarray]:
    """-1000 HU below z = 0, 0 HU above; slices of dz mm whose boundary lies at z = 0."""
    n = int(round(length_mm / dz))
    z = (np.arange(n) - n / 2 + 0.5) * dz
    array = np.where(z < 0, -1000.0, 0.0)[:, None, None] * np.ones((1, 6, 6))
    return Volume(array.astype(np.float32), origin=(0, 0, z[0]), spacing=(0.7, 0.7, dz)), z


def ramp(z: np.ndarray, thickness: float) -> np.ndarray:
    """The step averaged over a box of `thickness` mm: a linear ramp across z = 0."""
    return -1000.0 * np.clip(0.5 - z / thickness, 0.0, 1.0)


def test_thick_slices_are_millimetres_whatever_the_slice_spacing():
    profiles = {}
    for dz in (0.5, 1.0, 1.25):
        volume, z = step_in_z(dz)
        thick = perturb_volume(volume, only(Step("thick", 5.0)), seed=0).array[:, 3, 3]
        profiles[dz] = np.interp([-2.0, -1.0, 0.0, 1.0, 2.0], z, thick)
        # on its own grid the profile is the continuous ramp (exact where the box covers whole slices)
        assert np.max(np.abs(thick - ramp(z, 5.0))) < 1000 * dz / 5 / 2 + 1e-3
    for dz in (1.0, 1.25):
        assert profiles[dz] == pytest.approx(profiles[0.5], abs=60.0)
    assert profiles[0.5] == pytest.approx(ramp(np.array([-2.0, -1.0, 0.0, 1.0, 2.0]), 5.0), abs=30.0)
    # a slab no thicker than the slices changes nothing; the weights cover exactly the thickness
    volume, _ = step_in_z(2.0)
    assert np.array_equal(perturb_volume(volume, only(Step("thick", 1.5)), 0).array, volume.array)
    assert slab_weights(3.0, 1.0).tolist() == pytest.approx([1 / 3] * 3)
    assert slab_weights(2.0, 1.0).tolist() == pytest.approx([0.25, 0.5, 0.25])


def edge_in_x(dx: float) -> tuple[Volume, np.ndarray]:
    n = int(round(30 / dx))
    x = (np.arange(n) - n / 2 + 0.5) * dx
    array = np.where(x < 0, -1000.0, 0.0)[None, None, :] * np.ones((8, 8, 1))
    return Volume(array.astype(np.float32), origin=(x[0], 0, 0), spacing=(dx, 0.8, 2.5)), x


def test_smoothing_is_millimetres_whatever_the_pixel_spacing():
    from scipy.special import erf

    points = np.array([-3.0, -1.5, -0.5, 0.5, 1.5, 3.0])
    expected = -1000.0 * 0.5 * (1 - erf(points / (2.0 * np.sqrt(2))))  # a step blurred by sigma = 2 mm
    for dx in (0.4, 0.8, 1.0):
        volume, x = edge_in_x(dx)
        blurred = perturb_volume(volume, only(Step("smooth", 2.0)), 0).array[4, 4]
        assert np.interp(points, x, blurred) == pytest.approx(expected, abs=40.0), dx
        sharp = perturb_volume(volume, only(Step("sharp", 0.5)), 0).array[4, 4]
        assert sharp.min() < -1000 - 50 and sharp.max() > 50  # overshoot on both sides of the edge
        assert sharp[:5] == pytest.approx(-1000.0) and sharp[-5:] == pytest.approx(0.0)  # flat far away


def test_a_crop_samples_exactly_what_the_whole_scan_does():
    volume = make_volume(shape=(60, 160, 150))  # anisotropic spacing and an oblique direction
    center = volume.index_to_world(np.array([70.0, 85.0, 30.0]))
    add_sphere(volume, center, 6.0)
    config = ViewConfig()
    crop = crop_for_views(volume, center, config, margin_mm=4.0)
    assert crop.array.size < volume.array.size
    assert np.array_equal(sample_planes(crop, center, config), sample_planes(volume, center, config))
    # a blur on the crop equals the blur of the whole scan where the views sample
    whole = sample_planes(perturb_volume(volume, only(Step("smooth", 1.0)), 0), center, config)
    reach = only(Step("smooth", 1.0)).steps[0].reach_mm()
    cropped = sample_planes(perturb_volume(crop_for_views(volume, center, config, reach), only(Step("smooth", 1.0)), 0),
                            center, config)
    assert np.max(np.abs(whole - cropped)) < 1e-5


def test_perturbed_views_of_a_manifest(tmp_path: Path):
    records = list(NoduleManifest.read(write_sphere_scans(tmp_path)))
    perturbations = parse_perturbations(["smooth=1.5,noise=30"])
    views = perturbed_views(records, [Perturbation(())] + perturbations, seed=2)
    assert list(views) == ["none", "smooth=1.5", "noise=30"] and views["none"].shape == (4, 9, 50, 50)
    from noduleclip.io import read_volume
    for i, record in enumerate(records):  # no steps: the views the preprocessing cuts (float16 as cached)
        plain = sample_planes(read_volume(record.image), record.coord)
        assert np.array_equal(views["none"][i], plain.astype(np.float16).astype(np.float32))
    assert views["smooth=1.5"][0].std() < views["none"][0].std()
    assert np.abs(views["noise=30"] - views["none"]).mean() > 0.005
    again = perturbed_views(records[::-1], perturbations, seed=2)  # order and seed decide, not the scan order
    assert np.array_equal(again["noise=30"][::-1], views["noise=30"])


def test_robustness_rows_measure_changes_against_the_unperturbed_scores():
    labels = np.array([0, 0, 1, 1, np.nan])
    risk = np.array([0.1, 0.4, 0.35, 0.8, 0.5])
    rows = robustness_rows(labels, risk, {"noise=20": risk + np.array([0.0, 0.0, 0.1, 0.0, -0.2])})
    assert rows[0]["perturbation"] == "none" and rows[0]["auroc"] == 0.75
    row = rows[1]
    assert row["auroc"] == 1.0 and row["delta_auroc"] == pytest.approx(0.25)
    assert row["shift_median"] == pytest.approx(0.0) and row["shift_max"] == pytest.approx(0.2)
    assert row["shift_p95"] == pytest.approx(np.percentile([0, 0, 0.1, 0, 0.2], 95))
    assert row["delta_brier"] == pytest.approx(np.mean(([0.1, 0.4, 0.45, 0.8] - np.array([0, 0, 1, 1])) ** 2)
                                               - np.mean(([0.1, 0.4, 0.35, 0.8] - np.array([0, 0, 1, 1])) ** 2))
    known = slice(0, 4)  # the labelled nodules
    assert row["delong_p"] == pytest.approx(delong_p(labels[known], risk[known], (risk + [0, 0, 0.1, 0, 0])[known]),
                                            rel=1e-9)
