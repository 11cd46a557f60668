"""Real-data benchmark: the ablation models on the 665 LIDC-IDRI nodule crops, on the same patient-level folds.

    .venv/bin/python benchmarks/lidc.py                          # CPU defaults: 5 folds, up to 20 epochs, 112 px
    .venv/bin/python benchmarks/lidc.py --models probe --levers  # the lever table (a probe run per lever)
    .venv/bin/python benchmarks/lidc.py --quick --out /tmp/q     # smoke run: tiny random towers, ~40 crops

Needs ../shared/data (real LIDC-IDRI). Protocol: 5-fold patient-level cross-validation on all 370 patients
(no held-out test set: --test-fraction 0), so every labelled nodule (malignancy >= 4 vs <= 2; 3 is unknown)
gets one out-of-fold score. Each fold model keeps the epoch with the best AUROC on its own validation fold,
which makes that fold's AUROC (and the pooled out-of-fold AUROC) slightly optimistic; the last epoch's
AUROC, chosen by nobody, is printed beside it. --test-fraction 0.2 runs the paper's protocol instead
(20% of patients held out; the fold models and their ensemble are then also scored on them).
Prints per fold and pooled AUROC/AUPRC of each model (lora, probe, vision-only, semantic), diameter alone
and an LR on the LIDC ratings on the same folds, the LoRA model's zero-shot feature AUROC (each fold's
model on its own validation nodules only), and a semantic-only LR over every LIDC nodule of the XML set;
then each model's AUROC within diameter strata (what it reads beyond size), the lever table (--levers), and
the goals, each met or not, with DeLong tests against diameter alone and of lora against vision-only.
Writes OUT/lidc_benchmark.json; OUT/ablation/ and OUT/levers/ hold the runs (finished runs are reused when
run again, so a table can be finished by parts).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tarfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from noduleclip.ablate import mean_sd, parse_models, run_ablation, semantic_cv_table, shared_splits
from noduleclip.ablate.semantic_baseline import fit_semantic_baseline
from noduleclip.atomic import jsonable, plain_cell, write_text
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.evaluate.stats import delong_test, wilcoxon
from noduleclip.importers import import_crops, read_lidc_ratings
from noduleclip.semantics.prompts import ENSEMBLE, PAPER
from noduleclip.train.config import TrainConfig, recipe
from noduleclip.train.results import brief_scores
from noduleclip.train.resume import RunLog

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
# The recipe that the lever table chose by cross-validation (see LEVERS), as noduleclip ships it for real CT
# (`train --config real-ct`): plain shuffling, lr 3e-4, up to 20 epochs with patience 5, a size head and a 16 mm
# field of view; its lora and vision-only runs put LoRA in the image tower's top block.
REAL_CT = recipe("real-ct")
RECIPE = {name: getattr(REAL_CT, name) for name in ("sampler", "lr", "patience", "field_of_view", "size_weight",
                                                     "batch_size")}
FULL = dict(backbone=REAL_CT.backbone, folds=5, epochs=REAL_CT.epochs, image_size=112,
            lora_image_blocks=REAL_CT.lora_image_blocks, bootstrap=1000, **RECIPE)
QUICK = dict(backbone="tiny", folds=2, epochs=1, image_size=28, lora_image_blocks=1, bootstrap=50, **RECIPE)
QUICK_PATIENTS, QUICK_XML_FILES = 10, 150  # per class; XML files read in --quick
PERTURBATIONS = "noise=30,smooth=1.5,sharp=1,thick=3"  # a noisier scan, a smoother and a sharper kernel, thicker slices
REFERENCES = {"diameter alone": 0.88, "LIDC characteristics + diameter LR": 0.93,
              "frozen DINOv2-S 112 px, mean+max pooled LR": 0.91, "semantic-only LR on NLST (paper)": 0.888}
GOALS = {"image-only AUROC": 0.94, "DeLong p against diameter": 0.05, "AUROC change under a perturbation": 0.02,
         **{f"zero-shot {f} AUROC": 0.85 for f in ("margins", "consistency", "calcification_pattern", "shape")}}
# Each lever adds one change to the row above it; all train --lever-model on the same folds.
LEVERS = (
    ("before: rare-feature sampler, whole 50 mm views, lr 1e-3, 6 epochs",
     dict(sampler="semantic", field_of_view=None, size_weight=0.0, lr=1e-3, epochs=6)),
    ("plain shuffling, lr 3e-4, up to 20 epochs (patience 5)", dict(sampler="none", lr=3e-4, epochs=20)),
    ("+ size head: regress log-diameter, weight 1", dict(size_weight=1.0)),
    ("+ zoom: the central 24 mm of each view", dict(field_of_view=24)),
    ("+ closer zoom: the central 16 mm", dict(field_of_view=16)),
)


def num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def spread(values) -> str:
    mean, sd, n = mean_sd(values)
    return f"{num(mean)} ± {num(sd)} (n={n})"


def crop_table(data: Path, out: Path, quick: bool) -> Path:
    """The crops CSV; with `quick`, the nodules of QUICK_PATIENTS malignant and benign patients in OUT/crops.csv."""
    source = data / "lidc-crops" / "manifest.csv"
    if not quick:
        return source
    with open(source, newline="") as handle:
        rows = list(csv.DictReader(handle))
    patient_label = {}
    for row in rows:
        patient_label[row["patient_id"]] = max(patient_label.get(row["patient_id"], -1), int(row["label"] or -1))
    chosen = {c: sorted(p for p, y in patient_label.items() if y == c)[:QUICK_PATIENTS] for c in (0, 1)}
    keep = [r for r in rows if r["patient_id"] in chosen[0] + chosen[1]]
    for row in keep:  # paths relative to the crops folder become absolute
        row.update(image=str(source.parent / row["image"]), mask=str(source.parent / row["mask"]))
    with open(out / "crops.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    return out / "crops.csv"


def drop_unreadable(manifest_path: Path, config: TrainConfig, workers: int = 2,
                    progress: bool = False) -> list[tuple[str, str]]:
    """Cut every nodule's views into the shared cache; rewrite the manifest without the nodules that cannot be cut.

    The crops hold one known bad row (LIDC-IDRI-0332_R_1: its centre lies outside its crop), which training
    would refuse; it is left out and reported, never cut somewhere else.
    """
    from noduleclip.preprocess.cache import ViewCache
    from noduleclip.preprocess.pipeline import preprocess_manifest

    report = preprocess_manifest(NoduleManifest.read(manifest_path), ViewCache(config.cache, config.views),
                                 workers=workers, progress=progress)
    failed = dict(report.failed)
    if failed:
        with open(manifest_path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields, rows = reader.fieldnames, [r for r in reader if r["nodule_id"] not in failed]
        with open(manifest_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(fields or []))
            writer.writeheader()
            writer.writerows(rows)
    return report.failed


def xml_source(data: Path, out: Path, quick: bool) -> Path:
    """The LIDC XML tarball; with `quick`, its first QUICK_XML_FILES XML files unpacked into OUT/xml-sample."""
    tarball = data / "lidc-xml.tar.gz"
    if not quick:
        return tarball
    folder = out / "xml-sample"
    with tarfile.open(tarball) as archive:
        members = [m for m in archive if m.isfile() and m.name.endswith(".xml")][:QUICK_XML_FILES]
        archive.extractall(folder, members=members, filter="data")
    return folder


def model_summary(folder: Path) -> dict:
    """Per-fold validation scores (best and last epoch) and pooled out-of-fold (and test) metrics of one model."""
    metrics = json.loads((folder / "metrics.json").read_text())
    last = {e["fold"]: e["val"] for e in RunLog(folder / "log.jsonl").entries() if e.get("event") == "epoch"}
    folds = [{"fold": f["fold"], "auroc": f["auroc"], "auprc": f["auprc"], "n": f["n"],
              "best_epoch": f.get("best_epoch"), "last_epoch_auroc": last.get(f["fold"], {}).get("auroc")}
             for f in sorted(metrics["validation"]["folds"], key=lambda f: f["fold"])]
    keys = ("auroc", "auroc_ci", "auprc", "auprc_ci", "n", "n_pos")
    summary = {"folds": folds, **{level: {k: metrics["validation"][level].get(k) for k in keys}
                                  for level in ("nodule", "patient")}}
    if metrics.get("test"):
        summary["test"] = {"folds": metrics["test"]["folds"],
                           **{level: {k: metrics["test"][level].get(k) for k in keys}
                              for level in ("nodule", "patient")}}
    return summary


def same_fold_baselines(manifest: NoduleManifest, plan) -> dict:
    """Diameter alone, and an LR on the LIDC ratings + diameter (fitted per fold), on each validation fold and
    pooled."""
    by_id = {r.nodule_id: r for r in manifest}
    label = lambda n: np.nan if by_id[n].label is None else float(by_id[n].label)  # noqa: E731
    ratings = lambda n: {k: v for k, v in by_id[n].columns.items() if k != "malignancy"}  # noqa: E731
    result = {name: {"folds": []} for name in ("diameter", "lidc_ratings_lr")}
    pooled = {name: ([], []) for name in result}
    for k in range(plan.n_folds):
        train_ids, val_ids = plan.fold(k)
        y = np.array([label(n) for n in val_ids])
        model = fit_semantic_baseline([ratings(n) for n in train_ids], [label(n) for n in train_ids])
        scores = {"diameter": np.array([by_id[n].features.get("long_diameter_mm", np.nan) for n in val_ids]),
                  "lidc_ratings_lr": model.predict([ratings(n) for n in val_ids])}
        for name, score in scores.items():
            result[name]["folds"].append({"fold": k, **brief_scores(y, score)})
            pooled[name][0].extend(y)
            pooled[name][1].extend(score)
    for name, (y, score) in pooled.items():
        result[name]["pooled"] = brief_scores(np.array(y), np.array(score))
    return result


def lora_zero_shot(run: Path, manifest: NoduleManifest, plan, config: TrainConfig) -> dict:
    """Zero-shot feature AUROC of each fold's model on its own validation nodules, per fold and pooled."""
    from noduleclip.ensemble import RunEnsemble
    from noduleclip.evaluate.zero_shot import out_of_fold_zero_shot
    from noduleclip.preprocess.cache import ViewCache

    cache = ViewCache(Path(config.cache), config.views, create=False)
    return out_of_fold_zero_shot(RunEnsemble.load(run), list(manifest), plan, cache)


