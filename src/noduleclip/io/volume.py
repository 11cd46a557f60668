"""`Volume`: a CT array in Hounsfield units with its geometry in the LPS patient frame.

Conventions (those of ITK and DICOM, whatever the file stored):
- `array` is indexed (z, y, x) i.e. (k, j, i), as `SimpleITK.GetArrayFromImage` returns it.
- `origin` is the LPS position in mm of the centre of voxel (i, j, k) = (0, 0, 0).
- `spacing` is the voxel size in mm along the index axes (i, j, k).
- `direction` is a 3x3 matrix whose column c is the LPS unit vector of index axis c.
So world = origin + direction @ (spacing * index), with index in (i, j, k) order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    array: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    source: str = ""
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if self.array.ndim != 3:
            raise ValueError(f"a Volume needs a 3-D array, got shape {self.array.shape}")
        if np.any(self.spacing <= 0):
            raise ValueError(f"voxel spacing must be positive, got {self.spacing.tolist()}")

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along (i, j, k) = (x, y, z)."""
        k, j, i = self.array.shape
        return i, j, k

    @property
    def index_to_world_matrix(self) -> np.ndarray:
        """3x3 matrix M with world = origin + M @ index."""
        return self.direction * self.spacing[None, :]

    def index_to_world(self, index) -> np.ndarray:
        """Continuous (i, j, k) indices, shape (..., 3), to LPS mm."""
        index = np.asarray(index, dtype=np.float64)
        return index @ self.index_to_world_matrix.T + self.origin

    def world_to_index(self, world) -> np.ndarray:
        """LPS mm, shape (..., 3), to continuous (i, j, k) indices (not rounded, not bounds-checked)."""
        world = np.asarray(world, dtype=np.float64)
        return (world - self.origin) @ np.linalg.inv(self.index_to_world_matrix).T

    def index_inside(self, ijk, margin_voxels: float = 0.5) -> np.ndarray:
        """Per point of continuous (i, j, k) indices, shape (..., 3): True inside the scanned voxels (within
        `margin_voxels` beyond the first and last voxel centres on every axis)."""
        ijk = np.asarray(ijk, dtype=np.float64)
        upper = np.asarray(self.shape_ijk) - 1 + margin_voxels
        return np.all((ijk >= -margin_voxels) & (ijk <= upper), axis=-1)

    def contains(self, world, margin_voxels: float = 0.5) -> bool:
        """True when the LPS point(s) lie inside the scanned voxels (within half a voxel of the edge)."""
        return bool(np.all(self.index_inside(self.world_to_index(world), margin_voxels)))

    def world_extent(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS bounding box (min, max) of the voxel centres, in mm."""
        i, j, k = (np.asarray(self.shape_ijk) - 1).tolist()
        corners = np.array([[a, b, c] for a in (0, i) for b in (0, j) for c in (0, k)], dtype=np.float64)
        pts = self.index_to_world(corners)
        return pts.min(axis=0), pts.max(axis=0)

    def field_of_view_mm(self) -> np.ndarray:
        """Extent of the scanned voxels along (i, j, k) in mm: voxel count times spacing."""
        return np.asarray(self.shape_ijk, dtype=np.float64) * self.spacing

    def center_world(self) -> np.ndarray:
        """LPS position of the centre of the voxel grid."""
        return self.index_to_world((np.asarray(self.shape_ijk) - 1) / 2.0)

    def to_sitk(self):
        """This volume as a SimpleITK image (float32 HU, LPS geometry)."""
        import SimpleITK as sitk  # imported on first use: loading SimpleITK takes a fifth of a second

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetOrigin(tuple(self.origin))
        img.SetSpacing(tuple(self.spacing))
        img.SetDirection(tuple(self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, image, source: str = "", metadata: dict | None = None) -> Volume:
        """A Volume from a SimpleITK image (SimpleITK already works in LPS)."""
        import SimpleITK as sitk  # imported on first use: loading SimpleITK takes a fifth of a second

        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3-D image, got {image.GetDimension()}-D")
        return cls(
            array=sitk.GetArrayFromImage(image),
            origin=np.array(image.GetOrigin()),
            spacing=np.array(image.GetSpacing()),
            direction=np.array(image.GetDirection()).reshape(3, 3),
            source=source,
            metadata=dict(metadata or {}),
        )
