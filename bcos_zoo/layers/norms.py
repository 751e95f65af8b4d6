"""Normalisation layers of the B-cos models, all explanation-mode aware.

"Uncentered" norms divide by the (biased) standard deviation but do **not** subtract the mean, so
with ``bias=False`` they are linear in their input once the variance is detached: the
explanation stays exact. Centered norms subtract the mean (a linear operation) and detach only
the variance. Parameter and buffer names equal those of the PyTorch base classes, so the official
checkpoints load strictly (including the never-used ``running_mean`` of the uncentered batch norm).

``get_norm_layer`` maps the short names of the B-cos CIFAR-10 ablation (``bnu-linear``, ``pn``,
``gnu-unaffine``, ...) to layer factories.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .detach import Detachable
from .fastpath import FoldedOutput

__all__ = [
    "BatchNormUncentered2d", "AllNormUncentered2d", "GroupNormUncentered2d", "GNInstanceNormUncentered2d",
    "GNLayerNormUncentered2d", "PositionNormUncentered2d", "DetachablePositionNorm2d", "DetachableLayerNorm",
    "DetachableGroupNorm2d", "DetachableGNInstanceNorm2d", "DetachableGNLayerNorm2d", "BatchNorm2d", "AllNorm2d",
    "NormFactory", "get_norm_layer", "NORM_NAMES",
]  # fmt: skip

NormFactory = Callable[[int], nn.Module]


def _affine(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``weight * x + bias`` with per-channel (dim 1) weight and bias; either may be absent."""
    if weight is not None:
        x = x * weight.view(-1, *([1] * (x.dim() - 2)))
    if bias is not None:
        x = x + bias.view(-1, *([1] * (x.dim() - 2)))
    return x


def _drop_bias(module: nn.Module, bias: bool) -> None:
    """Remove the bias parameter (the official ``NoBias`` wrapper), keeping the key out of state dicts."""
    if not bias and getattr(module, "bias", None) is not None:
        module.register_parameter("bias", None)


class _BatchVariance(torch.autograd.Function):
    """Biased variance over ``dims`` in two passes (the mean, then the mean squared deviation) with its
    derivative written out, ``∂var/∂x = 2(x - mean)/n``.

    ``Tensor.var`` over the batch and spatial dimensions of an NCHW tensor is a strided Welford reduction,
    3x slower forward and backward than this at ``[128, 16, 28, 28]`` on one CPU thread: a tenth of a small
    B-cos network's training step. A backward taken with ``create_graph=True`` recomputes the mean from the
    saved input, so it is differentiable again.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, dims: tuple[int, ...]) -> Tensor:
        mean = x.mean(dims, keepdim=True)
        ctx.save_for_backward(x, mean)
        ctx.dims = dims
        return (x - mean).square_().mean(dims)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        x, mean = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the mean as a function of x
            mean = x.mean(ctx.dims, keepdim=True)
        return (x - mean) * (grad.reshape(mean.shape) * (2 / (x.numel() // mean.numel()))), None


class _UncenteredBatchStats(Detachable, nn.BatchNorm2d):
    """Shared train/eval logic of the uncentered batch norms: only the variance is tracked."""

    stat_dims: tuple[int, ...] = (0, 2, 3)

    def _std(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects a 4-D [N, C, H, W] input, got shape {tuple(x.shape)}")
        use_batch = self.training or self.running_var is None
        if not use_batch:
            var = self.running_var
        else:
            var = _BatchVariance.apply(x.detach() if self.detach else x, self.stat_dims)
            if self.training and self.track_running_stats and self.running_var is not None:
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                with torch.no_grad():
                    self.running_var.mul_(1 - momentum).add_(var.detach().reshape(self.running_var.shape), alpha=momentum)
        return (var + self.eps).sqrt().reshape(1, -1, 1, 1)


class BatchNormUncentered2d(_UncenteredBatchStats):
    """Batch norm without mean subtraction: ``weight * x / sqrt(var + eps) (+ bias)``.

    The variance is the biased per-channel variance of the batch in training and ``running_var``
    in eval mode. ``bias=False`` gives the "NoBias" variant of the released models.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True, **factory: object) -> None:  # fmt: skip
        super().__init__(num_features, eps, momentum, affine, track_running_stats, **factory)
        _drop_bias(self, bias)

    #: set by a linked B-cos conv that folds this norm into its filters (see ``layers.fastpath``)
    _folded_output: FoldedOutput | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training and self._folded_output is not None and self._folded_output.take(x):
            return x  # already scaled by the conv's folded filters
        std = self._std(x)
        scale = std.reciprocal() if self.weight is None else self.weight.view(1, -1, 1, 1) / std
        if not self.training and x.dtype != scale.dtype:
            scale = scale.to(x.dtype)  # e.g. a bfloat16 activation under autocast stays bfloat16
        return _affine(x * scale, None, self.bias)  # one pass over x


