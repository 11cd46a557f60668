"""What marks a folder as a training run: config.json with the run format and its version.

Kept apart from the training code so that reading a run (to predict, say) does not import it.
"""

from __future__ import annotations

import json
from pathlib import Path

from noduleclip.errors import InputError

RUN_FORMAT = "noduleclip-run"
RUN_FORMAT_VERSION = 1


def read_run_document(run: Path, missing_ok: bool = False) -> dict | None:
    """A run folder's config.json, refusing a damaged, foreign or other-version one in one sentence.

    A folder without config.json is None when `missing_ok` (a run about to start), else an error.
    """
    from noduleclip import __version__

    run = Path(run)
    path = run / "config.json"
    if not path.is_file():
        if missing_ok:
            return None
        if not run.is_dir():
            raise InputError(f"run {run} is not a folder; give the --out folder of `noduleclip train`")
        raise InputError(f"run {run} is incomplete: config.json is missing; give the folder of a finished "
                         "`noduleclip train` run")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise InputError(f"{path} is not valid JSON; the run folder is damaged, so train it again") from None
    if document.get("format") != RUN_FORMAT:
        raise InputError(f"{path} is not a noduleclip run configuration; give the folder of a `noduleclip train` run")
    version = document.get("format_version")
    if version != RUN_FORMAT_VERSION:
        raise InputError(f"run {run} has run format version {version} (written by noduleclip "
                         f"{document.get('package_version', '?')}), but noduleclip {__version__} reads version "
                         f"{RUN_FORMAT_VERSION}; use that noduleclip version or train the run again")
    return document
