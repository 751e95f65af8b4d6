"""B-cos v1 ImageNet models (Böhle et al., CVPR 2022): ResNet-34, DenseNet-121, VGG-11, Inception-v3.

v1 networks have **no normalisation layers**: every conv is a :class:`~bcos_zoo.layers.bcos_v1.BcosConv2dV1`
(B=2, MaxOut 2, output divided by the fixed scale ``sqrt(kh·kw)·sqrt(in)/scale_fact``), pooling is
average pooling, and the classifier is a 1×1 B-cos conv before global average pooling, followed by
``x / T + b`` with ``b = log(0.01/0.99)`` and a per-model temperature T (ResNet-34: 10,
DenseNet-121: 1e-3, VGG-11: 0.1, Inception-v3: 1).

ResNet-34, DenseNet-121 and VGG-11 are the v2 architectures of this package built without norms
and with MaxOut 2, whose convs are then swapped for v1 convs (:func:`use_v1_convs`); VGG-11 also
drops the (empty) norm slots so the layer indices are v1's.

The v1 checkpoints hold ``nn.Sequential(net, pool, FinalLayer)``, so their keys start with ``0.``;
``convert_state_dict`` (applied when loading) strips it and ``to_official_state_dict`` adds it back.

Architecture details the v1 description leaves open, decided here:

* initialisation: Kaiming-normal for every model (v1 used Kaiming for ResNet/DenseNet/VGG and a
  truncated normal for Inception); with unit-norm filters only the direction distribution matters;
* Inception-v3 keeps the auxiliary classifier (``AuxLogits``; the v1 checkpoint contains it).
  ``forward`` returns the main logits only, :meth:`BcosV1InceptionV3.forward_with_aux` also the
  raw (pooled, untransformed) auxiliary logits, as v1 trained them;
* ``reset_classifier`` sets the v2 bias ``-log(C - 1)``; v1 used ``log(0.01/0.99)`` for any C.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register_model
from ..builder import Pretrained, build_model
from ..layers import BcosConv2d, ConvFactory, bcos_conv_factory, init_bcos_weights_
from ..layers.bcos_v1 import BcosConv2dV1
from ..transforms import TransformConfig
from ._base import BcosModelMixin
from ._features import BlockSequence, FeatureStage, run_block
from ._wrapped import WrappedCheckpointMixin
from .densenet import BcosDenseNet
from .resnet import BasicBlock, BcosResNet
from .vgg import VGG11, BcosVGG

__all__ = ["V1_LOGIT_BIAS", "BcosV1DenseNet", "BcosV1InceptionV3", "BcosV1ResNet", "BcosV1VGG", "use_v1_convs"]

#: the logit bias of every v1 ImageNet model: a zero-evidence input gets probability 1%
V1_LOGIT_BIAS = math.log(0.01 / 0.99)


def use_v1_convs(module: nn.Module, scale_fact: float) -> None:
    """Replace every v2 ``BcosConv2d`` below ``module`` by the v1 conv of the same geometry and weights."""
    for name, child in module.named_children():
        if type(child) is BcosConv2d:
            setattr(module, name, BcosConv2dV1.from_conv(child, scale_fact=scale_fact))
        else:
            use_v1_convs(child, scale_fact)


class _BcosV1(WrappedCheckpointMixin):
    """What the v1 models derived from v2 architectures share: v1 convs and ``0.``-prefixed checkpoints."""

    scale_fact: float = 100.0

    def _new_classifier(self, num_classes: int) -> nn.Module:
        return BcosConv2dV1.from_conv(super()._new_classifier(num_classes), scale_fact=self.scale_fact)  # type: ignore[misc]


class BcosV1ResNet(_BcosV1, BcosResNet):
    """B-cos v1 ResNet with basic blocks (no norms, MaxOut 2, v1 convs, logit temperature 10).

    Args:
        layers: basic blocks per stage.
        num_classes, in_chans, b, max_out, logit_bias, logit_temperature: as for :class:`BcosResNet`.
    """

    def __init__(self, layers: list[int], *, num_classes: int = 1000, in_chans: int = 6, b: float = 2, max_out: int = 2,
                 logit_bias: float = V1_LOGIT_BIAS, logit_temperature: float = 10.0) -> None:  # fmt: skip
        super().__init__(
            BasicBlock, layers, num_classes=num_classes, in_chans=in_chans, b=b, max_out=max_out, norm_layer="none",
            logit_bias=logit_bias, logit_temperature=logit_temperature,
        )  # fmt: skip
        use_v1_convs(self, self.scale_fact)


class BcosV1DenseNet(_BcosV1, BcosDenseNet):
    """B-cos v1 DenseNet-BC (no norms, MaxOut 2, v1 convs, logit temperature 1e-3).

    Args:
        growth_rate, block_config, num_init_features, bn_size: as for :class:`BcosDenseNet`.
        num_classes, in_chans, b, max_out, logit_bias, logit_temperature: as for :class:`BcosDenseNet`.
    """

    def __init__(self, growth_rate: int, block_config: tuple[int, ...], num_init_features: int, *, bn_size: int = 4,
                 num_classes: int = 1000, in_chans: int = 6, b: float = 2, max_out: int = 2,
                 logit_bias: float = V1_LOGIT_BIAS, logit_temperature: float = 1e-3) -> None:  # fmt: skip
        super().__init__(
            growth_rate, block_config, num_init_features, bn_size=bn_size, num_classes=num_classes, in_chans=in_chans,
            b=b, max_out=max_out, norm_layer="none", logit_bias=logit_bias, logit_temperature=logit_temperature,
        )  # fmt: skip
        use_v1_convs(self, self.scale_fact)


class BcosV1VGG(_BcosV1, BcosVGG):
    """B-cos v1 VGG (no norms, MaxOut 2, v1 convs with ``scale_fact=1000``, logit temperature 0.1).

    ``features`` holds only convs and pools (v1 indices: convs 0, 2, 4, 5, 7, 8, 10, 11 for VGG-11).

    Args:
        cfg: layer configuration (e.g. ``VGG11``).
        num_classes, in_chans, b, max_out, logit_bias, logit_temperature, hidden_features: as for :class:`BcosVGG`.
    """

    scale_fact = 1000.0

    def __init__(self, cfg: list[int | str], *, num_classes: int = 1000, in_chans: int = 6, b: float = 2,
                 max_out: int = 2, logit_bias: float = V1_LOGIT_BIAS, logit_temperature: float = 0.1,
                 hidden_features: int = 4096) -> None:  # fmt: skip
        super().__init__(
            cfg, num_classes=num_classes, in_chans=in_chans, b=b, max_out=max_out, norm_layer="none",
            logit_bias=logit_bias, logit_temperature=logit_temperature, hidden_features=hidden_features,
        )  # fmt: skip
        self.features = BlockSequence(*(m for m in self.features if not isinstance(m, nn.Identity)))
        use_v1_convs(self, self.scale_fact)


# ------------------------------------------------------------------------------------------------
# Inception-v3: torchvision's layout with B-cos v1 convs (scale_fact 200), no batch norms and
# average instead of max pools. Blocks are described by tables of branches.


@dataclass(frozen=True)
class ConvSpec:
    """One conv of an Inception block: child name, channels, kernel, stride, padding."""

    name: str
    cin: int
    cout: int
    kernel: int | tuple[int, int] = 1
    stride: int = 1
    padding: int | tuple[int, int] = 0


@dataclass(frozen=True)
class Branch:
    """An Inception branch: an optional ``AvgPool2d(kernel, stride, padding)``, a chain of convs and
    optionally parallel convs on the chain's output whose results are concatenated (``split``)."""

    convs: tuple[ConvSpec, ...] = ()
    split: tuple[ConvSpec, ...] = ()
    pool: tuple[int, int, int] | None = None


