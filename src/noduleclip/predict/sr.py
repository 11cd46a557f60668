"""The predictions as a DICOM Structured Report: a TID 1500 Measurement Report (Comprehensive 3D SR).

One report per CT series, one measurement group per nodule (TID 1411, volumetric ROI), built with
highdicom, shaped like the LIDC-IDRI TID 1500 objects (Imaging Measurement Report > Imaging Measurements
> Measurement Group with a tracking identifier, Finding = Nodule, Finding Site = Lung):
- the nodule's location: a Volume Surface SCOORD3D POINT at its centre (LPS mm) in the series' frame of
  reference, with the CT slices the nine views were interpolated from as its source images;
- the malignancy risk: NUM "Probability of cancer" (DCM 111047), unitless in [0, 1], its method naming
  the calibration; when calibrated, the uncalibrated fold-ensemble probability beside it;
- the zero-shot semantic findings: one qualitative evaluation per feature (its most likely value;
  present/absent as SNOMED CT codes) and that value's probability as a NUM.
Concepts without a standard code use the private coding scheme 99NODULECLIP, described in the
object's Coding Scheme Identification Sequence. The report is complete but unverified and preliminary:
a model wrote it and nobody has signed it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from noduleclip.errors import InputError
from noduleclip.io import Volume
from noduleclip.predict.sites import is_dicom
from noduleclip.preprocess.views import ViewConfig, plane_offsets
from noduleclip.semantics.schema import FEATURE_BY_NAME
from noduleclip.version import __version__

PRIVATE_SCHEME = "99NODULECLIP"
SERIES_NUMBER = 9901
PATIENT_STUDY_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                            "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def require_dicom_source(volume: Volume) -> None:
    """Refuse a volume that was not read from a DICOM series: an SR must reference the series it describes."""
    if not is_dicom(volume):
        fmt = volume.metadata.get("format")
        kind = f"a {fmt} file" if fmt else "an in-memory volume"
        raise InputError(f"a DICOM SR needs a DICOM source, but {volume.source or 'the image'} is {kind}; "
                         "pass the CT's DICOM series folder, or leave out --dicom-sr")


def _code(value: str, meaning: str):
    from highdicom.sr import CodedConcept  # imported on first use: highdicom takes a third of a second

    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning[:64])


# Private code values stay within 16 characters (a plain CodeValue): highdicom cannot read LongCodeValue back.
FEATURE_CODES = {
    "consistency": "CONSISTENCY", "margin_conspicuity": "MARGIN-CONSP", "margins": "MARGINS", "shape": "SHAPE",
    "reticulation": "RETICULATION", "cyst_like_spaces": "CYST-SPACES", "intranodular_bronchiectasis": "BRONCHIECT",
    "necrosis": "NECROSIS", "cavitation": "CAVITATION", "eccentric_calcification": "ECC-CALCIF",
    "airway_cutoff": "AIRWAY-CUTOFF", "pleural_attachment": "PLEURAL-ATT", "vascular_convergence": "VASC-CONV",
    "septal_stretching": "SEPTAL-STR", "paracicatricial_emphysema": "PARACIC-EMPH",
    "pleural_retraction": "PLEURAL-RETR",
    "calcification_pattern": "CALC-PATTERN", "suspicion": "SUSPICION",
}
VALUE_CODES = {"pure ground glass": "PURE-GGO", "semiconsolidation": "SEMICONSOLID",
               "well marginated": "WELL-MARGIN", "poorly marginated": "POORLY-MARGIN"}


def _short(text: str, limit: int = 16) -> str:
    return re.sub(r"[^A-Z0-9]+", "-", text.upper()).strip("-")[:limit]


def source_slices(volume: Volume, center_lps, config: ViewConfig = ViewConfig()) -> list[int]:
    """Indices k of the slices that the nodule's nine views interpolate from (trilinear: floor and floor + 1)."""
    ijk = volume.world_to_index((plane_offsets(config) + np.asarray(center_lps, float)).reshape(-1, 3))
    last = volume.array.shape[0] - 1
    k = ijk[:, 2]
    low, high = int(np.clip(np.floor(k.min()), 0, last)), int(np.clip(np.floor(k.max()) + 1, 0, last))
    return list(range(low, high + 1))


def _evidence(volume: Volume, slices: Sequence[int]) -> list:
    """Header datasets of the referenced slices, with empty type-2 patient/study attributes where absent."""
    import pydicom  # imported on first use: loading pydicom takes a quarter second

    files = volume.metadata["files"]
    headers = []
    for k in slices:
        ds = pydicom.dcmread(files[k], stop_before_pixels=True)
        for name in PATIENT_STUDY_ATTRIBUTES:
            if name not in ds:
                setattr(ds, name, "")
        headers.append(ds)
    return headers


