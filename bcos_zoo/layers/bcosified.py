"""The units of B-cosified networks: B-cos layers that keep the trained weights of a standard network.

B-cosification (Arya et al., NeurIPS 2024) turns a trained standard network into a B-cos network
and fine-tunes it. Its units differ from the B-cos v2 ones in one point: the filters are used **as
they are** (no unit-norm filters in every forward pass), so a converted conv starts from exactly the
trained linear map: for B=2 a unit outputs ``(w·x)·|w·x| / ‖x_patch‖``; for general B
``(w·x)·(|w·x| / ‖x_patch‖ + 1e-6)^(B-1)``; at B=1 it is the plain conv. The patch norm is the
B-cos v2 one (sum of squares over the window, ``1e-6`` inside the square root).

:class:`BcosifiedConv2d` and :class:`BcosifiedLinear` subclass :class:`~bcos_zoo.layers.BcosConv2d`
and :class:`~bcos_zoo.layers.BcosLinear` (same forward, same ``<name>.linear.weight`` key) with a
plain bias-free ``nn.Conv2d`` / ``nn.Linear`` inside. :class:`InputNormalization` is the standard
network's ``Normalize`` moved inside the model as a bias-free linear map of ``[x, 1 - x]``;
:class:`DetachableGELU` is ``x·Φ(x)`` with the gate Φ(x) a constant in explanation mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .bcos import BcosConv2d, BcosLinear
from .detach import Detachable

__all__ = ["BcosifiedConv2d", "BcosifiedLinear", "DetachableGELU", "InputNormalization", "model_b", "set_b_"]


class BcosifiedConv2d(BcosConv2d):
    """B-cos convolution whose filters are used as stored (a standard conv's trained weights).

    Takes the arguments of :class:`~bcos_zoo.layers.BcosConv2d` (``max_out`` is 1); ``b`` may be
    changed between steps (:func:`set_b_`), e.g. raised from 1 to 2 during fine-tuning.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if self.max_out != 1:
            raise ValueError("B-cosified convs have one filter per output unit (max_out=1)")
        old = self.linear
        self.linear = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, bias=False, padding_mode=old.padding_mode, device=old.weight.device, dtype=old.weight.dtype,
        )  # fmt: skip

    def _filters(self) -> Tensor:
        """The filters as stored (no unit-norm normalisation): what BN folding scales."""
        return self.linear.weight

    @classmethod
    def from_weight(cls, weight: Tensor, conv: nn.Conv2d, *, b: float) -> BcosifiedConv2d:
        """A unit with ``conv``'s geometry (stride, padding, dilation, groups) and the filters ``weight``
        ``[O, I/groups, kh, kw]`` (taken as they are, not copied)."""
        out_channels, in_per_group, kh, kw = weight.shape
        unit = cls(in_per_group * conv.groups, out_channels, (kh, kw), conv.stride, conv.padding, conv.dilation,
                   conv.groups, conv.padding_mode, device="meta", dtype=weight.dtype, b=b)  # fmt: skip
        unit.linear.weight = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)
        return unit


class BcosifiedLinear(BcosLinear):
    """B-cos linear layer whose rows are used as stored (a standard ``nn.Linear``'s trained weights)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if self.max_out != 1:
            raise ValueError("B-cosified linear layers have one row per output unit (max_out=1)")
        old = self.linear
        self.linear = nn.Linear(self.in_features, self.out_features, bias=False, device=old.weight.device,
                                dtype=old.weight.dtype)  # fmt: skip

    @classmethod
    def from_weight(cls, weight: Tensor, *, b: float) -> BcosifiedLinear:
        """A unit with the rows ``weight`` ``[out, in]`` (taken as they are, not copied)."""
        unit = cls(weight.shape[1], weight.shape[0], device="meta", dtype=weight.dtype, b=b)
        unit.linear.weight = nn.Parameter(weight.detach(), requires_grad=weight.requires_grad)
        return unit


def set_b_(model: nn.Module, b: float) -> int:
    """Set the exponent B of every B-cos conv and linear unit of ``model`` (a B schedule's step);
    returns how many units were set."""
    if not b >= 1:
        raise ValueError(f"B must be >= 1 (B=1 is a plain linear unit), got b={b}")
    units = [m for m in model.modules() if isinstance(m, (BcosConv2d, BcosLinear))]
    for unit in units:
        unit.b = float(b)
    return len(units)


def model_b(model: nn.Module) -> float:
    """The largest exponent B among the B-cos conv and linear units of ``model`` (what a B schedule ends at)."""
    values = [float(m.b) for m in model.modules() if isinstance(m, (BcosConv2d, BcosLinear))]
    if not values:
        raise ValueError(f"{type(model).__name__} has no B-cos units, so it has no B to schedule")
    return max(values)


class DetachableGELU(Detachable, nn.Module):
    """``x · Φ(x)`` (Φ the standard normal CDF, or its tanh approximation) whose gate Φ(x) is a
    constant in explanation mode, so the unit is a dynamic linear map ``diag(Φ(x)) · x`` there."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def gate(self, x: Tensor) -> Tensor:
        if self.approximate == "tanh":
            return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.pow(3))))
        return 0.5 * (1 + torch.erf(x * (1 / math.sqrt(2))))

    def forward(self, x: Tensor) -> Tensor:
        gate = self.gate(x.detach() if self.detach else x)
        return x * gate

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}" if self.approximate != "none" else ""


class InputNormalization(nn.Module):
    """A standard network's input ``Normalize(mean, std)``, as a bias-free linear map of ``[x, 1 - x]``.

    Input: ``2C`` channels ``[x, 1 - x]`` (C = ``len(mean)``). Output: ``[z, -z]`` with
    ``z = ((1 - m)·x - m·(1 - x)) / s``, which equals ``(x - m) / s`` because ``x + (1 - x) = 1``;
    written this way it has no additive constant, so the contributions of the ``2C`` input
    channels sum to the logit (minus the logit bias) exactly. The first converted layer, with
    weights ``[W/2, -W/2]``, maps ``[z, -z]`` to ``W·z``: what the standard network computed.
    ``mean``/``std`` are plain floats (not in the state dict).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if not self.mean or len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(f"mean and std need one value per colour channel and std > 0, got {mean}, {std}")

    def forward(self, x: Tensor) -> Tensor:
        c = len(self.mean)
        if x.dim() != 4 or x.shape[1] != 2 * c:
            raise ValueError(f"expected [N, {2 * c}, H, W] (the image and its inverse), got shape {tuple(x.shape)}")
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        image, inverse = x[:, :c], x[:, c:]
        z = ((1 - m) * image - m * inverse) / s  # [N, C, H, W], linear in [x, 1 - x]
        return torch.cat([z, -z], dim=1)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"
