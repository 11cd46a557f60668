"""The perturbation language: `kind=strength` steps joined by '+', parsed from `--perturb` values.

    parse_perturbations(["noise=20,thick=3", "smooth=1+noise=10:0.7"])   # -> [Perturbation, ...]

Also the constants the transforms share (`UNSHARP_SIGMA_MM`, `TRUNCATE`), so that a step knows how far
(mm) its filter reaches (`Step.reach_mm`) without importing the filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from noduleclip.errors import InputError
from noduleclip.preprocess.views import BLUR_TRUNCATE

KINDS = {"noise": "Gaussian noise, HU", "thick": "slice thickness, mm", "smooth": "Gaussian blur, mm",
         "sharp": "unsharp-mask amount"}
UNSHARP_SIGMA_MM = 1.0
TRUNCATE = BLUR_TRUNCATE  # Gaussian kernels reach TRUNCATE sigma, as the views' own blur


@dataclass(frozen=True)
class Step:
    """One kind of perturbation at one strength (`correlation_mm` only for noise)."""

    kind: str
    strength: float
    correlation_mm: float = 0.0

    @property
    def name(self) -> str:
        """How the step is written: `kind=strength[:correlation]`."""
        text = f"{self.kind}={self.strength:g}"
        return text + (f":{self.correlation_mm:g}" if self.correlation_mm else "")

    def reach_mm(self) -> float:
        """How far (mm) a voxel's new value reaches for input values."""
        return {"noise": TRUNCATE * self.correlation_mm, "thick": self.strength / 2,
                "smooth": TRUNCATE * self.strength, "sharp": TRUNCATE * UNSHARP_SIGMA_MM}[self.kind]


@dataclass(frozen=True)
class Perturbation:
    """Steps applied in order; `name` is how the report labels it."""

    steps: tuple[Step, ...]

    @property
    def name(self) -> str:
        """The steps joined by '+' ("none" for no step)."""
        return "+".join(s.name for s in self.steps) or "none"


ACQUISITION_RANGES = ("slices 1.5-5 mm thick (half the draws); a smoother kernel (blur 0.4-2 mm) or a sharper one "
                      "(unsharp amount 0.25-1.5) or neither, a third each; noise of 5-40 HU correlated over 0-1 mm "
                      "(half the draws); at least one of them")
"""What `random_acquisition` draws, in words (the help texts and docs quote it)."""


def random_acquisition(rng: np.random.Generator) -> Perturbation:
    """A scanner protocol drawn at random from ACQUISITION_RANGES, as a Perturbation (thickness, then kernel, then
    noise, so that the noise is not blurred away); strengths rounded to two decimals."""
    while True:
        steps = []
        if rng.random() < 0.5:
            steps.append(Step("thick", round(float(rng.uniform(1.5, 5.0)), 2)))
        kernel = rng.integers(3)
        if kernel == 1:
            steps.append(Step("smooth", round(float(rng.uniform(0.4, 2.0)), 2)))
        elif kernel == 2:
            steps.append(Step("sharp", round(float(rng.uniform(0.25, 1.5)), 2)))
        if rng.random() < 0.5:
            steps.append(Step("noise", round(float(rng.uniform(5.0, 40.0)), 2), round(float(rng.uniform(0.0, 1.0)), 2)))
        if steps:
            return Perturbation(tuple(steps))


def parse_step(text: str) -> Step:
    """One `kind=strength` (noise also `noise=SIGMA:MM`) as a Step; an InputError says what is wrong."""
    kind, sep, value = text.strip().partition("=")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise InputError(f"perturbation {text!r} is not kind=strength with kind one of {', '.join(KINDS)}; "
                         "e.g. noise=20, thick=3, smooth=1.0, sharp=0.5")
    strength, _, correlation = value.partition(":")
    if correlation and kind != "noise":
        raise InputError(f"perturbation {text!r}: only noise takes a correlation length (noise=SIGMA:MM)")
    try:
        step = Step(kind, float(strength), float(correlation or 0.0))
    except ValueError:
        raise InputError(f"perturbation {text!r}: {value!r} is not a number") from None
    if not (np.isfinite(step.strength) and step.strength > 0 and 0 <= step.correlation_mm < 50):
        raise InputError(f"perturbation {text!r}: the strength must be a positive number ({KINDS[kind]})")
    return step


def parse_perturbations(specs: Sequence[str]) -> list[Perturbation]:
    """`--perturb` values: each comma-separated item is one perturbation; '+' joins steps into one."""
    out: list[Perturbation] = []
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            perturbation = Perturbation(tuple(parse_step(part) for part in item.split("+")))
            if perturbation.name not in {p.name for p in out}:
                out.append(perturbation)
    return out
