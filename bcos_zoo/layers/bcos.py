"""B-cos convolution and linear layers (B-cos v2 formulation).

A B-cos unit with unit-norm weight ŵ computes ``(ŵ·x) · |cos(x, ŵ)|^(B-1)``: the linear response,
scaled down unless input and weight align. For B=2 this is ``(ŵ·x)·|ŵ·x| / ‖x‖``.

Weights are stored un-normalised (as in the official checkpoints, key ``<name>.linear.weight``)
and normalised per output unit in every forward pass, without an epsilon (in eval mode without weight
gradients the normalised, possibly BN-folded, filters are cached: ``layers.fastpath``). The input norm ‖x‖ of a
convolution is taken over each input patch, with ``1e-6`` inside the square root; the linear layer
adds ``1e-12`` outside it. MaxOut (``max_out > 1``) reduces groups of consecutive output units
before the cosine scaling.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module
from torch.nn.modules.utils import _pair

from .detach import Detachable
from .fastpath import FilterCache, FoldedOutput, weights_frozen

__all__ = [
    "BcosConv2d", "BcosLinear", "ConvFactory", "NormedConv2d", "NormedLinear", "bcos_conv_factory", "bcos_scale",
    "init_bcos_weights_", "patch_norms",
]  # fmt: skip

_size_2_t = Union[int, tuple[int, int]]

#: builds a conv from ``nn.Conv2d``-style arguments: ``conv(in_channels, out_channels, kernel_size=..., ...)``
ConvFactory = Callable[..., nn.Module]

CONV_NORM_EPS = 1e-6
LINEAR_NORM_EPS = 1e-12
COS_EPS = 1e-6


class NormedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose filters are divided by their L2 norm in every forward pass.

    In eval mode, when no gradient for the weights is needed, the normalised filters are cached
    (:class:`~bcos_zoo.layers.fastpath.FilterCache`). Otherwise, dividing the filters or dividing the
    output channels by the filter norms is the same map; the forward does whichever touches fewer
    numbers (filters in early layers, outputs in late layers at small batch sizes).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._cache = FilterCache()

    def normalized_weight(self) -> Tensor:
        """The unit-norm filters (cached in eval mode when no weight gradient is needed)."""
        w = self.weight
        if not self.training and weights_frozen(w):
            return self._cache.get((w,), lambda: w / torch.linalg.vector_norm(w, dim=(1, 2, 3), keepdim=True))
        return w / torch.linalg.vector_norm(w, dim=(1, 2, 3), keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if self.bias is not None or (not self.training and weights_frozen(w)):
            return self._conv_forward(x, self.normalized_weight(), self.bias)
        out_pixels = x.shape[0] * (x.shape[-2] // self.stride[0]) * (x.shape[-1] // self.stride[1])
        if w.numel() <= out_pixels * w.shape[0]:
            return self._conv_forward(x, self.normalized_weight(), None)
        norms = torch.linalg.vector_norm(w, dim=(1, 2, 3))  # [O]
        return self._conv_forward(x, w, None) * norms.reciprocal().view(1, -1, 1, 1)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The convolution; an ungrouped 1×1 one as a matrix product when no filter gradient is needed
        (inference and explanations): its input gradient is then one product with the transposed filters,
        10–30 % faster on CPU than the convolution's backward, and 3× for the stride-2 shortcut of a ResNet
        stage (the forward is no slower)."""
        if _pointwise_matmul(self, x, weight, bias):
            x = x[..., :: self.stride[0], :: self.stride[1]]  # the sampled positions (a copy when strided)
            return torch.matmul(weight.flatten(1), x.flatten(2)).unflatten(2, x.shape[2:])
        return super()._conv_forward(x, weight, bias)


