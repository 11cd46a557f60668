"""Reading CT volumes (DICOM series, NIfTI, MHA/MHD, NRRD) into `Volume`s in the LPS frame."""

from noduleclip.io.volume import Volume

__all__ = ["Volume"]
