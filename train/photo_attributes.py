"""A training-only photo attribute head for stage 1 (`Moon3ContrastiveConfig.photo_attribute_weight`).

A linear readout per attribute reads the mean of a photo's visual tokens as they enter the language model (the
projector's output, `Moon3EmbeddingOutput.raw_signals`) and is trained with cross-entropy against the product's
attribute values. Its gradient reaches the vision tower and the projector directly, where the InfoNCE and SFT
gradients reach them only through the language model: a linear probe on 16x16 pixels reads the article type at 0.81,
moon3-mini's trained photo vector at about 0.5 (docs/reasoning.md, "What a photo holds"). The head is not part of the
checkpoint; the model's architecture is unchanged.

    >>> head = PhotoAttributeHead(128, {"usage": ["Casual", "Sports"], "gender": ["Men", "Women", "Unisex"]})
    >>> pooled = torch.randn(4, 128)                                   # (B, D)
    >>> labels = torch.tensor([[0, 1], [1, -100], [-100, -100], [0, 2]])  # (B, F), -100 = no label
    >>> loss_sum, count, correct = head.loss_terms(pooled, labels)
    >>> int(count), correct.shape
    (5, torch.Size([2]))
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F


def mean_image_features(features: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
    """Mean of each row's image-token features: Tensor[B, L, D], Tensor[B, L] bool -> Tensor[B, D] (0 without image)."""
    weights = image_mask.unsqueeze(-1).to(features.dtype)  # (B, L, 1)
    return (features * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class PhotoAttributeHead(nn.Module):
    """One linear layer per attribute: pooled visual features Tensor[B, D] -> logits Tensor[B, C_f] per field f.

    Args:
        hidden_size (`int`): the language model's hidden size (the visual tokens' width).
        classes (`Mapping[str, list[str]]`): each attribute's values, in label-index order
            (`train.data.attribute_classes`).
    """

    def __init__(self, hidden_size: int, classes: Mapping[str, list[str]]):
        super().__init__()
        if not classes or any(len(values) == 0 for values in classes.values()):
            raise ValueError(f"PhotoAttributeHead needs at least one value for every field, got {dict(classes)}.")
        self.fields = list(classes)
        self.readouts = nn.ModuleList(nn.Linear(hidden_size, len(values)) for values in classes.values())

    def forward(self, pooled: torch.Tensor) -> list[torch.Tensor]:
        return [readout(pooled.to(readout.weight.dtype)) for readout in self.readouts]

    def loss_terms(self, pooled: torch.Tensor, labels: torch.Tensor):
        """(sum of cross-entropies over the labelled (row, field) pairs, their count, Tensor[F] right answers per
        field) for labels Tensor[B, F] (-100 = unlabelled). The caller divides the sum by the batch's count."""
        total = pooled.new_zeros((), dtype=torch.float32)
        correct = torch.zeros(len(self.fields), dtype=torch.long)
        for column, logits in enumerate(self(pooled)):
            target = labels[:, column].to(logits.device)
            total = total + F.cross_entropy(logits.float(), target, ignore_index=-100, reduction="sum")
            labelled = target != -100
            correct[column] = int((logits.detach().argmax(dim=-1)[labelled] == target[labelled]).sum())
        count = (labels != -100).sum()
        return total, count, correct
