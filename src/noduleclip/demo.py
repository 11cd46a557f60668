"""The main job on the built-in default, for a first run: synthetic cohorts, training, evaluation.

A `screening` cohort (low dose) trains the offline backbone with LoRA under patient-level
cross-validation; the fold ensemble is scored on the held-out test patients and on an external
cohort from another acquisition preset (the paper's external-shift setting). Settings are sized to
finish in minutes on 2 CPU cores; every step resumes when the demo is run again on the same folder.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from noduleclip.atomic import write_text
from noduleclip.errors import InputError


def _size(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class DemoConfig:
    """Sizes of the demo (the defaults take about 7.5 minutes on 2 cores with native bf16 and about 9.5 in float32,
    install excluded)."""

    train_patients: int = _size(150, "synthetic screening (low-dose) patients for training and the internal test")
    external_patients: int = _size(60, "synthetic patients of the external cohort")
    external_preset: str = _size("contrast", "acquisition preset of the external cohort (diagnostic, contrast, thick)")
    backbone: str = _size("dinov2-s+minilm", "backbone from the registry")
    tuning: str = _size("lora", "what trains: lora, probe, finetune or vision-only")
    folds: int = _size(3, "cross-validation folds")
    epochs: int = _size(20, "most epochs per fold (early stopping, patience 5, usually ends a fold sooner)")
    batch_size: int = _size(8, "nodules per training step")
    image_size: int = _size(112, "encoder input size in pixels")
    lora_image_blocks: int | None = _size(1, "LoRA in the image tower's top N blocks (the rest are computed once)")
    lora_text_blocks: int | None = _size(None, "LoRA in the text tower's top N blocks (none: every block)")
    lora_rank: int = _size(8, "LoRA rank (the paper's is 2; with LoRA in the top block only, a larger rank "
                           "gives the image tower room to adapt)")
    lora_alpha: float = _size(8.0, "LoRA alpha (alpha / rank = 1, the paper's scale)")
    image_augmentation: bool = _size(True, "train on randomly turned and mirrored views (fixed versions per nodule)")
    augment_variants: int = _size(4, "versions of each nodule with image augmentation, the first as it is (each "
                                  "costs one pass of the frozen image blocks)")
    lr: float = _size(1e-3, "AdamW learning rate (a few-epoch CPU schedule needs a larger step than the paper's 1e-4)")
    seed: int = _size(0, "seed of the cohorts, splits and training")
    mixed_precision: str = _size("auto", "autocast precision: no, bf16, or auto (bf16 where the CPU or GPU computes it "
                                 "natively, about 1.4x faster; else no)")
    workers: int = _size(2, "processes for the cohorts and preprocessing")
    random_init: bool = _size(False, "tests only: the tiny backbone has no pretrained weights")


def synthetic_cohort(folder: Path, patients: int, seed: int, preset: str, workers: int) -> Path:
    """The manifest of a synthetic cohort in `folder`, made there unless one of that size and seed is already there."""
    from noduleclip.synth import make_cohort  # imported on first use: it loads scipy and pydicom

    manifest = folder / "manifest.csv"
    info = folder / "cohort.json"
    if manifest.exists() and info.exists():
        made = json.loads(info.read_text())
        if made.get("patients") == patients and made.get("seed") == seed:
            return manifest
    return make_cohort(folder, patients=patients, seed=seed, preset=preset, workers=workers,
                       overwrite=folder.exists(), progress=True)


def _row(name: str, m: dict) -> str:
    def ci(key: str) -> str:
        if m.get(key) is None:
            return f"{'-':>22}"
        lo, hi = m.get(f"{key}_ci") or (None, None)
        return f"{m[key]:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{m[key]:.3f}"

    return f"{name:<34} {m['n']:>5} {m['n_pos']:>5}  {ci('auroc'):>22}  {ci('auprc'):>22}"


def run_demo(out: str | os.PathLike, config: DemoConfig | None = None) -> dict:
    """Run (or resume) the whole demo into `out`; returns its summary (also in out/demo.json)."""
    from noduleclip.evaluate.cohort import evaluate_manifest  # imported on first use: it loads torch
    from noduleclip.plots import plot_roc_pr  # imported on first use: it loads matplotlib
    from noduleclip.train import TrainConfig, train_run  # imported on first use: they load torch
    from noduleclip.train.config import native_bf16  # imported on first use: it loads torch

    config = config or DemoConfig()
    out = Path(out)
    start = time.perf_counter()
    if config.mixed_precision not in ("auto", "no", "bf16"):
        raise InputError(f"mixed precision {config.mixed_precision!r} is not one of auto, no, bf16")
    precision = config.mixed_precision if config.mixed_precision != "auto" else ("bf16" if native_bf16() else "no")
    print(f"1/4 synthetic cohorts: {config.train_patients} screening patients for training, "
          f"{config.external_patients} {config.external_preset} patients as the external cohort")
    stages, tick = {}, time.perf_counter()
    internal = synthetic_cohort(out / "cohort-screening", config.train_patients, config.seed, "screening",
                                config.workers)
    stages["cohort, screening"], tick = time.perf_counter() - tick, time.perf_counter()
    external = synthetic_cohort(out / f"cohort-{config.external_preset}", config.external_patients, config.seed + 1,
                                config.external_preset, config.workers)
    stages[f"cohort, {config.external_preset}"], tick = time.perf_counter() - tick, time.perf_counter()
    print(f"2/4 training {config.backbone} ({config.tuning}), {config.folds} folds x up to {config.epochs} epochs "
          f"at {config.image_size} px" + (", bf16 autocast" if precision == "bf16" else ""))
    train = TrainConfig(backbone=config.backbone, tuning=config.tuning, folds=config.folds, epochs=config.epochs,
                        batch_size=config.batch_size, image_size=config.image_size, lr=config.lr, seed=config.seed,
                        lora_image_blocks=config.lora_image_blocks, lora_text_blocks=config.lora_text_blocks,
                        lora_rank=config.lora_rank,
                        lora_alpha=config.lora_alpha, image_augmentation=config.image_augmentation,
                        augment_variants=config.augment_variants,
                        mixed_precision=precision,
                        workers=config.workers, random_init=config.random_init)
    result = train_run(internal, out / "run", train)
    training = time.perf_counter() - tick
    epochs = _epoch_seconds(out / "run")
    stages["training: epochs"] = min(epochs, training)
    stages["training: views, frozen blocks, test set"] = training - stages["training: epochs"]
    tick = time.perf_counter()
    print(f"3/4 the fold ensemble on the external {config.external_preset} cohort")
    ext = evaluate_manifest(out / "run", external, out / "external", workers=config.workers, seed=config.seed)
    stages["external evaluation"], tick = time.perf_counter() - tick, time.perf_counter()
    print("4/4 figures and summary")
    predictions = _read_predictions(out / "run" / "predictions.csv")
    curves = {"internal test (screening)": predictions,
              f"external ({config.external_preset})": (ext.labels, ext.risk)}
    plot_roc_pr(curves, out / "roc.png", title=f"noduleclip demo: {config.backbone} {config.tuning}, fold ensemble")
    test = result.metrics["test"]
    lines = [f"{'set':<34} {'n':>5} {'malig':>5}  {'AUROC [95% CI]':>22}  {'AUPRC [95% CI]':>22}"]
    for name, scored in (("internal test", test), (f"external {config.external_preset}", ext.metrics)):
        for level in ("nodule", "patient"):
            lines.append(_row(f"{name}, {level}s", scored[level]))
    table = "\n".join(lines)
    stages["figures and summary"] = time.perf_counter() - tick
    wall = time.perf_counter() - start
    summary = {"config": asdict(config), "internal_test": test, "external": ext.metrics,
               "wall_seconds": round(wall, 1), "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
               "table": table}
    write_text(out / "demo.json", json.dumps(summary, indent=2, default=float) + "\n")
    print()
    print(table)
    print("\nwhere the time went (a step reused from an earlier run of the demo takes none)")
    for name, seconds in stages.items():
        print(f"  {name:<42} {seconds / 60:5.1f} min  {100 * seconds / max(wall, 1e-9):3.0f}%")
    print(f"\nrun folder {out / 'run'}; ROC and PR curves {out / 'roc.png'}; {wall / 60:.1f} min")
    return summary


def _epoch_seconds(run: Path) -> float:
    """The training epochs' wall time of a run, from its log.jsonl (0 when there is none)."""
    path = run / "log.jsonl"
    if not path.is_file():
        return 0.0
    seconds = 0.0
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        seconds += entry.get("seconds", 0.0) if entry.get("event") == "epoch" else 0.0
    return seconds


def _read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = np.array([float(r["label"]) if r["label"] != "" else np.nan for r in rows])
    return labels, np.array([float(r["ensemble"]) for r in rows])
