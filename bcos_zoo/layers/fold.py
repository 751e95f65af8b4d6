"""Which B-cos conv is followed by which uncentred batch norm, for BN folding (see ``layers.fastpath``)."""

from __future__ import annotations

import itertools

from torch import nn

from .bcos import BcosConv2d
from .norms import BatchNormUncentered2d

__all__ = ["link_conv_norm_pairs"]


def _pairs_in(parent: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(conv, norm) candidates of one parent: neighbours in an ``nn.Sequential`` and ``convK``/``bnK`` siblings."""
    children = dict(parent.named_children())
    if isinstance(parent, nn.Sequential):
        return list(itertools.pairwise(children.values()))
    return [(m, children[f"bn{name[4:]}"]) for name, m in children.items()
            if name.startswith("conv") and f"bn{name[4:]}" in children]  # fmt: skip


def link_conv_norm_pairs(model: nn.Module) -> int:
    """Link every B-cos conv to the uncentred batch norm applied directly to its output, so that in eval
    mode the norm is folded into the conv's cached filters. Returns the number of links.

    The structure names the pairs: consecutive modules of an ``nn.Sequential`` and ``convK``/``bnK``
    siblings whose forward is ``bnK(convK(x))`` (the ResNet convention). Folding happens only for a link
    whose conv qualifies (B = 2, MaxOut 1), whose norm has no bias, and while neither has hooks (a hook
    would see the folded, scaled conv output).
    """
    count = 0
    for parent in model.modules():
        for conv, norm in _pairs_in(parent):
            if isinstance(conv, BcosConv2d) and type(norm) is BatchNormUncentered2d and conv.can_fold(norm):
                conv.__dict__["_fold_norm"] = norm  # a plain reference, not a submodule: no state-dict key
                count += 1
    return count
