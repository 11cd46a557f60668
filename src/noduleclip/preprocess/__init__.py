"""Preprocessing: from a CT and a nodule centre to the nine 2D views, and the cache that keeps them.

`views` cuts them: `sample_planes(volume, center_lps, ViewConfig())` gives nine 50 x 50 planes at 1 mm through
the centre of a 50 mm cube (axial, coronal, sagittal and six at 45 degrees, named in `PLANE_NAMES`), each with
one trilinear interpolation from the scan, HU clipped to [-1000, 500] and scaled to [0, 1]. `cache` keeps them
per nodule, independent of any backbone (`ViewCache`: CACHE/cache.json with the view settings, one .npz per
nodule under CACHE/views/). `pipeline` fills a cache from a manifest, reading each scan once and working in
processes (`preprocess_manifest`; `nodule_center` and `check_inside` place a nodule and refuse one outside its
scan); `noduleclip preprocess` runs it. `reference` is the slow resample-crop-rotate way of the paper's authors
(`reference_planes`), kept for tests and the preprocessing benchmark.
"""
