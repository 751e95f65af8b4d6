"""B-cos ResNets and ResNeXts (B-cos v2), ImageNet and small-input (CIFAR-style) variants.

As torchvision's ResNet v1.5, but: every conv is a B-cos conv (no ReLUs: B-cos is the
non-linearity), the stem pools with AvgPool, norms are bias-free uncentered batch norms by
default, and the classifier is a 1×1 B-cos conv applied *before* global average pooling,
followed by the fixed logit bias. State-dict keys equal the official ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Union

import torch
from torch import Tensor, nn

from ..registry import register_model
from ..builder import Pretrained, build_model
from ..layers import (
    ConvFactory,
    NormFactory,
    StochasticDepth,
    bcos_conv_factory,
    get_norm_layer,
    init_bcos_weights_,
    linear_drop_probs,
)
from ..transforms import TransformConfig
from ._base import BcosModelMixin
from ._features import BlockSequence, FeatureStage

__all__ = ["BcosResNet", "BasicBlock", "Bottleneck"]


def add_residual(out: Tensor, identity: Tensor) -> Tensor:
    """``out + identity``, written into ``out`` when no autograd graph is recorded (as torchvision's blocks
    do): one fresh block-sized tensor less per block, which on CPU is also a round of page faults. Out of place
    when the sum would have another dtype or shape than ``out`` (e.g. mixed precisions under autocast), and under
    ``torch.compile``, which fuses the add itself (the checks would split its graph)."""
    recorded = torch.is_grad_enabled() and (out.requires_grad or identity.requires_grad)
    if (torch.compiler.is_compiling() or recorded or out.shape != identity.shape
            or out.dtype != torch.result_type(out, identity)):  # fmt: skip
        return out + identity
    return out.add_(identity)


class BasicBlock(nn.Module):
    """Two 3×3 B-cos convs with norms and an identity (or projected) shortcut; no activations."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, *, groups: int,
                 base_width: int, conv: ConvFactory, norm: NormFactory, drop_prob: float) -> None:  # fmt: skip
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        self.conv1 = conv(inplanes, planes, kernel_size=3, stride=stride, padding=1)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, kernel_size=3, padding=1)
        self.bn2 = norm(planes)
        self.downsample = downsample
        self.stochastic_depth = StochasticDepth(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return add_residual(self.stochastic_depth(out), identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided, grouped), 1×1 expand (×4), each followed by a norm."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, *, groups: int,
                 base_width: int, conv: ConvFactory, norm: NormFactory, drop_prob: float) -> None:  # fmt: skip
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv(inplanes, width, kernel_size=1)
        self.bn1 = norm(width)
        self.conv2 = conv(width, width, kernel_size=3, stride=stride, padding=1, groups=groups)
        self.bn2 = norm(width)
        self.conv3 = conv(width, planes * self.expansion, kernel_size=1)
        self.bn3 = norm(planes * self.expansion)
        self.downsample = downsample
        self.stochastic_depth = StochasticDepth(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(out))
        return add_residual(self.stochastic_depth(out), identity)


Block = Union[type[BasicBlock], type[Bottleneck]]


