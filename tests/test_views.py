"""The nine views: geometry against scipy's rotation and the authors' resample-and-rotate way."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from helpers import add_sphere, make_volume
from noduleclip.io.volume import Volume
from noduleclip.preprocess.reference import reference_planes
from noduleclip.preprocess.views import PLANES, ViewConfig, sample_planes, window


def bright_centroid(view: np.ndarray, level: float = 0.95) -> np.ndarray:
    rows, cols = np.nonzero(view >= level)
    assert len(rows) > 0, "the sphere is not in this view"
    return np.array([rows.mean(), cols.mean()])


def test_planes_match_scipy_rotation_of_the_cube():
    # A 1 mm identity-geometry cube whose centre voxel is the nodule: our planes must be exactly
    # scipy.ndimage.rotate's central slices (same points, one linear interpolation each).
    rng = np.random.default_rng(1)
    cube = ndimage.gaussian_filter(rng.normal(size=(51, 51, 51)), 2).astype(np.float32)
    cube = -1000 + (cube - cube.min()) / (cube.max() - cube.min()) * 1500
    volume = Volume(cube, origin=(0, 0, 0), spacing=(1, 1, 1))
    center = np.array([25.0, 25.0, 25.0])  # x, y, z of voxel (25, 25, 25)
    config = ViewConfig(size=51)
    ours = sample_planes(volume, center, config)
    scaled = window(cube, config)
    for p, (pair, along) in enumerate(PLANES):
        rotated = scaled if pair is None else ndimage.rotate(scaled, 45, axes=pair, reshape=False, order=1, cval=0.0)
        expected = np.take(rotated, 25, axis=along)
        inner = (slice(8, 43), slice(8, 43))
        np.testing.assert_allclose(ours[p][inner], expected[inner], atol=2e-3, err_msg=f"plane {p}")


def test_matches_reference_on_anisotropic_rotated_volume():
    volume = make_volume()
    center = volume.center_world() + np.array([3.3, -2.1, 4.7])
    add_sphere(volume, center, 7.0, hu=100.0)
    ours = sample_planes(volume, center)
    ref = reference_planes(volume, center)
    assert ours.shape == ref.shape == (9, 50, 50)
    interior = np.abs(ours - ref)[:, 5:45, 5:45]
    assert interior.mean() <= 0.02
    assert interior.reshape(9, -1).mean(axis=1).max() <= 0.02


@pytest.mark.parametrize("spacing,angles", [((1.0, 1.0, 1.0), (0, 0, 0)), ((0.7, 0.7, 2.5), (0, 0, 0)),
                                            ((0.8, 0.6, 1.5), (15, 25, -40))])
def test_sphere_at_world_point_lands_at_the_centre_of_every_view(spacing, angles):
    volume = make_volume(spacing=spacing, angles=angles)
    center = volume.center_world() + np.array([-4.0, 6.0, 2.5])
    add_sphere(volume, center, 6.0, hu=500.0)
    views = sample_planes(volume, center)
    for p in range(9):
        np.testing.assert_allclose(bright_centroid(views[p]), [25, 25], atol=0.6, err_msg=f"plane {p}")
        assert views[p, 25, 25] == pytest.approx(1.0)


def test_values_are_windowed_and_air_outside_the_scan():
    volume = make_volume()
    corner = volume.index_to_world([0, 0, 0])
    views = sample_planes(volume, corner)
    assert views.dtype == np.float32 and views.min() >= 0.0 and views.max() <= 1.0
    # Half of each plane through a corner voxel lies outside the scan: exactly air (0 after windowing).
    assert (views == 0.0).mean() > 0.3
    hot = Volume(np.full((5, 5, 5), 3000.0, np.float32), origin=(0, 0, 0), spacing=(1, 1, 1))
    assert sample_planes(hot, (2, 2, 2))[:, 25, 25].tolist() == [1.0] * 9


def test_view_settings_change_the_field_of_view():
    volume = make_volume()
    center = volume.center_world()
    add_sphere(volume, center, 5.0, hu=500.0)
    small = sample_planes(volume, center, ViewConfig(size=32, spacing_mm=0.5))
    assert small.shape == (9, 32, 32)
    # At 0.5 mm per pixel the 5 mm sphere spans about twice as many pixels as at 1 mm.
    wide = sample_planes(volume, center)
    assert (small[0] > 0.95).sum() > 3 * (wide[0] > 0.95).sum()
