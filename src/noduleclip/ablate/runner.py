"""Running the ablation's models on one set of splits: each model a run folder, finished work reused.

    result = run_ablation("manifest.csv", "runs/ablation", TrainConfig(folds=5), models=MODELS)

The ablation folder holds splits.csv (made once, or the one already there), cache/ (the nine views,
shared by every model unless the configuration names another cache) and one run folder per model:
finetune/, probe/, lora/, vision-only/ (`train_run` with that tuning, every other setting the same)
and semantic/ (the semantic-features-only logistic regression, written in the same layout:
config.json, splits.csv, val_predictions.csv, predictions.csv, patient_predictions.csv, metrics.json).
Each model folder gets a copy of the shared splits.csv before it trains, so every model sees the same
test set and folds; running again skips finished models, and `train_run` resumes unfinished folds.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from noduleclip.ablate.semantic_baseline import SemanticConfig, semantic_cv
from noduleclip.atomic import file_sha256, write_text
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.run_folder import read_run_document, train_settings_where
from noduleclip.train.config import TrainConfig
from noduleclip.train.results import write_results
from noduleclip.train.splits import SplitPlan, make_splits
from noduleclip.version import __version__

SEMANTIC = "semantic"
# the tuning modes of TrainConfig, then the semantic-only baseline
MODELS: tuple[str, ...] = ("finetune", "probe", "lora", "vision-only", SEMANTIC)
SEMANTIC_FORMAT = "noduleclip-semantic-run"


@dataclass
class AblationResult:
    """The ablation folder, the models it holds, which of them this call trained and which it reused."""

    out: Path
    models: list[str]
    trained: list[str]
    reused: list[str]
    plan: SplitPlan


def parse_models(text: str | Sequence[str]) -> list[str]:
    """'finetune,lora' (or a list) -> checked model names in the ablation's order, duplicates dropped."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise InputError(f"--models {','.join(names) or '(empty)'}: {unknown[0] if unknown else 'no model'!r} is not "
                         f"an ablation model; choose some of {','.join(MODELS)}")
    return [m for m in MODELS if m in names]


def shared_splits(manifest: NoduleManifest, out: Path, config: TrainConfig) -> SplitPlan:
    """OUT/splits.csv when it exists (checked against the manifest and --folds), else a new plan written there."""
    path = out / "splits.csv"
    if path.is_file():
        plan = SplitPlan.read_csv(path)
        plan.check_matches(r.nodule_id for r in manifest)
        if plan.n_folds != config.folds:
            raise InputError(f"{path} has {plan.n_folds} folds but --folds is {config.folds}; use the same number "
                             "or a new --out folder")
        plan.labels = {r.nodule_id: r.label for r in manifest}
        return plan
    plan = make_splits(manifest.records, test_fraction=config.test_fraction, folds=config.folds, seed=config.seed)
    out.mkdir(parents=True, exist_ok=True)
    plan.write_csv(path)
    return plan


def _same_splits(a: Path, b: Path) -> bool:
    return SplitPlan.read_csv(a, check=False).rows == SplitPlan.read_csv(b, check=False).rows


def _place_splits(out: Path, folder: Path) -> None:
    """Copy the shared splits into a model folder; refuse a folder that already uses other splits."""
    mine = folder / "splits.csv"
    if mine.is_file():
        if not _same_splits(out / "splits.csv", mine):
            raise InputError(f"{mine} differs from the ablation's {out / 'splits.csv'}; remove the {folder.name} "
                             "folder so that it trains again on the shared splits")
        return
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "splits.csv", mine)


def model_config(base: TrainConfig, model: str, out: Path) -> TrainConfig:
    """The training configuration of one neural model: the base with its tuning and the shared view cache."""
    return replace(base, tuning=model, cache=base.cache or str((out / "cache").resolve())).validate()


def _neural_finished(folder: Path, config: TrainConfig, manifest_sha: str) -> bool:
    """True when the run folder holds a finished run of exactly this configuration and manifest."""
    if not (folder / "metrics.json").is_file() or not (folder / "config.json").is_file():
        return False
    document = read_run_document(folder)
    same = not TrainConfig.from_dict(document["train"], train_settings_where(folder)).differences(config)
    return same and document["manifest"]["sha256"] == manifest_sha  # otherwise train_run explains the refusal


def _semantic_settings(config: TrainConfig, semantic: SemanticConfig) -> dict:
    return {"folds": config.folds, "test_fraction": config.test_fraction, "seed": config.seed,
            "bootstrap": config.bootstrap, "semantic": asdict(semantic)}