class AllNormUncentered2d(BatchNormUncentered2d):
    """Uncentered norm with one variance over the whole batch (all of N, C, H, W); parameters are ``[1]``."""

    stat_dims = (0, 1, 2, 3)

    def __init__(self, num_features: int, *args: object, **kwargs: object) -> None:
        super().__init__(1, *args, **kwargs)


class GroupNormUncentered2d(Detachable, nn.GroupNorm):
    """Group norm without mean subtraction: variance over (C/G, H, W) per sample and group."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 *, bias: bool = True) -> None:  # fmt: skip
        super().__init__(num_groups, num_channels, eps, affine)
        _drop_bias(self, bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        grouped = x.reshape(n, self.num_groups, c // self.num_groups, -1)  # [N, G, C/G, H*W]
        var = (grouped.detach() if self.detach else grouped).var(dim=(2, 3), unbiased=False, keepdim=True)
        normed = (grouped / (var + self.eps).sqrt()).reshape(x.shape)
        return _affine(normed, self.weight, self.bias)


class GNInstanceNormUncentered2d(GroupNormUncentered2d):
    """Uncentered instance norm (one group per channel)."""

    def __init__(self, num_channels: int, *args: object, **kwargs: object) -> None:
        super().__init__(num_channels, num_channels, *args, **kwargs)


class GNLayerNormUncentered2d(GroupNormUncentered2d):
    """Uncentered layer norm over (C, H, W) (a single group)."""

    def __init__(self, num_channels: int, *args: object, **kwargs: object) -> None:
        super().__init__(1, num_channels, *args, **kwargs)


class PositionNormUncentered2d(Detachable, nn.LayerNorm):
    """Uncentered norm over the channels at every spatial position."""

    def __init__(self, features: int, eps: float = 1e-5, affine: bool = True, *, bias: bool = True) -> None:
        super().__init__(features, eps=eps, elementwise_affine=affine)
        _drop_bias(self, bias)

    def forward(self, x: Tensor) -> Tensor:
        var = x.var(dim=1, unbiased=False, keepdim=True)
        std = ((var.detach() if self.detach else var) + self.eps).sqrt()
        return _affine(x / std, self.weight, self.bias)


class DetachablePositionNorm2d(Detachable, nn.LayerNorm):
    """Centered layer norm over the channels at every position ("position norm", ConvNeXt)."""

    def __init__(self, features: int, eps: float = 1e-5, affine: bool = True, *, bias: bool = True) -> None:
        super().__init__(features, eps=eps, elementwise_affine=affine)
        _drop_bias(self, bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"position norm expects a 4-D [N, C, H, W] input, got shape {tuple(x.shape)}")
        if not self.detach:
            out = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
            return out.permute(0, 3, 1, 2)
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return _affine((x - mean) / (var.detach() + self.eps).sqrt(), self.weight, self.bias)


class DetachableLayerNorm(Detachable, nn.LayerNorm):
    """Centered layer norm over the last dimension(s) whose variance is detached in explanation mode."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5,
                 elementwise_affine: bool = True, *, bias: bool = True, **factory: object) -> None:  # fmt: skip
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, **factory)
        _drop_bias(self, bias)

    def forward(self, x: Tensor) -> Tensor:
        if not self.detach:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        dims = tuple(range(-len(self.normalized_shape), 0))
        var, mean = torch.var_mean(x, dim=dims, unbiased=False, keepdim=True)
        out = (x - mean) / (var.detach() + self.eps).sqrt()
        if self.weight is not None:
            out = out * self.weight
        return out + self.bias if self.bias is not None else out


