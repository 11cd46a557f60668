"""One module per subcommand, each with `register(subparsers)`; `SUMMARIES` holds their one-line help.

The summaries live here, apart from the modules, so that `noduleclip --help` lists every command without
importing any of them (several pull in torch, scikit-learn or pandas, seconds of start-up).
"""

from __future__ import annotations

SUMMARIES = {  # subcommand -> (the module that registers it, its one-line help)
    "preprocess": ("noduleclip.commands.preprocess", "cut and cache the nine views of every nodule of a manifest"),
    "views": ("noduleclip.commands.views", "draw the nine views of one nodule to a PNG"),
    "train": ("noduleclip.commands.train", "train the fold models of a manifest and evaluate their ensemble"),
    "evaluate": ("noduleclip.commands.evaluate",
                 "score a trained run's fold ensemble on a manifest (e.g. an external cohort)"),
    "predict": ("noduleclip.commands.predict",
                "predict the malignancy risk and semantic profile of nodules in one CT, or of a manifest's"),
    "synth": ("noduleclip.commands.synth", "write a synthetic chest-CT cohort with known truth (DICOM + manifest)"),
    "demo": ("noduleclip.commands.demo", "synthetic cohorts -> training -> internal and external evaluation"),
    "serve": ("noduleclip.commands.serve",
              "a local web viewer of the CT scans under a folder, where a click on a nodule predicts it"),
    "ablate": ("noduleclip.commands.ablate", "train the ablation models on shared splits and compare them (Table 4)"),
    "import-lidc": ("noduleclip.commands.imports", "LIDC-IDRI XML reads (+ CT series) -> nodule manifest"),
    "import-crops": ("noduleclip.commands.imports", "a folder of nodule crops with a CSV -> nodule manifest"),
    "import-luna": ("noduleclip.commands.imports", "a LUNA16-style nodule list + scans -> nodule manifest"),
}


def summary(command: str) -> str:
    """The one-line help of `command`, as `noduleclip --help` lists it."""
    return SUMMARIES[command][1]
