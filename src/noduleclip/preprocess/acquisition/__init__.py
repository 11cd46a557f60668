"""Re-rendering a CT as another scanner protocol would, before the views are cut: in physical units (mm, HU)
whatever the voxel spacing.

Perturbations:
- noise=SIGMA[:CORR]  added Gaussian noise of SIGMA HU (as at a lower dose); with CORR mm, the noise is
                      first blurred by a Gaussian of CORR mm (correlated, as CT noise is) and rescaled
                      so that its standard deviation is still SIGMA HU.
- thick=T             slices T mm thick: each voxel becomes the mean over T mm along the slice axis (a box
                      profile with fractional end weights), on the original grid. T <= slice spacing: no change.
- smooth=SIGMA        a smoother reconstruction kernel: Gaussian blur of SIGMA mm.
- sharp=AMOUNT        a sharper kernel: unsharp mask, v + AMOUNT * (v - blur(v)), blur of 1 mm.
A perturbation is one `kind=strength` or several joined by '+' (applied in the order written), e.g.
"noise=20", "thick=3+noise=10". Noise is seeded by (seed, a key such as the nodule id).

Two users: `evaluate --perturb` (fixed perturbations, the robustness check) and training's acquisition
augmentation (`random_acquisition`: a protocol drawn at random per nodule and copy). Each nodule is re-rendered
on a crop of its scan that holds every point its nine views sample, plus the filters' reach, so an identity
perturbation gives exactly the cached views.

By job: `spec` (the language: Step, Perturbation, parse_perturbations, random_acquisition), `transforms` (pure
functions on a volume), `pool` (re-cutting the views of re-rendered scans, each scan read once, in processes).
"""

from noduleclip.preprocess.acquisition.pool import acquisition_plan, acquisition_views, perturbed_views, rendered_views
from noduleclip.preprocess.acquisition.spec import (
    ACQUISITION_RANGES,
    KINDS,
    TRUNCATE,
    UNSHARP_SIGMA_MM,
    Perturbation,
    Step,
    parse_perturbations,
    parse_step,
    random_acquisition,
)
from noduleclip.preprocess.acquisition.transforms import (
    add_noise,
    perturb_volume,
    sharpen,
    slab_weights,
    smooth,
    thicken,
)

__all__ = [
    "ACQUISITION_RANGES", "KINDS", "TRUNCATE", "UNSHARP_SIGMA_MM", "Perturbation", "Step", "parse_perturbations",
    "parse_step", "random_acquisition", "add_noise", "perturb_volume", "sharpen", "slab_weights",
    "smooth", "thicken", "acquisition_plan", "acquisition_views", "perturbed_views", "rendered_views",
]
