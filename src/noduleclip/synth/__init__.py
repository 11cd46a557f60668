"""A synthetic chest-CT cohort with known truth: DICOM series, nodules rendered from semantic features,
labels from a documented logistic risk model, and acquisition presets that shift like real sites."""

from noduleclip.synth.cohort import make_cohort, synthesize_patient
from noduleclip.synth.presets import PRESETS, AcquisitionPreset, get_preset

__all__ = ["make_cohort", "synthesize_patient", "PRESETS", "AcquisitionPreset", "get_preset"]