def xml_semantic(source: Path, folds: int, seed: int) -> dict:
    """The semantic-only LR on every LIDC nodule of the XML reads, patient-grouped CV (patient = StudyInstanceUID)."""
    rows = read_lidc_ratings(source)
    table = semantic_cv_table(rows, [r["label"] for r in rows], [r["patient_id"] for r in rows], folds=folds, seed=seed)
    assert "malignancy" not in table["features"]
    return {k: v for k, v in table.items() if not k.startswith("oof_")} | {"nodules": len(rows)}


def pooled_predictions(folder: Path) -> dict[str, float]:
    """nodule id -> out-of-fold probability of a finished run (its val_predictions.csv)."""
    with open(folder / "val_predictions.csv", newline="") as handle:
        return {plain_cell(row["nodule_id"]): float(row["probability"]) for row in csv.DictReader(handle)}


def against(manifest: NoduleManifest, scores: dict[str, float], other: dict[str, float]) -> dict:
    """DeLong test of two score sets on the labelled nodules both scored."""
    label = {r.nodule_id: r.label for r in manifest if r.label is not None}
    ids = [n for n in label if n in scores and n in other]
    y = np.array([label[n] for n in ids], dtype=float)
    result = delong_test(y, [scores[n] for n in ids], [other[n] for n in ids])
    return {"auroc": result.auc_a, "other_auroc": result.auc_b, "z": result.z, "p": result.p, "n": len(ids)}