def _pointwise_matmul(conv: nn.Conv2d, x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether ``conv`` applied to ``x`` is ``weight[O, C] @ x[N, C, H·W]`` (at the positions the stride
    samples): a 1×1 kernel without padding, dilation, groups or bias, a contiguous NCHW ``x`` (the product's
    output is NCHW too), and filters no gradient flows to (a filter gradient through the product is slower
    than the convolution's). Traced graphs (``torch.compile``, ONNX export) keep the convolution."""
    if conv.kernel_size != (1, 1) or conv.padding != (0, 0) or conv.dilation != (1, 1) or conv.groups != 1:
        return False
    if bias is not None or x.dim() != 4 or not x.is_contiguous():
        return False
    if torch.is_grad_enabled() and weight.requires_grad:
        return False
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing())


class NormedLinear(nn.Linear):
    """``nn.Linear`` whose rows are divided by their L2 norm in every forward pass (cached in eval mode
    when no weight gradient is needed)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._cache = FilterCache()

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if not self.training and weights_frozen(w):
            w_hat = self._cache.get((w,), lambda: w / torch.linalg.vector_norm(w, dim=1, keepdim=True))
        else:
            w_hat = w / torch.linalg.vector_norm(w, dim=1, keepdim=True)
        return F.linear(x, w_hat, self.bias)


class _SquareAlign(torch.autograd.Function):
    """``out·|out| / norm``, the B=2 unit, with its derivatives written out: ``∂/∂out = 2|out|/norm`` and
    ``∂/∂norm = -out·|out|/norm²`` (summed over the dimensions ``norm`` is broadcast along).

    Autograd's chain through ``abs``, ``div`` and ``mul`` runs about eight passes over the output in the
    backward; this runs three (2.5x faster forward + backward for a ``[128, 16, 28, 28]`` output on one CPU
    thread), which is most of a small B-cos network's non-convolution training time. A backward taken with
    ``create_graph=True`` recomputes the factor from the saved inputs, so it is differentiable again.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, out: Tensor, norm: Tensor) -> Tensor:
        factor = out.abs() / norm
        ctx.save_for_backward(out, norm, factor)
        return out * factor

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        out, norm, factor = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the factor as a function of out and norm
            factor = out.abs() / norm
        scaled = grad * factor
        grad_norm = -(scaled * out).sum_to_size(norm.shape) / norm if ctx.needs_input_grad[1] else None
        if not ctx.needs_input_grad[0]:
            return None, grad_norm
        return (scaled * 2 if torch.is_grad_enabled() else scaled.mul_(2)), grad_norm  # in place: no new buffer


def bcos_scale(out: Tensor, norm: Tensor, b: float, detach: bool) -> Tensor:
    """Multiply the linear response ``out`` by the B-cos factor ``|out / norm|^(b-1)``.

    ``norm`` broadcasts against ``out``. In explanation mode (``detach``) the factor is a constant
    for autograd, so the layer is linear in its input. B=2 uses the exact cheap form
    ``|out| / norm`` (no extra epsilon; in training through :class:`_SquareAlign`), any other B the
    official ``(|cos| + 1e-6)^(B-1)``.
    """
    ref = out.detach() if detach else out
    if detach:
        norm = norm.detach()
    if b == 2:
        if not torch.is_grad_enabled() or not (out.requires_grad or norm.requires_grad):
            return ref.abs().div_(norm).mul_(out)  # inference: one allocation
        return out * ref.abs().div_(norm) if detach else _SquareAlign.apply(out, norm)  # a fresh factor
    factor = (ref / norm).abs() + COS_EPS
    return out * factor.pow(b - 1)


