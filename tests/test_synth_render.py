"""Nodules look like their features (rendered alone in lung at 1 mm), and the risk model points the right way."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from noduleclip.synth.anatomy import Tissue
from noduleclip.synth.features import NoduleFeatures, sample_features
from noduleclip.synth.phantom import nodule_phantom
from noduleclip.synth.risk import calibrate_intercept, feature_logit, malignancy_risk

LUNG = Tissue().lung
BASE = NoduleFeatures(long_diameter_mm=16.0, short_diameter_mm=13.0, consistency="solid", margins="smooth",
                      shape="ovoid")


def nodule(seed: int = 0, chest_wall: bool | None = None, **changes):
    f = dataclasses.replace(BASE, **changes)
    volume, place = nodule_phantom(f, seed=seed, chest_wall=chest_wall)
    return volume.array, place


def centre_block(array, half: int = 1):
    c = array.shape[0] // 2
    return array[c - half : c + half + 1, c - half : c + half + 1, c - half : c + half + 1]


def irregularity(array) -> float:
    """Surface voxels per volume^(2/3) of the nodule's main component (larger = less compact)."""
    mask = array > -500
    labels, _ = ndimage.label(mask)
    mask = labels == labels[tuple(s // 2 for s in array.shape)]
    surface = mask & ~ndimage.binary_erosion(mask)
    return surface.sum() / mask.sum() ** (2 / 3)


def test_solid_nodule_is_centred_and_sized_as_its_diameter():
    array, _ = nodule(shape="round", short_diameter_mm=15.0, long_diameter_mm=16.0)
    assert centre_block(array).min() > 0  # soft tissue at the centre
    mask = array > (LUNG + 35.0) / 2  # half way between lung and nodule
    extent = max(np.ptp(np.nonzero(mask)[axis]) + 1 for axis in range(3))
    assert 14 <= extent <= 18  # mm at 1 mm voxels
    assert abs(np.median(array[0]) - LUNG) < 5  # lung around it is untouched


def test_spiculated_margins_are_more_irregular_than_smooth_ones():
    for seed in range(3):
        smooth = irregularity(nodule(seed)[0])
        spiculated = irregularity(nodule(seed, margins="spiculated")[0])
        lobulated = irregularity(nodule(seed, margins="lobulated")[0])
        assert spiculated > 1.15 * smooth
        assert lobulated > smooth


def test_ground_glass_is_fainter_than_solid_and_part_solid_has_both():
    solid = centre_block(nodule(1)[0]).mean()
    glass = centre_block(nodule(1, consistency="pure ground glass")[0]).mean()
    semi = centre_block(nodule(1, consistency="semiconsolidation")[0]).mean()
    assert LUNG + 150 < glass < semi < solid - 100
    part, _ = nodule(1, consistency="part-solid")
    inside = part[part > LUNG + 100]
    assert (inside > -100).sum() > 30 and ((inside > -700) & (inside < -400)).sum() > 200


def test_ill_defined_margin_blurs_the_edge():
    def edge_width(array):
        profile = array[array.shape[0] // 2, array.shape[1] // 2]
        return int(((profile > LUNG + 100) & (profile < -100)).sum())

    ill_defined = nodule(2, margins="ill-defined", margin_conspicuity="poorly marginated")[0]
    assert edge_width(ill_defined) > edge_width(nodule(2)[0]) + 2


def test_internal_findings_show_as_air_or_calcium():
    plain, place = nodule(3)
    b = place.semi_axes[1]
    core = lambda a: a[tuple(slice(s // 2 - int(b * 0.6), s // 2 + int(b * 0.6) + 1) for s in a.shape)]  # noqa: E731
    assert core(plain).min() > -200 and plain.max() < 200
    assert core(nodule(3, cavitation=True)[0]).min() < -900
    assert core(nodule(3, cyst_like_spaces=True)[0]).min() < -600
    assert nodule(3, eccentric_calcification=True)[0].max() > 500
    calcified = nodule(3, eccentric_calcification=True)[0]
    assert centre_block(calcified, 0).max() < 200  # the calcium is eccentric, not at the centre
    necrotic = nodule(3, necrosis=True, long_diameter_mm=24.0, short_diameter_mm=20.0)[0]
    whole = nodule(3, long_diameter_mm=24.0, short_diameter_mm=20.0)[0]
    assert centre_block(necrotic, 2).mean() < centre_block(whole, 2).mean() - 15


def test_outer_findings_add_structures_around_the_nodule():
    def around(array, place):
        """Voxels denser than lung outside a ball just larger than the nodule."""
        c = np.array(array.shape) // 2
        grid = np.indices(array.shape).transpose(1, 2, 3, 0) - c
        far = np.linalg.norm(grid, axis=-1) > place.semi_axes[0] + 2
        return int(((array > LUNG + 200) & far).sum())

    plain = around(*nodule(4))
    for finding in ("vascular_convergence", "airway_cutoff", "septal_stretching"):
        assert around(*nodule(4, **{finding: True})) > plain + 20, finding
    emphysema, _ = nodule(4, paracicatricial_emphysema=True)
    assert (emphysema < LUNG - 80).sum() > 30


def test_pleural_retraction_pulls_tissue_toward_the_pleura():
    def gap_tissue(**changes):
        array, place = nodule(5, chest_wall=True, **changes)
        x = np.arange(array.shape[2]) - array.shape[2] // 2
        between = (x > place.semi_axes[1]) & (x < place.pleura_distance - 0.5)
        return int((array[:, :, between] > LUNG + 200).sum())

    absent = gap_tissue(pleural_retraction="absent")
    mild = gap_tissue(pleural_retraction="mild dimpling")
    obvious = gap_tissue(pleural_retraction="obvious dimpling")
    assert absent < mild < obvious


def test_pleural_attachment_touches_the_chest_wall():
    array, place = nodule(6, pleural_attachment=True)
    c = array.shape[0] // 2
    profile = array[c, c, c:]  # from the centre toward the pleura (+x)
    assert profile.min() > -300  # no lung between the nodule and the wall


def test_risk_rises_with_size_and_suspicious_features_and_falls_with_calcification():
    b = calibrate_intercept(0.3)
    small_smooth = dataclasses.replace(BASE, long_diameter_mm=6.0, short_diameter_mm=5.5, shape="round")
    big_spiculated = dataclasses.replace(BASE, long_diameter_mm=25.0, short_diameter_mm=18.0, margins="spiculated")
    assert malignancy_risk(big_spiculated, b) > 0.8 > 0.05 > malignancy_risk(small_smooth, b)
    sizes = [malignancy_risk(dataclasses.replace(BASE, long_diameter_mm=d), b) for d in (6, 10, 15, 25)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    for change in (dict(consistency="part-solid"), dict(pleural_retraction="obvious dimpling"),
                   dict(vascular_convergence=True)):
        assert feature_logit(dataclasses.replace(BASE, **change)) > feature_logit(BASE), change
    assert feature_logit(dataclasses.replace(BASE, eccentric_calcification=True)) < feature_logit(BASE) - 1.0


def test_intercept_calibrates_prevalence_on_fresh_draws():
    rng = np.random.default_rng(99)
    draws = [sample_features(rng) for _ in range(4000)]
    for prevalence in (0.15, 0.45):
        b = calibrate_intercept(prevalence)
        assert abs(np.mean([malignancy_risk(f, b) for f in draws]) - prevalence) < 0.02


@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_features_respect_their_dependencies(seed):
    rng = np.random.default_rng(seed)
    for f in (sample_features(rng) for _ in range(500)):
        assert 0 < f.short_diameter_mm <= f.long_diameter_mm and 5.0 <= f.long_diameter_mm <= 30.0
        assert not (f.reticulation and f.consistency == "solid")
        assert not (f.necrosis and f.cavitation)
        assert f.margin_conspicuity == "poorly marginated" or f.margins != "ill-defined"