def diameters(manifest: NoduleManifest) -> dict[str, float]:
    return {r.nodule_id: float(r.features["long_diameter_mm"]) for r in manifest if "long_diameter_mm" in r.features}


def training_seconds(folder: Path) -> float:
    """The epochs' wall time of a finished run, from its log (the frozen blocks computed once are not in it)."""
    return sum(e.get("seconds", 0.0) for e in RunLog(folder / "log.jsonl").entries() if e.get("event") == "epoch")


def run_levers(out: Path, config: TrainConfig, model: str, manifest: NoduleManifest, quick: bool = False) -> list[dict]:
    """Train `model` once per lever row (cumulative settings) on the shared splits; AUROC, DeLong against diameter,
    time.

    `quick` keeps the configuration's epochs (a smoke run of the table, not a result)."""
    rows, settings = [], {}
    for n, (name, change) in enumerate(LEVERS):
        settings.update({k: v for k, v in change.items() if not (quick and k == "epochs")})
        folder = out / "levers" / f"{n}"
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "splits.csv").is_file():
            shutil.copyfile(out / "ablation" / "splits.csv", folder / "splits.csv")
        tick = time.perf_counter()
        print(f"    lever {n}: {name}", flush=True)
        run_ablation(out / "manifest.csv", folder, replace(config, **settings), models=[model],
                     echo=lambda t: print("      " + t))
        summary = model_summary(folder / model)
        scores = pooled_predictions(folder / model)
        rows.append({"lever": name, "settings": dict(settings), "model": model,
                     "seconds": training_seconds(folder / model), "wall_seconds": time.perf_counter() - tick,
                     "pooled_auroc": summary["nodule"]["auroc"], "pooled_auroc_ci": summary["nodule"]["auroc_ci"],
                     "fold_mean_auroc": mean_sd([f["auroc"] for f in summary["folds"]])[0],
                     "last_epoch_auroc": mean_sd([f["last_epoch_auroc"] for f in summary["folds"]])[0],
                     "against_diameter": against(manifest, scores, diameters(manifest))})
    return rows


def print_levers(rows: list[dict]) -> None:
    print(f"\nlevers ({rows[0]['model']}, each row adds one change to the row above; the same folds)")
    print(f"  {'lever':<64} {'pooled AUROC [95% CI]':<24} {'fold mean':>9} {'last ep.':>8} "
          f"{'vs diameter (DeLong p)':>24} {'epochs, time':>13}")
    for row in rows:
        ci, d = row["pooled_auroc_ci"] or (None, None), row["against_diameter"]
        print(f"  {row['lever'][:64]:<64} {num(row['pooled_auroc'])} [{num(ci[0])}, {num(ci[1])}]   "
              f"{num(row['fold_mean_auroc']):>9} {num(row['last_epoch_auroc']):>8} "
              f"{d['auroc'] - d['other_auroc']:+.3f} (p {d['p']:.3f})      {row['seconds'] / 60:8.1f} min")


SIZE_STRATA = ((0.0, 10.0), (10.0, 20.0), (20.0, float("inf")))  # long-axis diameter, mm


def size_strata(manifest: NoduleManifest, scores: dict[str, dict[str, float]]) -> list[dict]:
    """AUROC of each score set within diameter strata: what a model reads beyond size (diameter alone is beside it).

    Within a stratum the size varies little, so a model that reads only size falls towards 0.5 there. Also
    the median risk of the stratum's benign nodules: small benign nodules must not score as large ones."""
    from sklearn.metrics import roc_auc_score

    size = diameters(manifest)
    label = {r.nodule_id: r.label for r in manifest if r.label is not None}
    rows = []
    for low, high in SIZE_STRATA:
        ids = [n for n in label if n in size and low <= size[n] < high and all(n in s for s in scores.values())]
        y = np.array([label[n] for n in ids])
        row = {"stratum_mm": [low, high], "n": len(ids), "n_pos": int(y.sum()), "auroc": {}, "benign_median_risk": {}}
        for name, score in {**scores, "diameter alone": size}.items():
            values = np.array([score[n] for n in ids])
            row["auroc"][name] = float(roc_auc_score(y, values)) if 0 < y.sum() < len(y) else None
            if name != "diameter alone":
                row["benign_median_risk"][name] = float(np.median(values[y == 0])) if (y == 0).any() else None
        rows.append(row)
    return rows


