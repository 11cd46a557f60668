"""Losses against hand computations on small tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from noduleclip.model import ClipLoss, MalignancyLoss, ModelOutput, NoduleClipLoss


def unit(rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def hand_cross_entropy(row, target, smoothing):
    """(1 - s) * -log p[target] + s * mean_k(-log p[k]), written out with math."""
    total = sum(math.exp(v) for v in row)
    log_p = [v - math.log(total) for v in row]
    return (1 - smoothing) * -log_p[target] + smoothing * -sum(log_p) / len(row)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_clip_loss_equals_the_symmetric_infonce_computed_by_hand(smoothing):
    image = unit([[1.0, 0.0, 0.2], [0.1, 1.0, 0.0], [0.3, 0.3, 1.0]])
    text = unit([[0.9, 0.1, 0.0], [0.0, 1.0, 0.5], [0.2, 0.0, 1.0]])
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    sim = [[scale.item() * float(image[i] @ text[j]) for j in range(3)] for i in range(3)]
    image_to_text = sum(hand_cross_entropy(sim[i], i, smoothing) for i in range(3)) / 3
    text_to_image = sum(hand_cross_entropy([sim[i][j] for i in range(3)], j, smoothing) for j in range(3)) / 3
    loss = ClipLoss(label_smoothing=smoothing)(image, text, scale)
    assert loss.item() == pytest.approx((image_to_text + text_to_image) / 2, rel=1e-9)


def test_clip_loss_is_lower_when_pairs_match():
    text = unit([[1.0, 0.0], [0.0, 1.0]])
    scale = torch.tensor(10.0, dtype=torch.float64)
    assert ClipLoss()(text, text, scale) < ClipLoss()(text.flip(0), text, scale)


def test_malignancy_loss_leaves_out_unknown_labels():
    logits = torch.tensor([[2.0, -1.0], [0.0, 3.0], [5.0, 5.0]], requires_grad=True)
    loss = MalignancyLoss()(logits, torch.tensor([0, -1, 1]))
    expected = (hand_cross_entropy([2.0, -1.0], 0, 0) + hand_cross_entropy([5.0, 5.0], 1, 0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.equal(logits.grad[1], torch.zeros(2))


def test_a_batch_without_labels_gives_zero_not_nan():
    logits = torch.randn(3, 2, requires_grad=True)
    loss = MalignancyLoss()(logits, torch.tensor([-1, -1, -1]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 2))


def test_total_is_the_weighted_sum_of_the_three_terms():
    image = unit([[1.0, 0.0], [0.0, 1.0]]).float()
    text = unit([[0.8, 0.6], [0.6, 0.8]]).float()
    output = ModelOutput(image_embeds=image, view_attention=torch.full((2, 9), 1 / 9),
                         image_logits=torch.tensor([[1.0, 0.0], [0.0, 2.0]]), text_embeds=text,
                         text_logits=torch.tensor([[0.5, 0.5], [3.0, 0.0]]), logit_scale=torch.tensor(14.0))
    labels = torch.tensor([0, 1])
    parts = NoduleClipLoss()(output, labels)
    weighted = NoduleClipLoss(clip_weight=2.0, image_weight=0.5, text_weight=0.0)(output, labels)
    assert parts.total.item() == pytest.approx(parts.clip.item() + parts.image.item() + parts.text.item())
    assert weighted.total.item() == pytest.approx(2 * parts.clip.item() + 0.5 * parts.image.item())
    assert parts.image.item() == pytest.approx(F.cross_entropy(output.image_logits, labels).item())
    assert set(parts.as_floats()) == {"total", "clip", "image", "text"}
