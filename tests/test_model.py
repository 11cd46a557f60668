"""The dual encoder on the tiny backbone: shapes, tuning modes, MIL, inference, save/load, errors."""

import json
import math

import pytest
import torch

from noduleclip.errors import InputError
from noduleclip.model import NoduleClipLoss, ViewTransform, character_tokenizer, create_model, load_model, save_model
from noduleclip.model.traced import TRACE_ENV

TEXTS = ["This nodule margin is poorly defined.", "There is calcification.", "No findings.", "Lobulation is marked."]


@pytest.fixture
def views():
    return torch.rand(4, 9, 50, 50, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def labels():
    return torch.tensor([1, 0, -1, 1])


def train_one_step(model, views, labels):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = NoduleClipLoss()(model(views, TEXTS), labels)
    loss.total.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss


def test_forward_gives_unit_embeddings_normalised_attention_and_finite_gradients(views, labels):
    model = create_model("tiny")
    output = model(views, TEXTS)
    assert output.image_embeds.shape == output.text_embeds.shape == (4, 256)
    assert torch.allclose(output.image_embeds.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(output.text_embeds.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert output.view_attention.shape == (4, 9)
    assert torch.allclose(output.view_attention.sum(-1), torch.ones(4), atol=1e-6)
    assert output.image_logits.shape == output.text_logits.shape == (4, 2)
    assert output.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    NoduleClipLoss()(output, labels).total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_lora_trains_only_adapters_and_heads_and_leaves_the_towers_unchanged(views, labels):
    model = create_model("tiny", tuning="lora")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and all(n.startswith(("vision.", "text.")) and "lora_" not in n for n in frozen)
    assert all("lora_" in n or not n.startswith(("vision.", "text.")) for n in trainable)
    assert sum("lora_" in n for n in trainable) == 2 * 2 * 3 * 2  # towers x layers x (q, k, v) x (A, B)
    loss = NoduleClipLoss()(model(views, TEXTS), labels)
    loss.total.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad <= trainable
    assert any("lora_B" in n and model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)
    lora_before = {n: model.get_parameter(n).detach().clone() for n in trainable if "lora_B" in n}
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    for name, before in frozen.items():
        assert torch.equal(model.get_parameter(name), before), name
    assert any(not torch.equal(model.get_parameter(n), b) for n, b in lora_before.items())


def test_tuning_modes_set_what_trains():
    lora, probe, finetune = (create_model("tiny", tuning=t) for t in ("lora", "probe", "finetune"))
    assert finetune.trainable_fraction() == 1.0
    assert 0 < probe.trainable_fraction() < lora.trainable_fraction() < 1
    assert not any(p.requires_grad for n, p in probe.named_parameters() if n.startswith(("vision.", "text.")))
    counted = sum(p.numel() for p in lora.parameters() if p.requires_grad) / sum(p.numel() for p in lora.parameters())
    assert lora.trainable_fraction() == pytest.approx(counted)


def test_pooled_embedding_does_not_depend_on_the_order_of_the_views(views):
    model = create_model("tiny").eval()
    order = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embeds, attention = model.encode_image(views)
        permuted_embeds, permuted_attention = model.encode_image(views[:, order])
    assert torch.allclose(embeds, permuted_embeds, atol=1e-6)
    assert torch.allclose(attention[:, order], permuted_attention, atol=1e-6)
    assert not torch.allclose(attention, attention[:, order])  # the weights do differ between views


def test_view_transform_resizes_and_normalises_a_grey_plane_into_three_channels():
    transform = ViewTransform(112, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    pixels = transform(torch.full((2, 9, 50, 50), 0.25))
    assert pixels.shape == (18, 3, 112, 112)
    expected = torch.tensor([(0.25 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)])
    assert torch.allclose(pixels[0, :, 50, 50], expected, atol=1e-5)


@pytest.mark.parametrize("tuning", ["lora", "probe", "finetune", "vision-only"])
def test_save_then_load_reproduces_the_outputs_exactly(tmp_path, views, labels, tuning, monkeypatch):
    # the towers as built: a vision-only load would otherwise read a traced tower, equal to 1e-6 but not to the bit
    # (tests/test_traced_tower.py holds it to that)
    monkeypatch.setenv(TRACE_ENV, "0")
    torch.manual_seed(0)
    model = create_model("tiny", tuning=tuning)
    train_one_step(model, views, labels)
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    model.eval()
    text = None if tuning == "vision-only" else TEXTS
    with torch.no_grad():
        before, after = model(views, text), loaded(views, text)
    assert torch.equal(before.image_embeds, after.image_embeds)
    assert torch.equal(before.image_logits, after.image_logits)
    if text is not None:
        assert torch.equal(before.text_embeds, after.text_embeds)
    from safetensors.torch import load_file
    saved = set(load_file(str(tmp_path / "model" / "model.safetensors")))
    tower_keys = {k for k in saved if k.startswith(("vision.", "text."))}
    if tuning in ("lora", "vision-only"):
        assert tower_keys and all("lora_" in k for k in tower_keys)
    elif tuning == "probe":
        assert not tower_keys
    else:
        assert "vision.model.embeddings.cls_token" in tower_keys
    document = json.loads((tmp_path / "model" / "model.json").read_text())
    assert document["config"]["random_init"] is True and "RANDOM" in document["warning"]


def test_load_refuses_a_folder_that_does_not_match(tmp_path, views, labels):
    model = create_model("tiny")
    save_model(model, tmp_path / "model")
    config_path = tmp_path / "model" / "model.json"
    document = json.loads(config_path.read_text())
    for change, words in [({"tuning": "probe"}, "does not fit"), ({"tower_seed": 7}, "differ"),
                          ({"backbone": "nope"}, "unknown backbone .nope."), ({"mil_hidden_dim": 64}, "wrong shape")]:
        config_path.write_text(json.dumps({**document, "config": {**document["config"], **change}}))
        with pytest.raises(InputError, match=words):
            load_model(tmp_path / "model")
    with pytest.raises(InputError, match="missing"):
        load_model(tmp_path / "absent")


def test_vision_only_has_no_text_path(views, labels):
    model = create_model("tiny", tuning="vision-only")
    assert model.text is None and not hasattr(model, "text_projection") and not hasattr(model, "logit_scale")
    assert not any(n.startswith("text") for n, _ in model.named_parameters())
    output = model(views, TEXTS)
    assert output.text_embeds is None
    loss = NoduleClipLoss()(output, labels)
    assert loss.clip.item() == 0 and loss.text.item() == 0 and loss.total.item() == pytest.approx(loss.image.item())
    with pytest.raises(InputError, match="vision-only"):
        model.tokenize(["x"])


def test_predict_gives_the_image_head_probability_and_restores_training_mode(views):
    model = create_model("tiny").train()
    prediction = model.predict(views, batch_size=3)
    assert model.training
    model.eval()
    with torch.no_grad():
        embeds, _ = model.encode_image(views)
        expected = torch.softmax(model.image_head(embeds), dim=-1)[:, 1]
    assert torch.allclose(prediction.risk, expected, atol=1e-6)
    assert prediction.view_attention.shape == (4, 9)


def test_zero_shot_scores_nodules_against_prompts_and_refreshes_its_cache_after_training(views, labels):
    model = create_model("tiny")
    embeds = model.predict(views).image_embeds
    prompt_embeds = model.prompt_embeddings(TEXTS)
    with torch.inference_mode():
        logits = model.scale() * embeds @ prompt_embeds.t()
    model.eval()
    with torch.no_grad():
        expected = model.scale() * embeds @ model.encode_text(TEXTS).t()
    assert logits.shape == (4, 4) and torch.allclose(logits, expected, atol=1e-5)
    assert model.prompt_embeddings(TEXTS) is model.prompt_embeddings(TEXTS)  # embedded once
    cached = model.prompt_embeddings(TEXTS)
    train_one_step(model, views, labels)
    assert not torch.allclose(model.prompt_embeddings(TEXTS), cached)


def test_the_model_leaves_its_configuration_alone_and_create_model_resolves_it():
    from noduleclip.model.backbones import get_backbone
    from noduleclip.model.model import ModelConfig, NoduleClipModel, create_model_from_config, resolve_config
    from noduleclip.model.towers import build_towers, tower_fingerprint

    config = ModelConfig(backbone="tiny", tower_seed=3)
    before = config.to_dict()
    resolved = resolve_config(config)
    assert config.to_dict() == before and resolved is not config
    assert resolved.image_size == 28 and resolved.random_init is True
    towers = build_towers(get_backbone("tiny"), resolved.image_size, random_init=True, seed=3)
    fingerprint = tower_fingerprint(towers.vision, towers.text)
    given = resolved.to_dict()
    model = NoduleClipModel(resolved, towers)
    assert resolved.to_dict() == given and model.config.tower_fingerprint == ""  # __init__ fills nothing in

    created = create_model_from_config(config)
    assert config.to_dict() == before
    assert created.config.image_size == 28 and created.config.random_init is True
    assert created.config.tokenizer == "character-wordpiece" and created.config.weights_source.startswith("RANDOM")
    assert created.config.tower_fingerprint == fingerprint  # the towers before LoRA, rebuilt from their seed
    assert create_model("tiny", tower_seed=3).config.to_dict() == created.config.to_dict()
    with pytest.raises(InputError, match="resolve"):
        NoduleClipModel(config, towers)  # an unresolved configuration (no image size) is refused, not filled in


def test_logit_scale_is_clamped_at_100():
    model = create_model("tiny")
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)
    assert math.isclose(create_model("tiny").scale().item(), 1 / 0.07, rel_tol=1e-5)


def test_text_is_truncated_to_the_towers_maximum_length():
    model = create_model("tiny")
    tokens = model.tokenize(["a very long report " * 50, "short"])
    assert model.tokenize("one text")["input_ids"].shape[0] == 1
    assert tokens["input_ids"].shape == (2, model.backbone.max_text_tokens)
    assert tokens["attention_mask"][1].sum() < model.backbone.max_text_tokens


def test_user_errors_say_what_to_do():
    with pytest.raises(InputError, match="Unknown backbone"):
        create_model("resnet")
    with pytest.raises(InputError, match="tuning"):
        create_model("tiny", tuning="partial")
    with pytest.raises(InputError, match="multiple"):
        create_model("tiny", image_size=30)
    with pytest.raises(InputError, match="drop one"):
        create_model("tiny", weights="somewhere")
    with pytest.raises(InputError, match="does not exist"):
        create_model("clip-vit-b-32", weights="/nonexistent/clip")


def test_clip_towers_load_from_a_hugging_face_folder(tmp_path, views):
    from transformers import CLIPConfig, CLIPModel

    tokenizer = character_tokenizer()
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
               eos_token_id=tokenizer.sep_token_id)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=len(tokenizer), max_position_embeddings=77, projection_dim=16, **ids),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           patch_size=32, image_size=224, projection_dim=16), projection_dim=16)
    torch.manual_seed(3)
    reference = CLIPModel(config).eval()
    reference.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    model = create_model("clip-vit-b-32", weights=tmp_path / "clip").eval()
    assert model.config.random_init is False and model.config.tokenizer == "pretrained"
    pixels = model.view_transform(views[:1])
    tokens = model.tokenize(TEXTS[:2])
    with torch.no_grad():
        image_features = reference.visual_projection(reference.vision_model(pixel_values=pixels).pooler_output)
        text_features = reference.text_projection(reference.text_model(**tokens).pooler_output)
        assert torch.allclose(model.vision(pixels), image_features, atol=1e-5)
        assert torch.allclose(model.text(**tokens), text_features, atol=1e-5)
        # the same tower run in two parts (frozen blocks once, the rest per step) gives the same embedding
        blocks = len(model.vision.blocks)
        split = model.vision.finish(model.vision.hidden_states(pixels, blocks), blocks)
        assert torch.allclose(split, image_features, atol=1e-5)


