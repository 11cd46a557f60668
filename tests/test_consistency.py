"""The consistency loss: two versions of each nodule (re-rendered or turned) are asked to agree."""

from __future__ import annotations

import pytest
import torch

from helpers import BASE, comparable_log
from noduleclip.data import NoduleRecord
from noduleclip.errors import InputError
from noduleclip.model.losses import ConsistencyLoss, NoduleClipLoss
from noduleclip.model.model import ModelOutput
from noduleclip.train import TrainConfig, train_run
from noduleclip.train.dataset import NoduleDataset


def _records(n: int) -> list[NoduleRecord]:
    return [NoduleRecord(patient_id=f"P{i}", nodule_id=f"N{i}", image="x.nii.gz", label=i % 2, row=i)
            for i in range(n)]


def _output(logits: torch.Tensor, embeds: torch.Tensor) -> ModelOutput:
    return ModelOutput(image_embeds=embeds, view_attention=torch.full((len(logits), 9), 1 / 9), image_logits=logits)


def test_the_loss_is_zero_for_agreeing_versions_and_grows_with_their_disagreement():
    loss = ConsistencyLoss()
    logits = torch.tensor([[0.2, 1.0], [1.5, -0.5]])
    embeds = torch.nn.functional.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert float(loss(logits, logits, embeds, embeds)) == pytest.approx(0.0, abs=1e-6)
    # log-odds 0.8 and -2.0 against 0.8 + 1 and -2.0 - 1: squared differences 1 and 1
    shifted = logits + torch.tensor([[0.0, 1.0], [0.5, -0.5]])
    assert float(loss(logits, shifted, embeds, embeds)) == pytest.approx(1.0, abs=1e-6)
    opposite = -embeds  # cosine -1: 1 - cosine = 2
    assert float(loss(logits, logits, embeds, opposite)) == pytest.approx(2.0, abs=1e-6)
    a = logits.clone().requires_grad_(True)
    b = shifted.clone().requires_grad_(True)
    loss(a, b, embeds, embeds).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0  # both versions are pulled together


def test_the_total_adds_the_weighted_term_only_with_a_second_version():
    logits = torch.tensor([[0.2, 1.0], [1.5, -0.5]])
    embeds = torch.nn.functional.normalize(torch.ones(2, 8), dim=-1)
    first, second = _output(logits, embeds), _output(logits + torch.tensor([[0.0, 1.0], [0.0, 1.0]]), embeds)
    labels = torch.tensor([1, 0])
    plain = NoduleClipLoss(consistency_weight=3.0)(first, labels)
    paired = NoduleClipLoss(consistency_weight=3.0)(first, labels, pair=second)
    assert plain.consistency is None and paired.consistency == pytest.approx(1.0)
    assert float(paired.total - plain.total) == pytest.approx(3.0, abs=1e-6)
    assert "consistency" in paired.as_floats() and "consistency" not in plain.as_floats()


def test_the_second_version_is_another_version_of_the_same_nodule_and_leaves_the_first_as_it_was():
    versions = torch.arange(6 * 4 * 9 * 2 * 2, dtype=torch.float32).reshape(6, 4, 9, 2, 2)  # every version distinct
    records = _records(6)
    plain = NoduleDataset(versions, records, seed=3, variants=True, with_text=False)
    paired = NoduleDataset(versions, records, seed=3, variants=True, with_text=False, pairs=True)
    for epoch in range(3):
        plain.set_epoch(epoch)
        paired.set_epoch(epoch)
        for i in range(6):
            item = paired[i]
            assert torch.equal(item["views"], plain[i]["views"])  # the first draw is unchanged by pairing
            first = [v for v in range(4) if torch.equal(item["views"], versions[i, v])]
            second = [v for v in range(4) if torch.equal(item["second_views"], versions[i, v])]
            assert len(first) == len(second) == 1 and first != second  # another version, of the same nodule
    assert "second_views" not in plain[0]


def test_turned_views_get_other_turns_as_their_second_version():
    views = torch.rand(4, 9, 6, 6, generator=torch.Generator().manual_seed(1))
    data = NoduleDataset(views, _records(4), augment_images=True, with_text=False, pairs=True)
    differ = 0
    for i in range(4):
        item = data[i]
        # the same nine planes up to turns: each plane's sorted pixels are equal
        assert torch.equal(item["views"].flatten(1).sort().values, item["second_views"].flatten(1).sort().values)
        differ += not torch.equal(item["views"], item["second_views"])
    assert differ >= 3


def test_training_with_consistency_logs_the_term_and_needs_augmentation(tiny_cohort, tmp_path):
    with pytest.raises(InputError, match="consistency loss compares two versions"):
        TrainConfig(**BASE, consistency_weight=1.0).validate()
    config = TrainConfig(**{**BASE, "epochs": 1, "lora_image_blocks": 1, "image_augmentation": True,
                            "consistency_weight": 1.0}, cache=str(tiny_cohort.cache))
    result = train_run(tiny_cohort.manifest, tmp_path / "run", config)
    epochs = [e for e in comparable_log(result.run) if e["event"] == "epoch"]
    assert epochs and all(e["train"]["consistency"] > 0 for e in epochs)
