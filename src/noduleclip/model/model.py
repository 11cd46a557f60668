"""The nodule CLIP model: nine views -> image tower -> attention-MIL -> projection, text -> text tower -> projection.

Both embeddings are 256-d and L2-normalised; a learnable logit scale aligns them (InfoNCE) and a linear
head on each predicts malignancy. Inference needs only the views: `predict` gives the image head's
malignancy probability, the embedding and the nine attention weights.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..progress import progress_bar
from ..semantics.schema import get_feature
from ..version import __version__
from .backbones import DEFAULT_BACKBONE, BackboneConfig, config_from_dict, get_backbone
from .dropout import use_fast_dropout
from .heads import ProjectionHead, malignancy_head
from .mil import AttentionMIL
from .towers import Towers, TracedVisionTower, build_towers, tower_fingerprint

TUNING_MODES = ("lora", "probe", "finetune", "vision-only")
TOWER_PREFIXES = ("vision.", "text.")


@dataclass
class LoraSettings:
    """LoRA on the attention projections of both towers (the paper: rank 2, alpha 1, dropout 0.25 on Q, K, V)."""

    rank: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    target_names: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "query", "key", "value")
    image_blocks: int | None = None  # LoRA in the image tower's last N blocks only (None: all, as the paper)
    text_blocks: int | None = None  # LoRA in the text tower's last N blocks only (None: all, as the paper)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; saved as JSON beside its weights."""

    backbone: str = DEFAULT_BACKBONE
    tuning: str = "lora"  # lora | probe | finetune | vision-only (LoRA image tower, no text path)
    image_size: int | None = None  # None: the backbone's default (filled in by `resolve_config`)
    random_init: bool = False  # True: the towers are NOT pretrained (tests, timing; always so for a random backbone)
    weights: str | None = None  # the weights folder/file the towers were built from, if one was given
    embed_dim: int = 256
    mil_hidden_dim: int = 256
    mil_attention_dim: int = 128
    projection_dropout: float = 0.1
    field_of_view: int | None = None  # the central N x N pixels of each view go to the encoder (None: all of it)
    size_head: bool = False  # a linear head that regresses the nodule's log-diameter from the image embedding
    semantic_heads: tuple[str, ...] = ()  # schema features, each with a linear classifier on the image embedding
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100)
    lora: LoraSettings = field(default_factory=LoraSettings)
    tower_seed: int = 0  # seed of random towers, so that they can be rebuilt exactly
    weights_source: str = ""  # filled in by `create_model`: where the tower weights came from
    tokenizer: str = ""  # filled in by `create_model`: "pretrained", "character-wordpiece" or "none"
    tower_fingerprint: str = ""  # filled in by `create_model`: digest of the tower weights before tuning
    vision_fingerprint: str = ""  # filled in by `create_model`: the same digest of the image tower alone
    package_version: str = __version__

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "the model configuration") -> ModelConfig:
        """Rebuild a configuration from `to_dict` output (a model.json's "config"), refusing unknown keys, values of
        the wrong type and an unknown backbone in one sentence naming `where`."""
        return config_from_dict(cls, data, where, "save the model again, or use the noduleclip version that wrote it")


@dataclass
class ModelOutput:
    """A forward pass: normalised embeddings, the views' attention weights, head logits, the logit scale."""

    image_embeds: torch.Tensor  # (B, embed_dim), unit norm
    view_attention: torch.Tensor  # (B, V), rows sum to 1
    image_logits: torch.Tensor  # (B, 2)
    text_embeds: torch.Tensor | None = None  # (B, embed_dim), unit norm
    text_logits: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None  # exp of the clamped learnable log-scale
    log_diameter: torch.Tensor | None = None  # (B,) the size head's ln(diameter / 10 mm), when the model has one
    semantic_logits: dict[str, torch.Tensor] | None = None  # feature -> (B, its values), with semantic heads


@dataclass
class Prediction:
    """Image-only inference: malignancy probability, the embedding and the nine attention weights."""

    risk: torch.Tensor  # (B,) softmax probability of class 1 from the image head
    image_embeds: torch.Tensor
    view_attention: torch.Tensor