def print_size_strata(rows: list[dict]) -> None:
    print("\nAUROC within diameter strata (pooled out of fold; benign median risk in brackets)")
    for row in rows:
        low, high = row["stratum_mm"]
        span = f"{low:g}-{high:g} mm" if high != float("inf") else f">= {low:g} mm"
        cells = "  ".join(f"{name} {num(auc)}" + (f" ({num(row['benign_median_risk'][name])})"
                                                  if name in row["benign_median_risk"] else "")
                          for name, auc in row["auroc"].items())
        print(f"  {span:<10} n={row['n']:<4} malignant {row['n_pos']:<4} {cells}")


def tta_predictions(run: Path, plan, config: TrainConfig) -> dict[str, float]:
    """nodule id -> out-of-fold probability with test-time augmentation (the eight symmetries of a square), each
    fold model scoring its own validation nodules, as val_predictions.csv without augmentation."""
    from noduleclip.ensemble import RunEnsemble
    from noduleclip.preprocess.cache import ViewCache

    ensemble, cache, scores = RunEnsemble.load(run), ViewCache(Path(config.cache), config.views, create=False), {}
    for k in range(ensemble.folds):
        val_ids = plan.fold(k)[1]
        risk = ensemble.score(cache.load_many(val_ids), folds=[k], tta=True).fold_risk[0]
        scores.update(zip(val_ids, risk.tolist(), strict=True))
    return scores


def tta_rows(out: Path, manifest: NoduleManifest, plan, config: TrainConfig, models: list[str]) -> list[dict]:
    """Each neural model with and without test-time augmentation: pooled AUROC, DeLong against the plain scores and
    against diameter, and the extra inference time."""
    rows = []
    for model in models:
        tick = time.perf_counter()
        scores = tta_predictions(out / "ablation" / model, plan, config)
        plain = pooled_predictions(out / "ablation" / model)
        rows.append({"model": model, "seconds": time.perf_counter() - tick,
                     "against_plain": against(manifest, scores, plain),
                     "against_diameter": against(manifest, scores, diameters(manifest))})
    return rows


def print_tta(rows: list[dict]) -> None:
    print("\ntest-time augmentation (each fold model on its own validation nodules, the 8 symmetries averaged)")
    for row in rows:
        plain, d = row["against_plain"], row["against_diameter"]
        print(f"  {row['model']:<12} with {num(plain['auroc'])} vs without {num(plain['other_auroc'])} "
              f"(DeLong p {plain['p']:.3f}); vs diameter {d['auroc'] - d['other_auroc']:+.3f} (p {d['p']:.4f}); "
              f"{row['seconds'] / 60:.1f} min to score")


def robustness(out: Path, manifest: NoduleManifest, plan, config: TrainConfig, models: list[str],
               specs: str) -> dict:
    """Each neural model's out-of-fold scores of views cut from re-rendered crops (`evaluate --perturb`, each fold
    model on its own validation nodules) against its plain out-of-fold scores: AUROC change, DeLong, risk shift."""
    from noduleclip.ensemble import RunEnsemble
    from noduleclip.preprocess.acquisition import parse_perturbations, perturbed_views

    perturbations = parse_perturbations([specs])
    labelled = [r for r in manifest if r.label is not None]
    tick = time.perf_counter()
    views = perturbed_views(labelled, perturbations, config.views, config.seed, workers=2)
    position = {r.nodule_id: i for i, r in enumerate(labelled)}
    document = {"perturbations": [p.name for p in perturbations], "render_seconds": time.perf_counter() - tick,
                "models": {}}
    for model in models:
        tick, ensemble = time.perf_counter(), RunEnsemble.load(out / "ablation" / model)
        plain, rows = pooled_predictions(out / "ablation" / model), []
        for perturbation in perturbations:
            scores = {}
            for k in range(ensemble.folds):
                ids = [n for n in plan.fold(k)[1] if n in position]
                at = [position[n] for n in ids]
                risk = ensemble.score(views[perturbation.name][at], folds=[k]).fold_risk[0]
                scores.update(zip(ids, risk.tolist(), strict=True))
            test = against(manifest, scores, plain)
            shift = np.abs([scores[n] - plain[n] for n in scores])
            rows.append({"perturbation": perturbation.name, "auroc": test["auroc"], "plain_auroc": test["other_auroc"],
                         "delta_auroc": test["auroc"] - test["other_auroc"], "delong_p": test["p"], "n": test["n"],
                         "shift_median": float(np.median(shift)), "shift_p95": float(np.percentile(shift, 95))})
        document["models"][model] = {"rows": rows, "seconds": time.perf_counter() - tick}
    return document