class BcosResNet(BcosModelMixin, nn.Module):
    """B-cos ResNet.

    Args:
        block, layers: block type and number of blocks per stage (3 or 4 stages).
        num_classes: output classes; the logit bias defaults to ``-log(num_classes - 1)``.
        in_chans: input channels (6 = RGB + inverse).
        b, max_out: B-cos exponent and MaxOut of every conv.
        norm_layer: norm name (see ``bcos_zoo.layers.get_norm_layer``) or factory.
        logit_bias, logit_temperature: the fixed logit transform (``None`` bias: the default).
        groups, width_per_group: ResNeXt grouping.
        inplanes: channels of the first stage (64; 16 for CIFAR ResNets).
        small_inputs: 3×3 stride-1 stem without pooling, for 32×32-ish images.
        stochastic_depth_prob: maximum drop probability, growing linearly with block index.
        zero_init_residual: zero the last norm weight of each residual branch.
    """

    default_cam_layer = ("layer4", "layer3")  # Grad-CAM: the last stage (CIFAR ResNets have three)
    _classifier_path = _head_path = "fc"
    _head_modules = ("fc",)

    def __init__(
        self,
        block: Block,
        layers: list[int],
        *,
        num_classes: int = 1000,
        in_chans: int = 6,
        b: float = 2,
        max_out: int = 1,
        norm_layer: str | NormFactory | None = "bnu-linear",
        logit_bias: float | None = None,
        logit_temperature: float | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        inplanes: int = 64,
        small_inputs: bool = False,
        stochastic_depth_prob: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) not in (3, 4):
            raise ValueError(f"layers must list 3 or 4 stages, got {layers}")
        self._init_bcos(num_classes=num_classes, in_chans=in_chans, conv=bcos_conv_factory(b, max_out),
                        logit_bias=logit_bias, logit_temperature=logit_temperature)  # fmt: skip
        self._norm = get_norm_layer(norm_layer)
        self._block, self._groups, self._base_width = block, groups, width_per_group
        self.inplanes = inplanes
        if small_inputs:
            self.conv1 = self._conv(in_chans, inplanes, kernel_size=3, padding=1)
        else:
            self.conv1 = self._conv(in_chans, inplanes, kernel_size=7, stride=2, padding=3)
        self.bn1 = self._norm(inplanes)
        self.pool = nn.Identity() if small_inputs else nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        drop_probs = iter(linear_drop_probs(stochastic_depth_prob, sum(layers)))
        for i, n_blocks in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_stage(inplanes * 2**i, n_blocks, 1 if i == 0 else 2, drop_probs))
        self.layer4 = getattr(self, "layer4", None)
        self.num_features = self.inplanes
        self.fc = self._new_classifier(num_classes)
        init_bcos_weights_(self)
        if zero_init_residual:
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                if isinstance(m, (BasicBlock, Bottleneck)) and getattr(last, "weight", None) is not None:
                    nn.init.zeros_(last.weight)

    def _make_stage(self, planes: int, blocks: int, stride: int, drop_probs: Iterator[float]) -> BlockSequence:
        """``blocks`` blocks of width ``planes`` (the first strided and projected if needed), taking
        their stochastic-depth probabilities from ``drop_probs``."""
        out_ch = planes * self._block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_ch:
            projection = self._conv(self.inplanes, out_ch, kernel_size=1, stride=stride)
            downsample = nn.Sequential(projection, self._norm(out_ch))
        stage = []
        for i in range(blocks):
            stage.append(
                self._block(
                    self.inplanes, planes, stride if i == 0 else 1, downsample if i == 0 else None,
                    groups=self._groups, base_width=self._base_width, conv=self._conv, norm=self._norm,
                    drop_prob=next(drop_probs),
                )  # fmt: skip
            )
            self.inplanes = out_ch
        return BlockSequence(*stage)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and stages: ``[N, in_chans, H, W] -> [N, num_features, H/32, W/32]``."""
        x = self.pool(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return x if self.layer4 is None else self.layer4(x)

    def _stage_names(self) -> list[str]:
        return ["layer1", "layer2", "layer3"] + (["layer4"] if self.layer4 is not None else [])

    def _feature_stages(self) -> list[FeatureStage]:
        """The stem (after its norm, before pooling) and every stage, as in timm."""
        width, reduction = self.conv1.out_channels, self.conv1.stride[0]
        stages = [FeatureStage("bn1", width, reduction)]
        reduction *= 1 if isinstance(self.pool, nn.Identity) else 2
        for i, name in enumerate(self._stage_names()):
            reduction *= 1 if i == 0 else 2
            stages.append(FeatureStage(name, width * 2**i * self._block.expansion, reduction))
        return stages

    def get_feature_extractor(self) -> nn.Module:
        """A new ``nn.Sequential`` of stem and stages sharing this model's modules."""
        stages = [self.layer1, self.layer2, self.layer3] + ([self.layer4] if self.layer4 is not None else [])
        return nn.Sequential(self.conv1, self.bn1, self.pool, *stages)


IMAGENET_TRANSFORM = TransformConfig(resize_size=256, crop_size=224)
CIFAR_TRANSFORM = TransformConfig(resize_size=None, crop_size=None)