def _semantic_finished(folder: Path, settings: dict, manifest_sha: str) -> bool:
    """True when `folder` holds a finished semantic baseline of these settings; InputError for other settings."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return False
    document = json.loads(config_path.read_text())
    if document.get("format") != SEMANTIC_FORMAT:
        raise InputError(f"{config_path} is not a semantic-baseline run; remove the {folder} folder")
    if document["settings"] != settings or document["manifest"]["sha256"] != manifest_sha:
        raise InputError(f"{folder} was made with other settings or another manifest; remove it or use the "
                         "options it was made with (see its config.json)")
    return (folder / "metrics.json").is_file()


def run_semantic(manifest: NoduleManifest, manifest_sha: str, folder: Path, plan: SplitPlan, config: TrainConfig,
                 semantic: SemanticConfig) -> bool:
    """Fit and score the semantic baseline into `folder` (a run-like folder); False when it was already done."""
    settings = _semantic_settings(config, semantic)
    if _semantic_finished(folder, settings, manifest_sha):
        return False
    cv = semantic_cv(manifest, plan, semantic)
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "format": SEMANTIC_FORMAT, "format_version": 1, "package_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "settings": settings,
        "manifest": {"path": str(Path(manifest.path).resolve()), "sha256": manifest_sha, "nodules": len(manifest),
                     "patients": len({r.patient_id for r in manifest})},
        "model": {"tuning": SEMANTIC, "folds": [{"fold": k, "columns": m.columns, "coefficients": m.coefficients()}
                                                for k, m in enumerate(cv.models)]},
    }
    write_text(folder / "config.json", json.dumps(document, indent=2) + "\n")
    write_results(folder, cv.test, cv.validation, config.bootstrap, config.seed)
    return True


def _check_semantic_input(manifest: NoduleManifest) -> None:
    if not any(r.features for r in manifest):
        raise InputError(f"manifest {manifest.path} has no semantic feature values, so the semantic model has nothing "
                         "to learn from; leave 'semantic' out of --models")


def run_ablation(manifest_path: str | os.PathLike, out: str | os.PathLike, config: TrainConfig | None = None,
                 models: Sequence[str] = MODELS, semantic: SemanticConfig | None = None,
                 echo: Callable[[str], None] = print) -> AblationResult:
    """Train (or reuse) each ablation model in OUT/<model>/ on the shared splits OUT/splits.csv."""
    from noduleclip.train.cv import train_run  # torch and the towers load only when something trains

    config = (config or TrainConfig()).validate()
    semantic = semantic or SemanticConfig()
    models = parse_models(models)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the ablation")
    manifest = NoduleManifest.read(manifest_path)
    if all(r.label is None for r in manifest):
        raise InputError(f"manifest {manifest_path} has no labels; the ablation needs malignant (1) and benign (0) "
                         "nodules")
    if SEMANTIC in models:
        _check_semantic_input(manifest)
    manifest_sha = file_sha256(manifest_path)
    plan = shared_splits(manifest, out, config)
    trained, reused = [], []
    for n, model in enumerate(models, start=1):
        folder = out / model
        _place_splits(out, folder)
        step = f"[{n}/{len(models)}] {model}:"
        if model == SEMANTIC:
            finished = _semantic_finished(folder, _semantic_settings(config, semantic), manifest_sha)
            if not finished:
                echo(f"{step} logistic regression on the semantic features ({folder})")
                run_semantic(manifest, manifest_sha, folder, plan, config, semantic)
        else:
            settings = model_config(config, model, out)
            finished = _neural_finished(folder, settings, manifest_sha)
            if not finished:
                echo(f"{step} training {config.folds} folds ({folder})")
                train_run(manifest_path, folder, settings)
        (reused if finished else trained).append(model)
        if finished:
            echo(f"{step} finished before, reused ({folder})")
    for model in models:
        if not _same_splits(out / "splits.csv", out / model / "splits.csv"):
            raise InputError(f"{out / model / 'splits.csv'} differs from {out / 'splits.csv'}; remove the "
                             f"{model} folder and run the ablation again")
    return AblationResult(out, models, trained, reused, plan)


def available_models(out: str | os.PathLike) -> list[str]:
    """The ablation models whose folder in OUT holds a finished run (metrics.json), in the ablation's order."""
    return [m for m in MODELS if (Path(out) / m / "metrics.json").is_file()]