def print_robustness(document: dict) -> None:
    print(f"\nrobustness to acquisition (each fold model on its own validation nodules re-rendered; views cut in "
          f"{document['render_seconds'] / 60:.1f} min)")
    for model, block in document["models"].items():
        cells = "  ".join(f"{r['perturbation']} {num(r['auroc'])} ({r['delta_auroc']:+.3f}, p {r['delong_p']:.3f}, "
                          f"median shift {r['shift_median']:.3f})" for r in block["rows"])
        print(f"  {model:<12} plain {num(block['rows'][0]['plain_auroc'])}  {cells}")


def against_baseline(out: Path, baseline: Path, manifest: NoduleManifest, results: dict) -> dict:
    """Each neural model against the same model of an earlier benchmark folder (another lever's run) on the same
    splits: DeLong on the pooled out-of-fold scores, Wilcoxon over the folds."""
    if (baseline / "ablation" / "splits.csv").read_text() != (out / "ablation" / "splits.csv").read_text():
        raise InputError(f"--baseline {baseline} was run on other splits than {out}; compare runs of the same "
                         "folds (the same manifest, --folds and seed)")
    document = {"baseline": str(baseline), "models": {}}
    for model in (m for m in results if m != "semantic"):
        if not (baseline / "ablation" / model / "val_predictions.csv").is_file():
            continue
        before = model_summary(baseline / "ablation" / model)
        folds = [[f["auroc"] for f in s["folds"]] for s in (results[model], before)]
        pooled = against(manifest, pooled_predictions(out / "ablation" / model),
                         pooled_predictions(baseline / "ablation" / model))
        document["models"][model] = {"fold_auroc": folds, "wilcoxon_p": wilcoxon(folds[0], folds[1]).p,
                                     "delong": pooled}
    return document


def print_against_baseline(document: dict) -> None:
    print(f"\nagainst the same models in {document['baseline']} (same splits)")
    for model, row in document["models"].items():
        d = row["delong"]
        print(f"  {model:<12} {num(d['auroc'])} vs {num(d['other_auroc'])} pooled "
              f"({d['auroc'] - d['other_auroc']:+.3f}, DeLong p {d['p']:.3f}); "
              f"fold means {num(np.mean(row['fold_auroc'][0]))} vs "
              f"{num(np.mean(row['fold_auroc'][1]))} (Wilcoxon p {row['wilcoxon_p']:.3f})")


def text_against_vision(out: Path, manifest: NoduleManifest, results: dict) -> dict | None:
    """lora (image + text) against vision-only on the same folds: Wilcoxon over folds and DeLong pooled."""
    if not {"lora", "vision-only"} <= set(results):
        return None
    folds = [[f["auroc"] for f in results[m]["folds"]] for m in ("lora", "vision-only")]
    test = wilcoxon(folds[0], folds[1])
    pooled = against(manifest, pooled_predictions(out / "ablation" / "lora"),
                     pooled_predictions(out / "ablation" / "vision-only"))
    return {"fold_auroc": folds, "wilcoxon_p": test.p, "delong": pooled}


def goal_lines(manifest: NoduleManifest, out: Path, results: dict, zero_shot: dict | None,
               text: dict | None, robust: dict | None = None) -> list[dict]:
    """The issue's goals, each a line of text and whether it is met (only for what this run measured)."""
    lines = []
    for model in (m for m in ("lora", "vision-only", "probe") if m in results):
        auroc = results[model]["nodule"]["auroc"]
        lines.append({"met": auroc >= GOALS["image-only AUROC"],
                      "text": f"{model}: pooled out-of-fold AUROC {num(auroc)} (goal >= {GOALS['image-only AUROC']})"})
        d = against(manifest, pooled_predictions(out / "ablation" / model), diameters(manifest))
        lines.append({"met": d["auroc"] > d["other_auroc"] and d["p"] < GOALS["DeLong p against diameter"],
                      "text": f"{model} against diameter alone on the same {d['n']} nodules: {num(d['auroc'])} vs "
                              f"{num(d['other_auroc'])}, DeLong z {d['z']:.2f}, p {d['p']:.4f} (goal: above, p < "
                              f"{GOALS['DeLong p against diameter']})"})
    for model, block in (robust or {}).get("models", {}).items():
        worst = max(block["rows"], key=lambda r: abs(r["delta_auroc"]))
        lines.append({"met": all(abs(r["delta_auroc"]) <= GOALS["AUROC change under a perturbation"]
                                 for r in block["rows"]),
                      "text": f"{model} robust to acquisition: every perturbation within "
                              f"{GOALS['AUROC change under a perturbation']} of the plain AUROC; the largest change "
                              f"{worst['delta_auroc']:+.3f} ({worst['perturbation']}, "
                              f"DeLong p {worst['delong_p']:.3f})"})
    if text:
        better = np.mean(text["fold_auroc"][0]) > np.mean(text["fold_auroc"][1])
        significant = min(text["delong"]["p"], text["wilcoxon_p"]) < 0.05
        lines.append({"met": better and text["delong"]["auroc"] > text["delong"]["other_auroc"],
                      "text": f"text earns its place{'' if significant else ' (above, not significantly)'}: lora "
                              f"{num(text['delong']['auroc'])} vs vision-only "
                              f"{num(text['delong']['other_auroc'])} pooled (DeLong p {text['delong']['p']:.3f}); "
                              f"fold means {num(np.mean(text['fold_auroc'][0]))} vs "
                              f"{num(np.mean(text['fold_auroc'][1]))} "
                              f"(Wilcoxon p {text['wilcoxon_p']:.3f})"})
    for feature in ("margins", "consistency", "calcification_pattern", "shape"):
        row = next((r for r in (zero_shot or {}).get("pooled", []) if r["feature"] == feature), None)
        if row is not None:
            best = max(v for v in (row["auroc"][PAPER], row["auroc"][ENSEMBLE]) if v is not None)
            lines.append({"met": best >= GOALS[f"zero-shot {feature} AUROC"],
                          "text": f"zero-shot {feature}: {num(row['auroc'][PAPER])} paper's prompts, "
                                  f"{num(row['auroc'][ENSEMBLE])} ensembles "
                                  f"(goal >= {GOALS[f'zero-shot {feature} AUROC']})"})
    return lines