def _basic_conv(conv: ConvFactory, spec: ConvSpec) -> nn.Module:
    """v1's ``BasicConv2d``: a wrapper whose only child is ``conv`` (key ``<name>.conv.linear.weight``)."""
    return nn.Sequential(
        OrderedDict(conv=conv(spec.cin, spec.cout, kernel_size=spec.kernel, stride=spec.stride, padding=spec.padding))
    )


class InceptionBlock(nn.Module):
    """Parallel branches (see :class:`Branch`) whose outputs are concatenated along channels."""

    def __init__(self, branches: list[Branch], conv: ConvFactory) -> None:
        super().__init__()
        self.branches = branches
        for branch in branches:
            for spec in branch.convs + branch.split:
                self.add_module(spec.name, _basic_conv(conv, spec))

    def _branch(self, branch: Branch, x: Tensor) -> Tensor:
        if branch.pool is not None:
            x = F.avg_pool2d(x, *branch.pool)
        for spec in branch.convs:
            x = self.get_submodule(spec.name)(x)
        if branch.split:
            x = torch.cat([self.get_submodule(s.name)(x) for s in branch.split], 1)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self._branch(b, x) for b in self.branches], 1)


def _chain(
    prefix: str, cin: int, *steps: tuple[int, int | tuple[int, int], int, int | tuple[int, int]]
) -> tuple[ConvSpec, ...]:
    """Convs ``<prefix>1, <prefix>2, ...`` from ``(cout, kernel, stride, padding)`` steps."""
    specs = []
    for i, (cout, kernel, stride, padding) in enumerate(steps):
        specs.append(ConvSpec(f"{prefix}{i + 1}", cin, cout, kernel, stride, padding))
        cin = cout
    return tuple(specs)


