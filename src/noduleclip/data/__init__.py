"""The nodule manifest, the one input every stage reads: a CSV with one row per nodule.

`noduleclip.data.manifest` reads and checks it (`NoduleManifest.read`: required columns, unique ids,
labels 1/0/empty, world LPS coordinates, paths resolved against the CSV's folder, semantic columns
parsed), writes it (`NoduleManifest.write`, used by the importers and the synthetic cohort) and holds
the label helpers (`label_array`). The training datasets and samplers live in `noduleclip.train.dataset`.
"""

from noduleclip.data.manifest import NoduleManifest, NoduleRecord

__all__ = ["NoduleManifest", "NoduleRecord"]