class ViewTransform(nn.Module):
    """(B, V, H, W) views in [0, 1] -> (B*V, 3, S, S) bilinear-resized, normalised with the tower's mean/std.

    With `field_of_view` N, only the central N x N pixels of each view are resized to S: a zoom on the
    nodule (views are cut at 1 mm, so N pixels are N mm). At 112 px a 50 mm view gives the ViT's 14-pixel
    patches 6 mm of tissue each; a 24 mm field of view gives them 3 mm, the scale of spicules and lobules.
    Pixels marked outside the scan (`ViewConfig.mark_outside`) become pure blue: air in the red and green
    planes, white in the blue one.
    """

    scale: torch.Tensor  # buffers: 1 / std and -mean / std, (1, 3, 1, 1)
    shift: torch.Tensor

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], field_of_view: int | None = None):
        super().__init__()
        self.image_size, self.field_of_view = image_size, field_of_view
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / std_t, persistent=False)
        self.register_buffer("shift", -torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) / std_t,
                             persistent=False)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        batch, count, height, width = views.shape
        planes = views.reshape(batch * count, 1, height, width).to(self.scale)
        if self.field_of_view is not None and self.field_of_view < min(height, width):
            top, left = (height - self.field_of_view) // 2, (width - self.field_of_view) // 2
            planes = planes[..., top:top + self.field_of_view, left:left + self.field_of_view]
            height = width = self.field_of_view
        outside = planes < 0  # views cut with `mark_outside` hold OUTSIDE (-1) beyond the scan
        if bool(outside.any()):  # the grey planes get air there, and a blue plane marks it: RGB (0, 0, 1), no CT's
            planes = torch.cat([planes.clamp_min(0.0)] * 2 + [torch.where(outside, 1.0, planes)], dim=1)
        size = self.image_size
        if (height, width) != (size, size):
            planes = F.interpolate(planes, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=size < min(height, width))
        return planes * self.scale + self.shift  # a single grey plane broadcasts to the three channels


def _block_index(module_name: str) -> int | None:
    """The transformer block a module belongs to (`encoder.layer.7.attention...` -> 7), or None."""
    match = re.search(r"\.(?:layer|layers)\.(\d+)\.", module_name)
    return int(match.group(1)) if match else None


def _lora_targets(model: nn.Module, names: Sequence[str]) -> list[str]:
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in names]


def _check_tuning(config: ModelConfig) -> None:
    if config.tuning not in TUNING_MODES:
        raise InputError(f"Unknown tuning mode {config.tuning!r}; choose one of {', '.join(TUNING_MODES)}.")


def _check_resolved(config: ModelConfig, backbone: BackboneConfig) -> int:
    """Refuse a resolved configuration's image size and field of view if they do not fit; return the image size."""
    if config.image_size is None:
        raise InputError("The model configuration has no image size; resolve it first with resolve_config (or build "
                         "the model with create_model).")
    if config.image_size % backbone.patch_size:
        raise InputError(f"image_size {config.image_size} is not a multiple of {backbone.name}'s patch size "
                         f"{backbone.patch_size}; pick e.g. {backbone.image_size}.")
    if config.field_of_view is not None and config.field_of_view < 8:
        raise InputError(f"field of view {config.field_of_view} pixels is too small; give at least 8 (or none: "
                         "the whole view).")
    return config.image_size


def resolve_config(config: ModelConfig) -> ModelConfig:
    """A copy of `config` with the backbone's defaults filled in (image size; random towers for a backbone without
    pretrained weights), checked; `config` itself is left as it is."""
    _check_tuning(config)
    backbone = get_backbone(config.backbone)
    resolved = replace(config, lora=replace(config.lora), image_size=config.image_size or backbone.image_size,
                       random_init=config.random_init or not backbone.has_pretrained_weights)
    _check_resolved(resolved, backbone)
    return resolved


