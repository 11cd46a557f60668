"""Reading CT volumes (DICOM series, NIfTI, MHA/MHD, NRRD) into `Volume`s in the LPS frame."""

from noduleclip.io.readers import (
    check_looks_like_ct,
    looks_like_ct,
    read_mask,
    read_volume,
    same_grid,
    write_volume,
)
from noduleclip.io.volume import Volume

__all__ = ["Volume", "read_volume", "read_mask", "write_volume", "looks_like_ct", "check_looks_like_ct", "same_grid"]
