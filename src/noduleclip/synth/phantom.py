"""One nodule in a small block of lung: the renderer seen in isolation, for tests and illustrations.

`nodule_phantom` renders a nodule with its findings at the centre of a cube of lung parenchyma
(world origin at the cube centre, 1 mm voxels by default, no noise). A nodule with pleural features
gets a chest wall: the pleura is the plane x = `pleura_distance` with soft tissue beyond it.
"""

from __future__ import annotations

import numpy as np

from noduleclip.io.volume import Volume
from noduleclip.synth.anatomy import Tissue
from noduleclip.synth.features import NoduleFeatures
from noduleclip.synth.findings import paint_findings
from noduleclip.synth.nodules import Placement, render_nodule, semi_axes
from noduleclip.synth.raster import random_rotation


def nodule_phantom(f: NoduleFeatures, seed: int = 0, spacing: float = 1.0, size_mm: float = 50.0,
                   tissue: Tissue | None = None, chest_wall: bool | None = None) -> tuple[Volume, Placement]:
    """A cube (HU) of lung with the nodule `f` rendered at its centre (world (0, 0, 0)); `chest_wall`
    True adds the pleura 5 mm beyond the nodule even when no pleural feature asks for it."""
    rng = np.random.default_rng(seed)
    tissue = tissue or Tissue()
    n = int(round(size_mm / spacing)) | 1  # odd: a voxel sits on the centre
    half = (n - 1) / 2.0 * spacing
    array = np.full((n, n, n), tissue.lung, np.float32)
    volume = Volume(array, origin=(-half, -half, -half), spacing=(spacing,) * 3)
    a, b, c = semi_axes(f, rng)
    normal = distance = None
    axes = random_rotation(rng)
    if chest_wall or f.pleural_attachment or f.pleural_retraction != "absent":
        normal = np.array([1.0, 0.0, 0.0])
        distance = b * 0.7 if f.pleural_attachment else b + 5.0
        x = -half + np.arange(n) * spacing
        wall = np.clip((x - distance) / spacing + 0.5, 0.0, 1.0).astype(np.float32)
        array += wall[None, None, :] * (tissue.soft - array)
        long_axis = np.cross(normal, rng.standard_normal(3))
        long_axis /= np.linalg.norm(long_axis)
        axes = np.stack([long_axis, normal, np.cross(long_axis, normal)], axis=1)
    place = Placement(np.zeros(3), axes, (a, b, c), np.array([-80.0, 10.0, 20.0]), normal, distance)
    outline = render_nodule(volume, f, place, tissue, rng)
    paint_findings(volume, f, place, outline, tissue, rng)
    return volume, place
