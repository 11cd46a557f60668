"""Applying a run's fold models: the ensemble's strategy against one separately loaded model per fold.

    .venv/bin/python benchmarks/ensemble.py            # dinov2-s+minilm (random weights), 5 folds, 32 nodules
    .venv/bin/python benchmarks/ensemble.py --quick    # the tiny backbone (a smoke run)

`noduleclip.ensemble.RunEnsemble` builds the network once and swaps each fold's trained tensors in; where
the bottom image blocks are frozen (probing, LoRA on the top blocks) it computes them once per batch for all
folds. The reference, in the same process, loads every fold model on its own (towers built once per fold)
and runs each over all views. Printed: seconds to load and to score, and reference / ensemble ratios; the
scores of both agree to 1e-6 (checked). Times are the best of a few repeats.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from noduleclip.ensemble import RunEnsemble
from noduleclip.model import LoraSettings, create_model, load_model, save_model


def _best(step, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = step()
        best = min(best, time.perf_counter() - started)
    return best, result


def compare(backbone: str, tuning: str, image_blocks: int | None, folds: int, nodules: int, repeats: int) -> dict:
    """Load and score times of both strategies for one kind of fold model."""
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for k in range(folds):  # fold models differ in their trained tensors only, as a run's do
            torch.manual_seed(k)
            model = create_model(backbone, tuning=tuning, random_init=True,
                                 lora=LoraSettings(image_blocks=image_blocks))
            folders.append(save_model(model, Path(tmp) / f"fold_{k}"))
        views = torch.rand(nodules, 9, 50, 50, generator=torch.Generator().manual_seed(0))
        load_reference, models = _best(lambda: [load_model(f) for f in folders], 1)
        load_ensemble, ensemble = _best(lambda: RunEnsemble.from_folders(folders), 1)
        score_reference, reference = _best(lambda: np.stack([m.predict_risk(views).double().numpy() for m in models]),
                                           repeats)
        score_ensemble, scores = _best(lambda: ensemble.score(views), repeats)
        gap = float(np.abs(scores.fold_risk - reference).max())
        if gap > 1e-6:
            raise SystemExit(f"the ensemble and the separately loaded models disagree by {gap:.2g}")
    return {"backbone": backbone, "tuning": tuning, "lora_image_blocks": image_blocks, "folds": folds,
            "nodules": nodules, "frozen_image_blocks": ensemble.network.frozen_image_blocks,
            "load_reference_s": load_reference, "load_ensemble_s": load_ensemble,
            "score_reference_s": score_reference, "score_ensemble_s": score_ensemble,
            "load_ratio": load_reference / load_ensemble, "score_ratio": score_reference / score_ensemble,
            "max_difference": gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny backbone, 3 folds, 8 nodules")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    backbone, folds, nodules, repeats = ("tiny", 3, 8, 2) if args.quick else ("dinov2-s+minilm", 5, 32, 3)
    rows = [compare(backbone, tuning, blocks, folds, nodules, repeats)
            for tuning, blocks in (("lora", None), ("lora", 1), ("probe", None))]
    print(f"{'tuning':<10} {'frozen':>6} {'load ref s':>10} {'load ens s':>10} {'ratio':>6} "
          f"{'score ref s':>11} {'score ens s':>11} {'ratio':>6}")
    for r in rows:
        name = r["tuning"] + (f" top-{r['lora_image_blocks']}" if r["lora_image_blocks"] else "")
        print(f"{name:<10} {r['frozen_image_blocks']:>6} {r['load_reference_s']:>10.2f} {r['load_ensemble_s']:>10.2f} "
              f"{r['load_ratio']:>6.2f} {r['score_reference_s']:>11.2f} {r['score_ensemble_s']:>11.2f} "
              f"{r['score_ratio']:>6.2f}")
    print(f"{backbone}, {folds} fold models, {nodules} nodules; ratio = separately loaded models / RunEnsemble")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
