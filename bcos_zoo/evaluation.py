"""Accuracy evaluation of a classifier over a stream of batches."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import to_model_input

__all__ = ["evaluate", "predict_logits"]


@torch.no_grad()
def predict_logits(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """All logits and labels of ``batches`` (images in [0, 1]; the model's inverse channels are added)."""
    device = next(model.parameters()).device
    in_chans = getattr(model, "in_chans", 6)
    logits, labels = [], []
    for x, y in batches:
        logits.append(model(to_model_input(x.to(device), in_chans)).float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Top-1 / top-5 accuracy (in %) and mean BCE loss of ``model`` (switched to eval mode)."""
    was_training = model.training
    model.eval()
    try:
        logits, labels = predict_logits(model, batches)
    finally:
        model.train(was_training)
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    targets = F.one_hot(labels, logits.shape[1]).float()
    return {
        "top1": 100.0 * (topk[:, 0] == labels).float().mean().item(),
        "top5": 100.0 * (topk == labels[:, None]).any(1).float().mean().item(),
        "bce": F.binary_cross_entropy_with_logits(logits, targets).item(),
        "n": int(labels.numel()),
    }
