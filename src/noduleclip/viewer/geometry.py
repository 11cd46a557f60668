"""How a `Volume` is shown as a radiologist reads a chest CT: axial slices, patient's right on the screen's left,
anterior at the top, the head first.

The screen's (column, row, slice) is a permutation and flip of the volume's (i, j, k) index axes: columns follow
the index axis closest to LPS +x (towards the patient's left), rows the one closest to +y (posterior), slices the
one closest to -z (slice 0 is the most superior). An oblique scan is shown along its own index planes (no
resampling), so a pixel is always one voxel; a click on it becomes world millimetres through the volume's own
`Volume.index_to_world`, the mapping every other command uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

from noduleclip.errors import InputError
from noduleclip.io import Volume


@dataclass(frozen=True)
class AxialGeometry:
    """Screen (column, row, slice) <-> the volume's index (i, j, k).

    `axes[d]` is the index axis shown along screen axis d (0 columns, 1 rows, 2 slices) and `flipped[d]` whether
    it runs backwards there; `size[d]` is the number of voxels along screen axis d."""

    axes: tuple[int, int, int]
    flipped: tuple[bool, bool, bool]
    size: tuple[int, int, int]

    @classmethod
    def of(cls, volume: Volume) -> AxialGeometry:
        direction = np.abs(volume.direction)
        # the screen axes' world axes are x, y, z: give each the index axis most parallel to it
        best = max(permutations(range(3)), key=lambda p: sum(direction[w, p[w]] for w in range(3)))
        axes = (int(best[0]), int(best[1]), int(best[2]))
        signs = [float(volume.direction[w, axes[w]]) for w in range(3)]
        flipped = (signs[0] < 0, signs[1] < 0, signs[2] > 0)  # slices run from head (+z) to feet
        shape = volume.shape_ijk
        return cls(axes, flipped, (shape[axes[0]], shape[axes[1]], shape[axes[2]]))

    @property
    def columns(self) -> int:
        return self.size[0]

    @property
    def rows(self) -> int:
        return self.size[1]

    @property
    def slices(self) -> int:
        return self.size[2]

    def to_index(self, column: float, row: float, slice_: float) -> np.ndarray:
        """The volume index (i, j, k), continuous, of a screen position (voxel centres at whole numbers)."""
        index = np.zeros(3)
        for d, value in enumerate((column, row, slice_)):
            index[self.axes[d]] = self.size[d] - 1 - value if self.flipped[d] else value
        return index

    def from_index(self, index) -> np.ndarray:
        """The screen (column, row, slice), continuous, of a volume index (i, j, k)."""
        index = np.asarray(index, dtype=np.float64)
        screen = np.array([index[self.axes[d]] for d in range(3)])
        return np.array([self.size[d] - 1 - screen[d] if self.flipped[d] else screen[d] for d in range(3)])

    def to_world(self, volume: Volume, column: float, row: float, slice_: float) -> np.ndarray:
        """World LPS mm of a screen position: the screen -> index permutation, then the volume's own geometry."""
        inside = [0 <= v <= n - 1 for v, n in zip((column, row, slice_), self.size, strict=True)]
        if not all(inside):
            raise InputError(f"the point (column {column:g}, row {row:g}, slice {slice_:g}) lies outside the "
                             f"{self.columns} x {self.rows} x {self.slices} scan; click inside the image")
        return volume.index_to_world(self.to_index(column, row, slice_))

    def from_world(self, volume: Volume, world) -> np.ndarray:
        """The screen (column, row, slice), continuous, of a world LPS point."""
        return self.from_index(volume.world_to_index(world))

    def stack(self, array: np.ndarray) -> np.ndarray:
        """The volume's (k, j, i) array as a view indexed [slice, row, column] (no copy)."""
        ijk = array.transpose(2, 1, 0)
        screen = ijk.transpose(self.axes[2], self.axes[1], self.axes[0])
        flips = tuple(slice(None, None, -1) if self.flipped[d] else slice(None) for d in (2, 1, 0))
        return screen[flips]

    def pixel_mm(self, volume: Volume) -> tuple[float, float]:
        """The size of a screen pixel in mm: (width, height)."""
        return float(volume.spacing[self.axes[0]]), float(volume.spacing[self.axes[1]])

    def slice_z(self, volume: Volume) -> list[float]:
        """Each slice's z position (LPS mm) at the centre of the image (an oblique slice tilts about it)."""
        centre_column, centre_row = (self.columns - 1) / 2, (self.rows - 1) / 2
        points = np.array([self.to_index(centre_column, centre_row, s) for s in range(self.slices)])
        return [float(z) for z in volume.index_to_world(points)[:, 2]]


def window_to_bytes(pixels: np.ndarray, width: float, level: float) -> np.ndarray:
    """HU to 8-bit grey through a display window (DICOM's linear VOI LUT, simplified): level - width/2 is black,
    level + width/2 white."""
    if not np.isfinite(width) or width < 1:
        raise InputError(f"window width {width:g} HU is not a usable width; give at least 1 HU (lung 1500, "
                         "mediastinum 350)")
    if not np.isfinite(level):
        raise InputError("window level must be a finite number of HU (lung -600, mediastinum 40)")
    low = level - width / 2.0
    scaled = (np.asarray(pixels, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / width)
    return np.clip(np.nan_to_num(scaled, nan=0.0) + 0.5, 0, 255).astype(np.uint8)
