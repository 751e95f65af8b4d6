"""The plain 9-layer B-cos CNN of the B-cos v1 CIFAR-10 experiments ("9L-M2-B{b}").

Nine B-cos convolutions and nothing else (no norms, no pooling until the end): kernels
``[3]*8 + [1]``, strides ``[1, 1, 2, 1, 1, 2, 1, 1, 1]``, padding ``[1]*8 + [0]``, widths
``[64, 64, 128, 128, 128, 256, 256, 256, num_classes]``; the last conv is the classifier, followed
by global average pooling and the logit transform ``x / T + b``. The CIFAR ResNets of the B-cos v2
norm ablations are ``bcos_resnet{20,32,44,56}_cifar`` in :mod:`bcos_zoo.models.resnet`.

Without norms the activations of a deep B-cos net shrink with depth (each unit outputs
``‖x‖·|cos|^B`` and random directions are nearly orthogonal), until the ``1e-6`` inside the patch
norm dominates. v1 therefore divides every layer's output by a fixed ``scale``, and uses a logit
temperature T to bring the logits back to a useful range. The defaults are v1's values for the
given B: ``scale = 10^(-2 + 1.5·(2.5 - B))`` and ``T = 10^{-3, -3, -2, 1, 2, 2, 3}`` for
``B = 1, 1.25, …, 2.5`` (``log10 T`` interpolated linearly in between and held constant outside),
which also makes the v1 CIFAR-10 checkpoints (keys ``0.linear.weight`` … ``8.linear.weight``)
load as they are. ``scale=1`` turns the fixed scaling off.
"""

from __future__ import annotations

import bisect
from typing import Any

from torch import Tensor, nn

from ..registry import register_model
from ..builder import Pretrained, build_model
from ..layers import bcos_conv_factory, init_bcos_weights_
from ..layers.bcos_v1 import BcosConv2dV1
from ..transforms import TransformConfig
from ._base import BcosModelMixin
from ._features import FeatureStage, run_block

__all__ = ["BcosSimple9", "v1_cifar_scale", "v1_cifar_temperature"]

KERNELS = (3, 3, 3, 3, 3, 3, 3, 3, 1)
STRIDES = (1, 1, 2, 1, 1, 2, 1, 1, 1)
PADDING = (1, 1, 1, 1, 1, 1, 1, 1, 0)
WIDTHS = (64, 64, 128, 128, 128, 256, 256, 256)  # then num_classes

# (B, log10 T) of the v1 CIFAR-10 experiments
_V1_LOG10_T = ((1.0, -3.0), (1.25, -3.0), (1.5, -2.0), (1.75, 1.0), (2.0, 2.0), (2.25, 2.0), (2.5, 3.0))


def v1_cifar_scale(b: float) -> float:
    """The fixed per-layer output divisor of the v1 9-layer nets, ``10^(-2 + 1.5·(2.5 - b))``."""
    return 10 ** (-2 + 1.5 * (2.5 - b))


def v1_cifar_temperature(b: float) -> float:
    """The v1 logit temperature for ``b``; ``log10 T`` is interpolated linearly between v1's values."""
    bs = [p[0] for p in _V1_LOG10_T]
    i = bisect.bisect_left(bs, b)
    if i == 0 or i == len(bs):
        return 10 ** _V1_LOG10_T[min(i, len(bs) - 1)][1]
    (b0, t0), (b1, t1) = _V1_LOG10_T[i - 1], _V1_LOG10_T[i]
    return 10 ** (t0 + (t1 - t0) * (b - b0) / (b1 - b0))


class BcosSimple9(BcosModelMixin, nn.Module):
    """Plain 9-layer fully convolutional B-cos net for small images.

    The convs are children ``0`` … ``8`` (as in the v1 checkpoints' ``nn.Sequential``); ``8`` is
    the classifier.

    Args:
        num_classes: output classes (width of the last conv).
        in_chans: input channels (6 = RGB + inverse, 2 = gray + inverse).
        b: the B-cos exponent of every layer (any value >= 1).
        max_out: MaxOut of every layer (2 as in v1, or 1).
        scale: fixed divisor of every layer's output; ``None``: v1's value for ``b``; 1: none.
        logit_bias: ``None``: ``-log(num_classes - 1)``.
        logit_temperature: ``None``: v1's value for ``b``.
    """

    default_cam_layer = "7"  # Grad-CAM: the last conv before the classifier
    _classifier_path = _head_path = "8"
    _head_modules = ("8",)

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 6,
        b: float = 2,
        max_out: int = 2,
        scale: float | None = None,
        logit_bias: float | None = None,
        logit_temperature: float | None = None,
    ) -> None:
        super().__init__()
        self.scale = v1_cifar_scale(b) if scale is None else float(scale)
        temperature = v1_cifar_temperature(b) if logit_temperature is None else logit_temperature
        self._init_bcos(num_classes=num_classes, in_chans=in_chans,
                        conv=bcos_conv_factory(b, max_out, BcosConv2dV1, scale=self.scale),
                        logit_bias=logit_bias, logit_temperature=temperature)  # fmt: skip
        self.num_features = WIDTHS[-1]
        widths = (in_chans, *WIDTHS)
        for i in range(8):
            conv = self._conv(widths[i], widths[i + 1], KERNELS[i], STRIDES[i], PADDING[i])
            self.add_module(str(i), conv)
        self.add_module("8", self._new_classifier(num_classes))  # 1×1, stride 1, no padding
        init_bcos_weights_(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """Convs 0-7: ``[N, in_chans, H, W] -> [N, 256, H/4, W/4]``."""
        for i in range(8):
            x = run_block(self.get_submodule(str(i)), x, enabled=self.grad_checkpointing)
        return x

    def _feature_stages(self) -> list[FeatureStage]:
        """The output before each strided conv (convs 1 and 4) and of the last one (7)."""
        stages, reduction = [], 1
        for i in range(8):
            if i == 7 or STRIDES[i + 1] > 1:
                stages.append(FeatureStage(str(i), WIDTHS[i], reduction))
                reduction *= STRIDES[i + 1] if i < 7 else 1
        return stages

    def get_feature_extractor(self) -> nn.Module:
        """A new ``nn.Sequential`` of convs 0-7, sharing this model's modules."""
        return nn.Sequential(*(self.get_submodule(str(i)) for i in range(8)))


SMALL_TRANSFORM = TransformConfig(resize_size=None, crop_size=None)


@register_model
def bcos_simple9_cifar(pretrained: Pretrained = False, **kwargs: Any) -> BcosSimple9:
    """Plain 9-layer B-cos CNN of the v1 CIFAR-10 experiments (MaxOut 2, B=2 unless ``b`` is given)."""
    return build_model(BcosSimple9, "bcos_simple9_cifar", pretrained, kwargs, transform=SMALL_TRANSFORM)
