"""The image tower's trained top blocks: ours (last block for the class token alone) vs every token through every block.

    .venv/bin/python benchmarks/class_token.py           # dinov2-s+minilm at 112 px, LoRA in the top 2 and 4 blocks
    .venv/bin/python benchmarks/class_token.py --quick   # the tiny backbone (a smoke run)

A training step with LoRA in the top N image blocks runs only those blocks, on the cached output of the frozen
ones (`VisionTower.hidden_states` once, `finish` per step). Only the class token is pooled, so `finish` computes
the last block for that token alone. The reference is the same forward and backward with the last block run for
every token, as the transformers model does. Both run in this process on the same hidden states, interleaved,
best of several repeats; the two give the same embedding (tests/test_model.py checks it and the gradients).
"""

from __future__ import annotations

import argparse
import time

import torch


def _seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def compare(backbone: str, size: int, blocks: int, nodules: int, repeats: int) -> dict:
    from noduleclip.model import create_model
    from noduleclip.model.model import LoraSettings

    model = create_model(backbone, "lora", image_size=size, lora=LoraSettings(image_blocks=blocks),
                         random_init=backbone == "tiny")
    model.train()
    tower = model.vision
    start = len(tower.blocks) - blocks
    with torch.no_grad():
        hidden = tower.hidden_states(model.view_transform(torch.rand(nodules, 9, 50, 50)), start)

    def ours():
        tower.finish(hidden, start).square().sum().backward()

    def every_token():
        h = hidden
        for block in tower.blocks[start:]:
            h = block(h, None)
        tower.pool(h).square().sum().backward()

    ours(), every_token()  # warm-up
    ours_s, reference_s = [], []
    for _ in range(repeats):  # interleaved, so that a busy moment of the machine hits both
        ours_s.append(_seconds(ours))
        reference_s.append(_seconds(every_token))
    model.zero_grad(set_to_none=True)
    return {"blocks": blocks, "tokens": hidden.shape[1], "views": hidden.shape[0],
            "ours": min(ours_s), "reference": min(reference_s)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny backbone only")
    parser.add_argument("--nodules", type=int, default=8, help="nodules per step (default 8: the demo's batch)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    backbone, size, depths = ("tiny", 28, (1, 2)) if args.quick else ("dinov2-s+minilm", 112, (2, 4))
    print(f"{backbone} at {size} px, {args.nodules} nodules x 9 views per step, forward + backward of the top "
          f"blocks, best of {args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'LoRA blocks':>11} {'tokens':>7} {'ours s':>9} {'every-token s':>14} {'ratio':>7}")
    for blocks in depths:
        r = compare(backbone, size, blocks, args.nodules, args.repeats)
        print(f"{r['blocks']:>11} {r['tokens']:>7} {r['ours']:>9.3f} {r['reference']:>14.3f} "
              f"{r['reference'] / r['ours']:>6.2f}x")


if __name__ == "__main__":
    main()