class NoduleClipModel(nn.Module):
    """The dual encoder; build it with `create_model` (or `load_model` for a saved one).

    `__init__` only assembles modules: it takes a configuration already resolved by `create_model` (see
    `resolve_config`) and the towers built for it, and changes neither the configuration nor the tower weights
    (LoRA adapters are added to the towers' models).
    """

    def __init__(self, config: ModelConfig, towers: Towers, image_only: bool = False):
        super().__init__()
        _check_tuning(config)
        backbone: BackboneConfig = get_backbone(config.backbone)
        image_size = _check_resolved(config, backbone)
        # image_only: built for inference without the text tower (zero-shot then reads stored prompt embeddings);
        # the logit scale stays, as it belongs to the image-text similarity, not to the text tower
        self.image_only = image_only and config.tuning != "vision-only"
        with_text = config.tuning != "vision-only" and not self.image_only
        if with_text and towers.text is None:
            raise InputError(f"A {config.tuning} model needs a text tower, but the towers given have none.")
        self.config, self.backbone = config, backbone
        self.view_transform = ViewTransform(image_size, backbone.image_mean, backbone.image_std, config.field_of_view)
        self.vision = towers.vision
        self.mil = AttentionMIL(self.vision.dim, config.mil_hidden_dim, config.mil_attention_dim)
        self.image_projection = ProjectionHead(self.mil.out_dim, config.embed_dim, config.projection_dropout)
        self.image_head = malignancy_head(config.embed_dim)
        # size made legible: training can ask the image embedding to carry the diameter (see NoduleClipLoss)
        self.size_head = nn.Linear(config.embed_dim, 1) if config.size_head else None
        # and the radiologists' words: a classifier per semantic feature on the same embedding (see SemanticLoss)
        self.semantic_heads = nn.ModuleDict({name: nn.Linear(config.embed_dim, len(get_feature(name).values))
                                             for name in config.semantic_heads}) if config.semantic_heads else None
        self.text = towers.text if with_text else None
        if self.text is not None:
            self.text_projection = ProjectionHead(self.text.dim, config.embed_dim, config.projection_dropout)
            self.text_head = malignancy_head(config.embed_dim)
        if self.text is not None or self.image_only:
            self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self._prompt_cache: dict = {}
        self._apply_tuning()
        use_fast_dropout(self)  # the same dropout, its CPU masks drawn about four times faster

    # -- tuning -------------------------------------------------------------------------------------------
    def _apply_tuning(self) -> None:
        # a traced image tower was recorded with its adapters (and needs no peft, which takes seconds to import)
        towers = [tower for tower in (self.vision, self.text) if tower is not None
                  and not isinstance(tower, TracedVisionTower)]
        for parameter in self.parameters():
            parameter.requires_grad_(self.config.tuning == "finetune")
        for name, parameter in self.named_parameters():
            if not name.startswith(TOWER_PREFIXES):
                parameter.requires_grad_(True)
        if self.config.tuning not in ("lora", "vision-only") or not towers:
            return
        from peft import LoraConfig, inject_adapter_in_model  # imported on first use: loading peft takes seconds

        lora = self.config.lora
        for tower in towers:
            targets = _lora_targets(tower.model, lora.target_names)
            top = lora.image_blocks if tower is self.vision else lora.text_blocks
            if top is not None:
                blocks = 1 + max((b for t in targets if (b := _block_index(t)) is not None), default=-1)
                if not 1 <= top <= blocks:
                    kind = "image" if tower is self.vision else "text"
                    raise InputError(f"LoRA {kind} blocks {top} must be between 1 and the {kind} tower's {blocks} "
                                     "blocks.")
                targets = [t for t in targets if (block := _block_index(t)) is not None and block >= blocks - top]
            if not targets:
                raise InputError(f"No attention projection named {lora.target_names} in {self.config.backbone}'s "
                                 "towers.")
            # peft annotates lora_alpha as int, but it is only used as the float scale alpha / r
            settings = LoraConfig(r=lora.rank, lora_alpha=lora.alpha,  # type: ignore[arg-type]
                                  lora_dropout=lora.dropout, target_modules=targets, bias="none")
            inject_adapter_in_model(settings, tower.model)
            for name, parameter in tower.named_parameters():
                parameter.requires_grad_("lora_" in name)

    @property
    def _without_text(self) -> str:
        return "was loaded image-only, for inference" if self.image_only else "is vision-only"

    def trainable_fraction(self) -> float:
        """Trainable parameters / all parameters (the paper: about 0.4% for ViT-B/32 with LoRA)."""
        total = sum(p.numel() for p in self.parameters())
        return sum(p.numel() for p in self.parameters() if p.requires_grad) / total

    def towers_are_saved(self) -> bool:
        """Whether a saved model carries whole towers (fine-tuned); otherwise they are rebuilt from the registry.

        Random towers are rebuilt from their seed; the saved fingerprint proves they came out the same.
        """
        return self.config.tuning == "finetune"

    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        """What `save_model` writes: adapters, MIL, projections, heads, scale; whole towers when fine-tuned."""
        keep_towers = self.towers_are_saved()
        return {name: tensor for name, tensor in self.state_dict().items()
                if keep_towers or not name.startswith(TOWER_PREFIXES) or "lora_" in name}

    @property
    def frozen_image_blocks(self) -> int:
        """How many bottom blocks of the image tower never change in training (their output can be computed once).

        All of them when probing; those below the LoRA blocks when LoRA is limited to the top blocks.
        """
        if self.config.tuning == "probe":
            return self.vision.depth
        image_blocks = self.config.lora.image_blocks
        if self.config.tuning in ("lora", "vision-only") and image_blocks is not None:
            return self.vision.depth - image_blocks
        return 0

    def image_prefix(self, views: torch.Tensor, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        """(B, V, tokens, width) output of the frozen image blocks for (B, V, 50, 50) views; see `encode_image`."""
        parts = []
        with self._evaluating():
            for start in progress_bar(range(0, views.shape[0], batch_size), desc="frozen image blocks", unit="batch",
                                      disable=not progress, dynamic_ncols=True):
                chunk = views[start:start + batch_size]
                hidden = self.vision.hidden_states(self.view_transform(chunk), self.frozen_image_blocks)
                parts.append(hidden.view(chunk.shape[0], chunk.shape[1], *hidden.shape[1:]).clone())
        return torch.cat(parts)

    # -- encoders ----------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The text tower's token ids and attention mask for `texts` (truncated to its maximum length)."""
        if self.text is None:
            raise InputError(f"This model {self._without_text}: it has no text tower to tokenize for.")
        return self.text.tokenize([texts] if isinstance(texts, str) else list(texts))

    def scale(self) -> torch.Tensor:
        """exp of the learnable log logit scale, clamped to [1, 100]."""
        return self.logit_scale.clamp(0.0, self.config.logit_scale_max).exp()

    def encode_image(self, views: torch.Tensor | None = None, prefix: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V, 50, 50) views -> unit-norm (B, embed_dim) embeddings and (B, V) attention weights.

        Instead of views, `prefix` may give their `image_prefix` (computed once): the same result, faster.
        """
        if prefix is not None:
            batch, count = prefix.shape[:2]
            hidden = prefix.reshape(batch * count, *prefix.shape[2:])
            features = self.vision.finish(hidden, self.frozen_image_blocks).view(batch, count, -1)
        else:
            if views is None or views.dim() != 4:
                shape = None if views is None else tuple(views.shape)
                raise InputError(f"Views must be a (nodules, views, height, width) tensor, got {shape}.")
            batch, count = views.shape[:2]
            features = self.vision(self.view_transform(views)).view(batch, count, -1)  # all B*V views in one call
        pooled, attention = self.mil(features)
        return F.normalize(self.image_projection(pooled), dim=-1), attention

    def encode_text(self, text: Sequence[str] | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Texts (or `tokenize` output) -> unit-norm (N, embed_dim) embeddings."""
        if self.text is None:
            raise InputError(f"This model {self._without_text}: it has no text tower to embed texts with.")
        tokens = self.tokenize(text) if not isinstance(text, Mapping) else text
        device = self.logit_scale.device
        features = self.text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
        return F.normalize(self.text_projection(features), dim=-1)

    def forward(self, views: torch.Tensor | None, text: Sequence[str] | Mapping[str, torch.Tensor] | None = None,
                prefix: torch.Tensor | None = None) -> ModelOutput:
        """Embed the views or their `prefix` (and the texts, if given and the model has a text path); apply both
        heads."""
        image_embeds, attention = self.encode_image(views, prefix)
        output = ModelOutput(image_embeds, attention, self.image_head(image_embeds))
        if self.size_head is not None:
            output.log_diameter = self.size_head(image_embeds).squeeze(-1)
        if self.semantic_heads is not None:
            output.semantic_logits = {name: head(image_embeds) for name, head in self.semantic_heads.items()}
        if text is not None and self.text is not None:
            output.text_embeds = self.encode_text(text)
            output.text_logits = self.text_head(output.text_embeds)
            output.logit_scale = self.scale()
        return output

    # -- inference ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.train(was_training)

    def predict(self, views: torch.Tensor | None, batch_size: int = 32, prefix: torch.Tensor | None = None
                ) -> Prediction:
        """Image-only inference in eval mode: malignancy probability, embeddings and attention, `batch_size` nodules
        at a time."""
        risks, embeds, attentions = [], [], []
        inputs = prefix if prefix is not None else views
        if inputs is None:
            raise InputError("Views must be a (nodules, views, height, width) tensor, got None.")
        with self._evaluating():
            for start in range(0, inputs.shape[0], batch_size):
                part = inputs[start:start + batch_size]
                image_embeds, attention = (self.encode_image(None, part) if prefix is not None
                                           else self.encode_image(part))
                risks.append(torch.softmax(self.image_head(image_embeds), dim=-1)[:, 1])
                embeds.append(image_embeds)
                attentions.append(attention)
        return Prediction(torch.cat(risks), torch.cat(embeds), torch.cat(attentions))

    def predict_risk(self, views: torch.Tensor | None, batch_size: int = 32, prefix: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """(B,) malignancy probabilities from the image head."""
        return self.predict(views, batch_size, prefix).risk

    def prompt_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings of prompt texts, computed once and reused until the text path's weights change."""
        if self.text is None:
            raise InputError(f"This model {self._without_text}: it has no text tower to embed prompts with.")
        key = tuple(prompts)
        version = tuple(p._version for p in self.parameters() if p.requires_grad)
        cached = self._prompt_cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        with self._evaluating():
            embeds = self.encode_text(list(prompts))
        self._prompt_cache = {key: (version, embeds)}
        return embeds


def create_model(name: str = DEFAULT_BACKBONE, tuning: str = "lora", image_size: int | None = None,
                 weights: str | os.PathLike[str] | None = None, random_init: bool = False,
                 **settings: Any) -> NoduleClipModel:
    """Build a model from a registered backbone; `settings` override other ModelConfig fields (e.g. lora=...)."""
    try:
        config = ModelConfig(backbone=name, tuning=tuning, image_size=image_size,
                             weights=str(weights) if weights is not None else None, random_init=random_init,
                             **settings)
    except TypeError as error:
        raise InputError(f"create_model got an unknown setting ({error}); see ModelConfig for the valid "
                         "ones.") from None
    return create_model_from_config(config)


def create_model_from_config(config: ModelConfig, image_only: bool = False,
                             traced: TracedVisionTower | None = None) -> NoduleClipModel:
    """Resolve `config` (left unchanged), build its towers and assemble the model around them.

    The model's configuration is the resolved one, with where the tower weights came from, the tokenizer and the
    towers' fingerprints (taken before any tuning) filled in. Random towers are rebuilt exactly from `tower_seed`.
    `image_only`: leave the text tower out (inference without text; see `NoduleClipModel`); the fingerprint of
    both towers is then left empty, as only the image tower's can be taken. `traced`: an image-only model around
    this traced image tower instead of a built one (`noduleclip.model.traced`; it carries its own fingerprint).
    """
    resolved = resolve_config(config)
    assert resolved.image_size is not None  # resolve_config fills it in
    if traced is not None:
        image_only = True
        towers = Towers(traced, None, traced.weights_source, "none")
    else:
        towers = build_towers(get_backbone(resolved.backbone), resolved.image_size, weights=resolved.weights,
                              random_init=resolved.random_init,
                              with_text=resolved.tuning != "vision-only" and not image_only, seed=resolved.tower_seed)
    vision_fingerprint = traced.fingerprint if traced is not None else tower_fingerprint(towers.vision)
    resolved = replace(resolved, weights_source=towers.weights_source, tokenizer=towers.tokenizer_kind,
                       tower_fingerprint="" if image_only else tower_fingerprint(towers.vision, towers.text),
                       vision_fingerprint=vision_fingerprint)
    return NoduleClipModel(resolved, towers, image_only=image_only)
