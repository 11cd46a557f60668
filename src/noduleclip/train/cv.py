"""A training run: patient-level splits, one model per cross-validation fold, the fold ensemble on the test set.

    result = train_run("manifest.csv", "runs/a", TrainConfig(epochs=20))
    risk = RunEnsemble.load("runs/a").score(views).risk   # noduleclip.ensemble; views: (N, 9, 50, 50) in [0, 1]

A run folder holds config.json, splits.csv, log.jsonl, fold_<k>/{best,last,resume}/ and
fold_<k>/done.json, val_predictions.csv, predictions.csv, patient_predictions.csv, metrics.json,
calibrator.json (fit on the out-of-fold predictions, used by `predict`), MODEL_CARD.md and model_card.json (what
the run is and is not for, its data, weights, settings and results), tracking/ with `log_with` (the experiment
tracker's files; TensorBoard's event files), and the view cache (cache/) unless another one was named. Running
again on the same folder with
the same settings resumes: finished folds are skipped, an unfinished one continues after its last
finished epoch, and the result is the one an uninterrupted run gives. Other settings or another
manifest on an existing run folder are refused, except that a run that finished no fold (one that
failed on a bad manifest row, say) starts over on a corrected manifest, keeping its view cache. A
splits.csv placed in a new run folder is used instead of making one (it is checked for leakage like
any other).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    is_mlflow_available,
    is_tensorboard_available,
    is_wandb_available,
)

from noduleclip.atomic import file_sha256, write_text
from noduleclip.data.manifest import NoduleManifest, record_labels
from noduleclip.ensemble import RunEnsemble
from noduleclip.errors import InputError
from noduleclip.metrics.calibration import calibrate_run
from noduleclip.model import NoduleClipModel
from noduleclip.model.checkpoint import trace_for_inference
from noduleclip.preprocess.acquisition import acquisition_views
from noduleclip.preprocess.cache import ViewCache
from noduleclip.preprocess.pipeline import default_workers, preprocess_manifest
from noduleclip.run_folder import DONE_FILE, RUN_FORMAT, RUN_FORMAT_VERSION, fold_model_folder, read_run_document
from noduleclip.semantics import record_features
from noduleclip.semantics.schema import labelled_features
from noduleclip.train.config import TrainConfig
from noduleclip.train.dataset import NoduleDataset, augmented_variants, sampling_weights
from noduleclip.train.loop import FoldData, build_fold_model, device_name, read_done, train_fold
from noduleclip.train.model_card import write_model_card
from noduleclip.train.results import brief_scores, format_summary, write_results
from noduleclip.train.resume import RunLog, remove_partial_writes, resumed_epochs
from noduleclip.train.splits import SplitPlan, make_splits
from noduleclip.version import __version__


@dataclass
class RunResult:
    """A finished run: its folder, configuration, metrics.json content and summary table."""

    run: Path
    config: TrainConfig
    metrics: dict
    summary: str


def _check_run_folder(run: Path, config: TrainConfig, manifest_sha: str) -> tuple[dict | None, bool]:
    """The existing run's config.json document (refusing other options or another manifest), or None for a new run,
    and whether the folder holds a run that finished no fold on another manifest (to be started over)."""
    if run.exists() and not run.is_dir():
        raise InputError(f"--out {run} is a file; give a folder for the run")
    document = read_run_document(run, missing_ok=True)
    if document is None:
        others = [p.name for p in run.iterdir()
                  if p.name not in ("cache", "splits.csv") and not p.name.startswith(".")] if run.is_dir() else []
        if others:
            raise InputError(f"{run} is not empty and is not a noduleclip run folder (it holds {others[0]!r}); "
                             "choose a new --out folder")
        return None, False
    changed = TrainConfig.from_dict(document["train"]).differences(config)
    if changed:
        raise InputError(f"run folder {run} was made with other options ({'; '.join(changed)}); resume it with its "
                         "own options (see its config.json) or choose a new --out folder")
    if document["manifest"]["sha256"] != manifest_sha:
        finished = [k for k in range(config.folds) if (run / f"fold_{k}" / DONE_FILE).is_file()]
        if not finished:
            return None, True
        raise InputError(f"run folder {run} was trained on another manifest ({document['manifest']['path']}) and "
                         f"fold_{finished[0]} has finished; resume it with that manifest or choose a new --out folder")
    return document, False


def _clear_run_folder(run: Path, config: TrainConfig) -> None:
    """Empty a run folder that finished no fold, keeping its view cache and a splits.csv placed before the run began."""
    caches = {(run / "cache").resolve(), Path(config.cache).resolve() if config.cache else None}
    splits, described = run / "splits.csv", run / "config.json"
    keep_splits = splits.is_file() and described.is_file() and splits.stat().st_mtime < described.stat().st_mtime
    for path in run.iterdir():
        if (path == splits and keep_splits) or any(c == path.resolve() or path.resolve() in c.parents
                                                   for c in caches if c is not None):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _report_resume(run: Path, config: TrainConfig) -> None:
    """Print one line naming the finished folds that are reused and the fold that continues after an epoch."""
    finished = [f"fold_{k}" for k in range(config.folds) if read_done(run / f"fold_{k}") is not None]
    continuing = [(k, epochs) for k in range(config.folds) if read_done(run / f"fold_{k}") is None
                  and (epochs := resumed_epochs(run / f"fold_{k}" / "resume")) is not None]
    if not finished and not continuing:
        return
    parts = [f"reusing finished {', '.join(finished)}"] if finished else []
    parts += [f"fold_{k} continues from epoch {epochs + 1} of {config.epochs}" if epochs < config.epochs
              else f"fold_{k} has trained its {epochs} epochs and only its validation remains"
              for k, epochs in continuing]
    print(f"resuming run {run}: {'; '.join(parts)}", flush=True)


def _describe(config: TrainConfig, manifest: NoduleManifest, manifest_sha: str, model: NoduleClipModel,
              features: list[dict]) -> dict:
    settings = model.config
    assert manifest.path is not None  # train_run reads the manifest from its file
    return {
        "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "package_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "train": config.to_dict(),
        "manifest": {"path": str(Path(manifest.path).resolve()), "sha256": manifest_sha, "nodules": len(manifest),
                     "patients": len({r.patient_id for r in manifest}),
                     # what the texts could teach: features with two or more values (predict profiles these)
                     "text_features": labelled_features(features) if model.text is not None else []},
        "model": {"backbone": settings.backbone, "tuning": settings.tuning, "image_size": settings.image_size,
                  "random_init": settings.random_init, "weights_source": settings.weights_source,
                  "tower_fingerprint": settings.tower_fingerprint, "trainable_fraction": model.trainable_fraction()},
    }


def _splits(run: Path, manifest: NoduleManifest, config: TrainConfig) -> SplitPlan:
    path = run / "splits.csv"
    if path.is_file():
        plan = SplitPlan.read_csv(path)  # refuses a patient on two sides
        plan.check_matches(r.nodule_id for r in manifest)
        if plan.n_folds != config.folds:
            raise InputError(f"{path} has {plan.n_folds} folds but --folds is {config.folds}; use the same number")
        return plan
    plan = make_splits(manifest.records, test_fraction=config.test_fraction, folds=config.folds, seed=config.seed)
    plan.check_disjoint()
    return plan


def _views(manifest: NoduleManifest, config: TrainConfig, run: Path, accelerator) -> torch.Tensor:
    """All nodules' views in manifest order, preprocessing (on the main process) those not yet cached."""
    root = Path(config.cache) if config.cache else run / "cache"
    if accelerator.is_main_process:
        workers = default_workers() if config.workers is None else max(1, config.workers)
        report = preprocess_manifest(manifest, ViewCache(root, config.views), workers=workers, progress=config.progress)
        if report.failed:
            nid, reason = report.failed[0]
            raise InputError(f"{len(report.failed)} nodule(s) could not be preprocessed, first {nid!r}: {reason}; "
                             "fix or remove them from the manifest")
    accelerator.wait_for_everyone()
    cache = ViewCache(root, config.views, create=False)
    return torch.from_numpy(cache.load_many([r.nodule_id for r in manifest]))


