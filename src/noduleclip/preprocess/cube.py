"""A cube of CT around a nodule, as a 3D image tower reads it (e.g. Astra/Merlin's, `noduleclip.model.astra3d`).

    cube = cut_cube(volume, center_lps, size_mm=48.0, voxel_mm=1.0)   # (X, Y, Z) in RAS, HU -1000..1000 -> [0, 1]

The nine views' sampling (`noduleclip.preprocess.views`) in three dimensions: the cube's voxel centres are
placed in world millimetres (LPS, as everywhere in noduleclip), mapped to the scan's voxel indices through its
geometry, and read with one trilinear interpolation; beyond the scan the cube holds air. The axes are those
the encoder expects, (X, Y, Z) of RAS: a point 1 mm towards the patient's left (+x in LPS) lands one 1 mm voxel
*lower* on axis 0, a point 1 mm posterior (+y in LPS) one voxel lower on axis 1, and a point 1 mm superior
(+z in both) one voxel higher on axis 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from noduleclip.errors import InputError
from noduleclip.io.volume import Volume
from noduleclip.preprocess.views import AIR_HU

HU_MIN, HU_MAX = -1000.0, 1000.0  # Merlin's intensity window, scaled to [0, 1]


def cube_shape(size_mm: float, voxel_mm: float | Sequence[float]) -> tuple[int, int, int]:
    """Voxels along (X, Y, Z) of a `size_mm` cube at `voxel_mm` (one number, or one per RAS axis)."""
    voxel = np.broadcast_to(np.asarray(voxel_mm, dtype=np.float64), (3,))
    if np.any(voxel <= 0) or size_mm <= 0:
        raise InputError(f"a cube needs a positive size and voxel size, got {size_mm} mm at {voxel.tolist()} mm")
    return tuple(max(1, int(round(size_mm / v))) for v in voxel)  # type: ignore[return-value]


def cube_offsets_lps(shape: Sequence[int], voxel_mm: float | Sequence[float]) -> np.ndarray:
    """LPS offsets in mm (X, Y, Z, 3) of every voxel of a RAS cube from its centre voxel (index n // 2 per axis)."""
    voxel = np.broadcast_to(np.asarray(voxel_mm, dtype=np.float64), (3,))
    ras = np.meshgrid(*[(np.arange(n) - n // 2) * v for n, v in zip(shape, voxel, strict=True)], indexing="ij")
    return np.stack([-ras[0], -ras[1], ras[2]], axis=-1)  # RAS -> LPS: x and y change sign


def cut_cube(volume: Volume, center_lps: Sequence[float] | np.ndarray, size_mm: float = 48.0,
             voxel_mm: float | Sequence[float] = 1.0, outside_hu: float = AIR_HU) -> np.ndarray:
    """A `size_mm` cube at `voxel_mm` around the LPS point `center_lps`: float32 (X, Y, Z) in RAS, HU -1000..1000
    scaled to [0, 1], the centre at index n // 2 on each axis; one trilinear interpolation from the scan's voxels,
    `outside_hu` beyond them."""
    center = np.asarray(center_lps, dtype=np.float64).reshape(3)
    shape = cube_shape(size_mm, voxel_mm)
    world = cube_offsets_lps(shape, voxel_mm) + center
    ijk = volume.world_to_index(world.reshape(-1, 3))
    hu = ndimage.map_coordinates(np.asarray(volume.array, dtype=np.float32), ijk[:, ::-1].T, order=1,
                                 mode="constant", cval=outside_hu, output=np.float32, prefilter=False)
    scaled = (hu - HU_MIN) / (HU_MAX - HU_MIN)
    return np.clip(scaled, 0.0, 1.0).reshape(shape).astype(np.float32, copy=False)