def norm_dtype(x: Tensor) -> torch.dtype:
    """The dtype the norms of ``x`` are accumulated in: float32 for half-precision inputs (autocast runs
    the convolutions in low precision, the norms stay accurate), else ``x``'s own."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _channel_squares(x: Tensor, groups: int) -> Tensor:
    """``Σ_c x²`` per group of channels; ``square().sum(1)`` is the fastest channel reduction of an NCHW
    tensor (faster than ``vector_norm``) and differentiable also where x = 0."""
    if groups == 1:
        return x.square().sum(1, keepdim=True)
    return x.square().unflatten(1, (groups, -1)).sum(2)


class _ChannelSquares(torch.autograd.Function):
    """``Σ_c x²`` per group of channels, ``[N, C, H, W] -> [N, G, H, W]``, with the derivative ``2x·grad``
    computed in one pass over x (autograd's ``square().sum()`` backward takes two and a temporary)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, groups: int) -> Tensor:
        ctx.save_for_backward(x)
        ctx.groups = groups
        return _channel_squares(x, groups)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors  # grad [N, G, H, W] spread over each group's channels (views, one product)
        return (x.unflatten(1, (ctx.groups, -1)) * (grad * 2).unsqueeze(2)).flatten(1, 2), None


def patch_norms(
    x: Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> Tensor:
    """L2 norm of every input patch a convolution sees, ``[N, groups, H_out, W_out]``.

    The sum of squares over each (zero-padded) window is computed with a sum pool over the
    channel-summed squares (a 1×1 convolution needs only those, at its sampled positions); dilated
    windows use a ones-kernel convolution instead.
    """
    pointwise = kernel_size == (1, 1) and padding == (0, 0) and dilation == (1, 1)
    if pointwise:
        x = x[..., :: stride[0], :: stride[1]]
    x = x.to(norm_dtype(x))  # half-precision inputs (autocast) are squared and summed in float32
    grad = torch.is_grad_enabled() and x.requires_grad
    squares = _ChannelSquares.apply(x, groups) if grad else _channel_squares(x, groups)  # [N, G, H, W]
    if pointwise:
        sums = squares
    elif dilation != (1, 1) or torch.jit.is_tracing():  # ONNX's AveragePool knows no divisor_override
        ones = squares.new_ones(groups, 1, *kernel_size)
        sums = F.conv2d(squares, ones, None, stride, padding, dilation, groups)
    else:
        sums = F.avg_pool2d(squares, kernel_size, stride, padding, divisor_override=1)  # window sums
    return (sums + CONV_NORM_EPS).sqrt() if grad else sums.add_(CONV_NORM_EPS).sqrt_()  # sums: fresh


def _global_hooks() -> bool:
    """Whether global module hooks are registered (they would see a folded, scaled conv output)."""
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks)


class _MaxOut(torch.autograd.Function):
    """The MaxOut reduction ``x.unflatten(dim, (-1, M)).amax(dim + 1)`` with a two-pass backward: the
    gradient goes to the units equal to the maximum, a mask times the gradient. Autograd's ``amax`` backward
    also divides by the number of ties, in five passes over the input (converting the mask to floats alone
    was a tenth of a MaxOut ResNet-20 training step). For M = 2 (every released MaxOut model) the mask is
    ``first >= second``, taken in the forward over half as many numbers, and the second unit gets
    ``grad - grad·mask``: a tie sends the gradient to the first unit, as ``max`` does. For M > 2 each tied
    unit gets the whole gradient. Ties need two filters with exactly equal responses; where that happens at
    a zero response (a zero input patch), the B-cos factor after MaxOut makes the gradient zero anyway."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, max_out: int, dim: int) -> Tensor:
        units = x.unflatten(dim, (-1, max_out))  # [..., O, M, ...]
        out = units.amax(dim + 1)
        if max_out == 2:
            ctx.save_for_backward(units.select(dim + 1, 0) >= units.select(dim + 1, 1))
        else:
            ctx.save_for_backward(x, out)
        ctx.max_out, ctx.dim, ctx.shape = max_out, dim, x.shape
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        d = ctx.dim + 1
        if ctx.max_out == 2:
            (first,) = ctx.saved_tensors
            to_first = grad * first
            return torch.stack((to_first, grad - to_first), d).reshape(ctx.shape), None, None
        x, out = ctx.saved_tensors
        winner = x.unflatten(ctx.dim, (-1, ctx.max_out)) == out.unsqueeze(d)
        # reshape, not flatten: vmap (batched gradients, ``explain_topk``) has no batching rule for flatten
        return (winner * grad.unsqueeze(d)).reshape(ctx.shape), None, None


def _reduce_max_out(out: Tensor, max_out: int, dim: int) -> Tensor:
    """MaxOut: units ``o*M .. o*M+M-1`` form output ``o``; keep the largest response."""
    if max_out == 1:
        return out
    dim %= out.dim()
    if torch.is_grad_enabled() and out.requires_grad:
        return _MaxOut.apply(out, max_out, dim)
    return out.unflatten(dim, (-1, max_out)).amax(dim + 1)


def _check_b(b: float, max_out: int) -> None:
    if not b >= 1:
        raise ValueError(f"B must be >= 1 (B=1 is a plain linear unit), got b={b}")
    if max_out < 1:
        raise ValueError(f"max_out must be a positive integer, got max_out={max_out}")


class BcosConv2d(Detachable, nn.Module):
    """2-D B-cos convolution, state-dict compatible with the official ``BcosConv2d``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode:
            as for ``nn.Conv2d`` (there is never a bias).
        b: the alignment exponent B; 1 makes the layer linear.
        max_out: number of filters per output unit (MaxOut); 1 disables it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_2_t = 1,
        stride: _size_2_t = 1,
        padding: _size_2_t = 0,
        dilation: _size_2_t = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        b: float = 2,
        max_out: int = 1,
    ) -> None:
        super().__init__()
        _check_b(b, max_out)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups, self.b, self.max_out = groups, b, max_out
        self.linear = NormedConv2d(
            in_channels, out_channels * max_out, self.kernel_size, self.stride, self.padding,
            self.dilation, groups, bias=False, padding_mode=padding_mode, device=device, dtype=dtype,
        )  # fmt: skip
        self._fold_cache = FilterCache()

    def forward(self, x: Tensor) -> Tensor:
        fold = self._folded_norm()
        if fold is None:
            out = _reduce_max_out(self.linear(x), self.max_out, 1)  # [N, O, H', W']
        else:
            out = self.linear._conv_forward(x, self._folded_filters(fold), None)
        if self.b == 1:
            return out
        with torch.no_grad() if self.detach and torch.is_grad_enabled() else contextlib.nullcontext():  # detached
            norm = patch_norms(x, self.kernel_size, self.stride, self.padding, self.dilation, self.groups)
        if self.groups == 1:
            out = bcos_scale(out, norm, self.b, self.detach)
        else:
            grouped = out.unflatten(1, (self.groups, -1))  # [N, G, O/G, H', W']
            out = bcos_scale(grouped, norm.unsqueeze(2), self.b, self.detach).flatten(1, 2)
        return out if fold is None else fold._folded_output.mark(out)

    def can_fold(self, norm: nn.Module) -> bool:
        """Whether a following uncentred batch norm ``norm`` can be folded into the filters exactly
        (B = 2, MaxOut 1, no norm bias; see :mod:`bcos_zoo.layers.fastpath`)."""
        return (self.b == 2 and self.max_out == 1 and getattr(norm, "bias", None) is None
                and getattr(norm, "num_features", None) == self.out_channels)  # fmt: skip

    def _folded_norm(self) -> nn.Module | None:
        """The linked norm when folding applies now: both modules in eval mode without hooks, the norm
        on running statistics, and no gradient needed for the conv filters or the norm."""
        norm = self.__dict__.get("_fold_norm")
        if norm is None or self.training or norm.training or norm.running_var is None:
            return None
        if self._forward_hooks or self._forward_pre_hooks or norm._forward_hooks or norm._forward_pre_hooks:
            return None
        if _global_hooks():
            return None
        if not weights_frozen(self.linear.weight, norm.weight, norm.running_var):
            return None
        if getattr(norm, "_folded_output", None) is None:
            norm._folded_output = FoldedOutput()
        return norm

    def _filters(self) -> Tensor:
        """The filters this unit applies: unit-norm ones (B-cosified units override it with their own)."""
        return self.linear.normalized_weight()

    def _folded_filters(self, norm: nn.Module) -> Tensor:
        """``sign(c)·sqrt(|c|)·ŵ`` with the norm's eval scale ``c = γ / sqrt(running_var + eps)``, cached."""

        def compute() -> Tensor:
            c = (norm.running_var + norm.eps).rsqrt()
            if norm.weight is not None:
                c = c * norm.weight
            return self._filters() * (c.sign() * c.abs().sqrt()).view(-1, 1, 1, 1)

        sources = (self.linear.weight, norm.weight, norm.running_var)
        return self._fold_cache.get(sources, compute, extra=(norm.eps,))

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        s += f", B={self.b}"
        return s + (f", max_out={self.max_out}" if self.max_out > 1 else "")


