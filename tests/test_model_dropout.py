"""FastDropout: torch's dropout distribution from cheaper random bits, and the model using it everywhere."""

import pytest
import torch
from torch import nn

from noduleclip.model import create_model
from noduleclip.model.dropout import FastDropout, use_fast_dropout
from noduleclip.model.model import LoraSettings

N = 1_000_000


def _apply(p: float, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return FastDropout(p).train()(x)


@pytest.mark.parametrize("p", [0.25, 0.1, 0.5])
def test_drops_a_fraction_p_and_keeps_the_mean(p):
    y = _apply(p, torch.ones(N))
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 4 * (p * (1 - p) / N) ** 0.5 + 1e-4  # the binomial spread (and the 1/65536 step)
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, kept[0].item())) and abs(kept[0].item() * (1 - p) - 1) < 1e-4
    assert abs(y.mean().item() - 1.0) < 0.005


def test_the_two_elements_of_a_random_word_are_dropped_independently():
    y = _apply(0.25, torch.ones(N)).view(-1, 2) == 0  # neighbours share one 32-bit draw
    both = (y[:, 0] & y[:, 1]).float().mean().item()
    assert abs(both - 0.25 ** 2) < 0.003
    assert abs(y[:, 0].float().mean().item() - y[:, 1].float().mean().item()) < 0.006


def test_masks_follow_the_seed_keep_the_shape_and_dtype_and_eval_is_the_identity():
    x = torch.randn(7, 9, 13, dtype=torch.bfloat16)  # odd element count
    a, b, c = _apply(0.25, x, 1), _apply(0.25, x, 1), _apply(0.25, x, 2)
    assert a.shape == x.shape and a.dtype == torch.bfloat16
    assert torch.equal(a, b) and not torch.equal(a, c)
    layer = FastDropout(0.25).eval()
    assert layer(x) is x and FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError):
        FastDropout(1.0)


def test_the_model_has_no_torch_dropout_left_and_keeps_every_probability():
    reference = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.3), nn.ModuleDict({"a": nn.Dropout(0.25)}))
    assert use_fast_dropout(reference) == 2
    assert [m.p for m in reference.modules() if isinstance(m, FastDropout)] == [0.3, 0.25]
    model = create_model("tiny", "lora", lora=LoraSettings(dropout=0.25))
    assert not any(type(m) is nn.Dropout for m in model.modules())
    lora = [m for name, m in model.named_modules() if "lora_dropout" in name and isinstance(m, FastDropout)]
    assert lora and all(m.p == 0.25 for m in lora)
