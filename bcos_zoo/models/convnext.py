"""B-cos ConvNeXts (B-cos v2).

As torchvision's ConvNeXt, but: every conv (and every "linear" of a block) is a B-cos conv, there
is no GELU (B-cos is the non-linearity) and no permutes (the norms work on ``[N, C, H, W]``), and
the classifier is a norm plus a 1×1 B-cos conv applied *before* global average pooling, followed
by the fixed logit bias. ``features`` is one flat ``nn.Sequential`` (stem conv, stem norm, then
stages and downsamplings alternating), so the state-dict keys equal the official ones.

The released weights come with two norms: the default, a bias-free *centered* position norm
(a LayerNorm over the channels at each position, eps 1e-6), and bias-free uncentered batch norms
(the ``_bnu`` architectures).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..registry import register_model
from ..builder import Pretrained, build_model
from ..layers import (
    ConvFactory,
    DetachablePositionNorm2d,
    NormFactory,
    StochasticDepth,
    bcos_conv_factory,
    get_norm_layer,
    init_bcos_weights_,
    linear_drop_probs,
)
from ..transforms import TransformConfig
from ._base import BcosFeaturesClassifier
from ._features import BlockSequence, FeatureStage

__all__ = ["BcosConvNeXt", "CNBlock", "StageConfig"]

#: The default norm of the B-cos ConvNeXts: bias-free position norm with eps 1e-6.
POSITION_NORM: NormFactory = functools.partial(DetachablePositionNorm2d, eps=1e-6, bias=False)


class StageConfig(NamedTuple):
    """One stage: ``num_blocks`` blocks of width ``channels``, then a downsampling to ``out_channels`` (if any)."""

    channels: int
    out_channels: int | None
    num_blocks: int


class CNBlock(nn.Module):
    """Depthwise 7×7 conv → norm → 1×1 conv (×4 channels) → 1×1 conv, scaled per channel by the
    learnt ``layer_scale``, stochastic depth, plus the input."""

    def __init__(self, dim: int, layer_scale: float, drop_prob: float, *, conv: ConvFactory, norm: NormFactory) -> None:
        super().__init__()
        self.block = nn.Sequential(
            conv(dim, dim, kernel_size=7, padding=3, groups=dim),
            norm(dim),
            conv(dim, 4 * dim, kernel_size=1),
            conv(4 * dim, dim, kernel_size=1),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), float(layer_scale)))  # [C, 1, 1]
        self.stochastic_depth = StochasticDepth(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        return self.stochastic_depth(self.layer_scale * self.block(x)) + x


class BcosConvNeXt(BcosFeaturesClassifier):
    """B-cos ConvNeXt.

    Args:
        stages: one ``StageConfig`` per stage; each but the last names the next stage's width.
        num_classes: output classes; the logit bias defaults to ``-log(num_classes - 1)``.
        in_chans: input channels (6 = RGB + inverse).
        b, max_out: B-cos exponent and MaxOut of every conv.
        norm_layer: norm name (see ``bcos_zoo.layers.get_norm_layer``) or factory; the default is
            a bias-free position norm with eps 1e-6 (a name such as ``"pn-linear"`` uses eps 1e-5).
        logit_bias, logit_temperature: the fixed logit transform (``None`` bias: the default).
        stochastic_depth_prob: maximum drop probability, growing linearly with block index.
        layer_scale: initial value of each block's per-channel output scale.

    ``get_classifier()`` and ``reset_classifier()`` refer to the final 1×1 conv (``classifier.1``);
    the norm before it is kept when fine-tuning.
    """

    default_cam_layer = "features"  # Grad-CAM: the last feature map, before the classifier
    _classifier_path = "classifier.1"

    def __init__(
        self,
        stages: list[StageConfig],
        *,
        num_classes: int = 1000,
        in_chans: int = 6,
        b: float = 2,
        max_out: int = 1,
        norm_layer: str | NormFactory | None = POSITION_NORM,
        logit_bias: float | None = None,
        logit_temperature: float | None = None,
        stochastic_depth_prob: float = 0.0,
        layer_scale: float = 1e-6,
    ) -> None:
        super().__init__()
        if not stages:
            raise ValueError("stages must list at least one StageConfig")
        self._init_bcos(num_classes=num_classes, in_chans=in_chans, conv=bcos_conv_factory(b, max_out),
                        logit_bias=logit_bias, logit_temperature=logit_temperature)  # fmt: skip
        norm = get_norm_layer(norm_layer)
        layers: list[nn.Module] = [
            self._conv(in_chans, stages[0].channels, kernel_size=4, stride=4),
            norm(stages[0].channels),
        ]
        drop_probs = iter(linear_drop_probs(stochastic_depth_prob, sum(s.num_blocks for s in stages)))
        for stage in stages:
            blocks = [
                CNBlock(stage.channels, layer_scale, next(drop_probs), conv=self._conv, norm=norm)
                for _ in range(stage.num_blocks)
            ]
            layers.append(BlockSequence(*blocks))
            if stage.out_channels is not None:
                down = self._conv(stage.channels, stage.out_channels, kernel_size=2, stride=2)
                layers.append(nn.Sequential(norm(stage.channels), down))
        self.features = BlockSequence(*layers)
        last = stages[-1]
        self.num_features = last.out_channels if last.out_channels is not None else last.channels
        self.classifier = nn.Sequential(norm(self.num_features), self._new_classifier(num_classes))
        # Kaiming init: the official trunc_normal(std=0.02) differs only in scale, which the
        # per-forward filter normalisation of B-cos convs removes
        init_bcos_weights_(self)

    def _feature_stages(self) -> list[FeatureStage]:
        """The output of every stage of blocks (reductions 4, 8, 16, 32), as in timm."""
        stages, reduction = [], self.features[0].stride[0]
        for name, module in self.features.named_children():
            if isinstance(module, nn.Sequential) and isinstance(module[0], CNBlock):
                stages.append(FeatureStage(f"features.{name}", module[0].layer_scale.shape[0], reduction))
                reduction *= 2
        return stages


TINY = [StageConfig(96, 192, 3), StageConfig(192, 384, 3), StageConfig(384, 768, 9), StageConfig(768, None, 3)]
BASE = [StageConfig(128, 256, 3), StageConfig(256, 512, 3), StageConfig(512, 1024, 27), StageConfig(1024, None, 3)]

# the released ConvNeXts are "long" recipes, evaluated at resize 232 -> crop 224
IMAGENET_TRANSFORM = TransformConfig(resize_size=232, crop_size=224)


@register_model
def bcos_convnext_tiny(pretrained: Pretrained = False, **kwargs: Any) -> BcosConvNeXt:
    """B-cos ConvNeXt-T with (bias-free) position norms."""
    return build_model(BcosConvNeXt, "bcos_convnext_tiny", pretrained, kwargs, transform=IMAGENET_TRANSFORM,
                       stages=TINY, stochastic_depth_prob=0.1)


@register_model
def bcos_convnext_base(pretrained: Pretrained = False, **kwargs: Any) -> BcosConvNeXt:
    """B-cos ConvNeXt-B with (bias-free) position norms."""
    return build_model(BcosConvNeXt, "bcos_convnext_base", pretrained, kwargs, transform=IMAGENET_TRANSFORM,
                       stages=BASE, stochastic_depth_prob=0.5)


@register_model
def bcos_convnext_tiny_bnu(pretrained: Pretrained = False, **kwargs: Any) -> BcosConvNeXt:
    """B-cos ConvNeXt-T with bias-free uncentered batch norms."""
    return build_model(BcosConvNeXt, "bcos_convnext_tiny_bnu", pretrained, kwargs, transform=IMAGENET_TRANSFORM,
                       stages=TINY, stochastic_depth_prob=0.1, norm_layer="bnu-linear")


@register_model
def bcos_convnext_base_bnu(pretrained: Pretrained = False, **kwargs: Any) -> BcosConvNeXt:
    """B-cos ConvNeXt-B with bias-free uncentered batch norms."""
    return build_model(BcosConvNeXt, "bcos_convnext_base_bnu", pretrained, kwargs, transform=IMAGENET_TRANSFORM,
                       stages=BASE, stochastic_depth_prob=0.5, norm_layer="bnu-linear")
