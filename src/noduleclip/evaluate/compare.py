"""Other models' scores on the same cohort, matched by id, against the fold ensemble.

`--compare NAME=FILE` or `NAME=FILE:COLUMN` names a CSV with one score per nodule (a `nodule_id`
column) or per patient (a `patient_id` column and no `nodule_id`). The score column is COLUMN, else
the first of risk, score, probability, prediction, ensemble that the file has (a noduleclip
predictions.csv works as it is). Ids are matched as text; ids the file has and the evaluation does
not are ignored.

Missing ids: when the file lacks some evaluated cases, the comparison runs on the cases both have
(our ensemble re-scored on exactly those cases, so every comparison is paired) and a warning names how
many are missing and the first few; a file sharing no case with the evaluation is an error. A file
with a `label` column that contradicts the manifest on a shared case is an error too (the ids
probably belong to another cohort). Patient-level comparisons of a per-nodule file take each
patient's max over its matched nodules, as for our ensemble.

Computing only: the report's Table 2 is built from `compare_model`'s results in `evaluation_report`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from noduleclip.atomic import number_cell
from noduleclip.data.manifest import label_array
from noduleclip.errors import InputError
from noduleclip.evaluate.stats import delong_test
from noduleclip.metrics.classification import classification_metrics, patient_level

SCORE_COLUMNS = ("risk", "score", "probability", "prediction", "ensemble")
RECALLS = (0.6, 0.7, 0.8, 0.9)


@dataclass
class ComparedScores:
    """One compared model's scores: per nodule or per patient, keyed by id (labels if the file had them)."""

    name: str
    path: Path
    column: str
    level: str  # "nodule" or "patient"
    scores: dict[str, float]
    labels: dict[str, float] = field(default_factory=dict)


def parse_compare_spec(spec: str) -> tuple[str, Path, str | None]:
    """NAME=FILE or NAME=FILE:COLUMN -> (name, path, column or None)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise InputError(f"--compare {spec!r} is not NAME=FILE or NAME=FILE:COLUMN; e.g. --compare brock=brock.csv")
    path, column = Path(rest), None
    if not path.is_file() and ":" in rest:
        head, _, tail = rest.rpartition(":")
        path, column = Path(head), tail.strip() or None
    return name.strip(), path, column


def read_scores(spec: str) -> ComparedScores:
    """Read a `--compare` file: its level, score column and one score per id (duplicate ids refused)."""
    name, path, column = parse_compare_spec(spec)
    if not path.is_file():
        raise InputError(f"--compare {name}: {path} does not exist; give a CSV with nodule_id (or patient_id) "
                         "and a score column")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    id_column = "nodule_id" if "nodule_id" in header else "patient_id" if "patient_id" in header else None
    if id_column is None:
        raise InputError(f"--compare {name}: {path} has neither a nodule_id nor a patient_id column (it has "
                         f"{', '.join(header[:8])}); add the ids the manifest uses")
    if column is None:
        column = next((c for c in SCORE_COLUMNS if c in header), None)
        if column is None:
            raise InputError(f"--compare {name}: {path} has no score column named {', '.join(SCORE_COLUMNS)}; "
                             f"name it as {name}={path}:COLUMN")
    elif column not in header:
        raise InputError(f"--compare {name}: {path} has no column {column!r} (it has {', '.join(header[:8])})")
    if not rows:
        raise InputError(f"--compare {name}: {path} has a header but no rows")
    scores: dict[str, float] = {}
    labels: dict[str, float] = {}
    for n, row in enumerate(rows, start=2):
        key, where = row.get(id_column, ""), f"--compare {name}: {path.name} row {n}"
        if not key:
            raise InputError(f"{where}: {id_column} is empty")
        if key in scores:
            raise InputError(f"{where}: {id_column} {key!r} appears twice; give one score per {id_column[:-3]}")
        scores[key] = number_cell(row[column], f"{where}: the score", "give one finite numeric score per row")
        if "label" in header:
            labels[key] = label_array([row["label"]])[0]
    return ComparedScores(name, path, column, id_column[:-3], scores, labels)


def match_scores(compared: ComparedScores, ids: Sequence[str], labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The compared scores aligned to `ids` (NaN where the file lacks one) and the missing ids."""
    scores = np.array([compared.scores.get(str(i), np.nan) for i in ids], dtype=float)
    missing = [str(i) for i, s in zip(ids, scores, strict=True) if np.isnan(s)]
    if len(missing) == len(ids):
        raise InputError(f"--compare {compared.name}: no {compared.level} id of {compared.path} matches the "
                         f"evaluated ones (e.g. file {next(iter(compared.scores))!r}, evaluation {str(ids[0])!r}); "
                         f"give scores for the manifest's {compared.level}_id values")
    for i, y in zip(ids, labels, strict=True):
        theirs = compared.labels.get(str(i), np.nan)
        if not (np.isnan(theirs) or np.isnan(y) or theirs == y):
            raise InputError(f"--compare {compared.name}: {compared.path} gives {compared.level} {str(i)!r} label "
                             f"{theirs:g} but the manifest {y:g}; are these ids of another cohort?")
    return scores, missing


