"""Shared fixtures: synthetic volumes built in memory, and the real LIDC data when it is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from noduleclip.io.volume import Volume

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data from the repository root; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (real LIDC-IDRI test data) is not present")
    return SHARED_DATA


def make_volume(shape=(40, 90, 80), spacing=(0.8, 0.7, 2.0), angles=(10, -20, 30), seed=0,
                origin=(-40.0, 30.0, 100.0)) -> Volume:
    """A lung-like textured volume (HU) with anisotropic spacing and a rotated direction."""
    rng = np.random.default_rng(seed)
    texture = gaussian_filter(rng.normal(size=shape), 3)
    array = (-800 + texture / texture.std() * 150).astype(np.float32)
    direction = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    return Volume(array, origin=origin, spacing=spacing, direction=direction)


def add_sphere(volume: Volume, center_lps, radius_mm: float, hu: float = 400.0) -> Volume:
    """Paint a sphere of `hu` at a world point (in place) and return the volume."""
    k, j, i = np.indices(volume.array.shape)
    world = volume.index_to_world(np.stack([i, j, k], axis=-1).reshape(-1, 3)).reshape(volume.array.shape + (3,))
    inside = np.linalg.norm(world - np.asarray(center_lps), axis=-1) <= radius_mm
    volume.array[inside] = hu
    return volume


def lidc0001_first_reader_contours(shared: Path) -> list[tuple[float, list[tuple[int, int]]]]:
    """Nodule 001 of the first reader in 069.xml: [(imageZposition, [(x_pixel, y_pixel), ...]), ...]."""
    import xml.etree.ElementTree as ET

    ns = {"l": "http://www.nih.gov"}
    root = ET.parse(shared / "lidc-idri-0001" / "069.xml").getroot()
    session = root.find("l:readingSession", ns)
    for nodule in session.findall("l:unblindedReadNodule", ns):
        if nodule.find("l:characteristics", ns) is None:
            continue
        rois = []
        for roi in nodule.findall("l:roi", ns):
            z = float(roi.find("l:imageZposition", ns).text)
            pts = [(int(e.find("l:xCoord", ns).text), int(e.find("l:yCoord", ns).text))
                   for e in roi.findall("l:edgeMap", ns)]
            rois.append((z, pts))
        return rois
    raise AssertionError("no characterised nodule for the first reader")


def lidc0001_nodule_center(shared: Path, volume) -> np.ndarray:
    """The first reader's nodule centre in LPS mm, by hand from its contour points and the series geometry."""
    points = []
    for z, pts in lidc0001_first_reader_contours(shared):
        zs = volume.index_to_world(np.array([[0, 0, k] for k in range(volume.array.shape[0])]))[:, 2]
        k = int(np.argmin(np.abs(zs - z)))
        assert abs(zs[k] - z) < 0.01, "contour z must match a slice"
        points += [volume.index_to_world([x, y, k]) for x, y in pts]
    return np.mean(points, axis=0)