def print_model(name: str, s: dict) -> None:
    print(f"\n{name}")
    trained = any(f["best_epoch"] for f in s["folds"])  # the semantic LR has no epochs
    for f in s["folds"]:
        epochs = f", best epoch {f['best_epoch']}, last-epoch AUROC {num(f['last_epoch_auroc'])}" if trained else ""
        print(f"  fold {f['fold']}: AUROC {num(f['auroc'])}  AUPRC {num(f['auprc'])}  (n={f['n']}{epochs})")
    last = f"  last-epoch AUROC {spread([f['last_epoch_auroc'] for f in s['folds']])}" if trained else ""
    print(f"  mean ± sd over folds: AUROC {spread([f['auroc'] for f in s['folds']])}  AUPRC "
          f"{spread([f['auprc'] for f in s['folds']])}{last}")
    if s.get("test"):
        print("  each fold model on the test set: " + "  ".join(
            f"{k} AUROC {num(m['auroc'])} AUPRC {num(m['auprc'])}" for k, m in s["test"]["folds"].items()))
    for title, part in (("out-of-fold, pooled", s), ("held-out test, fold ensemble", s.get("test"))):
        for level in ("nodule", "patient") if part else ():
            m = part[level]
            ci = lambda k, m=m: f" [{num(m[k][0])}, {num(m[k][1])}]" if m.get(k) else ""  # noqa: E731
            print(f"  {title}, {level}s (n={m['n']}, {m['n_pos']} malignant): AUROC {num(m['auroc'])}{ci('auroc_ci')}"
                  f"  AUPRC {num(m['auprc'])}{ci('auprc_ci')}")


