"""The module-by-module rules of B-cosification (Arya et al., NeurIPS 2024), applied in place.

Every rule keeps the trained weights (the tensors are reused, not copied):

- ``nn.Conv2d`` -> :class:`~bcos_zoo.layers.bcosified.BcosifiedConv2d`, bias dropped; the first
  layer (the one reading the image) gets ``[W/2, -W/2]`` over the ``2C`` channels ``[z, -z]``;
- ``nn.BatchNorm2d`` -> bias-free uncentered :class:`~bcos_zoo.layers.BatchNormUncentered2d` with the
  trained scale and ``running_var`` (no mean: ``running_mean`` is zeroed and never used);
- ``nn.MaxPool2d`` -> ``nn.AvgPool2d`` of the same window (``AvgPool2d(3, 2, 1)`` for ResNet/DenseNet);
- ``nn.ReLU`` kept (not in place), or ``nn.Identity`` with ``keep_relu=False``;
- the classifier ``Linear(F -> C)`` -> a 1×1 B-cos conv run *before* the global average pool (pool
  and a linear map commute); VGG's ``Linear(512·7·7 -> 4096)`` -> a 7×7 conv on the 7×7 pooled map;
- ViTs: ``nn.Linear`` -> :class:`~bcos_zoo.layers.bcosified.BcosifiedLinear` except ``to_qkv``
  (plain, bias-free; q and k are detached in explanation mode by ``Attention``); the patch
  embedding's weights are split per pixel; ``nn.LayerNorm`` / ``nn.GroupNorm`` -> the bias-free
  detachable centred norms; ``nn.GELU`` -> :class:`~bcos_zoo.layers.bcosified.DetachableGELU`.

Dropout, average pools, identities and the containers of the supported families are kept; any
other module type raises a ``TypeError`` naming every such module (no silent partial conversion).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..layers import BatchNormUncentered2d, DetachableGroupNorm2d, DetachableLayerNorm
from ..layers.bcosified import BcosifiedConv2d, BcosifiedLinear, DetachableGELU

__all__ = ["Family", "convert_", "family_of", "split_conv_weight", "split_patch_weight"]

_KEPT = (nn.Dropout, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Flatten, BcosifiedConv2d, BcosifiedLinear)
_REFUSED = {
    "ConvNeXt": "ConvNeXt's head normalises the *pooled* features (LayerNorm2d between the global pool and the "
    "Linear classifier), so the recipe's step 'classifier as a 1x1 conv before the pool' is not an equivalence "
    "for it, and the B-cosification recipe was not validated on its channels-last blocks and layer scales",
}


@dataclass(frozen=True)
class Family:
    """Where a supported network keeps its pieces.

    Attributes:
        name: ``resnet``, ``densenet``, ``vgg`` or ``vit``.
        containers: class names whose forward only composes children with linear glue (residual
            sums, concatenations, flattening), so converting their children converts them.
        trunk: children of the network run in order before the head (CNNs).
        head: the module applied before the global pool (CNNs) / the classifier's parent (ViTs).
        classifier: the class layer (``reset_classifier`` replaces it).
        final_relu: a ReLU the network applies functionally after its trunk (DenseNet).
    """

    name: str
    containers: frozenset[str]
    trunk: tuple[str, ...] = ()
    head: str = ""
    classifier: str = ""
    final_relu: bool = False


_RESNET_PARTS = frozenset({"ResNet", "StandardCifarResNet", "BasicBlock", "Bottleneck", "Sequential",
                           "BlockSequence"})  # fmt: skip
_DENSENET_PARTS = frozenset({"DenseNet", "_DenseBlock", "_DenseLayer", "_Transition", "Sequential", "BlockSequence"})
_VIT_PARTS = frozenset({"StandardViT", "Encoder", "Attention", "FeedForward", "Sequential", "BlockSequence", "Patchify",
                        "PosEmbSinCos2d"})  # fmt: skip


def family_of(net: nn.Module) -> Family:
    """The :class:`Family` of a standard network; unsupported ones raise, naming what is supported."""
    kind = type(net).__name__
    if kind in _REFUSED:
        raise TypeError(f"bcosify refuses {kind}: {_REFUSED[kind]}")
    if kind in ("ResNet", "StandardCifarResNet"):
        trunk = tuple(n for n, _ in net.named_children() if n not in ("avgpool", "fc"))
        return Family("resnet", _RESNET_PARTS, trunk, "fc", "fc")
    if kind == "DenseNet":
        return Family("densenet", _DENSENET_PARTS, ("features",), "classifier", "classifier", final_relu=True)
    if kind == "VGG":
        last = len(net.classifier) - 1
        parts = frozenset({"VGG", "Sequential", "BlockSequence"})
        return Family("vgg", parts, ("features", "avgpool"), "classifier", f"classifier.{last}")
    if kind == "StandardViT":
        return Family("vit", _VIT_PARTS, head="linear_head", classifier="linear_head.linear")
    raise TypeError(
        f"bcosify does not know how to convert {kind}: supported are torchvision ResNet / ResNeXt / wide ResNet, "
        "DenseNet and VGG (with or without BN), bcos-zoo's standard_resnet*_cifar and standard_* ViTs"
    )


def split_conv_weight(weight: Tensor) -> Tensor:
    """``[O, C, kh, kw] -> [O, 2C, kh, kw]`` as ``[W/2, -W/2]``: on ``[z, -z]`` it computes ``W·z``."""
    return torch.cat([weight, -weight], dim=1) / 2


def split_patch_weight(weight: Tensor, channels: int) -> Tensor:
    """A patch embedding ``[D, p·p·C]`` (patch vectors ordered row, column, channel) ->
    ``[D, p·p·2C]`` with ``[W/2, -W/2]`` for each pixel's ``[z, -z]``."""
    dim, features = weight.shape
    per_pixel = weight.reshape(dim, features // channels, channels)  # [D, p*p, C]
    return torch.cat([per_pixel, -per_pixel], dim=2).reshape(dim, -1) / 2  # [D, p*p*2C]


@dataclass
class _Context:
    b: float
    keep_relu: bool
    first: str  # path of the layer that reads the image
    channels: int  # colour channels of the image
    plain: frozenset[str]  # linear layers that stay plain (ViT q/k/v)
    family: Family
    refused: list[str] = field(default_factory=list)


def _uncentered_bn(bn: nn.BatchNorm2d) -> nn.Module:
    new = BatchNormUncentered2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, bias=False,
                                device="meta")  # fmt: skip
    if bn.affine:
        new.weight = bn.weight
    if bn.track_running_stats:
        new.running_var, new.num_batches_tracked = bn.running_var, bn.num_batches_tracked
        new.running_mean = torch.zeros_like(bn.running_mean)  # kept for the official key layout, never used
    return new


