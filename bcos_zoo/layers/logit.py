"""The fixed logit temperature and bias of B-cos classifiers."""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["LogitLayer", "default_logit_bias"]


def default_logit_bias(num_classes: int) -> float:
    """``-log(C - 1)``: with it, a zero-evidence input gets sigmoid probability 1/C per class."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
    return -math.log(num_classes - 1)


class LogitLayer(nn.Module):
    """``x / temperature + bias`` with plain float constants (they are not in the state dict).

    Unlike the official layer, an explicit ``bias=0.0`` is kept as zero (``None`` means "none").
    """

    def __init__(self, logit_temperature: float | None = None, logit_bias: float | None = None) -> None:
        super().__init__()
        self.logit_temperature = None if logit_temperature is None else float(logit_temperature)
        self.logit_bias = None if logit_bias is None else float(logit_bias)

    @classmethod
    def for_classes(
        cls, num_classes: int, logit_bias: float | None = None, logit_temperature: float | None = None
    ) -> LogitLayer:
        """The logit layer of a ``num_classes``-way classifier: ``logit_bias`` defaults (``None``) to
        :func:`default_logit_bias`, ``-log(C - 1)``."""
        bias = default_logit_bias(num_classes) if logit_bias is None else logit_bias
        return cls(logit_temperature, bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.logit_temperature is not None:
            x = x / self.logit_temperature
        if self.logit_bias is not None:
            x = x + self.logit_bias
        return x

    def extra_repr(self) -> str:
        return f"logit_temperature={self.logit_temperature}, logit_bias={self.logit_bias}"