#: the CIFAR-style ResNets of the B-cos paper's ablations: 3 stages of 16/32/64 channels, 3×3 stem,
#: 10 classes, MaxOut 2 and no norm unless ``max_out`` / ``norm_layer`` say otherwise
CIFAR_DEFAULTS: dict[str, Any] = dict(
    block=BasicBlock, num_classes=10, inplanes=16, small_inputs=True, max_out=2, norm_layer="none"
)


@register_model
def bcos_resnet18(pretrained: Pretrained = False, **kwargs: Any) -> BcosResNet:
    """B-cos ResNet-18 (ImageNet layout)."""
    return build_model(BcosResNet, "bcos_resnet18", pretrained, kwargs, transform=IMAGENET_TRANSFORM, block=BasicBlock,
                       layers=[2, 2, 2, 2])


@register_model
def bcos_resnet34(pretrained: Pretrained = False, **kwargs: Any) -> BcosResNet:
    """B-cos ResNet-34 (ImageNet layout)."""
    return build_model(BcosResNet, "bcos_resnet34", pretrained, kwargs, transform=IMAGENET_TRANSFORM, block=BasicBlock,
                       layers=[3, 4, 6, 3])


@register_model
def bcos_resnet50(pretrained: Pretrained = False, **kwargs: Any) -> BcosResNet:
    """B-cos ResNet-50 (ImageNet layout)."""
    return build_model(BcosResNet, "bcos_resnet50", pretrained, kwargs, transform=IMAGENET_TRANSFORM, block=Bottleneck,
                       layers=[3, 4, 6, 3])


@register_model
def bcos_resnet101(pretrained: Pretrained = False, **kwargs: Any) -> BcosResNet:
    """B-cos ResNet-101 (ImageNet layout)."""
    return build_model(BcosResNet, "bcos_resnet101", pretrained, kwargs, transform=IMAGENET_TRANSFORM, block=Bottleneck,
                       layers=[3, 4, 23, 3])


@register_model
def bcos_resnet152(pretrained: Pretrained = False, **kwargs: Any) -> BcosResNet:
    """B-cos ResNet-152 (ImageNet layout)."""
    return build_model(BcosResNet, "bcos_resnet152", pretrained, kwargs, transform=IMAGENET_TRANSFORM, block=Bottleneck,
                       layers=[3, 8, 36, 3])


@register_model
def bcos_resnext50_32x4d(pretrained: Pretrained = False, **kwargs: Any) -> BcosResNet:
    """B-cos ResNeXt-50 32×4d (ImageNet layout)."""
    return build_model(BcosResNet, "bcos_resnext50_32x4d", pretrained, kwargs, transform=IMAGENET_TRANSFORM,
                       block=Bottleneck, layers=[3, 4, 6, 3], groups=32, width_per_group=4)


@register_model
def bcos_resnet20_cifar(pretrained: Pretrained = False, **kwargs: Any) -> BcosResNet:
    """B-cos ResNet-20 for small (e.g. 32×32) inputs."""
    return build_model(BcosResNet, "bcos_resnet20_cifar", pretrained, kwargs, transform=CIFAR_TRANSFORM, layers=[3] * 3,
                       **CIFAR_DEFAULTS)


@register_model
def bcos_resnet32_cifar(pretrained: Pretrained = False, **kwargs: Any) -> BcosResNet:
    """B-cos ResNet-32 for small inputs."""
    return build_model(BcosResNet, "bcos_resnet32_cifar", pretrained, kwargs, transform=CIFAR_TRANSFORM, layers=[5] * 3,
                       **CIFAR_DEFAULTS)


@register_model
def bcos_resnet44_cifar(pretrained: Pretrained = False, **kwargs: Any) -> BcosResNet:
    """B-cos ResNet-44 for small inputs."""
    return build_model(BcosResNet, "bcos_resnet44_cifar", pretrained, kwargs, transform=CIFAR_TRANSFORM, layers=[7] * 3,
                       **CIFAR_DEFAULTS)


@register_model
def bcos_resnet56_cifar(pretrained: Pretrained = False, **kwargs: Any) -> BcosResNet:
    """B-cos ResNet-56 for small inputs."""
    return build_model(BcosResNet, "bcos_resnet56_cifar", pretrained, kwargs, transform=CIFAR_TRANSFORM, layers=[9] * 3,
                       **CIFAR_DEFAULTS)