def _centred_norm(norm: nn.Module) -> nn.Module:
    if isinstance(norm, nn.LayerNorm):
        new = DetachableLayerNorm(norm.normalized_shape, norm.eps, norm.elementwise_affine, bias=False, device="meta")
        affine = norm.elementwise_affine
    else:
        new = DetachableGroupNorm2d(norm.num_groups, norm.num_channels, norm.eps, norm.affine, bias=False)
        affine = norm.affine
    if affine:
        new.weight = norm.weight
    return new


def _conv(conv: nn.Conv2d, ctx: _Context, path: str) -> nn.Module:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise TypeError(f"{path}: only zero-padded convs with numeric padding convert, got {conv}")
    weight = split_conv_weight(conv.weight) if path == ctx.first else conv.weight
    return BcosifiedConv2d.from_weight(weight, conv, b=ctx.b)


def _linear(linear: nn.Linear, ctx: _Context, path: str) -> nn.Module:
    if path in ctx.plain:
        plain = nn.Linear(linear.in_features, linear.out_features, bias=False, device="meta")
        plain.weight = linear.weight
        return plain
    if ctx.family.name != "vit":
        raise TypeError(f"{path}: a Linear layer outside the classifier of a {ctx.family.name} cannot be converted")
    weight = split_patch_weight(linear.weight, ctx.channels) if path == ctx.first else linear.weight
    return BcosifiedLinear.from_weight(weight, b=ctx.b)


