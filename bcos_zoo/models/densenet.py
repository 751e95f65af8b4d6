"""B-cos DenseNets (B-cos v2).

As torchvision's DenseNet-BC, but: every conv is a B-cos conv and there are no ReLUs (B-cos is
the non-linearity), the stem pools with AvgPool, norms are bias-free uncentered batch norms by
default, and the classifier is a 1×1 B-cos conv applied *before* global average pooling,
followed by the fixed logit bias. State-dict keys equal the official ones
(``features.denseblock1.denselayer1.conv1.linear.weight``, ...).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import register_model
from ..builder import Pretrained, build_model
from ..layers import ConvFactory, NormFactory, bcos_conv_factory, get_norm_layer, init_bcos_weights_
from ..transforms import TransformConfig
from ._base import BcosFeaturesClassifier
from ._features import BlockSequence, FeatureStage, run_block

__all__ = ["BcosDenseNet", "DenseBlock", "DenseLayer", "Transition", "densenet_stages"]


class DenseLayer(nn.Module):
    """Pre-norm bottleneck: norm → 1×1 conv (to ``bn_size * growth_rate``) → norm → 3×3 conv (to ``growth_rate``)."""

    def __init__(self, in_features: int, growth_rate: int, bn_size: int, *, conv: ConvFactory,
                 norm: NormFactory) -> None:  # fmt: skip
        super().__init__()
        self.norm1 = norm(in_features)
        self.conv1 = conv(in_features, bn_size * growth_rate, kernel_size=1)
        self.norm2 = norm(bn_size * growth_rate)
        self.conv2 = conv(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.norm2(self.conv1(self.norm1(x))))


class DenseBlock(nn.ModuleDict):
    """``denselayer1..n``; each layer sees the concatenation of the block input and all earlier outputs.

    With ``grad_checkpointing`` each layer, concatenation included, is recomputed in the backward
    pass, so only the layers' outputs are stored (the memory-efficient DenseNet).
    """

    grad_checkpointing: bool = False

    def __init__(self, num_layers: int, in_features: int, growth_rate: int, bn_size: int, *, conv: ConvFactory,
                 norm: NormFactory) -> None:  # fmt: skip
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(in_features + i * growth_rate, growth_rate, bn_size, conv=conv, norm=norm)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            concat_then = lambda *fs, layer=layer: layer(torch.cat(fs, 1))
            features.append(run_block(concat_then, *features, enabled=self.grad_checkpointing, owner=layer))
        return torch.cat(features, 1)  # [N, in + num_layers * growth_rate, H, W]


class Transition(nn.Sequential):
    """norm → 1×1 conv → 2×2 average pool, between dense blocks."""

    def __init__(self, in_features: int, out_features: int, *, conv: ConvFactory, norm: NormFactory) -> None:
        super().__init__(
            OrderedDict(
                norm=norm(in_features),
                conv=conv(in_features, out_features, kernel_size=1),
                pool=nn.AvgPool2d(kernel_size=2, stride=2),
            )
        )


class BcosDenseNet(BcosFeaturesClassifier):
    """B-cos DenseNet-BC.

    Args:
        growth_rate, block_config, num_init_features: channels added per dense layer, dense layers
            per block, channels of the stem.
        bn_size: bottleneck width as a multiple of ``growth_rate``.
        num_classes: output classes; the logit bias defaults to ``-log(num_classes - 1)``.
        in_chans: input channels (6 = RGB + inverse).
        b, max_out: B-cos exponent and MaxOut of every conv.
        norm_layer: norm name (see ``bcos_zoo.layers.get_norm_layer``) or factory.
        logit_bias, logit_temperature: the fixed logit transform (``None`` bias: the default).
    """

    default_cam_layer = "features"  # Grad-CAM: the last feature map, before the classifier
    _classifier_path = "classifier"

    def __init__(
        self,
        growth_rate: int,
        block_config: tuple[int, ...],
        num_init_features: int,
        *,
        bn_size: int = 4,
        num_classes: int = 1000,
        in_chans: int = 6,
        b: float = 2,
        max_out: int = 1,
        norm_layer: str | NormFactory | None = "bnu-linear",
        logit_bias: float | None = None,
        logit_temperature: float | None = None,
    ) -> None:
        super().__init__()
        self._init_bcos(num_classes=num_classes, in_chans=in_chans, conv=bcos_conv_factory(b, max_out),
                        logit_bias=logit_bias, logit_temperature=logit_temperature)  # fmt: skip
        norm = get_norm_layer(norm_layer)
        self.features = BlockSequence(
            OrderedDict(
                conv0=self._conv(in_chans, num_init_features, kernel_size=7, stride=2, padding=3),
                norm0=norm(num_init_features),
                pool0=nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
            )
        )
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, channels, growth_rate, bn_size, conv=self._conv, norm=norm)
            self.features.add_module(f"denseblock{i + 1}", block)
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(
                    f"transition{i + 1}", Transition(channels, channels // 2, conv=self._conv, norm=norm)
                )
                channels //= 2
        self.features.add_module("norm5", norm(channels))
        self.num_features = channels
        self.classifier = self._new_classifier(num_classes)
        init_bcos_weights_(self)

    def _feature_stages(self) -> list[FeatureStage]:
        return densenet_stages(self.features)


def densenet_stages(features: nn.Module, prefix: str = "features.") -> list[FeatureStage]:
    """The stem (after its norm, before pooling), the first dense blocks and the final norm, as in timm,
    of a DenseNet ``features`` sequence in torchvision's names (``conv0``, ``norm0``, ``denseblock<i>`` of
    ``denselayer<j>`` with ``conv1``/``conv2``, ``transition<i>``, ``norm5``): ours and torchvision's."""
    stem = features.get_submodule("conv0")
    stages, reduction = [FeatureStage(f"{prefix}norm0", stem.out_channels, stem.stride[0])], stem.stride[0] * 2
    blocks = [(n, m) for n, m in features.named_children() if n.startswith("denseblock")]
    for i, (name, block) in enumerate(blocks):
        layers = list(block.children())
        channels = layers[0].conv1.in_channels + len(layers) * layers[-1].conv2.out_channels
        stages.append(FeatureStage(prefix + (name if i < len(blocks) - 1 else "norm5"), channels, reduction))
        reduction *= 2
    return stages