@pytest.mark.parametrize("tuning, image_blocks, frozen", [("lora", 1, 1), ("vision-only", 1, 1), ("probe", None, 2),
                                                          ("lora", None, 0)])
def test_frozen_image_blocks_computed_once_give_the_same_embeddings(views, tuning, image_blocks, frozen):
    from noduleclip.model.model import LoraSettings

    model = create_model("tiny", tuning, lora=LoraSettings(image_blocks=image_blocks))
    assert model.frozen_image_blocks == frozen
    adapted = {name.split(".layer.")[1].split(".")[0] for name, _ in model.vision.named_parameters()
               if "lora_A" in name}
    assert adapted == ({"1"} if image_blocks == 1 else {"0", "1"} if tuning == "lora" else set())
    train_one_step(model, views, torch.tensor([1, 0, 1, 0]))  # adapters away from zero, so the prefix matters
    model.eval()
    with torch.no_grad():
        direct, attention = model.encode_image(views)
        prefix = model.image_prefix(views, batch_size=3)
        cached, cached_attention = model.encode_image(None, prefix)
    assert prefix.shape[:2] == (4, 9)
    assert torch.allclose(direct, cached, atol=1e-6) and torch.allclose(attention, cached_attention, atol=1e-6)
    assert torch.allclose(model.predict(views).risk, model.predict(None, prefix=prefix).risk, atol=1e-6)