TRACKING_FOLDER = "tracking"  # in the run folder: the experiment tracker's files (TensorBoard's event files)
TRACKING_PROJECT = "noduleclip"  # the tracker's project (TensorBoard: the folder under tracking/; MLflow: experiment)
_TRACKER_PACKAGES = {"tensorboard": ("tensorboard", is_tensorboard_available),
                     "mlflow": ("mlflow", is_mlflow_available), "wandb": ("wandb", is_wandb_available)}


def check_tracker(config: TrainConfig) -> None:
    """Refuse `log_with` when its tracker's package is not installed, before any work."""
    if config.log_with == "none":
        return
    package, available = _TRACKER_PACKAGES[config.log_with]
    if not available():
        raise InputError(f"--log-with {config.log_with} needs the {package} package, which is not installed; install "
                         f"it (pip install {package}, or the package's `tracking` extra) or leave --log-with out")


def _hyperparameters(config: TrainConfig) -> dict:
    """The settings as the trackers store them: one flat level (views.size, ...), no None (TensorBoard refuses it)."""
    flat: dict = {}
    for name, value in config.to_dict().items():
        for key, item in (value.items() if isinstance(value, dict) else [(None, value)]):
            flat[name if key is None else f"{name}.{key}"] = "none" if item is None else item
    return flat