def _semantic_items(prediction) -> tuple[list, list]:
    from highdicom.sr import Measurement, QualitativeEvaluation  # imported on first use: slow to load
    from pydicom.sr.codedict import codes  # imported on first use: slow to load

    evaluations, measurements = [], []
    for name, (value, probability) in prediction.semantics.items():
        feature = FEATURE_BY_NAME.get(name)
        display = feature.display if feature else name.replace("_", " ")
        code = FEATURE_CODES.get(name, _short(name, 13))
        concept = _code(code, display[0].upper() + display[1:])
        if value in ("present", "absent"):  # binary features, and pleural retraction's "absent"
            coded = codes.SCT.Present if value == "present" else codes.SCT.Absent
        else:
            coded = _code(VALUE_CODES.get(value, _short(value)), value)
        evaluations.append(QualitativeEvaluation(concept, coded))
        measurements.append(Measurement(
            name=_code(f"{code}-P", f"Zero-shot probability of the stated {display}"),
            value=float(probability), unit=codes.UCUM.NoUnits))
    return evaluations, measurements


def _nodule_group(volume: Volume, prediction, slices: Sequence[int], evidence: dict, algorithm):
    import highdicom as hd  # imported on first use: highdicom takes a third of a second to load
    from pydicom.sr.codedict import codes  # imported on first use: slow to load

    sources = [hd.sr.SourceImageForSegmentation(evidence[k].SOPClassUID, evidence[k].SOPInstanceUID) for k in slices]
    point = hd.sr.VolumeSurface(graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                                graphic_data=np.array([prediction.center_lps], dtype=np.float64),
                                frame_of_reference_uid=volume.metadata["frame_of_reference_uid"],
                                source_images=sources)
    method = {"isotonic": ("CAL-ISOTONIC", "Fold-ensemble mean, isotonic-calibrated"),
              "platt": ("CAL-PLATT", "Fold-ensemble mean, Platt-calibrated")}.get(
        prediction.calibration, ("UNCALIBRATED", "Fold-ensemble mean, uncalibrated"))
    measurements = [hd.sr.Measurement(name=codes.DCM.ProbabilityOfCancer, value=float(prediction.risk),
                                      unit=codes.UCUM.NoUnits, method=_code(*method))]
    if prediction.calibration:
        measurements.append(hd.sr.Measurement(
            name=_code("RISK-UNCAL", "Uncalibrated fold-ensemble probability of cancer"),
            value=float(prediction.risk_uncalibrated), unit=codes.UCUM.NoUnits))
    evaluations, semantic_measurements = _semantic_items(prediction)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"Nodule {prediction.nodule_id}"),
        referenced_volume_surface=point, finding_type=codes.SCT.Nodule,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)], algorithm_id=algorithm,
        measurements=measurements + semantic_measurements, qualitative_evaluations=evaluations or None)


def _coding_scheme():
    from pydicom.dataset import Dataset  # imported on first use: loading pydicom takes a quarter second

    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "noduleclip concepts"
    item.CodingSchemeResponsibleOrganization = "noduleclip"
    item.CodingSchemeVersion = __version__
    return item


def build_structured_report(volume: Volume, predictions: Sequence, view_config: ViewConfig = ViewConfig(),
                            parameters: Sequence[str] = ()):
    """A Comprehensive 3D SR (TID 1500) of the nodules of one DICOM CT series, as a pydicom Dataset."""
    import highdicom as hd  # imported on first use: highdicom takes a third of a second to load
    from pydicom.sr.codedict import codes  # imported on first use: slow to load
    from pydicom.uid import generate_uid  # imported on first use: slow to load

    require_dicom_source(volume)
    if not predictions:
        raise InputError("a DICOM SR needs at least one nodule prediction")
    slices = {p.nodule_id: source_slices(volume, p.center_lps, view_config) for p in predictions}
    used = sorted({k for ks in slices.values() for k in ks})
    evidence = dict(zip(used, _evidence(volume, used), strict=True))
    algorithm = hd.sr.AlgorithmIdentification(name="noduleclip", version=__version__,
                                              parameters=list(parameters) or None)
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(entropy_srcs=["noduleclip", __version__]),
                                                       name="noduleclip", manufacturer_name="noduleclip")
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    groups = [_nodule_group(volume, p, slices[p.nodule_id], evidence, algorithm) for p in predictions]
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.SCT.ImagingProcedure,
                                     imaging_measurements=groups, referenced_images=[evidence[k] for k in used])
    document = hd.sr.Comprehensive3DSR(
        evidence=[evidence[k] for k in used], content=report[0], series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1, manufacturer="noduleclip",
        is_complete=True, is_final=False, is_verified=False,
        series_description="noduleclip malignancy risk (model output, not verified)", software_versions=__version__)
    document.CodingSchemeIdentificationSequence = [_coding_scheme()]
    return document