def test_lora_image_blocks_must_fit_the_tower():
    from noduleclip.model.model import LoraSettings

    with pytest.raises(InputError, match="image blocks 3 must be between 1 and the image tower's 2"):
        create_model("tiny", "lora", lora=LoraSettings(image_blocks=3))
    with pytest.raises(InputError, match="text blocks 0 must be between 1 and the text tower's 2"):
        create_model("tiny", "lora", lora=LoraSettings(text_blocks=0))


def test_lora_text_blocks_adapt_the_top_of_the_text_tower_and_the_gradient_stops_there(views):
    from noduleclip.model.model import LoraSettings

    model = create_model("tiny", "lora", lora=LoraSettings(text_blocks=1))
    adapted = {name.split(".layer.")[1].split(".")[0] for name, _ in model.text.named_parameters() if "lora_A" in name}
    assert adapted == {"1"}  # the tiny text tower has blocks 0 and 1
    everywhere = create_model("tiny", "lora")
    assert model.trainable_fraction() < everywhere.trainable_fraction()
    seen = []
    block = model.text.model.encoder.layer[0]
    block.register_full_backward_hook(lambda *args: seen.append(0))
    model.train()
    loss = NoduleClipLoss()(model(views, TEXTS), torch.tensor([1, 0, 1, 0]))
    loss.total.backward()
    assert seen == []  # nothing below the adapted block needs a gradient: the backward pass never reaches block 0
    assert all(p.grad is not None for name, p in model.text.named_parameters() if "lora_B" in name)


