"""Predict every nodule of a manifest: many scans in one command, one predictions.csv/.json for all.

    report = predict_manifest("runs/a", "nodules.csv", "out/")       # noduleclip predict RUN --manifest CSV --out DIR

Each scan is read once; worker processes read the scans and cut the views while this process scores the
nodules already cut with the run's fold models (loaded once). A scan that cannot be read, or a nodule that lies
outside its scan, is reported by id with its reason (failures.csv) and the others complete.

Resumable: each scan's predictions are written as soon as they are made, atomically, into `out/.parts/`;
running the same command again skips the scans already done (and retries those that failed). The part files
name the run they came from, so that an --out folder is never filled from two runs. predictions.csv,
predictions.json (and failures.csv) are written from the parts at the end, each file all or nothing.

Beyond one process: under `torchrun` or `accelerate launch` the scans are split across the processes
(process k takes scans k, k + n, ...), each writes its parts, and the first process merges them: the same files
as one process writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from noduleclip.atomic import file_sha256, write_csv, write_json
from noduleclip.data.manifest import NoduleManifest, NoduleRecord
from noduleclip.errors import InputError
from noduleclip.predict.api import NoduleClip
from noduleclip.predict.outputs import write_outputs
from noduleclip.predict.sites import NoduleSite, is_dicom, read_image
from noduleclip.preprocess.pipeline import CutNodule, default_workers, run_pool, scan_groups, scan_views
from noduleclip.preprocess.views import ViewConfig
from noduleclip.progress import progress_bar
from noduleclip.version import __version__

PARTS = ".parts"
SCANS = "scans"  # per-scan panels and SRs, when asked for
FORMAT = "noduleclip-batch-predictions"


@dataclass
class BatchReport:
    """What `predict_manifest` did: nodules predicted now, nodules already written (skipped), failures."""

    out: Path
    predicted: int = 0
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)  # {"nodule_id", "image", "reason"}
    files: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.predicted} nodules predicted, {self.skipped} already written, {len(self.failed)} failed"
                + (" (see failures.csv)" if self.failed else ""))


@dataclass
class _Processes:
    """This process's place among the processes of a distributed launch (one process: index 0 of 1)."""

    index: int = 0
    count: int = 1
    state: object = None

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()  # type: ignore[attr-defined]


def _processes(device: str) -> _Processes:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Processes()
    from accelerate import PartialState  # imported only under a distributed launch

    # on CPUs accelerate joins the processes only when told to (gloo); on GPUs each takes its own
    state = PartialState(cpu=not str(device).startswith("cuda"))
    return _Processes(state.process_index, state.num_processes, state)


def _scan_key(records: list[NoduleRecord]) -> str:
    return f"{records[0].image}|{records[0].series_uid or ''}"


def _part_path(parts: Path, records: list[NoduleRecord]) -> Path:
    return parts / (hashlib.sha256(_scan_key(records).encode()).hexdigest()[:24] + ".json")


def _run_identity(run: Path) -> str:
    """The run's config.json digest: the same for every copy of a run, different for another run."""
    return file_sha256(run / "config.json")