_H, _V = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # horizontal / vertical 7-tap kernels with their padding


def inception_a(cin: int, pool_features: int) -> list[Branch]:
    return [
        Branch((ConvSpec("branch1x1", cin, 64),)),
        Branch(_chain("branch5x5_", cin, (48, 1, 1, 0), (64, 5, 1, 2))),
        Branch(_chain("branch3x3dbl_", cin, (64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 1, 1))),
        Branch((ConvSpec("branch_pool", cin, pool_features),), pool=(3, 1, 1)),
    ]


def inception_b(cin: int) -> list[Branch]:
    return [
        Branch((ConvSpec("branch3x3", cin, 384, 3, 2),)),
        Branch(_chain("branch3x3dbl_", cin, (64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 2, 0))),
        Branch(pool=(3, 2, 0)),
    ]


def inception_c(cin: int, c7: int) -> list[Branch]:
    return [
        Branch((ConvSpec("branch1x1", cin, 192),)),
        Branch(_chain("branch7x7_", cin, (c7, 1, 1, 0), (c7, _H[0], 1, _H[1]), (192, _V[0], 1, _V[1]))),
        Branch(
            _chain(
                "branch7x7dbl_",
                cin,
                (c7, 1, 1, 0),
                (c7, _V[0], 1, _V[1]),
                (c7, _H[0], 1, _H[1]),
                (c7, _V[0], 1, _V[1]),
                (192, _H[0], 1, _H[1]),
            )
        ),
        Branch((ConvSpec("branch_pool", cin, 192),), pool=(3, 1, 1)),
    ]


def inception_d(cin: int) -> list[Branch]:
    return [
        Branch(_chain("branch3x3_", cin, (192, 1, 1, 0), (320, 3, 2, 0))),
        Branch(
            _chain("branch7x7x3_", cin, (192, 1, 1, 0), (192, _H[0], 1, _H[1]), (192, _V[0], 1, _V[1]), (192, 3, 2, 0))
        ),
        Branch(pool=(3, 2, 0)),
    ]


def _split3(prefix: str, c: int) -> tuple[ConvSpec, ...]:
    return ConvSpec(f"{prefix}a", c, c, (1, 3), 1, (0, 1)), ConvSpec(f"{prefix}b", c, c, (3, 1), 1, (1, 0))


