"""A CPU training step of the demo's model: torch's dropout and attention kernels against ours.

    .venv/bin/python benchmarks/training_step.py            # dinov2-s+minilm at 112 px, bf16, LoRA in the top 2
                                                            # and 3 blocks
    .venv/bin/python benchmarks/training_step.py --quick    # the tiny backbone (a smoke run)
    .venv/bin/python benchmarks/training_step.py --text-blocks  # the demo's step with LoRA in every text block
                                                            # against the top two and the top one

Two things make a bf16 training step on a CPU slow that have nothing to do with the matrix products:
torch's dropout draws its mask with `bernoulli_` (one random number per element; LoRA's dropout masks
cover every token of nine views three times a block), and flash attention's bf16 backward pass is
about three times slower there than the math kernel's. The trainer uses `FastDropout` (16 random bits
per element) and the math attention kernel for its bf16 CPU steps. Every variant runs in this process
on the same model and inputs, interleaved, best of several repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def _set_dropout(model: nn.Module, fast: bool) -> None:
    from noduleclip.model.dropout import FastDropout, use_fast_dropout

    if fast:
        use_fast_dropout(model)
        return
    for parent in list(model.modules()):  # back to torch's dropout, the same probabilities
        for name, child in list(parent.named_children()):
            if isinstance(child, FastDropout):
                setattr(parent, name, nn.Dropout(child.p))


def _interleaved_best(steps: dict, repeats: int) -> dict[str, float]:
    """Each named step once to warm up, then `repeats` rounds of all of them in turn (so that a busy moment of the
    machine hits every one); the best seconds of each."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def _print_speed_ups(best: dict[str, float], reference: str, title: str, width: int) -> None:
    print(f"\n{title}")
    print(f"{'':<{width}} {'s/step':>7} {'speed-up':>9}")
    for name, seconds in best.items():
        print(f"{name:<{width}} {seconds:>7.3f} {best[reference] / seconds:>8.2f}x")


TEXTS = ("Spiculated well marginated lung nodule measuring 17 x 13 mm with part-solid consistency, airway cut-off, "
         "converging vessels, attachment to the pleura and an irregular shape.")


def text_blocks(backbone: str, size: int, nodules: int, repeats: int) -> None:
    """The demo's training step (LoRA in the top image block, rank 8) with LoRA in every text block, the top two and
    the top one: below the adapted blocks the backward pass stops. float32 and, where native, bf16; interleaved."""
    from noduleclip.model import NoduleClipLoss, create_model
    from noduleclip.model.model import LoraSettings
    from noduleclip.train.config import native_bf16

    views = torch.rand(nodules, 9, 50, 50, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1] * (nodules // 2) + [0] * (nodules % 2))
    loss_fn = NoduleClipLoss()
    models = {}
    for name, top in (("every text block (the paper)", None), ("the top two", 2), ("the top one", 1)):
        torch.manual_seed(0)
        models[name] = create_model(backbone, "lora", image_size=size, random_init=backbone == "tiny",
                                    lora=LoraSettings(rank=8, alpha=8.0, image_blocks=1, text_blocks=top)).train()
    reference_model = next(iter(models.values()))
    prefix = reference_model.image_prefix(views)
    tokens = reference_model.tokenize([TEXTS] * nodules)
    print(f"{backbone} at {size} px, {nodules} nodules x 9 views, LoRA rank 8 in the top image block; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    for precision in ("float32", "bf16") if native_bf16() else ("float32",):
        def step(model, precision=precision) -> None:
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
            kernel = sdpa_kernel(SDPBackend.MATH) if precision == "bf16" else contextlib.nullcontext()
            with autocast, kernel:
                output = model(None, text=tokens, prefix=prefix)
            loss_fn(output, labels).total.backward()
            model.zero_grad(set_to_none=True)

        best = _interleaved_best({name: (lambda model=model: step(model)) for name, model in models.items()}, repeats)
        _print_speed_ups(best, "every text block (the paper)", f"{precision}: LoRA in", 30)


def main(argv: list[str] | None = None) -> None:
    from noduleclip.model import NoduleClipLoss, create_model
    from noduleclip.model.model import LoraSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny backbone")
    parser.add_argument("--text-blocks", action="store_true", help="LoRA in every text block against the top ones")
    parser.add_argument("--nodules", type=int, default=8, help="nodules per training step (default 8: the demo's)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    backbone, size, block_counts = ("tiny", 28, (1,)) if args.quick else ("dinov2-s+minilm", 112, (2, 3))
    if args.text_blocks:
        text_blocks(backbone, size, args.nodules, args.repeats)
        return
    views = torch.rand(args.nodules, 9, 50, 50, generator=torch.Generator().manual_seed(0))
    texts = [TEXTS] * args.nodules
    labels = torch.tensor([0, 1] * (args.nodules // 2) + [0] * (args.nodules % 2))
    loss_fn = NoduleClipLoss()
    variants = {  # name: (fast dropout, math attention)
        "torch dropout, default attention": (False, False),
        "fast dropout, default attention": (True, False),
        "torch dropout, math attention": (False, True),
        "fast dropout, math attention (ours)": (True, True),
    }
    print(f"{backbone} at {size} px, bf16 autocast, {args.nodules} nodules x 9 views; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for blocks in block_counts:
        torch.manual_seed(0)
        model = create_model(backbone, "lora", image_size=size,
                             lora=LoraSettings(rank=8, alpha=8.0, image_blocks=blocks), random_init=backbone == "tiny")
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prefix = model.image_prefix(views).float()
        tokens = model.tokenize(texts)

        def step(fast: bool, math: bool, model=model, tokens=tokens, prefix=prefix) -> None:
            _set_dropout(model, fast)
            kernel = sdpa_kernel(SDPBackend.MATH) if math else contextlib.nullcontext()
            with torch.autocast("cpu", dtype=torch.bfloat16), kernel:
                output = model(None, text=tokens, prefix=prefix)
            loss_fn(output, labels).total.backward()
            model.zero_grad(set_to_none=True)

        best = _interleaved_best({name: (lambda flags=flags: step(*flags)) for name, flags in variants.items()},
                                 args.repeats)
        _print_speed_ups(best, "torch dropout, default attention", f"LoRA in the top {blocks} image block(s)", 38)


if __name__ == "__main__":
    main()
