"""Pretrained weights: resolving ``pretrained=...`` to a checkpoint and loading it.

This module grows into the weights registry; for now it loads local checkpoint files.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ._builder import Pretrained, load_checkpoint

__all__ = ["load_pretrained"]


def load_pretrained(model: nn.Module, arch: str, pretrained: Pretrained) -> None:
    """Load ``pretrained`` into ``model``: a local ``.safetensors`` / ``.pth`` path."""
    if isinstance(pretrained, (str, Path)) and Path(pretrained).is_file():
        load_checkpoint(model, pretrained)
        return
    if isinstance(pretrained, (str, Path)):
        raise FileNotFoundError(f"pretrained={str(pretrained)!r}: no such checkpoint file")
    raise ValueError(f"no pretrained weights are registered for {arch!r}; pass a checkpoint path instead")
