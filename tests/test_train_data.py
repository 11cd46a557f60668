"""Training parts on their own: samplers, the dataset's texts, the resume file, the run log, the configuration."""

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from noduleclip.data.manifest import NoduleRecord
from noduleclip.errors import InputError
from noduleclip.model import NoduleClipLoss, create_model
from noduleclip.model.symmetry import dihedral_views
from noduleclip.train.config import TrainConfig
from noduleclip.train.dataset import (
    EpochBatches,
    NoduleDataset,
    augmented_variants,
    class_weights,
    semantic_weights,
)
from noduleclip.train.resume import RunLog, load_resume_state, save_resume_state


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and steadiest on a busy machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_semantic_weights_sum_log_inverse_frequencies_of_known_values():
    features = [
        {"margins": "smooth", "consistency": "solid"},
        {"margins": "smooth", "consistency": "solid"},
        {"margins": "smooth"},
        {"margins": "spiculated", "consistency": "part-solid", "suspicion": "high", "long_diameter_mm": 9.0},
    ]
    w = semantic_weights(features)
    # margins: smooth 3/4, spiculated 1/4; consistency (3 known): solid 2/3, part-solid 1/3
    assert w[0] == pytest.approx(math.log(4 / 3) + math.log(3 / 2))
    assert w[1] == w[0]
    assert w[2] == pytest.approx(math.log(4 / 3))  # unknown consistency adds nothing
    assert w[3] == pytest.approx(math.log(4) + math.log(3))  # suspicion and diameters are left out
    assert w[3] > w[0] > w[2] > 0


def test_semantic_weights_keep_every_nodule_drawable():
    w = semantic_weights([{"margins": "smooth"}, {"margins": "smooth"}, {"margins": "lobulated"}, {}])
    assert np.all(w > 0)
    assert w[0] == w[1] == w[3] == pytest.approx(math.log(3 / 2))  # zero weights raised to the smallest positive
    assert np.array_equal(semantic_weights([{}, {}]), [1.0, 1.0])  # no semantic columns: uniform


def test_class_weights_balance_labels_with_unknown_as_a_class():
    w = class_weights([1, 0, 0, 0, -1])
    assert w.tolist() == pytest.approx([1.0, 1 / 3, 1 / 3, 1 / 3, 1.0])


def test_epoch_batches_are_full_seeded_by_epoch_and_follow_the_weights():
    batches = EpochBatches(10, 4, seed=3, fold=1)
    batches.set_epoch(0)
    first = list(batches)
    assert len(first) == len(batches) == 2 and all(len(b) == 4 for b in first)
    assert len({i for b in first for i in b}) == 8  # a shuffled pass: no repeats, the partial batch dropped
    assert list(batches) == first  # the same epoch draws the same order
    batches.set_epoch(1)
    assert list(batches) != first
    assert EpochBatches(10, 6, seed=0, fold=0, processes=4).batch_size == 4  # a multiple of the processes
    assert EpochBatches(3, 8, seed=0, fold=0).batch_size == 3  # never more than the data
    with pytest.raises(InputError):
        EpochBatches(3, 4, seed=0, fold=0, processes=4)  # 3 nodules cannot give 4 processes one each
    weights = np.array([1.0] * 9 + [30.0])
    weighted = EpochBatches(10, 5, seed=0, fold=0, weights=weights)
    drawn = Counter()
    for epoch in range(40):
        weighted.set_epoch(epoch)
        drawn.update(i for b in weighted for i in b)
    assert drawn[9] > 5 * max(drawn[i] for i in range(9))  # the heavy nodule dominates


def _record(row, label, **columns):
    return NoduleRecord(patient_id=f"P{row}", nodule_id=f"N{row}", image=Path("x.nii.gz"), label=label,
                        columns=columns, row=row)


def test_dataset_texts_change_with_the_epoch_only_when_augmented():
    records = [_record(2, 1, margins="spiculated", consistency="solid", pleural_attachment="present",
                       long_diameter_mm="14"), _record(3, None, margins="smooth", shape="round")]
    views = torch.zeros(2, 9, 50, 50)
    augmented = NoduleDataset(views, records, seed=0, fold=0, augment_text=True)
    texts = set()
    for epoch in range(8):
        augmented.set_epoch(epoch)
        texts.add(augmented[0]["text"])
    augmented.set_epoch(2)
    again = augmented[0]["text"]
    augmented.set_epoch(2)
    assert augmented[0]["text"] == again and len(texts) > 1
    plain = NoduleDataset(views, records, seed=0, fold=0, augment_text=False)
    plain_texts = set()
    for epoch in range(4):
        plain.set_epoch(epoch)
        plain_texts.add(plain[0]["text"])
    assert len(plain_texts) == 1 and "14" in plain_texts.pop()
    item = plain[1]
    assert item["label"] == -1 and item["index"] == 1 and item["views"].shape == (9, 50, 50)
    assert NoduleDataset(views, records, with_text=False)[0]["text"] == ""


def _square_symmetries(plane: torch.Tensor) -> list[torch.Tensor]:
    """The eight symmetries of a square plane, written out with numpy as an independent reference."""
    a = plane.numpy()
    turns = [np.rot90(a, k) for k in range(4)]
    return [torch.from_numpy(t.copy()) for t in turns + [np.fliplr(t) for t in turns]]