def _scored(labels: np.ndarray, scores: np.ndarray, bootstrap: int, seed: int, unit: str) -> dict:
    """One model's metrics with bootstrap intervals and fixed-recall points (one class only: a reason, no error)."""
    return classification_metrics(labels, scores, recalls=RECALLS, n_bootstrap=bootstrap, seed=seed,
                                  allow_single_class=True, unit=unit)


def _paired(labels: np.ndarray, ours: np.ndarray, theirs: np.ndarray, bootstrap: int, seed: int, unit: str) -> dict:
    """Both models' metrics on the same cases and DeLong's test of their AUROCs (None when it is undefined)."""
    ours_m, theirs_m = _scored(labels, ours, bootstrap, seed, unit), _scored(labels, theirs, bootstrap, seed, unit)
    test = None
    if theirs_m["auroc"] is not None:
        result = delong_test(labels, ours, theirs)
        test = {"auc_ours": result.auc_a, "auc_other": result.auc_b, "z": result.z, "p": result.p}
    return {"n_cases": len(ours), "ours": ours_m, "other": theirs_m, "delong": test}


def aligned_scores(compared: ComparedScores, ids: Sequence[str], patients: Sequence[str], labels: np.ndarray,
                   risk: np.ndarray) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], list[str], int]:
    """{level: (labels, our scores, their scores)} on the cases the file scores, the missing ids, and how many
    cases (at the file's level) were evaluated."""
    ids, patients = [str(i) for i in ids], [str(p) for p in patients]
    labels, risk = np.asarray(labels, dtype=float), np.asarray(risk, dtype=float)
    levels = {}
    if compared.level == "nodule":
        scores, missing = match_scores(compared, ids, labels)
        kept = ~np.isnan(scores)
        kept_ids = [i for i, k in zip(ids, kept, strict=True) if k]
        kept_patients = [p for p, k in zip(patients, kept, strict=True) if k]
        levels["nodule"] = (labels[kept], risk[kept], scores[kept])
        _, patient_labels, our_patient = patient_level(kept_ids, kept_patients, labels[kept], risk[kept])
        _, _, their_patient = patient_level(kept_ids, kept_patients, labels[kept], scores[kept])
        levels["patient"] = (patient_labels, our_patient, their_patient)
        return levels, missing, len(ids)
    _, patient_labels, our_patient = patient_level(ids, patients, labels, risk)
    pids = list(dict.fromkeys(patients))
    their_patient, missing = match_scores(compared, pids, patient_labels)
    kept = ~np.isnan(their_patient)
    levels["patient"] = (patient_labels[kept], our_patient[kept], their_patient[kept])
    return levels, missing, len(pids)


def compare_model(compared: ComparedScores, ids: Sequence[str], patients: Sequence[str], labels: np.ndarray,
                  risk: np.ndarray, bootstrap: int = 1000, seed: int = 0) -> dict:
    """Both models on the cases the file scores: per level, metrics of each and DeLong's test; the missing ids and
    a warning naming them."""
    levels, missing, evaluated = aligned_scores(compared, ids, patients, labels, risk)
    units = {"nodule": "nodules", "patient": "patients"}
    result = {"name": compared.name, "file": str(compared.path), "column": compared.column, "level": compared.level,
              "levels": {level: _paired(*arrays, bootstrap, seed, units[level]) for level, arrays in levels.items()},
              "missing": missing, "warning": None}
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        result["warning"] = (f"{compared.name}: {compared.path.name} has no score for {len(missing)} of the "
                             f"{evaluated} evaluated {compared.level}s ({shown}); it is compared on the "
                             f"{evaluated - len(missing)} it scores")
    return result