def _pool(pool: nn.MaxPool2d, path: str) -> nn.Module:
    if pool.dilation not in (1, (1, 1)) or pool.return_indices:
        raise TypeError(f"{path}: a dilated or index-returning MaxPool2d cannot become an average pool")
    return nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode)


_RULES: dict[type[nn.Module], Callable[..., nn.Module]] = {
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.BatchNorm2d: lambda m, ctx, path: _uncentered_bn(m),
    nn.LayerNorm: lambda m, ctx, path: _centred_norm(m),
    nn.GroupNorm: lambda m, ctx, path: _centred_norm(m),
    nn.GELU: lambda m, ctx, path: DetachableGELU(m.approximate),
    nn.ReLU: lambda m, ctx, path: nn.ReLU() if ctx.keep_relu else nn.Identity(),
    nn.MaxPool2d: lambda m, ctx, path: _pool(m, path),
}


def _convert_children(module: nn.Module, prefix: str, ctx: _Context) -> None:
    for name, child in list(module.named_children()):
        path = f"{prefix}{name}"
        rule = _RULES.get(type(child))
        if rule is not None:
            setattr(module, name, rule(child, ctx, path))
        elif isinstance(child, _KEPT):
            continue
        elif type(child).__name__ in ctx.family.containers:
            _convert_children(child, path + ".", ctx)
        else:
            ctx.refused.append(f"{path} ({type(child).__module__}.{type(child).__qualname__})")


def _cnn_head_(net: nn.Module, family: Family, b: float) -> None:
    """Classifier ``Linear`` layers -> convs before the pool (VGG: the first as a k×k conv on the pooled map)."""
    head = net.get_submodule(family.head)
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    if not isinstance(layers[-1], nn.Linear):
        raise TypeError(f"{family.head}: expected a Linear classifier, got {type(layers[-1]).__name__}")
    converted = []
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            size = net.avgpool.output_size if family.name == "vgg" and i == 0 else (1, 1)
            kh, kw = (size, size) if isinstance(size, int) else size
            weight = layer.weight.reshape(layer.out_features, layer.in_features // (kh * kw), kh, kw)
            converted.append(BcosifiedConv2d.from_weight(weight, nn.Conv2d(1, 1, 1, device="meta"), b=b))
        else:
            converted.append(layer)
    setattr(net, family.head, nn.Sequential(*converted) if isinstance(head, nn.Sequential) else converted[0])


def _first_layer(net: nn.Module, family: Family) -> tuple[str, int]:
    """Path and colour channels of the layer that reads the image."""
    if family.name == "vit" and not net.config.conv_stem:
        return "to_patch_embedding.linear", net.in_chans
    path, conv = next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
    if conv is None or conv.in_channels not in (1, 3):
        raise TypeError(f"the first conv of {type(net).__name__} ({path or 'none'}) does not read a 1- or 3-channel "
                        "image")  # fmt: skip
    return path, conv.in_channels


def convert_(net: nn.Module, *, b: float, keep_relu: bool) -> tuple[nn.Module, Family, int]:
    """B-cosify ``net`` in place; returns it, its :class:`Family` and the image's colour channels.

    The input normalisation and the logit layer are not part of ``net``: the caller adds them
    (:class:`~bcos_zoo.models.bcosified.BcosifiedNet`).
    """
    family = family_of(net)
    first, channels = _first_layer(net, family)
    plain = frozenset(n for n, _ in net.named_modules() if n.endswith("to_qkv"))
    ctx = _Context(float(b), keep_relu, first, channels, plain, family)
    if family.name != "vit":
        _cnn_head_(net, family, ctx.b)
    _convert_children(net, "", ctx)
    if ctx.refused:
        raise TypeError(
            f"bcosify cannot convert these modules of {type(net).__name__}: {', '.join(ctx.refused)}. Supported "
            "inside a network: Conv2d, Linear, BatchNorm2d, LayerNorm, GroupNorm, ReLU, GELU, MaxPool2d, average "
            "pools, Dropout, Identity and the blocks of the supported families"
        )
    return net, family, channels
