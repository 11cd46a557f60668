"""The acquisition: scan geometry per patient, and the scanner's slice profile, kernel and noise.

The chest is rendered on a fine grid (`render_grid`) whose slices are `subslices` times thinner than
the output; `acquire` averages each slice's subslices (the slice sensitivity profile), adds white
noise and blurs in-plane with the reconstruction kernel, which shapes the noise like a real kernel
does, so the noise standard deviation in uniform tissue is the preset's. Outside the reconstruction
circle the image holds a padding value, as many scanners write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from noduleclip.io.volume import Volume
from noduleclip.synth.anatomy import Body
from noduleclip.synth.presets import AcquisitionPreset

POSITIONS = ("HFS", "FFS", "HFP", "HFS-tilt")
ROW_COL = {  # image row and column directions (LPS) for each patient position
    "HFS": ((1, 0, 0), (0, 1, 0)),
    "FFS": ((-1, 0, 0), (0, 1, 0)),
    "HFP": ((-1, 0, 0), (0, -1, 0)),
}


@dataclass
class Scan:
    """One patient's acquisition: output grid geometry and scanner settings."""

    shape: tuple[int, int, int]  # (nx, ny, nz) of the output series
    spacing: tuple[float, float, float]  # pixel, pixel, slice thickness (= slice step) in mm
    direction: np.ndarray  # 3x3, columns: row, column, slice-normal directions (LPS)
    origin: np.ndarray  # LPS mm of voxel (0, 0, 0)
    subslices: int  # render samples per slice
    offset: np.ndarray  # world = body coordinates + offset
    position: str  # HFS, FFS or HFP (DICOM PatientPosition)
    tilt_deg: float
    noise_hu: float
    kernel_sigma_mm: float
    kernel_name: str
    fov_mm: float
    tube_current_ma: int
    signed_pixels: bool  # int16 pixels with padding outside the field of view, else 12-bit unsigned
    z_range: tuple[float, float]  # scanned body-z range (mm)

    @property
    def thickness(self) -> float:
        return self.spacing[2]

    def output_volume(self, array: np.ndarray | None = None) -> Volume:
        """The output grid as a Volume (zeros unless `array` is given)."""
        nx, ny, nz = self.shape
        data = np.zeros((nz, ny, nx), np.float32) if array is None else array
        return Volume(data, self.origin, self.spacing, self.direction)


def sample_position(rng: np.random.Generator, preset: AcquisitionPreset) -> tuple[str, float]:
    """Patient position and gantry tilt (degrees): mostly head-first supine, untilted."""
    if rng.random() >= preset.unusual_geometry:
        return "HFS", 0.0
    kind = POSITIONS[1 + int(rng.integers(0, 3))]
    if kind == "HFS-tilt":
        return "HFS", float(rng.choice([-1, 1]) * rng.uniform(5.0, 12.0))
    return kind, 0.0


def sample_scan(rng: np.random.Generator, preset: AcquisitionPreset, body: Body, position: str,
                tilt_deg: float) -> Scan:
    """Draw the scan geometry and settings for one patient."""
    thickness = float(rng.choice(preset.slice_thickness_mm))
    length = rng.uniform(*preset.z_extent_mm)
    nz = max(4, int(round(length / thickness)))
    fov = 2.0 * body.half_width + rng.uniform(15.0, 40.0)
    pixel = round(fov / preset.matrix, 4)
    fov = pixel * preset.matrix
    row, col = (np.array(v, float) for v in ROW_COL[position])
    if tilt_deg:
        t = math.radians(tilt_deg)
        col = np.array([0.0, math.cos(t), math.sin(t)])
    normal = np.cross(row, col)
    direction = np.stack([row, col, normal], axis=1)
    offset = np.array([rng.uniform(-15, 15), rng.uniform(-30, 30), rng.uniform(-300, 100)])
    z_centre = rng.uniform(-45.0, -20.0) if length > 100 else rng.uniform(-25.0, -10.0)
    centre_body = np.array([rng.uniform(-8, 8), rng.uniform(0, 12) * (-1 if position == "HFP" else 1), z_centre])
    spacing = np.array([pixel, pixel, thickness])
    shape = np.array([preset.matrix, preset.matrix, nz])
    origin = np.round(centre_body + offset - direction @ (spacing * (shape - 1) / 2.0), 4)
    subslices = max(1, math.ceil(thickness / preset.render_step_mm - 1e-6))
    noise = rng.uniform(*preset.noise_hu) * (body.half_width / 150.0)
    return Scan(
        shape=tuple(int(v) for v in shape), spacing=(pixel, pixel, thickness), direction=direction,
        origin=origin, subslices=subslices, offset=offset, position=position, tilt_deg=tilt_deg,
        noise_hu=float(noise), kernel_sigma_mm=preset.kernel_sigma_mm, kernel_name=preset.kernel_name,
        fov_mm=fov, tube_current_ma=int(rng.integers(*preset.tube_current_ma)),
        signed_pixels=bool(rng.random() < 0.5),
        z_range=(z_centre - length / 2.0, z_centre + length / 2.0),
    )


def render_grid(scan: Scan) -> Volume:
    """An empty fine grid: the output grid with each slice split into `subslices` thinner ones."""
    nx, ny, nz = scan.shape
    m = scan.subslices
    step = scan.thickness / m
    origin = scan.origin - scan.direction[:, 2] * scan.thickness * (m - 1) / (2.0 * m)
    spacing = (scan.spacing[0], scan.spacing[1], step)
    return Volume(np.zeros((nz * m, ny, nx), np.float32), origin, spacing, scan.direction)


def _kernel_power(sigma_px: float) -> float:
    """Sum of squared weights of scipy's 1-D Gaussian kernel (noise variance kept by the blur)."""
    if sigma_px <= 0:
        return 1.0
    radius = int(4.0 * sigma_px + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma_px) ** 2)
    w /= w.sum()
    return float(np.sum(w**2))


def acquire(fine: Volume, scan: Scan, rng: np.random.Generator) -> np.ndarray:
    """The reconstructed series (HU, float32, (z, y, x)): slice profile, noise, kernel, padding."""
    nx, ny, nz = scan.shape
    image = fine.array.reshape(nz, scan.subslices, ny, nx).mean(axis=1, dtype=np.float32)
    sigma_px = scan.kernel_sigma_mm / scan.spacing[0]
    keep = _kernel_power(sigma_px) ** 2  # 2-D kernel = outer product of two 1-D ones
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(scan.noise_hu / math.sqrt(keep))
    image = gaussian_filter(image, sigma=(0.0, sigma_px, sigma_px), mode="nearest")
    j, i = np.mgrid[0:ny, 0:nx]
    outside = np.hypot(i - (nx - 1) / 2.0, j - (ny - 1) / 2.0) * scan.spacing[0] > scan.fov_mm / 2.0
    image[:, outside] = -3024.0 if scan.signed_pixels else -1024.0
    return image
