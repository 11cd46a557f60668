"""Acquisition presets of the synthetic cohort: the scanner settings that shift between sites.

A preset fixes what a site's protocol fixes (dose, so noise; slice thickness; reconstruction kernel and
matrix; intravenous contrast) and the cohort's malignancy prevalence. The in-plane matrix is kept
small (256 or 320 pixels over the whole chest, so 1.0-1.5 mm pixels) so that a cohort of hundreds of
patients renders in minutes. Patient-level geometry (field of view, table position, patient
position) varies inside a preset. Training on one preset and testing on another reproduces the
paper's external-shift experiments:

- `screening`:  low-dose screening CT, high noise, 1.25-2.5 mm slices, sharp (lung) kernel.
- `diagnostic`: standard-dose CT, low noise, 1.0-1.25 mm slices, finer pixels.
- `contrast`:   standard dose with intravenous contrast: enhanced blood and solid tissue, finer pixels.
- `thick`:      5 mm slices, smooth (soft-tissue) kernel.
- `tiny`:       a coarse, short scan for tests and quick checks (not realistic).
"""

from __future__ import annotations

from dataclasses import dataclass

from noduleclip.errors import InputError


@dataclass(frozen=True)
class AcquisitionPreset:
    """Scanner protocol and cohort settings; ranges are (low, high) drawn per patient."""

    name: str
    description: str
    slice_thickness_mm: tuple[float, ...] = (1.25, 2.0, 2.5)  # one drawn per patient; slices are contiguous
    matrix: int = 256  # in-plane pixels (square); the field of view covers the body
    z_extent_mm: tuple[float, float] = (130.0, 160.0)  # length of the scanned range around the carina
    noise_hu: tuple[float, float] = (30.0, 50.0)  # noise standard deviation in uniform tissue
    kernel_sigma_mm: float = 0.45  # in-plane reconstruction blur (sharp kernels small, smooth large)
    kernel_name: str = "LUNG"
    contrast_hu: tuple[float, float] = (0.0, 0.0)  # added to blood (vessels, heart, aorta)
    enhancement_hu: tuple[float, float] = (0.0, 0.0)  # added to solid soft tissue and solid nodules
    tube_current_ma: tuple[int, int] = (30, 60)
    prevalence: float = 0.25  # fraction of malignant nodules (the risk model's intercept is calibrated to it)
    render_step_mm: float = 1.25  # finest z sampling; a slice averages the samples inside its thickness
    unusual_geometry: float = 0.15  # fraction of patients scanned feet-first, prone or with a gantry tilt

    @property
    def contrast(self) -> bool:
        return self.contrast_hu[1] > 0


PRESETS: dict[str, AcquisitionPreset] = {
    p.name: p
    for p in (
        AcquisitionPreset(
            "screening",
            "low-dose screening CT: high noise, 1.25-2.5 mm slices, sharp kernel",
        ),
        AcquisitionPreset(
            "diagnostic",
            "standard-dose CT: low noise, 1.0-1.25 mm slices",
            slice_thickness_mm=(1.0, 1.25),
            matrix=320,
            noise_hu=(10.0, 18.0),
            kernel_sigma_mm=0.55,
            kernel_name="STANDARD",
            tube_current_ma=(180, 320),
            prevalence=0.40,
        ),
        AcquisitionPreset(
            "contrast",
            "contrast-enhanced CT: enhanced vessels and solid tissue, 1.0-1.5 mm slices",
            slice_thickness_mm=(1.0, 1.25, 1.5),
            matrix=320,
            noise_hu=(14.0, 22.0),
            kernel_sigma_mm=0.6,
            kernel_name="STANDARD",
            contrast_hu=(150.0, 260.0),
            enhancement_hu=(20.0, 45.0),
            tube_current_ma=(150, 280),
            prevalence=0.45,
        ),
        AcquisitionPreset(
            "thick",
            "thick-slice CT: 5 mm slices, smooth kernel",
            slice_thickness_mm=(5.0,),
            noise_hu=(8.0, 14.0),
            kernel_sigma_mm=1.2,
            kernel_name="SOFT",
            tube_current_ma=(120, 220),
            prevalence=0.35,
        ),
        AcquisitionPreset(
            "tiny",
            "coarse and short scan for tests and quick checks",
            slice_thickness_mm=(2.5,),
            matrix=128,
            z_extent_mm=(70.0, 70.0),
            noise_hu=(12.0, 12.0),
            kernel_sigma_mm=0.5,
            kernel_name="STANDARD",
            prevalence=0.40,
            render_step_mm=2.5,
            unusual_geometry=0.0,
        ),
    )
}


def get_preset(preset: str | AcquisitionPreset) -> AcquisitionPreset:
    """The preset called `preset` (or `preset` itself when it already is one)."""
    if isinstance(preset, AcquisitionPreset):
        return preset
    try:
        return PRESETS[str(preset).strip().lower()]
    except KeyError:
        raise InputError(
            f"unknown acquisition preset {preset!r}; choose one of {', '.join(PRESETS)}"
        ) from None