def test_dihedral_views_apply_each_planes_own_symmetry():
    generator = torch.Generator().manual_seed(0)
    views = torch.rand(2, 9, 6, 6, generator=generator)  # asymmetric planes: every symmetry gives a new plane
    codes = torch.arange(18).reshape(2, 9) % 8
    turned = dihedral_views(views, codes)
    for n in range(2):
        for j in range(9):
            assert torch.equal(turned[n, j], _square_symmetries(views[n, j])[int(codes[n, j])])
    assert torch.equal(dihedral_views(views, torch.zeros(2, 9, dtype=torch.long)), views)
    distinct = {tuple(_square_symmetries(views[0, 0])[c].flatten().tolist()) for c in range(8)}
    assert len(distinct) == 8


def test_image_augmentation_varies_with_the_epoch_and_repeats_exactly():
    records = [_record(2, 1), _record(3, 0)]
    views = torch.rand(2, 9, 8, 8, generator=torch.Generator().manual_seed(1))
    augmented = NoduleDataset(views, records, seed=0, fold=0, augment_text=False, augment_images=True)
    seen = []
    for epoch in range(4):
        augmented.set_epoch(epoch)
        item = augmented[0]["views"]
        # every plane is one of its own symmetries, and the values are the same ones
        assert all(any(torch.equal(item[j], s) for s in _square_symmetries(views[0, j])) for j in range(9))
        seen.append(item)
    assert not all(torch.equal(seen[0], other) for other in seen[1:])
    augmented.set_epoch(2)
    assert torch.equal(augmented[0]["views"], seen[2])
    plain = NoduleDataset(views, records, augment_text=False)
    assert torch.equal(plain[0]["views"], views[0])


def test_fixed_variants_start_with_the_views_and_an_epoch_reads_one_of_them():
    views = torch.rand(3, 9, 8, 8, generator=torch.Generator().manual_seed(2))
    variants = augmented_variants(views, 4, seed=5)
    assert len(variants) == 4 and torch.equal(variants[0], views)
    assert all(not torch.equal(v, views) for v in variants[1:])
    assert all(torch.equal(a, b) for a, b in zip(variants, augmented_variants(views, 4, seed=5), strict=True))
    stacked = torch.stack(variants, 1)  # (N, K, 9, S, S), as the frozen blocks' outputs are held
    data = NoduleDataset(stacked, [_record(r, 0) for r in range(3)], augment_text=False, variants=True)
    chosen = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        item = data[1]["views"]
        k = next(k for k in range(4) if torch.equal(item, variants[k][1]))
        chosen.add(k)
    assert chosen == {0, 1, 2, 3}


def _step(model, optimizer, seed):
    generator = torch.Generator().manual_seed(seed)
    views = torch.rand(4, 9, 50, 50, generator=generator)
    texts = ["spiculated nodule", "smooth round nodule", "ground glass nodule", "lobulated nodule"]
    torch.manual_seed(seed)
    loss = NoduleClipLoss()(model(views, texts), torch.tensor([1, 0, 0, 1]))
    loss.total.backward()
    optimizer.step()
    optimizer.zero_grad()


def _fresh(seed=0):
    torch.manual_seed(seed)
    model = create_model("tiny")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return model, optimizer, scheduler


def test_resume_file_restores_weights_optimizer_and_scheduler_exactly(tmp_path):
    model, optimizer, scheduler = _fresh()
    for seed in (1, 2):
        _step(model, optimizer, seed)
        scheduler.step()
    save_resume_state(tmp_path, model, optimizer, scheduler, {"epochs_done": 2, "best_monitor": 0.5})
    _step(model, optimizer, 3)
    scheduler.step()
    expected = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    restored, optimizer2, scheduler2 = _fresh(seed=99)  # other heads: everything must come from the file
    progress = load_resume_state(tmp_path, restored, optimizer2, scheduler2)
    assert progress == {"epochs_done": 2, "best_monitor": 0.5}
    assert scheduler2.get_last_lr() == pytest.approx([1e-2 / 3])
    _step(restored, optimizer2, 3)
    for name, param in restored.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, expected[name]), name
    assert load_resume_state(tmp_path / "none", *_fresh()) is None
    raw = (tmp_path / "state.safetensors").read_bytes()
    assert b"pickle" not in raw and b"noduleclip-resume" in raw


def test_run_log_rewind_drops_what_a_resumed_fold_writes_again(tmp_path):
    log = RunLog(tmp_path / "log.jsonl")
    for fold, epochs in ((0, 3), (1, 2)):
        for epoch in range(1, epochs + 1):
            log.append({"event": "epoch", "fold": fold, "epoch": epoch})
        if fold == 0:
            log.append({"event": "fold_end", "fold": 0})
    with open(log.path, "a") as handle:
        handle.write('{"event": "epoch", "fo')  # a line cut short by a kill
    log.rewind(1, 1)
    assert [(e["fold"], e.get("epoch")) for e in log.entries()] == [(0, 1), (0, 2), (0, 3), (0, None), (1, 1)]
    assert log.path.read_text().endswith("}\n")


def test_config_round_trips_and_names_the_settings_that_differ():
    config = TrainConfig(backbone="tiny", epochs=3, lr=2e-4)
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    other = TrainConfig(backbone="tiny", epochs=4, lr=2e-4, workers=3, cache="/elsewhere", progress=False)
    assert config.differences(other) == ["epochs: 3 -> 4"]  # speed/housekeeping settings are not compared
    with pytest.raises(InputError, match="sampler"):
        TrainConfig(sampler="rare").validate()
    with pytest.raises(InputError, match="unknown settings"):
        TrainConfig.from_dict({"epochs": 2, "warmup": 1})