@pytest.mark.parametrize("tuning", ["lora", "finetune"])
def test_the_class_token_last_block_equals_the_transformers_forward_and_its_gradients(views, labels, tuning):
    model = create_model("tiny", tuning)
    train_one_step(model, views, labels)  # adapters (or weights) away from their start
    model.eval()
    pixels = model.view_transform(views[:2])
    trained = [p for p in model.vision.parameters() if p.requires_grad]
    ours = model.vision(pixels)
    reference = model.vision.model(pixel_values=pixels).pooler_output  # every token through every block
    assert torch.allclose(ours, reference, atol=1e-5)
    grads_ours = torch.autograd.grad(ours.square().sum(), trained, allow_unused=True)
    grads_reference = torch.autograd.grad(reference.square().sum(), trained, allow_unused=True)
    for a, b in zip(grads_ours, grads_reference, strict=True):  # unused (mask token): None in both
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-5)
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads_ours) >= len(trained) // 2


def test_cpu_inference_runs_the_image_blocks_in_chunks_with_the_same_result(views, monkeypatch):
    from noduleclip.model import towers

    model = create_model("tiny").eval()
    pixels = model.view_transform(views)  # 36 images
    calls = []
    original = towers.VisionTower._hidden_states

    def counted(self, part, blocks):
        calls.append(part.shape[0])
        return original(self, part, blocks)

    monkeypatch.setattr(towers.VisionTower, "_hidden_states", counted)
    with torch.inference_mode():
        whole = model.vision(pixels)
        hidden = model.vision.hidden_states(pixels, 1)
        monkeypatch.setattr(towers, "CPU_INFERENCE_CHUNK", 10)
        calls.clear()
        chunked = model.vision(pixels)
        assert calls == [10, 10, 10, 6]
        assert torch.allclose(chunked, whole, atol=1e-6)
        assert torch.allclose(model.vision.finish(model.vision.hidden_states(pixels, 1), 1), whole, atol=1e-6)
        assert torch.allclose(model.vision.hidden_states(pixels, 1), hidden, atol=1e-6)
    calls.clear()
    with torch.enable_grad():  # training keeps its batch in one call
        model.vision(pixels)
    assert calls == [36]
