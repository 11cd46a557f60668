"""Whole-process time of `noduleclip predict` for one nodule of LIDC-IDRI-0001, by stage, beside the FLOP floor.

    .venv/bin/python benchmarks/predict.py                       # dinov2-s+minilm, five folds, LoRA in every block
    .venv/bin/python benchmarks/predict.py --lora-image-blocks 1 --lora-rank 8   # the demo's model
    .venv/bin/python benchmarks/predict.py --backbone tiny       # a smoke run
    .venv/bin/python benchmarks/predict.py --threads 1           # on a busy machine: no thread oversubscription

It needs a trained run. It makes one (once; kept in --run-dir) with the layout `noduleclip train` writes:
config.json, fold_k/best (each fold's freshly initialised LoRA model saved with `save_model`, built by the
training code's `build_fold_model`, so the five folds differ as trained folds do) and fold_k/done.json,
plus a calibrator fitted on synthetic out-of-fold predictions so that the calibrated path runs, and the
fold models' stored prompt embeddings (prompt_embeddings.safetensors, as training writes them: predict then
builds no text tower). The weights are untrained: the figures are times, not risks.

Then it runs `noduleclip -v predict RUN lidc-idri-0001 --coord <nodule centre> --out DIR` as its own process
and reads the stage times the command logs: read (scan and nodule location), load (the run's models), views,
model (the fold models' image path), zero-shot (the stored prompt embeddings against each fold's image
embedding), outputs (JSON, CSV, panel, SR); the rest of the wall time is starting Python, importing and
exiting. Four ways, in this order: the first predict of a model of this kind (the cache holds no traced image
tower: it builds the tower with transformers and peft, then traces it; see noduleclip.model.traced), the later
ones (best of 3: they load the traced tower), the same with --dicom-sr, and the reference: the tower built with
transformers each time (NODULECLIP_TRACED_TOWER=0, best of 3). In this process it times the model stage again
(warm, best of five) and counts its FLOPs (torch.utils.flop_counter) to give the floor: FLOPs / the best
2048^3 float32 matmul rate, measured as benchmarks/inference.py does; beside it, what the text tower would
cost (its FLOPs and warm seconds for the prompts, all folds) had the run no stored prompt embeddings.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "lidc-idri-0001"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import counted_flops, matmul_gflops  # noqa: E402
from noduleclip.model.traced import TRACE_ENV, traced_tower_path  # noqa: E402

NODULE_CENTER = (55.5, 85.6, -116.1)  # LIDC-IDRI-0001's nodule, from the first reader's contours (LPS mm)
STAGES = ("read", "load", "views", "model", "zero_shot", "outputs")


def make_run(run: Path, backbone: str, folds: int, lora_image_blocks: int | None = None, lora_rank: int = 2) -> Path:
    """A run folder of `folds` untrained fold models, laid out as `noduleclip train` writes one."""
    from noduleclip.atomic import write_text
    from noduleclip.ensemble import PROMPT_FILE, RunEnsemble
    from noduleclip.metrics.calibration import calibrate_run
    from noduleclip.model import save_model
    from noduleclip.run_folder import RUN_FORMAT, RUN_FORMAT_VERSION
    from noduleclip.train.config import TrainConfig
    from noduleclip.train.loop import DONE_FILE, build_fold_model
    from noduleclip.version import __version__

    config = TrainConfig(backbone=backbone, folds=folds, random_init=backbone == "clip-vit-b-32",
                         lora_image_blocks=lora_image_blocks, lora_rank=lora_rank, lora_alpha=float(lora_rank))
    if (run / "config.json").is_file():
        document = json.loads((run / "config.json").read_text())
        kind = ("backbone", "folds", "lora_image_blocks", "lora_rank")
        if all(document["train"].get(k) == getattr(config, k) for k in kind):
            if not (run / PROMPT_FILE).is_file():  # made by an older version of this benchmark
                RunEnsemble.load(run).write_prompt_embeddings()
            return run
        raise SystemExit(f"{run} holds another benchmark run; remove it or pass another --run-dir")
    run.mkdir(parents=True, exist_ok=True)
    for k in range(folds):
        model = build_fold_model(config, k)
        save_model(model, run / f"fold_{k}" / "best")
        write_text(run / f"fold_{k}" / DONE_FILE, json.dumps({"fold": k, "best_epoch": 0, "note": "untrained"}) + "\n")
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.02, 0.98, 200)
    with open(run / "val_predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fold", "patient_id", "nodule_id", "label", "probability"])
        for i, p in enumerate(truth):
            writer.writerow([i % folds, f"P{i}", f"N{i}", int(rng.uniform() < p), repr(float(p ** 1.5))])
    calibrate_run(run)
    write_text(run / "config.json", json.dumps({
        "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "package_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "train": config.to_dict(),
        "manifest": {"path": None, "note": "benchmark run: untrained fold models, synthetic calibration"},
        "model": {"backbone": model.config.backbone, "tuning": model.config.tuning,
                  "image_size": model.config.image_size,
                  "random_init": model.config.random_init, "weights_source": model.config.weights_source,
                  "tower_fingerprint": model.config.tower_fingerprint,
                  "trainable_fraction": model.trainable_fraction()},
    }, indent=2) + "\n")
    RunEnsemble.load(run).write_prompt_embeddings()  # as training does at its end
    return run


def cli_run(run: Path, out: Path, dicom_sr: bool, threads: int | None, traced: bool = True) -> dict:
    """Wall and CPU time of one `noduleclip -v predict` process and the stage times it logs (`traced`: False builds
    the image tower with transformers, as without the traced-tower cache)."""
    coord = ",".join(str(c) for c in NODULE_CENTER)
    command = [sys.executable, "-m", "noduleclip", "-v", "predict", str(run), str(DATA), "--coord", coord,
               "--out", str(out)] + (["--dicom-sr"] if dicom_sr else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
           TRACE_ENV: "1" if traced else "0"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 0:
        raise SystemExit(f"noduleclip predict failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stderr.splitlines() if line.startswith("seconds: "))
    stages = {name: float(value) for name, value in re.findall(r"(\w+) ([0-9.]+)", line[len("seconds: "):])}
    return {"wall": wall, "cpu": cpu, **stages, "start_and_imports": wall - sum(stages.values())}


def in_process(run: Path, repeats: int = 5) -> dict:
    """Warm model and zero-shot times (best of `repeats`) and their FLOPs, for the nodule's views."""
    import torch

    from noduleclip.ensemble import RunEnsemble
    from noduleclip.io import read_volume
    from noduleclip.predict.api import NoduleClip
    from noduleclip.preprocess.views import sample_planes

    model = NoduleClip.load(run)  # as predict loads it: without the text tower
    whole = RunEnsemble.load(run)  # with it, to price the text tower that the stored prompt embeddings save
    views = torch.from_numpy(sample_planes(read_volume(DATA), NODULE_CENTER, model.views)[None])
    network, prompts = model.ensemble.network, model.prompts
    with torch.inference_mode():  # counted on the built (eager) towers, the ensemble's whole image path: where
        # the bottom image blocks are frozen, it runs them once for all folds
        image_flops = counted_flops(lambda: whole.score(views))
        text_flops = counted_flops(lambda: whole.network.encode_text(prompts.texts)) if prompts else 0
    rate = matmul_gflops()
    best = {"model": float("inf"), "text_tower": float("inf")}
    for _ in range(repeats):
        scores = model.ensemble.score(views)
        timings = {"model": model.ensemble.timings["model"], "text_tower": 0.0}
        if prompts:
            whole.clear_prompt_cache()  # every fold's prompts through its text tower, as a run without them pays
            whole.zero_shot(scores, prompts)
            timings["text_tower"] = whole.timings["zero_shot"]
        best = {k: min(best[k], timings[k]) for k in best}
    rate = max(rate, matmul_gflops())
    folds = model.ensemble.folds
    return {"folds": folds, "gflops_rate": rate, "model": best["model"], "text_tower": best["text_tower"],
            "model_gflop": image_flops / 1e9, "text_tower_gflop": folds * text_flops / 1e9,
            "prompts": len(prompts) if prompts else 0, "image_size": network.config.image_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="dinov2-s+minilm")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (OMP_NUM_THREADS) for every timing (default: torch's, one per core)")
    parser.add_argument("--lora-image-blocks", type=int, default=None,
                        help="LoRA in the image tower's top N blocks only (the demo's model: 1; default: every block)")
    parser.add_argument("--lora-rank", type=int, default=2, help="LoRA rank (the demo's: 8; default %(default)s)")
    parser.add_argument("--run-dir", default=None, help="where the benchmark run is made and kept "
                        "(default: a folder in the system's temporary directory)")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is missing: this benchmark needs ../shared/data/lidc-idri-0001")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    blocks = "all" if args.lora_image_blocks is None else str(args.lora_image_blocks)
    name = f"noduleclip-bench-predict-{args.backbone}-{args.folds}-lora{blocks}r{args.lora_rank}"
    run = Path(args.run_dir or Path(tempfile.gettempdir()) / name)
    started = time.perf_counter()
    make_run(run, args.backbone, args.folds, args.lora_image_blocks, args.lora_rank)
    print(f"benchmark run {run} ({args.backbone}, {args.folds} untrained folds) ready in "
          f"{time.perf_counter() - started:.1f} s")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f} (other processes slow every figure)")
    from noduleclip.model import read_model_config

    traced = traced_tower_path(read_model_config(run / "fold_0" / "best")[0])
    if traced is not None:
        traced.unlink(missing_ok=True)  # the first predict of this kind of model traces its tower
    with tempfile.TemporaryDirectory() as tmp:
        first = cli_run(run, Path(tmp) / "first", False, args.threads)
        plain = min((cli_run(run, Path(tmp) / f"out{i}", False, args.threads) for i in range(3)),
                    key=lambda r: r["wall"])
        with_sr = cli_run(run, Path(tmp) / "out-sr", True, args.threads)
        eager = min((cli_run(run, Path(tmp) / f"eager{i}", False, args.threads, traced=False) for i in range(3)),
                    key=lambda r: r["wall"])
    warm = in_process(run)
    model_floor = warm["model_gflop"] / warm["gflops_rate"]
    text_floor = warm["text_tower_gflop"] / warm["gflops_rate"] if warm["text_tower_gflop"] else float("nan")
    lora = "LoRA in every image block" if args.lora_image_blocks is None else \
        f"LoRA in the top {args.lora_image_blocks} image block(s)"
    print(f"\n`noduleclip predict` on LIDC-IDRI-0001, one nodule, {warm['folds']} folds at {warm['image_size']} px, "
          f"{lora}, rank {args.lora_rank}")
    print("first: the first predict of this kind of model (traces its image tower); traced: later ones, best of 3; "
          "with SR: once, traced; built: the tower built with transformers each time, best of 3 (the reference)")
    columns = {"first": first, "traced": plain, "with SR": with_sr, "built": eager}
    print(f"{'stage':<20}" + "".join(f"{c:>9}" for c in columns))
    for name in ("start_and_imports", *STAGES):
        print(f"{name:<20}" + "".join(f"{r.get(name, float('nan')):>9.2f}" for r in columns.values()))
    print(f"{'whole process':<20}" + "".join(f"{r['wall']:>9.2f}" for r in columns.values()) + "   goal < 4 s")
    print(f"{'CPU time (user+sys)':<20}" + "".join(f"{r['cpu']:>9.2f}" for r in columns.values()))
    print(f"traced tower: predict {eager['wall'] / plain['wall']:.2f}x faster than the built one "
          f"({plain['wall']:.2f} s against {eager['wall']:.2f} s)")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"\nFLOP floor (2048^3 float32 matmul {warm['gflops_rate']:.1f} GFLOP/s)")
    print(f"{'part':<38}{'GFLOP':>8}{'floor s':>9}{'warm s':>9}{'x floor':>9}{'in CLI s':>10}{'x floor':>9}")
    print(f"{'model (image path, all folds)':<38}{warm['model_gflop']:>8.2f}{model_floor:>9.3f}{warm['model']:>9.3f}"
          f"{warm['model'] / model_floor:>9.2f}{plain['model']:>10.3f}{plain['model'] / model_floor:>9.2f}")
    print(f"{'text tower (' + str(warm['prompts']) + ' prompts, all folds)':<38}{warm['text_tower_gflop']:>8.2f}"
          f"{text_floor:>9.3f}{warm['text_tower']:>9.3f}{warm['text_tower'] / text_floor:>9.2f}"
          f"{'stored':>10}{'':>9}")
    print("goal: the model part within 1.5x its floor; predict reads the prompts' embeddings that training stored")


if __name__ == "__main__":
    main()