def print_zero_shot(zero_shot: dict) -> None:
    print("\nzero-shot AUROC of the lora model (each fold's model on its own validation nodules)")
    print("  feature                  classes (pooled)                              " +
          "  ".join(f"fold {f['fold']}" for f in zero_shot["folds"]) + "   pooled  (paper's prompts / ensembles)")
    for row in zero_shot["pooled"]:
        by_fold = [next((r for r in f["rows"] if r["feature"] == row["feature"]), None) for f in zero_shot["folds"]]
        cells = [f"{num(r and r['auroc'][PAPER])}/{num(r and r['auroc'][ENSEMBLE])}" for r in by_fold]
        classes = ", ".join(f"{v} {c}" for v, c in row["classes"].items())
        print(f"  {row['feature']:<24} {classes[:44]:<44}  " + "  ".join(cells) +
              f"   {num(row['auroc'][PAPER])}/{num(row['auroc'][ENSEMBLE])}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, help=f"cross-validation folds (default {FULL['folds']})")
    parser.add_argument("--epochs", type=int, help=f"epochs per fold (default {FULL['epochs']})")
    parser.add_argument("--image-size", type=int, help=f"encoder input in pixels (default {FULL['image_size']})")
    parser.add_argument("--lora-image-blocks", type=int, help=f"LoRA in the image tower's last N blocks (default "
                        f"{FULL['lora_image_blocks']})")
    parser.add_argument("--lora-rank", type=int, help=f"LoRA rank (train's option; default {REAL_CT.lora_rank})")
    parser.add_argument("--lora-alpha", type=float, help=f"LoRA alpha (train's option; default {REAL_CT.lora_alpha:g})")
    parser.add_argument("--lora-text-blocks", type=int, help="LoRA in the text tower's last N blocks (train's option; "
                        "default: every block)")
    parser.add_argument("--backbone", help=f"backbone (default {FULL['backbone']})")
    parser.add_argument("--batch-size", type=int, help=f"nodules per step (default {FULL['batch_size']})")
    parser.add_argument("--lr", type=float, help=f"learning rate (default {FULL['lr']:g})")
    parser.add_argument("--sampler", help=f"training sampler: semantic, class or none (default {FULL['sampler']})")
    parser.add_argument("--field-of-view", type=int, help=f"zoom: the central N mm of each view go to the encoder "
                        f"(default {FULL['field_of_view']}; 0: the whole 50 mm view)")
    parser.add_argument("--size-weight", type=float, help=f"weight of the auxiliary log-diameter loss (default "
                        f"{FULL['size_weight']:g}; 0: no size head)")
    parser.add_argument("--patience", type=int, help=f"epochs without a better validation AUROC before a fold stops "
                        f"(default {FULL['patience']})")
    parser.add_argument("--test-fraction", type=float, default=0.0, help="patients held out as a test set (0: none)")
    parser.add_argument("--threads", type=int, help="CPU threads for training (default: all cores)")
    parser.add_argument("--models", default="lora,probe,vision-only,semantic", help="ablation models to run")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared LIDC data folder")
    parser.add_argument("--out", type=Path, help="output folder (default benchmarks/out/lidc, or lidc-quick)")
    parser.add_argument("--levers", action="store_true", help="also train --lever-model once per lever (the "
                        "lever table: each row adds one change; cumulative settings in LEVERS)")
    parser.add_argument("--lever-model", default="probe", help="the model the lever table trains (default probe: "
                        "frozen towers, minutes a row on 2 cores)")
    parser.add_argument("--tta", action="store_true", help="also score each neural model out of fold with "
                        "test-time augmentation (the eight symmetries of a square) and compare")
    parser.add_argument("--perturb", nargs="?", const=PERTURBATIONS, help="also score each neural model out of fold "
                        f"on re-rendered crops (evaluate --perturb's language; default {PERTURBATIONS})")
    parser.add_argument("--baseline", type=Path, help="an earlier benchmark output folder on the same splits: "
                        "compare each model with its run there (a lever against the recipe)")
    parser.add_argument("--semantic-weight", type=float, default=0.0, help="weight of the supervised semantic heads "
                        "beside the contrastive loss (train's option; default 0: none)")
    parser.add_argument("--acquisition-augmentation", action="store_true",
                        help="train on copies of each crop re-rendered as other scanners would (train's option)")
    parser.add_argument("--image-augmentation", action="store_true",
                        help="train on views turned and mirrored at random (train's option; the eight symmetries of "
                        "a square, --augment-variants fixed versions of each nodule)")
    parser.add_argument("--augment-variants", type=int, help="versions of each nodule with augmentation, the first "
                        "as it is (train's option; default 4)")
    parser.add_argument("--consistency-weight", type=float, default=0.0, help="weight of the consistency loss "
                        "between two versions of each nodule (train's option; needs augmentation; default 0: none)")
    parser.add_argument("--mark-outside", action="store_true", help="cut views that mark their pixels beyond the "
                        "crop's edge (the model sees them in blue) instead of filling them with air")
    parser.add_argument("--smooth-mm", type=float, default=REAL_CT.views.smooth_mm, help="blur each scan by a "
                        "Gaussian of this many mm before its views are cut, in training and scoring alike (default "
                        "%(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny random towers, 20 patients, 2 folds, 1 epoch")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    given = {k: getattr(args, k) for k in preset if getattr(args, k, None) is not None}
    settings = {**preset, **given, "test_fraction": args.test_fraction}
    settings["field_of_view"] = settings["field_of_view"] or None  # 0: the whole view
    if args.acquisition_augmentation:
        settings["acquisition_augmentation"] = True
    if args.image_augmentation:
        settings["image_augmentation"] = True
    if args.augment_variants:
        settings["augment_variants"] = args.augment_variants
    if args.semantic_weight:
        settings["semantic_weight"] = args.semantic_weight
    if args.consistency_weight:
        settings["consistency_weight"] = args.consistency_weight
    for name in ("lora_rank", "lora_alpha", "lora_text_blocks"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    out = args.out or ROOT / "benchmarks" / "out" / ("lidc-quick" if args.quick else "lidc")
    models = parse_models(args.models)
    config = TrainConfig(**settings, threads=args.threads, cache=str((out / "ablation" / "cache").resolve()),
                         views=replace(REAL_CT.views, mark_outside=args.mark_outside,
                                        smooth_mm=args.smooth_mm)).validate()
    seconds, started = {}, time.perf_counter()
    print("settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + f", models {','.join(models)}"
          + (", views marking the crop's edge" if args.mark_outside else "")
          + (f", scans blurred by {args.smooth_mm:g} mm before the views" if args.smooth_mm else ""))

    tick = time.perf_counter()
    print("[1] importing the LIDC crops", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    import_crops(crop_table(args.data, out, args.quick), out / "manifest.csv")
    for nodule_id, reason in drop_unreadable(out / "manifest.csv", config):
        print(f"    left out {nodule_id}: {reason}")
    manifest = NoduleManifest.read(out / "manifest.csv")
    labels = Counter(r.label for r in manifest)
    plan = shared_splits(manifest, out / "ablation", config)
    seconds["import"] = time.perf_counter() - tick
    print(f"    {len(manifest)} nodules of {len({r.patient_id for r in manifest})} patients: {labels[1]} malignant, "
          f"{labels[0]} benign, {labels[None]} unknown (malignancy 3); splits in {out / 'ablation' / 'splits.csv'}")

    results = {}
    for n, model in enumerate(models, start=1):
        tick = time.perf_counter()
        print(f"[2.{n}] {model}", flush=True)
        run_ablation(out / "manifest.csv", out / "ablation", config, models=[model], echo=lambda t: print("    " + t))
        seconds[model] = time.perf_counter() - tick
        results[model] = model_summary(out / "ablation" / model)

    levers = None
    if args.levers:
        tick = time.perf_counter()
        print(f"[2.L] the lever table ({args.lever_model})", flush=True)
        levers = run_levers(out, config, parse_models(args.lever_model)[0], manifest, args.quick)
        seconds["levers"] = time.perf_counter() - tick

    tta = None
    if args.tta:
        tick = time.perf_counter()
        print("[2.T] test-time augmentation, out of fold", flush=True)
        tta = tta_rows(out, manifest, plan, config, [m for m in results if m != "semantic"])
        seconds["tta"] = time.perf_counter() - tick

    robust = None
    if args.perturb:
        tick = time.perf_counter()
        print(f"[2.P] robustness to acquisition ({args.perturb}), out of fold", flush=True)
        robust = robustness(out, manifest, plan, config, [m for m in results if m != "semantic"], args.perturb)
        seconds["perturb"] = time.perf_counter() - tick

    tick = time.perf_counter()
    print("[3] diameter alone and the LIDC-ratings LR on the same folds", flush=True)
    baselines = same_fold_baselines(manifest, plan)
    seconds["same_fold_baselines"] = time.perf_counter() - tick
    zero_shot = None
    if "lora" in models:
        tick = time.perf_counter()
        print("[4] zero-shot feature prediction of the lora fold models, out of fold", flush=True)
        zero_shot = lora_zero_shot(out / "ablation" / "lora", manifest, plan, config)
        seconds["zero_shot"] = time.perf_counter() - tick
    tick = time.perf_counter()
    print("[5] semantic-only LR on every LIDC nodule of the XML reads", flush=True)
    xml = xml_semantic(xml_source(args.data, out, args.quick), config.folds, config.seed)
    seconds["xml_semantic"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - started

    print(f"\n=== LIDC benchmark: {settings['backbone']}, {config.folds} folds, {config.epochs} epochs, "
          f"{config.image_size} px, LoRA in the last {config.lora_image_blocks} image blocks"
          + (f" and {config.lora_text_blocks} text blocks" if config.lora_text_blocks else "") + ", "
          f"batch {config.batch_size}, lr {config.lr:g}, sampler {config.sampler}, "
          f"field of view {config.field_of_view or 50} mm, size weight {config.size_weight:g}, "
          + (f"acquisition augmentation ({config.augment_variants - 1} copies), "
             if config.acquisition_augmentation else "") +
          (f"image augmentation ({config.augment_variants} versions), " if config.image_augmentation else "") +
          f"{f'semantic heads (weight {config.semantic_weight:g}), ' if config.semantic_weight else ''}"
          f"{f'consistency (weight {config.consistency_weight:g}), ' if config.consistency_weight else ''}"
          f"test fraction {config.test_fraction:g}" + (" (QUICK: not a result)" if args.quick else ""))
    for model, summary in results.items():
        print_model(model, summary)
    for name, title in (("diameter", "diameter alone"), ("lidc_ratings_lr", "LR on the LIDC ratings + diameter")):
        b = baselines[name]
        print(f"\n{title} (same folds): " + "  ".join(f"fold {f['fold']} {num(f['auroc'])}" for f in b["folds"]) +
              f"  mean {spread([f['auroc'] for f in b['folds']])}  pooled AUROC {num(b['pooled']['auroc'])}")
    if zero_shot:
        print_zero_shot(zero_shot)
    print(f"\nsemantic-only LR, all LIDC XML nodules ({xml['n']} labelled of {xml['nodules']}, {xml['n_patients']} "
          f"patients): AUROC {num(xml['auroc_mean'])} ± {num(xml['auroc_sd'])} over {len(xml['folds'])} folds, pooled "
          f"{num(xml['pooled_auroc'])}; AUPRC pooled {num(xml['pooled_auprc'])}; features {', '.join(xml['features'])}")
    if levers:
        print_levers(levers)
    if tta:
        print_tta(tta)
    if robust:
        print_robustness(robust)
    baseline = against_baseline(out, args.baseline, manifest, results) if args.baseline else None
    if baseline:
        print_against_baseline(baseline)
    strata = size_strata(manifest, {m: pooled_predictions(out / "ablation" / m) for m in results})
    print_size_strata(strata)
    text = text_against_vision(out, manifest, results)
    goals = goal_lines(manifest, out, results, zero_shot, text, robust)
    print("\ngoals (pooled out of fold, image only at inference)")
    for line in goals:
        print(f"  [{'met' if line['met'] else 'NOT met'}] {line['text']}")
    print("  references: " + "; ".join(f"{k} {v}" for k, v in REFERENCES.items()))
    print("\nwall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) +
          " (the first neural model's time includes cutting the views; a reused run takes none)")
    print("epochs' time of each run: " + ", ".join(f"{m} {training_seconds(out / 'ablation' / m) / 60:.1f} min"
                                                   for m in results if m != "semantic"))

    document = jsonable({"settings": settings | {"quick": args.quick, "models": models, "nodules": len(manifest)},
                         "seconds": seconds, "models": results, "same_fold_baselines": baselines,
                         "levers": levers, "tta": tta, "robustness": robust, "against_baseline": baseline,
                         "text_against_vision": text,
                         "goal_lines": goals, "size_strata": strata,
                         "zero_shot": zero_shot, "xml_semantic": xml, "goals": GOALS, "references": REFERENCES})
    write_text(out / "lidc_benchmark.json", json.dumps(document, indent=2) + "\n")
    print(f"wrote {out / 'lidc_benchmark.json'}")
    return document


if __name__ == "__main__":
    try:
        main()
    except InputError as error:
        sys.exit(f"error: {error}")
