"""B-cos VGG (B-cos v2).

As torchvision's VGG, but: every conv is a B-cos conv and there are no ReLUs, dropout or max
pools (AvgPool instead), and there is no 7×7 adaptive pool: the "fully connected" classifier is
three B-cos convs (7×7, 1×1, 1×1) applied to the feature map *before* global average pooling,
followed by the fixed logit bias. State-dict keys equal the official ones (``features.0.linear.weight``,
``features.1.running_var``, ..., ``classifier.2.linear.weight``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import register_model
from ..builder import Pretrained, build_model
from ..layers import NormFactory, bcos_conv_factory, get_norm_layer, init_bcos_weights_
from ..transforms import TransformConfig
from ._base import BcosFeaturesClassifier
from ._features import BlockSequence, FeatureStage

__all__ = ["BcosVGG", "vgg_stages"]

LayerSpec = list[int | str]

#: Configuration "A" of the VGG paper (VGG-11): a number is a 3×3 conv with that many channels, "M" a 2×2 pool.
VGG11: LayerSpec = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class BcosVGG(BcosFeaturesClassifier):
    """B-cos VGG.

    Args:
        cfg: the layer configuration (e.g. ``VGG11``): channels of each 3×3 conv (each followed by
            a norm) or ``"M"`` for a 2×2 average pool.
        num_classes: output classes; the logit bias defaults to ``-log(num_classes - 1)``.
        in_chans: input channels (6 = RGB + inverse).
        b, max_out: B-cos exponent and MaxOut of every conv.
        norm_layer: norm name (see ``bcos_zoo.layers.get_norm_layer``) or factory; ``"none"``
            keeps an ``nn.Identity`` after each conv, so the layer indices do not change.
        logit_bias, logit_temperature: the fixed logit transform (``None`` bias: the default).
        hidden_features: channels of the two hidden classifier convs.

    ``get_classifier()`` and ``reset_classifier()`` refer to the last classifier conv
    (``classifier.2``); the two convs before it are kept when fine-tuning.
    """

    default_cam_layer = "features"  # Grad-CAM: the last feature map, before the classifier
    _classifier_path = "classifier.2"

    def __init__(
        self,
        cfg: LayerSpec,
        *,
        num_classes: int = 1000,
        in_chans: int = 6,
        b: float = 2,
        max_out: int = 1,
        norm_layer: str | NormFactory | None = "bnu-linear",
        logit_bias: float | None = None,
        logit_temperature: float | None = None,
        hidden_features: int = 4096,
    ) -> None:
        super().__init__()
        self._init_bcos(num_classes=num_classes, in_chans=in_chans, conv=bcos_conv_factory(b, max_out),
                        logit_bias=logit_bias, logit_temperature=logit_temperature)  # fmt: skip
        norm = get_norm_layer(norm_layer)
        layers: list[nn.Module] = []
        channels = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
            else:
                layers += [self._conv(channels, int(v), kernel_size=3, padding=1), norm(int(v))]
                channels = int(v)
        self.features = BlockSequence(*layers)
        self.num_features = hidden_features
        self.classifier = nn.Sequential(
            self._conv(channels, hidden_features, kernel_size=7, padding=3),
            self._conv(hidden_features, hidden_features, kernel_size=1),
            self._new_classifier(num_classes),
        )
        init_bcos_weights_(self)

    def _feature_stages(self) -> list[FeatureStage]:
        return vgg_stages(self.features, self.in_chans)


def vgg_stages(features: nn.Module, in_chans: int, prefix: str = "features.") -> list[FeatureStage]:
    """The output before each pool (reductions 1 to 16) and after the last one (32), as in timm, of a
    VGG ``features`` sequence of convs (anything with ``out_channels``), norms, ReLUs and average pools
    (ours, and torchvision's once B-cosified: its max pools become average pools)."""
    stages, channels, reduction, prev = [], in_chans, 1, ""
    for name, module in features.named_children():
        if isinstance(module, nn.AvgPool2d):
            stages.append(FeatureStage(f"{prefix}{prev}", channels, reduction))
            reduction *= 2
        channels = getattr(module, "out_channels", channels)
        prev = name
    return stages + [FeatureStage(f"{prefix}{prev}", channels, reduction)]


IMAGENET_TRANSFORM = TransformConfig(resize_size=256, crop_size=224)


@register_model
def bcos_vgg11_bnu(pretrained: Pretrained = False, **kwargs: Any) -> BcosVGG:
    """B-cos VGG-11 with (bias-free uncentered) batch norms after every conv."""
    return build_model(BcosVGG, "bcos_vgg11_bnu", pretrained, kwargs, transform=IMAGENET_TRANSFORM, cfg=VGG11)