class BcosLinear(Detachable, nn.Module):
    """B-cos linear layer over the last dimension, compatible with the official ``BcosLinear``.

    ``bias`` is accepted for signature compatibility with ``nn.Linear`` but must be False: a bias
    would break the dynamic-linear property.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        b: float = 2,
        max_out: int = 1,
    ) -> None:
        super().__init__()
        if bias:
            raise ValueError("BcosLinear has no bias: a bias breaks the dynamic-linear property")
        _check_b(b, max_out)
        self.in_features, self.out_features = in_features, out_features
        self.b, self.max_out = b, max_out
        self.linear = NormedLinear(in_features, out_features * max_out, bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        out = _reduce_max_out(self.linear(x), self.max_out, -1)
        if self.b == 1:
            return out
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=norm_dtype(x)) + LINEAR_NORM_EPS
        return bcos_scale(out, norm, self.b, self.detach)

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}, B={self.b}"
        return s + (f", max_out={self.max_out}" if self.max_out > 1 else "")


def bcos_conv_factory(b: float, max_out: int, conv_cls: ConvFactory = BcosConv2d, **options: float) -> ConvFactory:
    """The conv factory a model builds all its convs with: ``conv_cls`` (default :class:`BcosConv2d`)
    with the model's B-cos exponent ``b``, ``max_out`` and any further fixed ``options``.

    Example:
        >>> conv = bcos_conv_factory(b=2, max_out=1)
        >>> layer = conv(64, 128, kernel_size=3, padding=1)
    """
    return functools.partial(conv_cls, b=b, max_out=max_out, **options)


def init_bcos_weights_(module: nn.Module) -> None:
    """Initialise ``module`` in place as the official B-cos CNNs do: Kaiming-normal (fan-out) conv
    weights, norm weights 1 and biases 0.

    Every model calls it at the end of its ``__init__`` and on a new classifier. With B-cos convs
    (filters normalised in every forward pass) only the directions of the filters matter.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
