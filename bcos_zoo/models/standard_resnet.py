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

__all__ = ["StandardCifarResNet", "standard_resnet20_cifar", "standard_resnet56_cifar"]


class StandardCifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (3 stages of 16/32/64 channels, 3×3 stem, no max-pool).

    Args:
        layers: blocks per stage (3 for ResNet-20, 9 for ResNet-56).
        num_classes: classifier outputs.
        in_chans: input channels (1 for grayscale, 3 for RGB).
    """

    default_cam_layer = "layer3"  # Grad-CAM: the last stage

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

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


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
