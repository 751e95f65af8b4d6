"""Stochastic depth: residual branches dropped per sample during training (Huang et al., 2016).

Our own module rather than ``torchvision.ops.StochasticDepth`` so that importing ``bcos_zoo``
does not import torchvision (importing any of its submodules loads ``torchvision.models``). It is
torchvision's ``"row"`` mode, drawing the same random numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["StochasticDepth", "linear_drop_probs"]


class StochasticDepth(nn.Module):
    """In training, keep each sample's input with probability ``1 - p`` (else zero it) and scale the
    kept ones by ``1 / (1 - p)``; the identity in eval mode or when ``p == 0``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype, device=x.device)  # [N, 1, ...]
        noise.bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}"


def linear_drop_probs(max_p: float, total: int) -> list[float]:
    """Drop probability of each of ``total`` blocks, growing linearly from 0 for the first to
    ``max_p`` for the last: ``max_p * i / (total - 1)``."""
    return [max_p * i / max(total - 1, 1) for i in range(total)]
