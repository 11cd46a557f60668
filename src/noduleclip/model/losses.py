"""Training losses as modules with named outputs: symmetric InfoNCE, masked malignancy cross-entropy, total."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

UNKNOWN_LABEL = -1


@dataclass
class LossOutput:
    """The weighted total that training minimises and its unweighted parts."""

    total: torch.Tensor
    clip: torch.Tensor
    image: torch.Tensor
    text: torch.Tensor
    size: torch.Tensor | None = None  # the size head's squared error, when the model has one
    semantic: torch.Tensor | None = None  # the semantic heads' mean cross-entropy, when the model has them
    consistency: torch.Tensor | None = None  # the two versions' disagreement, when a second version was scored

    def as_floats(self) -> dict[str, float]:
        """The values as plain floats, for logs."""
        names = ("total", "clip", "image", "text", "size", "semantic", "consistency")
        return {name: float(getattr(self, name).detach()) for name in names if getattr(self, name) is not None}


def clip_logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Image-by-text similarity logits: scale * cos(image_i, text_j) for L2-normalised inputs."""
    return logit_scale * image_embeds @ text_embeds.t()


class ClipLoss(nn.Module):
    """Symmetric InfoNCE: the mean of image->text and text->image cross-entropy with the diagonal as targets."""

    def __init__(self, label_smoothing: float = 0.1):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        logits_per_image = clip_logits(image_embeds, text_embeds, logit_scale)
        targets = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
        image_to_text = F.cross_entropy(logits_per_image, targets, label_smoothing=self.label_smoothing)
        text_to_image = F.cross_entropy(logits_per_image.t(), targets, label_smoothing=self.label_smoothing)
        return (image_to_text + text_to_image) / 2


class MalignancyLoss(nn.Module):
    """Cross-entropy over nodules with a known label; labels of -1 are left out, none known gives 0."""

    class_weights: torch.Tensor | None  # a buffer, (2,)

    def __init__(self, class_weights: tuple[float, float] | None = None):
        super().__init__()
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        known = labels != UNKNOWN_LABEL
        if not bool(known.any()):
            return logits[:0].sum()  # zero, still attached to the graph
        return F.cross_entropy(logits[known], labels[known].long(), weight=self.class_weights)


def log_diameter_target(diameter_mm) -> torch.Tensor:
    """The size head's target: ln(diameter / 10 mm), NaN where the diameter is unknown (or not positive)."""
    diameter = torch.as_tensor(diameter_mm, dtype=torch.float32)
    return torch.where(diameter > 0, torch.log(diameter.clamp_min(1e-6) / 10.0),
                       torch.full_like(diameter, float("nan")))


class SizeLoss(nn.Module):
    """Mean squared error of the predicted ln(diameter / 10 mm) over nodules whose diameter is known (NaN: left out)."""

    def forward(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(target)
        if not bool(known.any()):
            return predicted[:0].sum()  # zero, still attached to the graph
        return F.mse_loss(predicted[known].float(), target[known].float())


class SemanticLoss(nn.Module):
    """Mean over the semantic heads of each head's cross-entropy over the nodules whose value is known (-1: left
    out); heads with no known value in the batch are left out of the mean, none at all gives 0."""

    def forward(self, logits: Mapping[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        terms = []
        for column, head_logits in enumerate(logits.values()):
            target = targets[:, column]
            known = target != UNKNOWN_LABEL
            if bool(known.any()):
                terms.append(F.cross_entropy(head_logits[known].float(), target[known].long()))
        if not terms:
            return next(iter(logits.values()))[:0].sum()  # zero, still attached to the graph
        return torch.stack(terms).mean()


class ConsistencyLoss(nn.Module):
    """How much two versions of the same nodules (re-rendered as another scanner would, or turned) disagree: the mean
    squared difference of their malignancy log-odds plus the mean (1 - cosine) of their embeddings."""

    def forward(self, logits_a: torch.Tensor, logits_b: torch.Tensor, embeds_a: torch.Tensor,
                embeds_b: torch.Tensor) -> torch.Tensor:
        odds_a = (logits_a[:, 1] - logits_a[:, 0]).float()
        odds_b = (logits_b[:, 1] - logits_b[:, 0]).float()
        cosine = (embeds_a.float() * embeds_b.float()).sum(dim=-1)
        return F.mse_loss(odds_a, odds_b) + (1.0 - cosine).mean()


class NoduleClipLoss(nn.Module):
    """clip_weight * InfoNCE + image_weight * CE(image head) + text_weight * CE(text head)
    + size_weight * MSE(size head, ln diameter) + semantic_weight * CE(semantic heads, the radiologists' features)
    + consistency_weight * the disagreement of a second version of the same nodules (`ConsistencyLoss`).

    Terms whose inputs are absent (no text in vision-only models, no size head or no diameters, no semantic
    heads or no known features) are 0.
    """

    def __init__(self, clip_weight: float = 1.0, image_weight: float = 1.0, text_weight: float = 1.0,
                 label_smoothing: float = 0.1, class_weights: tuple[float, float] | None = None,
                 size_weight: float = 0.0, semantic_weight: float = 0.0, consistency_weight: float = 0.0):
        super().__init__()
        self.consistency_weight = consistency_weight
        self.consistency_loss = ConsistencyLoss()
        self.semantic_weight = semantic_weight
        self.semantic_loss = SemanticLoss()
        self.clip_weight, self.image_weight, self.text_weight = clip_weight, image_weight, text_weight
        self.size_weight = size_weight
        self.size_loss = SizeLoss()
        self.clip_loss = ClipLoss(label_smoothing)
        self.malignancy_loss = MalignancyLoss(class_weights)

    def forward(self, output, labels: torch.Tensor, log_diameter: torch.Tensor | None = None,
                semantic: torch.Tensor | None = None, pair=None) -> LossOutput:
        """`output` is a model forward's ModelOutput; `labels` (B,) holds 1, 0 or -1 (unknown); `log_diameter`
        (B,) the size head's targets (`log_diameter_target`), needed when the model has a size head; `semantic`
        (B, heads) the semantic heads' class indices (-1 unknown), in the order of `output.semantic_logits`; `pair`
        the image outputs of a second version of the same B nodules (for the consistency term)."""
        labels = labels.to(output.image_logits.device)
        zero = output.image_logits.new_zeros(())
        image = self.malignancy_loss(output.image_logits, labels)
        has_text = output.text_embeds is not None
        clip = self.clip_loss(output.image_embeds, output.text_embeds, output.logit_scale) if has_text else zero
        text = self.malignancy_loss(output.text_logits, labels) if has_text else zero
        total = self.clip_weight * clip + self.image_weight * image + self.text_weight * text
        size = None
        if output.log_diameter is not None and log_diameter is not None:
            size = self.size_loss(output.log_diameter, log_diameter.to(output.log_diameter.device))
            total = total + self.size_weight * size
        semantic_term = None
        if output.semantic_logits and semantic is not None:
            semantic_term = self.semantic_loss(output.semantic_logits, semantic.to(output.image_logits.device))
            total = total + self.semantic_weight * semantic_term
        consistency = None
        if pair is not None:
            consistency = self.consistency_loss(output.image_logits, pair.image_logits, output.image_embeds,
                                                pair.image_embeds)
            total = total + self.consistency_weight * consistency
        return LossOutput(total=total, clip=clip, image=image, text=text, size=size, semantic=semantic_term,
                          consistency=consistency)
