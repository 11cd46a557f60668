"""Per-nodule forward time of the dual encoder beside its FLOP floor, and training-step time and memory.

    .venv/bin/python benchmarks/inference.py            # clip-vit-b-32 (random weights) and dinov2-s+minilm
    .venv/bin/python benchmarks/inference.py --quick    # the tiny backbone only (a smoke run)
    .venv/bin/python benchmarks/inference.py --chunks   # the frozen-block pass whole against in chunks

The floor is the counted FLOPs (torch.utils.flop_counter; towers, MIL and heads) divided by the best rate of a
2048^3 float32 matmul measured in the same process just before and after the timing. Times are the best of a
few repeats, so that other processes on a shared machine disturb them less. Each configuration runs in its
own process so that its peak resident memory (getrusage ru_maxrss) is its own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import torch

from noduleclip.model.towers import CPU_INFERENCE_CHUNK

TEXT = "This nodule has a poorly defined margin, marked lobulation and no calcification; it is solid."


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best observed float32 matmul rate in GFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def counted_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_inference(backbone: str, nodules: int, repeats: int) -> dict:
    from noduleclip.model import create_model

    model = create_model(backbone, random_init=backbone == "clip-vit-b-32").eval()
    views = torch.rand(nodules, 9, 50, 50)
    with torch.inference_mode():
        flops = counted_flops(lambda: model.encode_image(views))
        model.predict(views, batch_size=nodules)  # warm-up
        rate = matmul_gflops()
        seconds = min(_timed(lambda: model.predict(views, batch_size=nodules)) for _ in range(repeats))
        rate = max(rate, matmul_gflops())
    return {"backbone": backbone, "size": model.config.image_size, "nodules": nodules, "gflops": rate,
            "seconds_per_nodule": seconds / nodules, "gflop_per_nodule": flops / nodules / 1e9,
            "peak_rss_mib": peak_rss_mib()}


def run_training(backbone: str, tuning: str, nodules: int, repeats: int) -> dict:
    from noduleclip.model import NoduleClipLoss, create_model

    model = create_model(backbone, tuning=tuning, random_init=backbone == "clip-vit-b-32").train()
    rss_model = peak_rss_mib()
    criterion = NoduleClipLoss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1)
    views, labels = torch.rand(nodules, 9, 50, 50), torch.randint(0, 2, (nodules,))
    tokens = model.tokenize([TEXT] * nodules)

    def step():
        loss = criterion(model(views, tokens), labels)
        loss.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def forward_backward():
        criterion(model(views, tokens), labels).total.backward()
        optimizer.zero_grad(set_to_none=True)

    flops = counted_flops(forward_backward)
    step()  # warm-up (allocates the optimizer state)
    rate = matmul_gflops()
    seconds = min(_timed(step) for _ in range(repeats))
    rate = max(rate, matmul_gflops())
    return {"backbone": backbone, "tuning": tuning, "size": model.config.image_size, "nodules": nodules, "gflops": rate,
            "seconds_per_step": seconds, "seconds_per_nodule": seconds / nodules,
            "gflop_per_nodule": flops / nodules / 1e9, "trainable_percent": 100 * model.trainable_fraction(),
            "rss_after_build_mib": rss_model, "peak_rss_mib": peak_rss_mib()}


def run_chunks(nodules: int, repeats: int) -> dict:
    """The frozen image blocks' pass of training (LoRA in the top block: 11 of DINOv2's 12 blocks run once per
    nodule) over `nodules` x 9 views in one call of the blocks, against `CPU_INFERENCE_CHUNK` images per call;
    in float32 and, where the CPU computes it natively, bf16 autocast. The two alternate, best of `repeats`."""
    import contextlib

    from noduleclip.model import create_model, towers
    from noduleclip.model.model import LoraSettings
    from noduleclip.train.config import native_bf16

    model = create_model("dinov2-s+minilm", tuning="lora", lora=LoraSettings(image_blocks=1))
    views = torch.rand(nodules, 9, 50, 50)
    chunk = towers.CPU_INFERENCE_CHUNK
    results = {"nodules": nodules, "images": nodules * 9, "chunk": chunk, "blocks": model.frozen_image_blocks}
    for precision in ("float32", "bf16") if native_bf16() else ("float32",):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        times: dict[str, list[float]] = {"whole": [], "chunked": []}
        with autocast:
            model.image_prefix(views[:2], batch_size=nodules)  # warm-up
            for _ in range(repeats):
                for name, size in (("whole", 10**9), ("chunked", chunk)):
                    towers.CPU_INFERENCE_CHUNK = size
                    times[name].append(_timed(lambda: model.image_prefix(views, batch_size=nodules)))
        towers.CPU_INFERENCE_CHUNK = chunk
        results[precision] = {name: min(seconds) for name, seconds in times.items()}
    return results


def chunks_main() -> None:
    r = in_own_process({"kind": "chunks", "nodules": 32, "repeats": 3})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}")
    print(f"The frozen image blocks' pass ({r['blocks']} DINOv2 blocks, 112 px) over {r['nodules']} nodules "
          f"({r['images']} images), best of 3:")
    chunked_column = f"chunks of {r['chunk']} s"
    print(f"{'precision':<11}{'one call s':>12}{chunked_column:>16}{'images/s':>10}{'speed-up':>10}")
    for precision in ("float32", "bf16"):
        if precision in r:
            whole, chunked = r[precision]["whole"], r[precision]["chunked"]
            rate = r["images"] / chunked
            print(f"{precision:<11}{whole:>12.2f}{chunked:>16.2f}{rate:>10.1f}{whole / chunked:>9.2f}x")


def in_own_process(job: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"benchmark job {job} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(quick: bool) -> None:
    rate = matmul_gflops()
    backbones = ["tiny"] if quick else ["clip-vit-b-32", "dinov2-s+minilm"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 2048^3 float32 matmul: {rate:.1f} GFLOP/s; "
          f"load average at start {os.getloadavg()[0]:.2f} (other processes on the machine slow every figure)")
    print("\nInference (image only, nine views per nodule, inference_mode, the views in calls of at most "
          f"{CPU_INFERENCE_CHUNK} images)")
    print(f"{'backbone':<18}{'px':>5}{'batch':>7}{'s/nodule':>10}{'GFLOP/nod':>11}{'GFLOP/s':>9}{'floor s':>9}"
          f"{'x floor':>9}{'peak RSS MiB':>14}")
    for backbone in backbones:
        r = in_own_process({"kind": "inference", "backbone": backbone, "nodules": 8, "repeats": 3})
        floor = r["gflop_per_nodule"] / r["gflops"]
        print(f"{backbone:<18}{r['size']:>5}{r['nodules']:>7}{r['seconds_per_nodule']:>10.3f}"
              f"{r['gflop_per_nodule']:>11.1f}{r['gflops']:>9.1f}{floor:>9.3f}{r['seconds_per_nodule'] / floor:>9.2f}"
              f"{r['peak_rss_mib']:>14.0f}")
    print("\nTraining step (forward + three losses + backward + AdamW, with texts)")
    print(f"{'backbone':<18}{'tuning':<10}{'batch':>6}{'s/step':>8}{'s/nodule':>10}{'GFLOP/nod':>11}{'x floor':>9}"
          f"{'trainable %':>13}{'RSS build MiB':>15}{'peak RSS MiB':>14}")
    for backbone in backbones:
        for tuning in ("lora", "finetune"):
            nodules = 4 if backbone == "clip-vit-b-32" else 8
            r = in_own_process({"kind": "training", "backbone": backbone, "tuning": tuning, "nodules": nodules,
                                "repeats": 3})
            floor = r["gflop_per_nodule"] / r["gflops"]
            print(f"{backbone:<18}{tuning:<10}{r['nodules']:>6}{r['seconds_per_step']:>8.2f}"
                  f"{r['seconds_per_nodule']:>10.3f}{r['gflop_per_nodule']:>11.1f}"
                  f"{r['seconds_per_nodule'] / floor:>9.2f}{r['trainable_percent']:>13.3f}"
                  f"{r['rss_after_build_mib']:>15.0f}{r['peak_rss_mib']:>14.0f}")
    print(f"\nLoad average at the end {os.getloadavg()[0]:.2f}; 2048^3 matmul again: {matmul_gflops():.1f} GFLOP/s.")
    print("clip-vit-b-32 uses random tower weights (timing only); dinov2-s+minilm uses the offline pretrained towers.")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        job = json.loads(sys.argv[2])
        kind = job.pop("kind")
        runs = {"inference": run_inference, "training": run_training, "chunks": run_chunks}
        print(json.dumps(runs[kind](**job)))
    elif "--chunks" in sys.argv[1:]:
        chunks_main()
    else:
        main(quick="--quick" in sys.argv[1:])
