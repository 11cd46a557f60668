"""The two real-CT levers of the model: a zoomed field of view, and a size head that regresses log-diameter."""

import math

import pytest
import torch
import torch.nn.functional as F

from noduleclip.data.manifest import NoduleRecord
from noduleclip.errors import InputError
from noduleclip.model import (
    ModelConfig,
    NoduleClipLoss,
    SizeLoss,
    ViewTransform,
    create_model,
    load_model,
    log_diameter_target,
    save_model,
)
from noduleclip.train.config import TrainConfig
from noduleclip.train.dataset import NoduleDataset, record_diameter

TEXTS = ["Solid nodule.", "Spiculated nodule.", "No findings.", "Calcified nodule."]


@pytest.fixture
def views():
    return torch.rand(4, 9, 50, 50, generator=torch.Generator().manual_seed(1))


def test_field_of_view_sends_only_the_central_pixels_to_the_encoder(views):
    zoom = ViewTransform(28, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), field_of_view=24)
    changed = views.clone()
    changed[..., :13, :] = 0.0  # rows 0..12 lie outside the central 24 (13..36): invisible to the zoom
    changed[..., :, 37:] = 1.0
    assert torch.equal(zoom(views), zoom(changed))
    whole = ViewTransform(28, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert not torch.equal(whole(views), whole(changed))
    # the central 24 x 24 pixels, resized to 28 and normalised, as a person would compute them
    centre = views[:, :, 13:37, 13:37].reshape(36, 1, 24, 24)
    expected = (F.interpolate(centre, size=(28, 28), mode="bilinear", align_corners=False) - 0.5) / 0.25
    assert torch.allclose(zoom(views), expected.expand(-1, 3, -1, -1), atol=1e-5)


def test_zoomed_model_ignores_the_view_border_and_saves_its_field_of_view(tmp_path, views):
    model = create_model("tiny", field_of_view=24).eval()
    changed = views.clone()
    changed[..., :5, :] = 1.0
    with torch.inference_mode():
        assert torch.allclose(model.predict_risk(views), model.predict_risk(changed))
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.field_of_view == 24
    with torch.inference_mode():
        assert torch.allclose(loaded.predict_risk(changed), model.predict_risk(changed))


def test_log_diameter_target_is_ln_of_tenths_of_a_centimetre_and_nan_when_unknown():
    target = log_diameter_target([10.0, 20.0, 5.0, float("nan"), 0.0])
    assert target[0] == 0.0
    assert target[1].item() == pytest.approx(math.log(2.0))
    assert target[2].item() == pytest.approx(math.log(0.5))
    assert torch.isnan(target[3]) and torch.isnan(target[4])


def test_size_loss_leaves_out_unknown_diameters_and_is_zero_without_any():
    predicted = torch.tensor([0.0, 1.0, 5.0], requires_grad=True)
    loss = SizeLoss()(predicted, torch.tensor([0.5, 1.0, float("nan")]))
    assert loss.item() == pytest.approx(0.125)  # (0.25 + 0) / 2: the unknown third is not counted
    loss.backward()
    assert predicted.grad[2] == 0.0
    none = SizeLoss()(predicted, torch.full((3,), float("nan")))
    assert none.item() == 0.0 and none.requires_grad


def test_size_head_adds_its_weighted_error_to_the_total_and_trains_only_with_a_weight(views):
    model = create_model("tiny", size_head=True)
    output = model(views, TEXTS)
    assert output.log_diameter.shape == (4,)
    labels, sizes = torch.tensor([1, 0, -1, 1]), torch.tensor([0.2, -0.5, 0.9, float("nan")])
    plain = NoduleClipLoss()(output, labels, sizes)
    weighted = NoduleClipLoss(size_weight=2.0)(output, labels, sizes)
    assert weighted.size.item() == pytest.approx(plain.size.item())
    assert weighted.total.item() == pytest.approx(plain.total.item() + 2.0 * plain.size.item(), rel=1e-5)
    assert "size" in weighted.as_floats()
    weighted.total.backward()
    assert model.size_head.weight.grad is not None and model.size_head.weight.grad.abs().sum() > 0
    assert create_model("tiny").size_head is None  # no head unless asked for: saved runs keep their format


@pytest.mark.slow  # about 45 s on 2 CPU cores
def test_a_few_steps_on_size_alone_fit_the_diameters(views):
    torch.manual_seed(0)
    model = create_model("tiny", tuning="probe", size_head=True)
    sizes = torch.tensor([-1.0, -0.3, 0.4, 1.2])
    loss_fn = NoduleClipLoss(clip_weight=0.0, image_weight=0.0, text_weight=0.0, size_weight=1.0)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(60):
        loss = loss_fn(model(views, TEXTS), torch.tensor([-1, -1, -1, -1]), sizes)
        first = loss.size.item() if first is None else first
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
    assert loss.size.item() < 0.2 * first


def test_dataset_items_carry_the_size_target_from_the_manifest_diameter():
    records = [NoduleRecord(patient_id="p", nodule_id=f"n{i}", image="x.nii.gz", label=1, row=i + 2,
                            features={"long_diameter_mm": d} if d else {}) for i, d in enumerate([20.0, None])]
    assert record_diameter(records[0]) == pytest.approx(20.0)
    assert math.isnan(record_diameter(records[1]))
    dataset = NoduleDataset(torch.zeros(2, 9, 50, 50), records, with_text=False)
    assert dataset[0]["log_diameter"] == pytest.approx(math.log(2.0))
    assert math.isnan(dataset[1]["log_diameter"])


def test_training_options_pass_the_levers_to_the_model_and_refuse_bad_values():
    settings = TrainConfig(field_of_view=32, size_weight=0.5).validate().model_settings()
    assert settings["field_of_view"] == 32 and settings["size_head"] is True
    assert TrainConfig().model_settings()["size_head"] is False
    assert TrainConfig(lora_text_blocks=2).validate().model_settings()["lora"].text_blocks == 2
    for bad in (dict(field_of_view=4), dict(field_of_view=80), dict(size_weight=-1.0), dict(lora_text_blocks=0)):
        with pytest.raises(InputError, match="fix the training option"):
            TrainConfig(**bad).validate()


def test_a_model_config_saved_before_the_levers_existed_still_loads():
    old = ModelConfig().to_dict()
    del old["field_of_view"], old["size_head"], old["lora"]["text_blocks"]
    config = ModelConfig.from_dict(old)
    assert config.field_of_view is None and config.size_head is False and config.lora.text_blocks is None


def test_two_probes_differ_only_in_what_changes_their_result():
    probe = TrainConfig(tuning="probe", lora_image_blocks=2, lora_rank=2)
    assert probe.differences(TrainConfig(tuning="probe", lora_image_blocks=1, lora_rank=8)) == []
    assert probe.differences(TrainConfig(tuning="probe", field_of_view=24)) == ["field_of_view: None -> 24"]
    lora = TrainConfig(tuning="lora", lora_image_blocks=2)
    assert lora.differences(TrainConfig(tuning="lora", lora_image_blocks=1)) == ["lora_image_blocks: 2 -> 1"]
    assert lora.differences(TrainConfig(tuning="lora", lora_image_blocks=2, lora_text_blocks=2)) == [
        "lora_text_blocks: None -> 2"]
    assert probe.differences(TrainConfig(tuning="probe", lora_image_blocks=2, lora_rank=2, lora_text_blocks=1)) == []


def test_pictures_mark_the_part_of_each_view_that_a_zoomed_model_reads(tmp_path):
    import numpy as np
    from matplotlib.patches import Rectangle

    from noduleclip.plots import draw_views, field_of_view_box, plt
    from noduleclip.predict.api import NodulePrediction
    from noduleclip.predict.panel import draw_panel
    from noduleclip.preprocess.views import PLANE_NAMES

    # the box covers exactly the pixels the view transform keeps (13..36 of 50 for 24)
    assert field_of_view_box(50, 24) == (12.5, 12.5, 24.0)
    fig, axes = plt.subplots(3, 3)
    draw_views(axes, np.zeros((9, 50, 50)), field_of_view=24)
    boxes = [[p for p in ax.patches if isinstance(p, Rectangle)] for ax in axes.ravel()]
    assert all(len(b) == 1 and b[0].get_xy() == (12.5, 12.5) and b[0].get_width() == 24 for b in boxes)
    plt.close(fig)
    fig, axes = plt.subplots(3, 3)
    draw_views(axes, np.zeros((9, 50, 50)))
    assert not any(ax.patches for ax in axes.ravel())
    plt.close(fig)

    views = np.random.default_rng(0).random((9, 50, 50))
    def panel(fov, name):
        prediction = NodulePrediction("n1", (0.0, 0.0, 0.0), 0.5, 0.5, [0.5], None, {}, {},
                                      {n: 1 / 9 for n in PLANE_NAMES}, views, field_of_view=fov)
        assert prediction.to_dict()["field_of_view_mm"] == fov
        return plt.imread(draw_panel(prediction, tmp_path / name))
    assert not np.array_equal(panel(24, "zoom.png"), panel(None, "whole.png"))
