"""``build_model``: what every architecture entry point calls (interim adapter; being rebuilt)."""

from __future__ import annotations

from typing import Any

from torch import nn

from . import _builder
from ._builder import Pretrained
from .transforms import TransformConfig

__all__ = ["Pretrained", "build_model"]


def build_model(model_cls: type[nn.Module], arch: str, pretrained: Pretrained, kwargs: dict[str, Any], *,
                transform: TransformConfig, **defaults: Any) -> nn.Module:  # fmt: skip
    """Build ``model_cls`` as ``arch``: ``defaults`` are the family's, ``kwargs`` the user's (kept apart)."""
    return _builder.build_model(model_cls, arch, pretrained, transform=transform, **{**defaults, **kwargs})
