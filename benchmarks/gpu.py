"""Training-step time and inference throughput on a CUDA GPU, beside that GPU's FLOP floor.

    .venv/bin/python benchmarks/gpu.py            # dinov2-s+minilm at 224 px (LoRA in every block), clip-vit-b-32
    .venv/bin/python benchmarks/gpu.py --quick    # the tiny backbone only (a smoke run: seconds)

Both towers use random weights (timing only: the same FLOPs as the pretrained ones). For each backbone and
precision (float32 with TF32 matmuls off, bf16 autocast, fp16 autocast with a gradient scaler, as
`noduleclip train --mixed-precision` runs them) it prints:
- inference: nodules per second for a batch of 64 nodules (nine views each, image path only, inference_mode);
- a training step: forward with texts, the three losses, backward, AdamW, for a batch of 32 nodules.
The floor is the counted FLOPs (torch.utils.flop_counter) divided by the best rate of an 8192^3 matmul of the
same precision measured on the GPU in the same process, so "x floor" says how far the model is from what the
GPU's matmul units allow. Times are the best of a few repeats after warm-up, each synchronised.
The whole run takes about two minutes on one H100; it stops at once, in one sentence, without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import TEXT, counted_flops  # noqa: E402

PRECISIONS = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def gpu_matmul_tflops(dtype: torch.dtype, size: int = 8192, repeats: int = 5) -> float:
    """Best observed matmul rate on the GPU for `dtype` (float32: TF32 off), in TFLOP/s."""
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    torch.mm(a, b)
    return 2 * size**3 / best_seconds(lambda: torch.mm(a, b), repeats) / 1e12


def best_seconds(step, repeats: int) -> float:
    """The best wall time of `repeats` calls of `step`, each waited for on the GPU."""
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def autocast(precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def inference(model, precision: str, nodules: int, repeats: int) -> dict:
    views = torch.rand(nodules, 9, 50, 50, device="cuda")
    with torch.inference_mode(), autocast(precision):
        flops = counted_flops(lambda: model.encode_image(views))
        model.predict(views, batch_size=nodules)  # warm-up: kernels chosen, memory allocated
        seconds = best_seconds(lambda: model.predict(views, batch_size=nodules), repeats)
    return {"seconds": seconds, "flops": flops, "nodules": nodules}


def training_step(model, precision: str, nodules: int, repeats: int) -> dict:
    from noduleclip.model import NoduleClipLoss

    model.train()
    criterion = NoduleClipLoss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    views = torch.rand(nodules, 9, 50, 50, device="cuda")
    labels = torch.randint(0, 2, (nodules,), device="cuda")
    tokens = {k: v.to("cuda") for k, v in model.tokenize([TEXT] * nodules).items()}

    def forward_backward():
        with autocast(precision):
            loss = criterion(model(views, tokens), labels).total
        scaler.scale(loss).backward()

    def step():
        forward_backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    flops = counted_flops(forward_backward)
    optimizer.zero_grad(set_to_none=True)
    step()  # warm-up (the optimiser's state is allocated)
    seconds = best_seconds(step, repeats)
    model.eval()
    return {"seconds": seconds, "flops": flops, "nodules": nodules,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny backbone only, a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU and this machine has none; run it where one is lent")
    from noduleclip.model import LoraSettings, create_model

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 (noduleclip does not switch TF32 on)
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(0)
    rates = {p: gpu_matmul_tflops(dtype or torch.float32) for p, dtype in PRECISIONS.items()}
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}; 8192^3 matmul TFLOP/s: "
          + ", ".join(f"{p} {r:.1f}" for p, r in rates.items()))
    jobs = [("tiny", None, 1)] if args.quick else [("dinov2-s+minilm", 224, None), ("clip-vit-b-32", None, None)]
    print(f"\n{'backbone':<17}{'px':>5}{'precision':>10}{'infer nod/s':>13}{'x floor':>9}"
          f"{'step s':>8}{'train nod/s':>13}{'x floor':>9}{'peak GiB':>10}")
    for backbone, size, image_blocks in jobs:
        for precision in PRECISIONS:
            torch.manual_seed(0)
            torch.cuda.reset_peak_memory_stats()
            model = create_model(backbone, random_init=True, image_size=size,
                                 lora=LoraSettings(image_blocks=image_blocks)).to("cuda").eval()
            infer = inference(model, precision, 8 if args.quick else 64, args.repeats)
            train = training_step(model, precision, 4 if args.quick else 32, args.repeats)
            rate = rates[precision] * 1e12
            print(f"{backbone:<17}{model.config.image_size:>5}{precision:>10}"
                  f"{infer['nodules'] / infer['seconds']:>13.1f}{infer['seconds'] / (infer['flops'] / rate):>9.2f}"
                  f"{train['seconds']:>8.3f}{train['nodules'] / train['seconds']:>13.1f}"
                  f"{train['seconds'] / (train['flops'] / rate):>9.2f}{train['peak_gib']:>10.2f}")
            del model
            torch.cuda.empty_cache()
    print("\nLoRA in every block of both towers (the paper's setting); random tower weights (timing only). "
          "x floor: measured time / (counted FLOPs / the matmul rate of that precision).")


if __name__ == "__main__":
    main()
