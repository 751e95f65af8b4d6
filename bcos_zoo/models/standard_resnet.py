"""Standard (non-B-cos) CIFAR ResNets: the ordinary networks that B-cosification starts from.

A plain PyTorch ResNet-20/32/44/56 in torchvision's layout and module names (``conv1``, ``bn1``,
``relu``, ``layer1``..``layer3`` of torchvision's own ``BasicBlock``, ``avgpool``, ``fc``), with
biased ``nn.Linear`` classifier and standard BatchNorm: exactly what a user's own trained CNN looks
like, so :func:`bcos_zoo.bcosify` treats it like any torchvision ResNet. Input: ``in_chans``
channels in [0, 1] (no inverse channels, no mean/std unless the transform says so).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..builder import Pretrained, build_model
from ..registry import register_model
from ..transforms import TransformConfig
from ._features import FeaturesMixin, FeatureStage

__all__ = ["StandardCifarResNet", "resnet_stages", "standard_resnet20_cifar", "standard_resnet56_cifar"]


def resnet_stages(net: nn.Module, prefix: str = "") -> list[FeatureStage]:
    """The stem (after its activation, before pooling) and every stage, as in timm, of a network in
    torchvision's ResNet layout (``conv1``, ``bn1``, ``relu``, an optional ``maxpool``, ``layer1`` …
    ``layer4``), read from its convolutions: torchvision's ResNets and the standard CIFAR ones, as they
    are or B-cosified (whose units hold a plain ``nn.Conv2d``). The stem stage is the ``relu``'s
    output because that ReLU works in place on ``bn1``'s."""

    def convs(module: nn.Module) -> list[nn.Conv2d]:
        return [m for m in module.modules() if isinstance(m, nn.Conv2d)]

    stem = convs(net.get_submodule("conv1"))[0]
    stages, reduction = [FeatureStage(f"{prefix}relu", stem.out_channels, stem.stride[0])], stem.stride[0]
    reduction *= 1 if isinstance(getattr(net, "maxpool", nn.Identity()), nn.Identity) else 2
    for name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(net, name, None)
        if layer is not None:
            reduction *= max(c.stride[0] for c in convs(layer[0]))
            stages.append(FeatureStage(f"{prefix}{name}", convs(layer[-1])[-1].out_channels, reduction))
    return stages


class StandardCifarResNet(FeaturesMixin, nn.Module):
    """The CIFAR ResNet of He et al. (3 stages of 16/32/64 channels, 3×3 stem, no max-pool).

    Args:
        layers: blocks per stage (3 for ResNet-20, 9 for ResNet-56).
        num_classes: classifier outputs.
        in_chans: input channels (1 for grayscale, 3 for RGB).
    """

    default_cam_layer = "layer3"  # Grad-CAM: the last stage
    _head_modules = ("fc",)

    def __init__(self, layers: tuple[int, int, int] = (3, 3, 3), *, num_classes: int = 10, in_chans: int = 3) -> None:
        from torchvision.models.resnet import BasicBlock  # torchvision's own block: what bcosify sees in the wild

        super().__init__()
        self.num_classes, self.in_chans, self.inplanes = num_classes, in_chans, 16
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1, self.layer2, self.layer3 = (
            self._stage(BasicBlock, planes, blocks, stride) for planes, blocks, stride in zip((16, 32, 64), layers, (1, 2, 2))
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stage(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        stage += [block(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*stage)

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and stages: ``[N, in_chans, H, W] -> [N, 64, H/4, W/4]``."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: Tensor) -> Tensor:
        """Global average pool and the linear classifier: ``[N, 64, h, w] -> [N, num_classes]``."""
        return self.fc(self.avgpool(x).flatten(1))

    def _feature_stages(self) -> list[FeatureStage]:
        return resnet_stages(self)


STANDARD_CIFAR_TRANSFORM = TransformConfig(resize_size=None, crop_size=None, in_chans=3)


@register_model
def standard_resnet20_cifar(pretrained: Pretrained = False, **kwargs: Any) -> StandardCifarResNet:
    """Standard CIFAR ResNet-20 (0.27M parameters at 3 input channels), the B-cosification baseline."""
    return build_model(StandardCifarResNet, "standard_resnet20_cifar", pretrained, kwargs,
                       transform=STANDARD_CIFAR_TRANSFORM, layers=(3, 3, 3))  # fmt: skip


@register_model
def standard_resnet56_cifar(pretrained: Pretrained = False, **kwargs: Any) -> StandardCifarResNet:
    """Standard CIFAR ResNet-56 (0.85M parameters at 3 input channels)."""
    return build_model(StandardCifarResNet, "standard_resnet56_cifar", pretrained, kwargs,
                       transform=STANDARD_CIFAR_TRANSFORM, layers=(9, 9, 9))  # fmt: skip
