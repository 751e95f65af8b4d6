"""CoDA-Nets (Böhle, Fritz, Schiele, CVPR 2021): plain stacks of Dynamic Alignment Unit convolutions.

A CoDA-Net is a sequence of :class:`~bcos_zoo.layers.CoDAConv2d` layers and nothing else (the DAUs
are the only nonlinearity); the last one, with ``num_classes`` units, is the classifier. Its output
is summed over positions (average × H·W, the official ``AdaptiveSumPool2d``) and mapped to logits
by ``x / T + bias`` with a large temperature T. The whole network is dynamic linear, so in
explanation mode the contributions ``x·W(x)`` sum to ``logit - bias`` exactly.

* ``coda_simple9_cifar``: ``9L-S-CoDA-SQ-T`` of the CIFAR-10 experiments, kernels ``[3]*8 + [1]``,
  strides ``[1, 1, 2, 1, 1, 2, 1, 1, 1]``, padding ``[1]*8 + [0]``, widths
  ``[16, 16, 32, 32, 32, 64, 64, 64, num_classes]``, ranks ``[32, 32] + [64]*7``; T = 1000 (the
  paper's evaluated model); 7.78M parameters at 6 input channels and 10 classes.
* ``coda_simple9_in100``: ``9L-L-CoDA-SQ-100000`` of the ImageNet-100 experiments, kernels
  ``[7] + [3]*8``, strides ``[3, 1, 1, 2, 1, 1, 2, 1, 1]``, padding ``[3] + [1]*8``, widths
  ``[16, 32, 32, 64, 64, 64, 64, 64, num_classes]``, ranks ``[64]*3 + [128]*3 + [256]*3``; T = 1e5,
  Resize 256 + CenterCrop 240.

The state-dict keys are the official ones, ``{i}.weight_mod.weighting_f.{0.weight, 1.weight,
1.bias}`` (the pool and the logit layer have none); a ``module.`` prefix (DataParallel) is stripped
when loading.

Decided here, where the official code leaves a choice open: the DAUs keep PyTorch's default
``nn.Conv2d`` initialisation (there are no unit-norm filters whose direction alone matters, so the
B-cos Kaiming initialisation is not applied); the logit bias defaults to ``log(0.1/0.9)`` for both
architectures (the CIFAR-10 value; a constant shift of every logit, so neither the prediction nor
the explanation depends on it); ``reset_classifier`` sets ``-log(C - 1)``, which is that value for C = 10.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ..builder import Pretrained, build_model
from ..layers import CoDAConv2d
from ..layers.dau import DAUNorm
from ..registry import register_model
from ..transforms import TransformConfig
from ._base import BcosModelMixin
from ._features import FeatureStage

__all__ = ["CODA_LOGIT_BIAS", "CoDANet", "GlobalSumPool2d", "scaled_ranks"]

#: the logit bias of the CoDA-Nets CIFAR-10 configurations: a zero-evidence input gets probability 10%
CODA_LOGIT_BIAS = math.log(0.1 / 0.9)


class GlobalSumPool2d(nn.Module):
    """Sum over all positions, ``[N, C, H, W] -> [N, C, 1, 1]`` (the official ``AdaptiveSumPool2d((1, 1))``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.sum((-2, -1), keepdim=True)


def scaled_ranks(ranks: Sequence[int], rank_scale: float) -> tuple[int, ...]:
    """``ranks`` multiplied by ``rank_scale`` and rounded, at least 1 (a cheaper, lower-rank variant)."""
    if not rank_scale > 0:
        raise ValueError(f"rank_scale must be positive, got {rank_scale}")
    return tuple(max(1, round(r * rank_scale)) for r in ranks)


class CoDANet(BcosModelMixin, nn.Module):
    """A plain stack of DAU convolutions ``0`` … ``L-1`` (``L-1`` is the classifier), global sum pool,
    ``x / temperature + logit_bias``.

    Args:
        kernels, strides, paddings, ranks: per layer, the classifier included (length L).
        widths: output units of layers ``0`` … ``L-2`` (the classifier has ``num_classes``).
        num_classes: classes (units of the classifier).
        in_chans: input channels (6 = RGB + inverse, 2 = gray + inverse).
        temperature: the logit temperature T (the official models: 10 … 1e5).
        norm: ``"squash"`` (the SQ models) or ``"l2"``.
        rank_scale: multiplies every rank (rounded, at least 1).
        logit_bias: added to every logit; ``None``: ``-log(num_classes - 1)``.
    """

    default_cam_layer = "7"  # Grad-CAM: the last DAU layer before the classifier

    def __init__(
        self,
        *,
        kernels: Sequence[int],
        strides: Sequence[int],
        paddings: Sequence[int],
        widths: Sequence[int],
        ranks: Sequence[int],
        num_classes: int = 10,
        in_chans: int = 6,
        temperature: float = 1000.0,
        norm: DAUNorm = "squash",
        rank_scale: float = 1.0,
        logit_bias: float | None = CODA_LOGIT_BIAS,
    ) -> None:
        super().__init__()
        depth = len(kernels)
        if not depth >= 2 or {len(strides), len(paddings), len(ranks), len(widths) + 1} != {depth}:
            raise ValueError(
                "kernels, strides, paddings and ranks need one entry per layer, widths one fewer (the classifier has "
                f"num_classes units); got {len(kernels)}, {len(strides)}, {len(paddings)}, {len(ranks)}, {len(widths)}"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.ranks = scaled_ranks(ranks, rank_scale)
        self._geometry = tuple(zip(kernels, strides, paddings, self.ranks))
        self._init_bcos(num_classes=num_classes, in_chans=in_chans, conv=functools.partial(CoDAConv2d, norm=norm),
                        logit_bias=logit_bias, logit_temperature=temperature)  # fmt: skip
        self.avgpool = GlobalSumPool2d()  # the mixin's pooling slot: CoDA-Nets sum, they do not average
        self.num_features = widths[-1]
        self._classifier_path = self._head_path = str(depth - 1)
        self._head_modules = (self._classifier_path,)
        chans = (in_chans, *widths)
        for i, (k, s, p, r) in enumerate(self._geometry[:-1]):
            self.add_module(str(i), self._conv(chans[i], chans[i + 1], k, s, p, rank=r))
        self.add_module(self._classifier_path, self._new_classifier(num_classes))

    def _new_classifier(self, num_classes: int) -> nn.Module:
        """A freshly initialised DAU layer from ``num_features`` to ``num_classes`` units, with the
        classifier geometry and rank of this architecture."""
        k, s, p, r = self._geometry[-1]
        return self._conv(self.num_features, num_classes, k, s, p, rank=r)

    def _features(self) -> list[nn.Module]:
        return [self.get_submodule(str(i)) for i in range(len(self._geometry) - 1)]

    def forward_features(self, x: Tensor) -> Tensor:
        """Every DAU layer but the classifier: ``[N, in_chans, H, W] -> [N, num_features, h, w]``."""
        for layer in self._features():
            x = layer(x)
        return x

    def _feature_stages(self) -> list[FeatureStage]:
        """The output before each strided layer and of the last layer before the classifier (as for
        the B-cos 9-layer nets); reductions are the products of the strides (3 for the ImageNet-100 stem)."""
        depth = len(self._geometry) - 1
        stages, reduction = [], 1
        for i, (_k, stride, _p, _r) in enumerate(self._geometry[:depth]):
            reduction *= stride
            if i == depth - 1 or self._geometry[i + 1][1] > 1:
                stages.append(FeatureStage(str(i), self.get_submodule(str(i)).out_channels, reduction))
        return stages

    def get_feature_extractor(self) -> nn.Module:
        """A new ``nn.Sequential`` of the layers before the classifier, sharing this model's modules."""
        return nn.Sequential(*self._features())

    def convert_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Official checkpoints have our keys; a DataParallel ``module.`` prefix is stripped.

        Example:
            >>> model.load_state_dict(model.convert_state_dict(torch.load("model_epoch_200.pkl")))
        """
        prefix = "module."
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix) :]: v for k, v in state_dict.items()}
        return dict(state_dict)


_CIFAR = {
    "kernels": (3,) * 8 + (1,), "strides": (1, 1, 2, 1, 1, 2, 1, 1, 1), "paddings": (1,) * 8 + (0,),
    "widths": (16, 16, 32, 32, 32, 64, 64, 64), "ranks": (32, 32) + (64,) * 7,
}  # fmt: skip
_IN100 = {
    "kernels": (7,) + (3,) * 8, "strides": (3, 1, 1, 2, 1, 1, 2, 1, 1), "paddings": (3,) + (1,) * 8,
    "widths": (16, 32, 32, 64, 64, 64, 64, 64), "ranks": (64,) * 3 + (128,) * 3 + (256,) * 3,
}  # fmt: skip
CIFAR_TRANSFORM = TransformConfig(resize_size=None, crop_size=None)
IN100_TRANSFORM = TransformConfig(resize_size=256, crop_size=240)


@register_model
def coda_simple9_cifar(pretrained: Pretrained = False, **kwargs: Any) -> CoDANet:
    """9L-S-CoDA-SQ-T, the 9-layer CoDA-Net of the CIFAR-10 experiments (T = 1000 unless ``temperature``
    is given; ``norm="l2"`` for the L2 variant, ``rank_scale`` for lower ranks, ``in_chans=2`` for gray)."""
    return build_model(CoDANet, "coda_simple9_cifar", pretrained, kwargs, transform=CIFAR_TRANSFORM, **_CIFAR)


@register_model
def coda_simple9_in100(pretrained: Pretrained = False, **kwargs: Any) -> CoDANet:
    """9L-L-CoDA-SQ-100000, the 9-layer CoDA-Net of the ImageNet-100 experiments (7×7 stride-3 stem, 100
    classes, T = 1e5, Resize 256 + CenterCrop 240)."""
    return build_model(CoDANet, "coda_simple9_in100", pretrained, kwargs, transform=IN100_TRANSFORM,
                       num_classes=100, temperature=1e5, **_IN100)  # fmt: skip
