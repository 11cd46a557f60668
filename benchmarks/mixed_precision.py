"""bf16 autocast against float32 on this machine: a LoRA training step and the frozen image blocks.

    .venv/bin/python benchmarks/mixed_precision.py           # dinov2-s+minilm at 112 px, LoRA in the top 2 blocks
    .venv/bin/python benchmarks/mixed_precision.py --quick   # the tiny backbone (a smoke run)

What `--mixed-precision bf16` (and the demo's `auto`, where the CPU has AVX512-BF16 or AMX) changes: the matrix
products of the forward pass run in bfloat16 while the weights, the optimizer and the stored image prefix stay
float32. Both precisions run in this process on the same model and inputs, interleaved, best of several repeats.
"""

from __future__ import annotations

import argparse
import time

import torch


def _best(step, repeats: int) -> dict[bool, float]:
    step(False), step(True)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):  # interleaved, so that a busy moment of the machine hits both
        for bf16 in (False, True):
            start = time.perf_counter()
            step(bf16)
            times[bf16].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    from noduleclip.model import NoduleClipLoss, create_model
    from noduleclip.model.model import LoraSettings
    from noduleclip.train.config import native_bf16

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny backbone")
    parser.add_argument("--nodules", type=int, default=8, help="nodules per training step (default 8: the demo's)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    backbone, size, blocks = ("tiny", 28, 1) if args.quick else ("dinov2-s+minilm", 112, 2)
    torch.manual_seed(0)
    model = create_model(backbone, "lora", image_size=size, lora=LoraSettings(image_blocks=blocks),
                         random_init=backbone == "tiny")
    model.train()
    views = torch.rand(args.nodules, 9, 50, 50)
    texts = ["Spiculated well marginated lung nodule measuring 17 x 13 mm with part-solid consistency, airway "
             "cut-off, converging vessels, attachment to the pleura and an irregular shape."] * args.nodules
    labels = torch.tensor([0, 1] * (args.nodules // 2) + [0] * (args.nodules % 2))
    prefix = model.image_prefix(views)
    loss_fn = NoduleClipLoss()

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = model(None, text=model.tokenize(texts), prefix=prefix)
        loss_fn(output, labels).total.backward()
        model.zero_grad(set_to_none=True)

    def frozen_blocks(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model.image_prefix(views).float()

    print(f"{backbone} at {size} px, LoRA in the top {blocks} image blocks, {args.nodules} nodules x 9 views; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; native bf16: {native_bf16()}")
    print(f"{'part':<36} {'float32 s':>10} {'bf16 s':>8} {'ratio':>7}")
    for name, work in (("training step (both towers, loss)", step),
                       ("frozen image blocks (once a nodule)", frozen_blocks)):
        best = _best(work, args.repeats)
        print(f"{name:<36} {best[False]:>10.3f} {best[True]:>8.3f} {best[False] / best[True]:>6.2f}x")


if __name__ == "__main__":
    main()