IMAGENET_TRANSFORM = TransformConfig(resize_size=256, crop_size=224)


@register_model
def bcos_densenet121(pretrained: Pretrained = False, **kwargs: Any) -> BcosDenseNet:
    """B-cos DenseNet-121 (growth 32, blocks 6-12-24-16)."""
    return build_model(BcosDenseNet, "bcos_densenet121", pretrained, kwargs, transform=IMAGENET_TRANSFORM,
                       growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64)


@register_model
def bcos_densenet161(pretrained: Pretrained = False, **kwargs: Any) -> BcosDenseNet:
    """B-cos DenseNet-161 (growth 48, blocks 6-12-36-24, 96 stem channels)."""
    return build_model(BcosDenseNet, "bcos_densenet161", pretrained, kwargs, transform=IMAGENET_TRANSFORM,
                       growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96)


@register_model
def bcos_densenet169(pretrained: Pretrained = False, **kwargs: Any) -> BcosDenseNet:
    """B-cos DenseNet-169 (growth 32, blocks 6-12-32-32)."""
    return build_model(BcosDenseNet, "bcos_densenet169", pretrained, kwargs, transform=IMAGENET_TRANSFORM,
                       growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64)


@register_model
def bcos_densenet201(pretrained: Pretrained = False, **kwargs: Any) -> BcosDenseNet:
    """B-cos DenseNet-201 (growth 32, blocks 6-12-48-32)."""
    return build_model(BcosDenseNet, "bcos_densenet201", pretrained, kwargs, transform=IMAGENET_TRANSFORM,
                       growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64)