def _read_part(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a part that cannot be read is made again


def _done(path: Path, records: list[NoduleRecord], identity: str, out: Path) -> bool:
    """Whether the scan's part is there, complete, without failures; refuses a part from another run."""
    part = _read_part(path)
    if part is None:
        return False
    if part.get("run") != identity:
        raise InputError(f"--out {out} holds predictions of another run ({path.name} was written from a run whose "
                         "config.json differs); choose a new --out folder, or remove that one")
    return not part["failed"] and [n["nodule_id"] for n in part["nodules"]] == [r.nodule_id for r in records]


def _cut(records: list[NoduleRecord], config: ViewConfig) -> tuple[list[NoduleRecord], list[CutNodule]]:
    """A worker's job: the scan's records and their cut views (or why not)."""
    return records, scan_views(records, config)


def _scan_folder(records: list[NoduleRecord]) -> str:
    """A folder name for a scan's panels and SR that is safe on every file system and says which scan it is."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(records[0].image)).name).strip("._") or "scan"
    return f"{stem}-{hashlib.sha256(_scan_key(records).encode()).hexdigest()[:8]}"


def predict_manifest(run: str | os.PathLike, manifest_path: str | os.PathLike, out: str | os.PathLike, *,
                     panels: bool = False, dicom_sr: bool = False, workers: int | None = None, device: str = "cpu",
                     progress: bool = True) -> BatchReport:
    """Predict every nodule of the manifest with the run; write out/predictions.csv, predictions.json (and
    failures.csv); with `panels` / `dicom_sr` also each scan's panels / DICOM SR under out/scans/<scan>/."""
    run, out = Path(run), Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the predictions")
    manifest = NoduleManifest.read(manifest_path)
    processes = _processes(device)
    if processes.count > 1 and str(device).startswith("cuda"):
        device = str(processes.state.device)  # type: ignore[attr-defined]
    model = NoduleClip.load(run, device=device)
    identity, parts = _run_identity(run), out / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    groups = scan_groups(manifest)
    mine = groups[processes.index::processes.count]
    todo = [g for g in mine if not _done(_part_path(parts, g), g, identity, out)]
    report = BatchReport(out, skipped=sum(len(g) for g in mine) - sum(len(g) for g in todo))
    bar = progress_bar(total=sum(len(g) for g in todo), unit="nodule", desc="predict",
                       disable=not progress or not todo)

    pending: list[tuple[list[NoduleRecord], list[CutNodule]]] = []  # scans cut, waiting for a full batch

    def flush() -> None:
        """Score the waiting scans' nodules in one batch (the fold models swap once per batch, not per scan) and
        write each scan's part."""
        ready = [c for _, cuts in pending for c in cuts if c.error is None]
        scored = {}
        if ready:
            sites = [NoduleSite(c.nodule_id, np.asarray(c.center), f"nodule {c.nodule_id}") for c in ready]
            scored = {p.nodule_id: p for p in model.predict_views(np.stack([c.views for c in ready]), sites)}
        for records, cuts in pending:
            predictions = [scored[c.nodule_id] for c in cuts if c.error is None]
            part = _scan_part(model, records, cuts, predictions, identity, out if (panels or dicom_sr) else None,
                              dicom_sr)
            write_json(_part_path(parts, records), part)
            report.predicted += len(part["nodules"])
            bar.update(len(records))
        pending.clear()

    def collect(result: tuple[list[NoduleRecord], list[CutNodule]]) -> None:
        pending.append(result)
        if sum(len(cuts) for _, cuts in pending) >= model.ensemble.batch_size:
            flush()

    workers = default_workers() if workers is None else max(1, workers)
    try:
        if workers > 1 and len(todo) > 1:
            run_pool(_cut, [(g, model.views) for g in todo], min(workers, len(todo)), collect)
        else:
            for records in todo:
                collect(_cut(records, model.views))
        flush()
    finally:
        bar.close()
    processes.wait()
    if processes.index == 0:
        report.failed, report.files = _merge(model, manifest, groups, parts, out, Path(manifest_path))
    processes.wait()
    return report


def _scan_part(model: NoduleClip, records: list[NoduleRecord], cuts: list[CutNodule], predictions: list,
               identity: str, scans: Path | None, dicom_sr: bool) -> dict:
    """One scan's part: its nodules' predictions (the manifest's columns beside them) and its failures."""
    by_id = {r.nodule_id: r for r in records}
    failed = [{"nodule_id": c.nodule_id, "image": str(by_id[c.nodule_id].image), "reason": c.error}
              for c in cuts if c.error is not None]
    nodules = []
    if predictions:
        for prediction in predictions:
            record = by_id[prediction.nodule_id]
            nodules.append({"patient_id": record.patient_id, "image": str(record.image),
                            "series_uid": record.series_uid, "label": record.label, **prediction.to_dict()})
        if scans is not None:
            try:
                volume = read_image(records[0].image, records[0].series_uid)
                write_outputs(scans / SCANS / _scan_folder(records), predictions, volume, model,
                              dicom_sr=dicom_sr and is_dicom(volume))
            except InputError as exc:
                failed.append({"nodule_id": "", "image": str(records[0].image), "reason": f"panels or SR: {exc}"})
    return {"run": identity, "image": str(records[0].image), "nodules": nodules, "failed": failed}


def _merge(model: NoduleClip, manifest: NoduleManifest, groups: list[list[NoduleRecord]], parts: Path, out: Path,
           manifest_path: Path) -> tuple[list[dict], list[Path]]:
    """predictions.csv / .json (and failures.csv) from every scan's part, in the manifest's order."""
    nodules, failed = [], []
    for records in groups:
        part = _read_part(_part_path(parts, records)) or {"nodules": [], "failed": [
            {"nodule_id": r.nodule_id, "image": str(r.image), "reason": "not predicted (its process stopped)"}
            for r in records]}
        nodules += part["nodules"]
        failed += part["failed"]
    order = {r.nodule_id: i for i, r in enumerate(manifest)}
    nodules.sort(key=lambda n: order[n["nodule_id"]])
    calibrator = model.calibrator
    document = {
        "format": FORMAT, "format_version": 1, "package_version": __version__, "run": str(Path(model.run).resolve()),
        "manifest": str(manifest_path.resolve()), "manifest_sha256": file_sha256(manifest_path),
        "calibration": None if model.calibration is None else {
            "method": calibrator.method, "reason": calibrator.reason, "n_cases": calibrator.n_cases},
        "notes": list(model.notes), "nodules": nodules, "failed": failed,
    }
    files = [write_json(out / "predictions.json", document), write_csv(out / "predictions.csv", *_rows(nodules))]
    failures = out / "failures.csv"
    if failed:
        files.append(write_csv(failures, ["nodule_id", "image", "reason"],
                               [[f["nodule_id"], f["image"], f["reason"]] for f in failed]))
    elif failures.exists():
        failures.unlink()  # an earlier run's failures, all predicted now
    return failed, files


def _rows(nodules: list[dict]) -> tuple[list[str], list[list]]:
    folds = len(nodules[0]["fold_risks"]) if nodules else 0
    features = list(nodules[0]["semantics"]) if nodules else []
    header = (["patient_id", "nodule_id", "image", "label", "center_x", "center_y", "center_z", "risk",
               "risk_uncalibrated", "calibration"] + [f"fold_{k}" for k in range(folds)]
              + [c for f in features for c in (f, f"{f}_probability")])
    rows = []
    for n in nodules:
        semantic = [c for f in features for c in (n["semantics"][f]["value"], n["semantics"][f]["probability"])]
        rows.append([n["patient_id"], n["nodule_id"], n["image"], "" if n["label"] is None else n["label"],
                     *n["center_lps"], n["risk"], n["risk_uncalibrated"], n["calibration"] or "none",
                     *n["fold_risks"], *semantic])
    return header, rows