def inception_e(cin: int) -> list[Branch]:
    return [
        Branch((ConvSpec("branch1x1", cin, 320),)),
        Branch((ConvSpec("branch3x3_1", cin, 384),), split=_split3("branch3x3_2", 384)),
        Branch(_chain("branch3x3dbl_", cin, (448, 1, 1, 0), (384, 3, 1, 1)), split=_split3("branch3x3dbl_3", 384)),
        Branch((ConvSpec("branch_pool", cin, 192),), pool=(3, 1, 1)),
    ]


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17×17 map: pool 5/3 -> 1×1 -> 5×5 -> 1×1 classifier -> global average."""

    def __init__(self, cin: int, num_classes: int, conv: ConvFactory) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=5, stride=3)
        self.conv0 = _basic_conv(conv, ConvSpec("conv0", cin, 128))
        self.conv1 = _basic_conv(conv, ConvSpec("conv1", 128, 768, 5))
        self.fc = conv(768, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc(self.conv1(self.conv0(self.pool(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # [N, num_classes]


_INCEPTION_EARLY = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "avgpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                    "avgpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                    "Mixed_6e")  # fmt: skip
_INCEPTION_LATE = ("Mixed_7a", "Mixed_7b", "Mixed_7c")
_INCEPTION_STAGES = (("Conv2d_2b_3x3", 64, 2), ("Conv2d_4a_3x3", 192, 4), ("Mixed_5d", 288, 8), ("Mixed_6e", 768, 16),
                     ("Mixed_7c", 2048, 32))  # fmt: skip


class BcosV1InceptionV3(WrappedCheckpointMixin, BcosModelMixin, nn.Module):
    """B-cos v1 Inception-v3 (299 px input; at least 75 px).

    Args:
        num_classes: output classes.
        in_chans: input channels (6 = RGB + inverse).
        b, max_out: B-cos exponent and MaxOut of every conv.
        aux_logits: build the auxiliary classifier (needed to load the v1 checkpoint strictly).
        logit_bias, logit_temperature: the fixed logit transform (``None`` bias: ``-log(num_classes - 1)``).
    """

    default_cam_layer = "Mixed_7c"  # Grad-CAM: the last inception block
    _classifier_path = _head_path = "fc"
    _head_modules = ("fc", "AuxLogits")
    scale_fact = 200.0

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 6, b: float = 2, max_out: int = 2,
                 aux_logits: bool = True, logit_bias: float = V1_LOGIT_BIAS, logit_temperature: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        self._init_bcos(num_classes=num_classes, in_chans=in_chans,
                        conv=bcos_conv_factory(b, max_out, BcosConv2dV1, scale_fact=self.scale_fact),
                        logit_bias=logit_bias, logit_temperature=logit_temperature)  # fmt: skip
        self.num_features = 2048
        stem = [("Conv2d_1a_3x3", in_chans, 32, 3, 2, 0), ("Conv2d_2a_3x3", 32, 32, 3, 1, 0),
                ("Conv2d_2b_3x3", 32, 64, 3, 1, 1), ("Conv2d_3b_1x1", 64, 80, 1, 1, 0), ("Conv2d_4a_3x3", 80, 192, 3, 1, 0)]  # fmt: skip
        pools = {"Conv2d_2b_3x3": "avgpool1", "Conv2d_4a_3x3": "avgpool2"}  # registered in forward order
        for spec in stem:
            self.add_module(spec[0], _basic_conv(self._conv, ConvSpec(*spec)))
            if spec[0] in pools:
                self.add_module(pools[spec[0]], nn.AvgPool2d(kernel_size=3, stride=2))
        blocks = {"Mixed_5b": inception_a(192, 32), "Mixed_5c": inception_a(256, 64), "Mixed_5d": inception_a(288, 64),
                  "Mixed_6a": inception_b(288), "Mixed_6b": inception_c(768, 128), "Mixed_6c": inception_c(768, 160),
                  "Mixed_6d": inception_c(768, 160), "Mixed_6e": inception_c(768, 192), "Mixed_7a": inception_d(768),
                  "Mixed_7b": inception_e(1280), "Mixed_7c": inception_e(2048)}  # fmt: skip
        for name, branches in blocks.items():
            self.add_module(name, InceptionBlock(branches, self._conv))
        self.AuxLogits = InceptionAux(768, num_classes, self._conv) if aux_logits else None
        self.fc = self._new_classifier(num_classes)
        init_bcos_weights_(self)

    def _run(self, names: tuple[str, ...], x: Tensor) -> Tensor:
        for name in names:
            x = run_block(self.get_submodule(name), x, enabled=self.grad_checkpointing)
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """``[N, in_chans, 299, 299] -> [N, 2048, 8, 8]``."""
        return self._run(_INCEPTION_LATE, self._run(_INCEPTION_EARLY, x))

    def _feature_stages(self) -> list[FeatureStage]:
        """timm's Inception-v3 stages (nominal reductions: the unpadded convs shrink the maps a little more)."""
        return [FeatureStage(*s) for s in _INCEPTION_STAGES]

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Main logits and the raw auxiliary logits (v1 trained them with BCE, weight 0.5)."""
        if self.AuxLogits is None:
            raise RuntimeError("this model was built with aux_logits=False")
        mid = self._run(_INCEPTION_EARLY, x)
        return self.forward_head(self._run(_INCEPTION_LATE, mid)), self.AuxLogits(mid)


V1_TRANSFORM = TransformConfig(resize_size=256, crop_size=224)
V1_INCEPTION_TRANSFORM = TransformConfig(resize_size=320, crop_size=299)


@register_model
def bcos_v1_resnet34(pretrained: Pretrained = False, **kwargs: Any) -> BcosV1ResNet:
    """B-cos v1 ResNet-34 (CVPR 2022)."""
    return build_model(BcosV1ResNet, "bcos_v1_resnet34", pretrained, kwargs, transform=V1_TRANSFORM,
                       layers=[3, 4, 6, 3])


@register_model
def bcos_v1_densenet121(pretrained: Pretrained = False, **kwargs: Any) -> BcosV1DenseNet:
    """B-cos v1 DenseNet-121 (CVPR 2022)."""
    return build_model(BcosV1DenseNet, "bcos_v1_densenet121", pretrained, kwargs, transform=V1_TRANSFORM,
                       growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64)


@register_model
def bcos_v1_vgg11(pretrained: Pretrained = False, **kwargs: Any) -> BcosV1VGG:
    """B-cos v1 VGG-11 (CVPR 2022)."""
    return build_model(BcosV1VGG, "bcos_v1_vgg11", pretrained, kwargs, transform=V1_TRANSFORM, cfg=VGG11)


@register_model
def bcos_v1_inception_v3(pretrained: Pretrained = False, **kwargs: Any) -> BcosV1InceptionV3:
    """B-cos v1 Inception-v3 (CVPR 2022), 299 px input."""
    return build_model(BcosV1InceptionV3, "bcos_v1_inception_v3", pretrained, kwargs, transform=V1_INCEPTION_TRANSFORM)