def _start_tracking(accelerator, config: TrainConfig, run: Path) -> None:
    """Start the run's experiment tracker (`log_with`) with its settings; the epochs log into it (`train_fold`)."""
    if config.log_with == "none":
        return
    folder = run / TRACKING_FOLDER
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
    options = {"mlflow": {"logging_dir": str(folder), "run_name": run.resolve().name},
               "wandb": {"name": run.resolve().name, "dir": str(folder)}}
    accelerator.init_trackers(TRACKING_PROJECT, config=_hyperparameters(config), init_kwargs=options)


def _end_tracking(accelerator, config: TrainConfig) -> None:
    """Close the tracker's run (its files complete). Under several processes only the trackers end: accelerate's
    `end_training` would also destroy the process group, which the caller may still use (another run, say)."""
    if config.log_with == "none":
        return
    if accelerator.num_processes == 1:
        accelerator.end_training()
    else:
        for tracker in accelerator.trackers:
            tracker.finish()


def _accelerator(config: TrainConfig, run: Path):
    cuda = torch.cuda.is_available()
    if config.mixed_precision == "fp16" and not cuda:
        raise InputError("mixed precision fp16 needs a CUDA GPU; use --mixed-precision no (or bf16)")
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != config.mixed_precision and not (
            torch.distributed.is_available() and torch.distributed.is_initialized()):
        # accelerate keeps one precision per process; a single process may train runs of either precision in turn
        AcceleratorState._reset_state()
    # a fine-tuned tower has weights that a forward pass never uses (e.g. DINOv2's mask token)
    unused = DistributedDataParallelKwargs(find_unused_parameters=config.tuning == "finetune")
    tracking = dict(log_with=config.log_with, project_config=ProjectConfiguration(
        project_dir=str(run), logging_dir=str(run / TRACKING_FOLDER))) if config.log_with != "none" else {}
    return Accelerator(cpu=not cuda, mixed_precision=config.mixed_precision, kwargs_handlers=[unused],
                       dataloader_config=DataLoaderConfiguration(split_batches=True), **tracking)


@contextlib.contextmanager
def _compute_settings(config: TrainConfig):
    """CPU threads and deterministic kernels for the run; the caller's settings come back afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if config.threads:
        torch.set_num_threads(config.threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))
    if not torch.cuda.is_available():
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def train_run(manifest_path: str | os.PathLike, out: str | os.PathLike, config: TrainConfig | None = None) -> RunResult:
    """Train (or resume) the cross-validated fold models of a manifest into the run folder `out`; evaluate the
    ensemble."""
    config = (config or TrainConfig()).validate()
    check_tracker(config)
    run = Path(out)
    manifest, features, manifest_sha = _read_manifest(manifest_path)
    document, restart = _check_run_folder(run, config, manifest_sha)
    with _compute_settings(config):
        accelerator = _accelerator(config, run)
        main = accelerator.is_main_process
        if restart:
            if main:
                print(f"run folder {run} finished no fold and was started on another manifest; starting it over on "
                      f"{manifest_path} (the view cache is kept)", flush=True)
                _clear_run_folder(run, config)
            accelerator.wait_for_everyone()
        plan = _splits(run, manifest, config)
        probe = build_fold_model(config, 0)
        described = _describe(config, manifest, manifest_sha, probe, features)
        if document and document["model"]["tower_fingerprint"] != described["model"]["tower_fingerprint"]:
            raise InputError(f"the towers built now ({described['model']['weights_source']}) differ from those run "
                             f"{run} started with; pass the same weights, or choose a new --out folder")
        if main:
            _start_run_folder(run, plan, described if document is None else None)
        views = _views(manifest, config, run, accelerator)
        inputs = _training_inputs(probe, views, config, run, accelerator, manifest.records, set(plan.test_ids()))
        del probe
        if main:
            _report_resume(run, config)
        _start_tracking(accelerator, config, run)
        try:
            folds = [_fold(k, config, plan, manifest, features, inputs, run, accelerator)
                     for k in range(config.folds)]
            if main:
                _evaluate(run, config, plan, manifest.records, views, folds, device_name(accelerator.device))
                calibrate_run(run)  # calibrator.json from the out-of-fold predictions just written
                if config.tuning != "vision-only":  # predict reads them instead of building the text tower,
                    RunEnsemble.load(run, device_name(accelerator.device)).write_prompt_embeddings()
                trace_for_inference(fold_model_folder(run, 0))  # the image tower traced into the cache
                write_model_card(run, manifest)  # MODEL_CARD.md and model_card.json, from the files just written
                _log_run_metrics(accelerator, run)
            accelerator.wait_for_everyone()
        finally:
            _end_tracking(accelerator, config)
    metrics = json.loads((run / "metrics.json").read_text())
    return RunResult(run, config, metrics, format_summary(metrics))


def _log_run_metrics(accelerator, run: Path) -> None:
    """The run's out-of-fold and test AUROC and AUPRC (nodule and patient level) to the tracker, if there is one."""
    metrics = json.loads((run / "metrics.json").read_text())
    values = {f"run/{title}/{level}/{name}": scored[level][name]
              for title, scored in (("validation", metrics["validation"]), ("test", metrics["test"])) if scored
              for level in ("nodule", "patient") for name in ("auroc", "auprc") if scored[level][name] is not None}
    accelerator.log(values)