class DetachableGroupNorm2d(Detachable, nn.GroupNorm):
    """Centered group norm whose variance is detached in explanation mode."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 *, bias: bool = True) -> None:  # fmt: skip
        super().__init__(num_groups, num_channels, eps, affine)
        _drop_bias(self, bias)

    def forward(self, x: Tensor) -> Tensor:
        if not self.detach:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        n, c = x.shape[:2]
        grouped = x.reshape(n, self.num_groups, -1)  # [N, G, C/G*H*W]
        var, mean = torch.var_mean(grouped, dim=2, unbiased=False, keepdim=True)
        normed = ((grouped - mean) / (var.detach() + self.eps).sqrt()).reshape(x.shape)
        return _affine(normed, self.weight, self.bias)


class DetachableGNInstanceNorm2d(DetachableGroupNorm2d):
    """Centered instance norm (one group per channel)."""

    def __init__(self, num_channels: int, *args: object, **kwargs: object) -> None:
        super().__init__(num_channels, num_channels, *args, **kwargs)


class DetachableGNLayerNorm2d(DetachableGroupNorm2d):
    """Centered layer norm over (C, H, W) (a single group), the norm of the ViT_C conv stem."""

    def __init__(self, num_channels: int, *args: object, **kwargs: object) -> None:
        super().__init__(1, num_channels, *args, **kwargs)


class _EvalOnlyExplanation(Detachable):
    """Centered batch statistics cannot be detached meaningfully: allow explanations in eval mode only."""

    def set_explanation_mode(self, active: bool = True) -> None:
        if active and self.training:
            raise RuntimeError(f"{type(self).__name__} can only be explained in eval mode: call model.eval() first")
        super().set_explanation_mode(active)


class BatchNorm2d(_EvalOnlyExplanation, nn.BatchNorm2d):
    """Standard (centered) batch norm, explainable in eval mode where it is affine."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True) -> None:  # fmt: skip
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        _drop_bias(self, bias)


class AllNorm2d(_EvalOnlyExplanation, nn.BatchNorm3d):
    """Centered batch norm with one mean and variance over all of (N, C, H, W); parameters are ``[1]``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True) -> None:  # fmt: skip
        super().__init__(1, eps, momentum, affine, track_running_stats)
        _drop_bias(self, bias)

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(f"AllNorm2d expects a 4-D [N, C, H, W] input, got shape {tuple(x.shape)[1:]}")

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.unsqueeze(1)).squeeze(1)


_CNN_NORMS: dict[str, Callable[..., nn.Module]] = {
    "bn": BatchNorm2d,
    "an": AllNorm2d,
    "gn": functools.partial(DetachableGroupNorm2d, 2),
    "in": DetachableGNInstanceNorm2d,
    "ln": DetachableGNLayerNorm2d,
    "pn": DetachablePositionNorm2d,
    "bnu": BatchNormUncentered2d,
    "anu": AllNormUncentered2d,
    "gnu": functools.partial(GroupNormUncentered2d, 2),
    "inu": GNInstanceNormUncentered2d,
    "lnu": GNLayerNormUncentered2d,
    "pnu": PositionNormUncentered2d,
}

NORM_NAMES: tuple[str, ...] = ("none",) + tuple(
    f"{base}{suffix}" for base in _CNN_NORMS for suffix in ("", "-linear", "-unaffine")
)


def _identity(num_features: int) -> nn.Module:
    return nn.Identity()


def get_norm_layer(norm: str | NormFactory | None, **kwargs: object) -> NormFactory:
    """Resolve a norm name to a factory ``f(num_features) -> nn.Module``.

    Names follow the B-cos ablation: a base (``bn``, ``an``, ``gn`` (2 groups), ``in``, ``ln``, ``pn``
    centered; the same with ``u`` appended uncentered) plus an optional suffix ``-linear`` (no bias)
    or ``-unaffine`` (no weight, no bias); ``"none"`` or ``None`` means no norm. A callable is
    returned unchanged. ``kwargs`` (e.g. ``eps``) are bound to named layers.
    """
    if callable(norm):
        return norm
    if norm is None or norm in ("none", "identity"):
        return _identity
    base, _, suffix = norm.partition("-")
    if base not in _CNN_NORMS or suffix not in ("", "linear", "unaffine"):
        import difflib

        close = difflib.get_close_matches(norm, NORM_NAMES, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown norm layer {norm!r}.{hint} Known names: {', '.join(NORM_NAMES)}")
    options: dict[str, object] = dict(kwargs)
    if suffix == "linear":
        options["bias"] = False
    elif suffix == "unaffine":
        options["affine"] = False
    return functools.partial(_CNN_NORMS[base], **options)
