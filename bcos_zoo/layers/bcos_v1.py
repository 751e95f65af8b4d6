"""The B-cos v1 convolution (Böhle et al., CVPR 2022).

v1 computes the same unit as v2 (:class:`~bcos_zoo.layers.BcosConv2d`): unit-norm filters,
MaxOut over consecutive filters *before* the cosine scaling, the patch norm with ``1e-6`` inside
the square root and, for B ≠ 2, the factor ``(|cos| + 1e-6)^(B-1)`` (the "doubled" stabilising
term of the v1 code, which v2 kept). It differs in three ways only:

* MaxOut 2 is the default;
* the output is divided by a fixed ``scale``, by default ``sqrt(kh·kw) · sqrt(in_channels) / scale_fact``,
  which keeps activations of norm-free v1 networks in a healthy range;
* there are no groups and no dilation.

Explanation mode detaches the same quantities as v2 (the B-cos factor and the patch norm), which is
what v1's ``explanation_mode(detach=True)`` did.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from .bcos import BcosConv2d

__all__ = ["BcosConv2dV1", "v1_scale"]


def v1_scale(kernel_size: tuple[int, int], in_channels: int, scale_fact: float) -> float:
    """The default v1 output divisor ``sqrt(kh·kw) · sqrt(in_channels) / scale_fact``."""
    return math.sqrt(kernel_size[0] * kernel_size[1]) * math.sqrt(in_channels) / scale_fact


class BcosConv2dV1(BcosConv2d):
    """B-cos v1 convolution: the v2 unit divided by a fixed ``scale`` (MaxOut 2 by default).

    State-dict compatible with v1's ``BcosConv2d`` (key ``<name>.linear.weight``, shape
    ``[out*max_out, in, kh, kw]``).

    Args:
        *args, **kwargs: as for :class:`~bcos_zoo.layers.BcosConv2d` (``in_channels, out_channels,
            kernel_size, stride, padding``, ``b``, ...), without groups or dilation.
        max_out: filters per output unit (default 2).
        scale: fixed output divisor; ``None`` gives :func:`v1_scale` with ``scale_fact``.
        scale_fact: see ``scale`` (v1 used 100 by default, 1000 in VGG-11, 200 in Inception-v3).

    Example:
        >>> conv = BcosConv2dV1(6, 64, kernel_size=3, padding=1)  # scale = 3·sqrt(6)/100
    """

    def __init__(
        self, *args: Any, max_out: int = 2, scale: float | None = None, scale_fact: float = 100.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, max_out=max_out, **kwargs)
        if self.groups != 1 or self.dilation != (1, 1):
            raise ValueError("B-cos v1 convolutions support neither groups nor dilation")
        if scale is None:
            scale = v1_scale(self.kernel_size, self.in_channels, scale_fact)
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = float(scale)

    @classmethod
    def from_conv(cls, conv: BcosConv2d, *, scale: float | None = None, scale_fact: float = 100.0) -> BcosConv2dV1:
        """The v1 layer with the geometry and (shared) weights of a v2 ``conv`` without groups or dilation."""
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, device="meta", b=conv.b, max_out=conv.max_out, scale=scale, scale_fact=scale_fact,
        )  # fmt: skip
        new.linear = conv.linear
        new.detach = conv.detach
        return new

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) / self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:.6g}"