def _read_manifest(manifest_path) -> tuple[NoduleManifest, list[dict], str]:
    """The manifest, each nodule's semantic features and the manifest file's digest; a manifest that cannot train
    (no labels, a bad semantic value) stops the run before any work."""
    manifest = NoduleManifest.read(manifest_path)
    if all(r.label is None for r in manifest):
        raise InputError(f"manifest {manifest_path} has no labels (the label column is empty or absent); training "
                         "needs malignant (1) and benign (0) nodules")
    return manifest, [record_features(r) for r in manifest], file_sha256(manifest_path)


def _start_run_folder(run: Path, plan: SplitPlan, described: dict | None) -> None:
    """Create the run folder with config.json (`described`, for a new run) and splits.csv; clear partial writes."""
    run.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(run, recursive=False)
    if described is not None:
        write_text(run / "config.json", json.dumps(described, indent=2) + "\n")
    if not (run / "splits.csv").is_file():
        plan.write_csv(run / "splits.csv")


@dataclass
class _Inputs:
    """What the fold models train and validate on: the views, or the frozen image blocks' output of them."""

    train: torch.Tensor  # (N, ...) or, with several augmented versions, (N, versions, ...)
    val: torch.Tensor  # (N, ...): the nodules as they are
    prefixed: bool  # the frozen bottom image blocks' output instead of the views
    variants: bool  # `train` holds several augmented versions of each nodule


def _training_inputs(probe: NoduleClipModel, views: torch.Tensor, config: TrainConfig, run: Path, accelerator,
                     records: list, test_ids: set[str]) -> _Inputs:
    """The views, or (probing, or LoRA on the top blocks) the frozen bottom blocks' output, once per nodule; with
    augmentation that is computed once, several versions of each nodule."""
    main = accelerator.is_main_process
    unfinished = any(read_done(run / f"fold_{k}") is None for k in range(config.folds))
    prefixed = probe.frozen_image_blocks > 0 and unfinished
    copies = _acquisition_copies(records, views, config, main, test_ids) \
        if config.acquisition_augmentation and unfinished else None
    if not prefixed:
        if copies is None:
            return _Inputs(views, views, False, False)
        # the planes are turned on the fly (dataset) when image augmentation is on, so the copies stay as cut
        return _Inputs(torch.stack([views, *copies], dim=1), views, False, True)
    turned = config.image_augmentation and config.augment_variants > 1
    if copies is None and not turned:
        # the frozen blocks run under the run's autocast, as the training steps; their output is kept in float32
        with accelerator.autocast():
            inputs = probe.image_prefix(views, config.eval_batch_size, progress=config.progress and main).float()
        return _Inputs(inputs, inputs, True, False)
    # (N, versions, ...), each version written in place: no second copy of all of them at once. Only the nodules
    # that some fold trains on need the augmented versions; a held-out test nodule keeps its first version in all.
    trained = torch.tensor([r.nodule_id not in test_ids for r in records])
    versions: torch.Tensor | None = None
    for v, copy in enumerate(augmented_variants(views, config.augment_variants, config.seed, copies, turn=turned)):
        rows = slice(None) if v == 0 else trained
        with accelerator.autocast():
            prefix = probe.image_prefix(copy[rows], config.eval_batch_size, progress=config.progress and main)
        if versions is None:
            versions = torch.empty((len(views), config.augment_variants, *prefix.shape[1:]))
            versions[~trained] = prefix[~trained, None]
        versions[rows, v] = prefix
    assert versions is not None
    return _Inputs(versions, versions[:, 0], True, True)


