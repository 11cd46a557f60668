"""Supervised semantic heads: a classifier per categorical feature on the image embedding, trained beside the
contrastive loss from the radiologists' features, saved with the model."""

import pytest
import torch
import torch.nn.functional as F

from helpers import BASE, comparable_log
from noduleclip.data.manifest import NoduleRecord
from noduleclip.errors import InputError
from noduleclip.model import NoduleClipLoss, create_model, load_model, save_model
from noduleclip.model.losses import SemanticLoss
from noduleclip.semantics.schema import get_feature, head_features
from noduleclip.train import TrainConfig, train_run
from noduleclip.train.dataset import NoduleDataset


def test_the_semantic_loss_is_the_mean_of_each_heads_cross_entropy_over_known_values():
    generator = torch.Generator().manual_seed(0)
    logits = {"margins": torch.randn(4, 4, generator=generator), "shape": torch.randn(4, 2, generator=generator),
              "calcification": torch.randn(4, 2, generator=generator)}
    targets = torch.tensor([[0, 1, -1], [3, -1, -1], [-1, 0, -1], [2, 1, -1]])  # calcification never known
    by_hand = (F.cross_entropy(logits["margins"][[0, 1, 3]], torch.tensor([0, 3, 2]))
               + F.cross_entropy(logits["shape"][[0, 2, 3]], torch.tensor([1, 0, 1]))) / 2
    assert SemanticLoss()(logits, targets).item() == pytest.approx(by_hand.item(), rel=1e-6)
    nothing = {k: v.clone().requires_grad_() for k, v in logits.items()}
    zero = SemanticLoss()(nothing, torch.full((4, 3), -1))
    assert zero.item() == 0.0 and zero.requires_grad


def test_dataset_items_carry_each_heads_class_index_and_minus_one_when_unknown():
    records = [NoduleRecord(patient_id="p", nodule_id=f"n{i}", image="x.nii.gz", label=1, row=i + 2, features=f)
               for i, f in enumerate([{"margins": "spiculated", "shape": "round"}, {"shape": "irregular"}, {}])]
    heads = ("margins", "shape")
    dataset = NoduleDataset(torch.zeros(3, 9, 50, 50), records, with_text=False, semantic_heads=heads)
    margins, shape = get_feature("margins"), get_feature("shape")
    assert dataset[0]["semantic"].tolist() == [margins.values.index("spiculated"), shape.values.index("round")]
    assert dataset[1]["semantic"].tolist() == [-1, shape.values.index("irregular")]
    assert dataset[2]["semantic"].tolist() == [-1, -1]
    assert NoduleDataset(torch.zeros(3, 9, 50, 50), records, with_text=False)[0]["semantic"].shape == (0,)


def test_heads_have_one_output_per_value_learn_from_the_loss_and_survive_save_and_load(tmp_path):
    settings = TrainConfig(semantic_weight=0.5).validate().model_settings()
    assert settings["semantic_heads"] == tuple(f.name for f in head_features())
    assert TrainConfig().model_settings()["semantic_heads"] == ()
    with pytest.raises(InputError, match="semantic weight"):
        TrainConfig(semantic_weight=-1.0).validate()
    model = create_model("tiny", semantic_heads=("margins", "consistency"))
    views = torch.rand(4, 9, 50, 50, generator=torch.Generator().manual_seed(1))
    output = model(views)
    assert {k: v.shape for k, v in output.semantic_logits.items()} == {
        "margins": (4, len(get_feature("margins").values)), "consistency": (4, len(get_feature("consistency").values))}
    # the heads learn: a few steps on the semantic loss alone fit four nodules' margins
    targets = torch.tensor([[0, -1], [1, -1], [2, -1], [3, -1]])
    loss_fn = NoduleClipLoss(clip_weight=0, image_weight=0, text_weight=0, semantic_weight=1.0)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.eval()  # no dropout: the fit is deterministic
    first = None
    for _ in range(40):
        loss = loss_fn(model(views), torch.full((4,), -1), semantic=targets)
        first = loss.semantic.item() if first is None else first
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
    assert loss.semantic.item() < 0.1 * first  # from chance, ln 5 = 1.61
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.semantic_heads == ("margins", "consistency")
    with torch.inference_mode():
        for name, logits in model(views).semantic_logits.items():
            assert torch.allclose(loaded(views).semantic_logits[name], logits, atol=1e-6)


def test_a_run_with_semantic_heads_logs_their_loss_and_trains_otherwise(tiny_run, tiny_cohort, tmp_path):
    config = TrainConfig(**{**BASE, "epochs": 1, "semantic_weight": 1.0}, cache=str(tiny_cohort.cache))
    result = train_run(tiny_cohort.manifest, tmp_path / "run", config)
    epochs = [e for e in comparable_log(result.run) if e["event"] == "epoch"]
    plain = [e for e in comparable_log(tiny_run.run) if e["event"] == "epoch"]
    assert all(e["train"]["semantic"] > 0 for e in epochs) and "semantic" not in plain[0]["train"]
    # the total is the plain terms plus the weighted semantic term: each epoch's mean obeys the same sum
    for e in epochs:
        parts = e["train"]["clip"] + e["train"]["image"] + e["train"]["text"] + e["train"]["semantic"]
        assert e["train"]["total"] == pytest.approx(parts, rel=1e-5)
    model = load_model(result.run / "fold_0" / "best")
    assert model.config.semantic_heads == config.semantic_heads() and model.semantic_heads is not None
