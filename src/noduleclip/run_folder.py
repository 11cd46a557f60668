"""What marks a folder as a training run: config.json with the run format and its version.

Kept apart from the training code so that reading a run (to predict, say) does not import it.
"""

from __future__ import annotations

from pathlib import Path

from noduleclip.errors import InputError
from noduleclip.typed_json import read_json_object

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
    document = read_json_object(path, "the run folder is damaged, so train it again")
    if document.get("format") != RUN_FORMAT:
        raise InputError(f"{path} is not a noduleclip run configuration; give the folder of a `noduleclip train` run")
    version = document.get("format_version")
    if version != RUN_FORMAT_VERSION:
        raise InputError(f"run {run} has run format version {version} (written by noduleclip "
                         f"{document.get('package_version', '?')}), but noduleclip {__version__} reads version "
                         f"{RUN_FORMAT_VERSION}; use that noduleclip version or train the run again")
    if not isinstance(document.get("train"), dict):
        raise InputError(f"{path} has no object under the key 'train' (the training settings); the run folder is "
                         "damaged, so train it again")
    return document


def train_settings_where(run: Path) -> str:
    """How messages name a run's training settings: its config.json and the key they sit under."""
    return f"{Path(run) / 'config.json'} (its 'train' settings)"