def _acquisition_copies(records: list, views: torch.Tensor, config: TrainConfig, main: bool,
                        test_ids: set[str]) -> list[torch.Tensor]:
    """augment-variants - 1 copies of the nodules' views, each scan re-rendered under a scanner protocol drawn at
    random (the same for the same seed and nodule), cut as the cache cuts them. Only the nodules that some fold
    trains on are re-rendered: a held-out test nodule is never trained on, so its rows keep its views as cut."""
    trained = [i for i, r in enumerate(records) if r.nodule_id not in test_ids]
    workers = default_workers() if config.workers is None else max(1, config.workers)
    copies = acquisition_views([records[i] for i in trained], config.augment_variants - 1, config.views, config.seed,
                               workers, progress=config.progress and main)
    whole = []
    for copy in copies:
        full = views.clone()
        full[trained] = torch.from_numpy(copy).to(views.dtype)
        whole.append(full)
    return whole


def _fold(k: int, config: TrainConfig, plan: SplitPlan, manifest: NoduleManifest, features: list[dict],
          inputs: _Inputs, run: Path, accelerator) -> dict:
    """Fold `k`'s done.json document: read back when the fold has finished, else after training it."""
    folder = run / f"fold_{k}"
    done = read_done(folder)
    if done is not None:
        return done
    records, position = manifest.records, {r.nodule_id: i for i, r in enumerate(manifest)}
    train_ids, val_ids = plan.fold(k)
    train_at, val_at = [position[n] for n in train_ids], [position[n] for n in val_ids]
    train_records = [records[i] for i in train_at]
    data = FoldData(
        train=NoduleDataset(inputs.train[train_at], train_records, config.seed, k, config.text_augmentation,
                            with_text=config.tuning != "vision-only",
                            augment_images=config.image_augmentation and not inputs.prefixed,
                            variants=inputs.variants, semantic_heads=config.semantic_heads(),
                            pairs=config.consistency_weight > 0),
        train_weights=sampling_weights(config.sampler, train_records, [features[i] for i in train_at]),
        val_ids=val_ids, val_views=inputs.val[val_at], val_labels=record_labels([records[i] for i in val_at]),
        prefixed=inputs.prefixed)
    return train_fold(k, config, data, folder, RunLog(run / "log.jsonl"), accelerator, config.folds)


def _evaluate(run: Path, config: TrainConfig, plan: SplitPlan, records: list, views: torch.Tensor, folds: list[dict],
              device: str) -> None:
    """The fold ensemble on the test set, the out-of-fold validation predictions and the metrics (main process)."""
    position = {r.nodule_id: i for i, r in enumerate(records)}
    labels = record_labels(records)
    val_ids = [n for done in folds for n in done["val"]["nodule_id"]]
    val_at = [position[n] for n in val_ids]
    validation = {
        "ids": val_ids, "patients": [records[i].patient_id for i in val_at], "labels": labels[val_at],
        "risk": np.array([p for done in folds for p in done["val"]["probability"]]),
        "fold": [done["fold"] for done in folds for _ in done["val"]["nodule_id"]],
        "folds": [{k: v for k, v in done.items() if k != "val"} | brief_scores(
            labels[[position[n] for n in done["val"]["nodule_id"]]], np.array(done["val"]["probability"]))
            for done in folds],
    }
    test = None
    test_ids = plan.test_ids()
    if test_ids:
        test_at = [position[n] for n in test_ids]
        ensemble = RunEnsemble.from_folders([fold_model_folder(run, k) for k in range(config.folds)], device)
        test = {"ids": test_ids, "patients": [records[i].patient_id for i in test_at], "labels": labels[test_at],
                "fold_risk": ensemble.score(views[test_at], config.eval_batch_size).fold_risk}
    write_results(run, test, validation, config.bootstrap, config.seed)
