"""Semantic features of a synthetic nodule: drawn with realistic co-occurrence, written as the schema's strings.

Every feature drawn here is rendered into the image by `nodules.py`; the values are the schema's
(`noduleclip.semantics.schema`). Dependencies follow radiology: ground-glass nodules are more often
ill-defined, larger nodules more often spiculated, calcification mostly in small solid nodules,
cavitation and necrosis only in larger solid ones, reticulation only where there is ground glass.
Pleural attachment and retraction fix where the nodule is placed: against the pleura, or a few
millimetres beneath it with tags pulling the pleura in (the sampler draws one or the other).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CONSISTENCIES = ("solid", "part-solid", "pure ground glass", "semiconsolidation", "peri-cystic")
MARGINS = ("smooth", "lobulated", "spiculated", "ill-defined", "notched")
SHAPES = ("round", "ovoid", "irregular", "polygonal")
SUSPICION_LEVELS = ("very low", "moderately low", "intermediate", "moderately high", "high")
ELONGATION = {"round": (0.85, 1.0), "ovoid": (0.55, 0.8), "irregular": (0.6, 0.9), "polygonal": (0.65, 0.9)}


@dataclass
class NoduleFeatures:
    """What a radiologist would record about one nodule (booleans for the binary features)."""

    long_diameter_mm: float
    short_diameter_mm: float
    consistency: str
    margins: str
    shape: str
    margin_conspicuity: str = "well marginated"
    reticulation: bool = False
    cyst_like_spaces: bool = False
    intranodular_bronchiectasis: bool = False
    necrosis: bool = False
    cavitation: bool = False
    eccentric_calcification: bool = False
    airway_cutoff: bool = False
    pleural_attachment: bool = False
    vascular_convergence: bool = False
    septal_stretching: bool = False
    paracicatricial_emphysema: bool = False
    pleural_retraction: str = "absent"

    def columns(self, suspicion: str | None = None) -> dict[str, str | float]:
        """The manifest columns (schema names and strings) of these features."""
        out: dict[str, str | float] = {}
        for key, value in asdict(self).items():
            out[key] = ("present" if value else "absent") if isinstance(value, bool) else value
        out["long_diameter_mm"] = round(self.long_diameter_mm, 1)
        out["short_diameter_mm"] = round(self.short_diameter_mm, 1)
        out["calcification_pattern"] = "non-central" if self.eccentric_calcification else "absent"
        if suspicion is not None:
            out["suspicion"] = suspicion
        return out


def _pick(rng: np.random.Generator, values, weights) -> str:
    w = np.asarray(weights, float)
    return str(values[int(rng.choice(len(values), p=w / w.sum()))])


def sample_features(rng: np.random.Generator) -> NoduleFeatures:
    """Draw one nodule's features."""
    consistency = _pick(rng, CONSISTENCIES, (0.60, 0.13, 0.13, 0.09, 0.05))
    long = float(np.clip(np.exp(rng.normal(np.log(13.0), 0.5)), 5.0, 30.0))
    solid = consistency == "solid"
    ground_glass = consistency in ("pure ground glass", "part-solid", "semiconsolidation")
    shape = _pick(rng, SHAPES, (0.3, 0.35, 0.2, 0.15 if solid and long < 15 else 0.02))
    if consistency == "peri-cystic":  # a cyst with a nodular wall component: ovoid or irregular overall
        shape = _pick(rng, ("ovoid", "irregular"), (0.6, 0.4))
    short = long * rng.uniform(*ELONGATION[shape])
    margin_weights = np.array([0.38, 0.2, 0.2 * (long / 10.0) ** 0.7, 0.12, 0.1])
    if consistency == "pure ground glass":
        margin_weights = np.array([0.4, 0.1, 0.08, 0.37, 0.05])
    if shape == "polygonal":
        margin_weights[2] *= 0.3
    margins = _pick(rng, MARGINS, margin_weights)
    poorly = margins == "ill-defined" or rng.random() < (0.3 if ground_glass else 0.12)
    f = NoduleFeatures(
        long_diameter_mm=long,
        short_diameter_mm=short,
        consistency=consistency,
        margins=margins,
        shape=shape,
        margin_conspicuity="poorly marginated" if poorly else "well marginated",
    )
    big = long >= 10.0
    cystic = consistency == "peri-cystic"
    f.eccentric_calcification = solid and rng.random() < (0.14 if long < 15 else 0.04)
    f.cavitation = consistency in ("solid", "part-solid") and big and rng.random() < 0.1
    f.necrosis = solid and long >= 14 and not f.cavitation and rng.random() < 0.18
    f.cyst_like_spaces = long >= 8 and not (f.cavitation or cystic) and rng.random() < (0.16 if ground_glass else 0.04)
    f.intranodular_bronchiectasis = big and not cystic and rng.random() < (0.16 if ground_glass else 0.06)
    f.reticulation = ground_glass and big and rng.random() < 0.22
    f.airway_cutoff = rng.random() < 0.08
    f.vascular_convergence = rng.random() < (0.1 + 0.1 * min(long, 25.0) / 25.0)
    f.septal_stretching = rng.random() < 0.08
    f.paracicatricial_emphysema = rng.random() < 0.07
    if rng.random() < 0.14:  # beneath the pleura, pulling it in (drawn apart from attachment, to read clearly)
        f.pleural_retraction = _pick(rng, ("mild dimpling", "obvious dimpling"), (0.6, 0.4))
    else:
        f.pleural_attachment = rng.random() < 0.22
    return f


def count_nodules(rng: np.random.Generator) -> int:
    """How many nodules a patient has (1 to 3)."""
    return 1 + int(rng.choice(3, p=(0.55, 0.3, 0.15)))
