"""B-cos and standard Simple ViTs, with and without a convolutional stem (B-cos v2).

The architecture is the "simple ViT" of Beyer et al. (2022), as in the official B-cos code: the
image is cut into patches (after a stride-16 conv stem for the ``vitc`` models of Xiao et al.,
2021), linearly embedded, summed with a fixed 2-D sin-cos positional embedding and passed through
pre-norm encoder blocks. There is no class token: the tokens are averaged, normalised and
classified by a linear head.

B-cos ViTs (``bcos_*``, 6-channel input): every linear map except the q/k/v projection is a
:class:`~bcos_zoo.layers.BcosLinear` (B=2); q/k/v is a plain bias-free ``nn.Linear``; the MLP has
no activation (B-cos is the non-linearity); token norms are bias-free centered layer norms and the
stem norms bias-free layer norms over (C, H, W); a :class:`~bcos_zoo.layers.LogitLayer` adds the
bias ``-log(C - 1)``. In explanation mode the attention matrix (q and k) is a constant.
The positional embedding is an :class:`~bcos_zoo.layers.InputIndependentTerm`: its share of a
logit is not part of ``W(x)·x``, and :func:`bcos_zoo.explain` reports it in ``bias_contribution``.

Standard ViTs (``standard_*``, ImageNet-normalised RGB): ``nn.Linear`` with biases (q/k/v and the
attention output without), GELU, ``nn.LayerNorm``, biased convs and norms in the stem, no logit layer.

Checkpoints: our keys equal the official ones, except that the official B-cos ViTs carry a leading
``0.`` (they are ``BcosSequential(vit, LogitLayer)``); :meth:`BcosViT.convert_state_dict` and
:meth:`BcosViT.to_official_state_dict` map between the two.

The architecture is a :class:`ViTConfig`, whose fields are the first arguments of the model classes:
the entrypoints pass an architecture's fields as family defaults, so keyword arguments naming one of
them (``depth``, ``image_size``, ...) override it. ``image_size`` is the input resolution (224
for every model, also ``vitc``, where the official code gives the 14×14 token grid instead). It is
only checked for divisibility: the positional embedding is computed for the grid of the actual
input, so any size divisible by the total stride (16) works. Stem convs have stride 2 when they
are the first or widen the map (the official rule compares the first conv with the input
channels instead; both give the same strides for every released model).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register_model
from ..builder import Pretrained, build_model
from ..layers import (BcosLinear, ConvFactory, Detachable, DetachableGNLayerNorm2d, DetachableLayerNorm,
                      InputIndependentTerm, LogitLayer, bcos_conv_factory)  # fmt: skip
from ..transforms import TransformConfig
from ._base import BcosModelMixin
from ._features import BlockSequence, FeaturesMixin, FeatureStage
from ._wrapped import WrappedCheckpointMixin

__all__ = ["Attention", "BcosViT", "Patchify", "PosEmbSinCos2d", "StandardViT", "ViTConfig", "ViTLayers"]


@dataclass(frozen=True)
class ViTLayers:
    """The layer factories that make a ViT a B-cos or a standard one.

    ``linear(in, out, bias=...)``, ``norm(dim)``, ``conv(in, out, kernel_size, stride, padding)``,
    ``norm2d(channels)`` (stem) and ``act()``.
    """

    linear: Callable[..., nn.Module]
    norm: Callable[[int], nn.Module]
    conv: ConvFactory
    norm2d: Callable[[int], nn.Module]
    act: Callable[[], nn.Module]

    @classmethod
    def bcos(cls, b: float = 2, max_out: int = 1) -> ViTLayers:
        return cls(
            linear=functools.partial(BcosLinear, b=b, max_out=max_out),
            norm=functools.partial(DetachableLayerNorm, bias=False),
            conv=bcos_conv_factory(b, max_out),
            norm2d=functools.partial(DetachableGNLayerNorm2d, bias=False),
            act=nn.Identity,
        )

    @classmethod
    def standard(cls) -> ViTLayers:
        return cls(
            linear=nn.Linear, norm=nn.LayerNorm, conv=nn.Conv2d, norm2d=functools.partial(nn.GroupNorm, 1), act=nn.GELU
        )


class PosEmbSinCos2d(InputIndependentTerm, nn.Module):
    """Fixed 2-D sin-cos positional embedding for a ``[B, h, w, D]`` token grid -> ``[h*w, D]``.

    With ``ω_i = temperature^(-i / (D/4 - 1))`` for ``i < D/4``, token ``(y, x)`` (row-major) gets
    ``[sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)]``. Only the grid's shape is used.
    """

    def __init__(self, temperature: float = 10_000) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, grid: Tensor) -> Tensor:
        h, w, dim = grid.shape[-3:]
        if dim % 4 or dim < 8:
            raise ValueError(f"the sin-cos embedding needs a width divisible by 4 (and >= 8), got {dim}")
        y, x = torch.meshgrid(torch.arange(h, device=grid.device), torch.arange(w, device=grid.device), indexing="ij")
        omega = torch.arange(dim // 4, device=grid.device) / (dim // 4 - 1)
        omega = 1.0 / self.temperature**omega  # [D/4]
        y = y.flatten()[:, None] * omega  # [h*w, D/4]
        x = x.flatten()[:, None] * omega
        return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).to(grid.dtype)  # [h*w, D]

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class Patchify(nn.Module):
    """``[B, C, H, W] -> [B, H/p, W/p, p*p*C]``; each patch vector is ordered (row, column, channel)."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        p = self.patch_size
        if hh % p or ww % p:
            raise ValueError(f"input size {hh}x{ww} is not divisible by the patch size {p} (after the stem)")
        x = x.view(b, c, hh // p, p, ww // p, p)  # [B, C, h, p1, w, p2]
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, hh // p, ww // p, p * p * c)  # [B, h, w, p1*p2*C]

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}"


class Attention(Detachable, nn.Module):
    """Pre-norm multi-head self-attention; in explanation mode q and k are detached, so the
    attention matrix is a constant and the block is linear in its value path."""

    def __init__(self, dim: int, heads: int, layers: ViTLayers) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim // heads
        inner = self.dim_head * heads
        self.norm = layers.norm(dim)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)  # plain, also in B-cos ViTs
        self.to_out = layers.linear(inner, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """SDPA; in explanation mode q and k are detached, so the attention matrix is a constant: it is
        computed outside autograd and applied by one matmul (one in the backward too, where SDPA's would
        also differentiate q and k), and only v's third of ``to_qkv`` is on the gradient path."""
        h, inner = self.norm(x), self.heads * self.dim_head
        if self.detach:
            w_qk, w_v = self.to_qkv.weight.split((2 * inner, inner))
            with torch.no_grad():
                q, k = map(self._heads, F.linear(h, w_qk).chunk(2, dim=-1))
                attn = torch.softmax(q @ k.mT * self.dim_head**-0.5, dim=-1)  # [B, H, N, N]
            out = attn @ self._heads(F.linear(h, w_v))
        else:
            q, k, v = map(self._heads, self.to_qkv(h).chunk(3, dim=-1))
            out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / sqrt(Dh)) v: [B, H, N, Dh]
        return self.to_out(out.transpose(1, 2).flatten(2))  # [B, N, H*Dh] -> [B, N, D]

    def _heads(self, t: Tensor) -> Tensor:  # [B, N, H*Dh] -> [B, H, N, Dh]
        return t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)


class FeedForward(nn.Module):
    """Pre-norm MLP ``norm -> linear1 -> act -> linear2``."""

    def __init__(self, dim: int, hidden_dim: int, layers: ViTLayers) -> None:
        super().__init__()
        self.net = nn.Sequential(
            OrderedDict(norm=layers.norm(dim), linear1=layers.linear(dim, hidden_dim), act=layers.act(),
                        linear2=layers.linear(hidden_dim, dim))
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """One transformer block: residual attention, then residual MLP."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, layers: ViTLayers) -> None:
        super().__init__()
        self.attn = Attention(dim, heads, layers)
        self.ff = FeedForward(dim, mlp_dim, layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.attn(x) + x
        return self.ff(x) + x


def _stem_strides(channels: tuple[int, ...]) -> list[int]:
    """Stride 2 for the first stem conv and wherever the width grows, else 1."""
    return [2 if i == 0 or out > channels[i - 1] else 1 for i, out in enumerate(channels)]


def make_conv_stem(in_chans: int, channels: tuple[int, ...], layers: ViTLayers) -> nn.Sequential:
    """3×3 convs, each followed by ``norm2d`` and ``act``: ``[B, in_chans, H, W] -> [B, C_last, H/s, W/s]``."""
    modules: list[nn.Module] = []
    for out, stride in zip(channels, _stem_strides(channels)):
        modules += [
            layers.conv(in_chans, out, kernel_size=3, stride=stride, padding=1),
            layers.norm2d(out),
            layers.act(),
        ]
        in_chans = out
    return nn.Sequential(*modules)


@dataclass(frozen=True)
class ViTConfig:
    """The shape of a Simple ViT.

    Attributes:
        patch_size: side of a patch (of the stem's output map when there is a stem).
        dim, depth, heads, mlp_dim: token width, encoder blocks, attention heads (``dim_head =
            dim // heads``), hidden width of the MLP.
        conv_stem: output widths of the 3×3 stem convs (stride 2 for the first and wherever the
            width grows); empty for a plain patch embedding.
        image_size: nominal input resolution, checked for divisibility by the total stride.
    """

    patch_size: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    conv_stem: tuple[int, ...] = ()
    image_size: int = 224

    def __post_init__(self) -> None:
        stride = self.patch_size * 2 ** sum(s == 2 for s in _stem_strides(self.conv_stem))
        if self.image_size % stride:
            raise ValueError(
                f"image_size={self.image_size} must be divisible by the total stride {stride} (patch x stem)"
            )


class _SimpleViT(FeaturesMixin, nn.Module):
    """The network shared by B-cos and standard ViTs (``layers`` decides); feature stages: the encoder blocks."""

    _head_modules, _output_formats, _final_norm = ("linear_head",), ("NCHW", "NLC"), "linear_head.norm"

    def __init__(self, config: ViTConfig, layers: ViTLayers, *, num_classes: int, in_chans: int) -> None:
        super().__init__()
        c = self.config = config
        self.num_classes, self.in_chans, self.image_size, self.num_features = num_classes, in_chans, c.image_size, c.dim
        embed: OrderedDict[str, nn.Module] = OrderedDict()
        if c.conv_stem:
            embed["conv_stem"] = make_conv_stem(in_chans, c.conv_stem, layers)
        embed["patchify"] = Patchify(c.patch_size)
        embed["linear"] = layers.linear((c.conv_stem[-1] if c.conv_stem else in_chans) * c.patch_size**2, c.dim)
        self.to_patch_embedding = nn.Sequential(embed)
        self.positional_embedding = PosEmbSinCos2d()
        self.transformer = BlockSequence(
            OrderedDict((f"encoder_{i}", Encoder(c.dim, c.heads, c.mlp_dim, layers)) for i in range(c.depth))
        )
        self.linear_head = nn.Sequential(OrderedDict(norm=layers.norm(c.dim), linear=layers.linear(c.dim, num_classes)))

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W] -> [B, N, dim]`` tokens after the transformer."""
        grid = self.to_patch_embedding(x)  # [B, h, w, D]
        tokens = grid.flatten(1, 2) + self.positional_embedding(grid)  # [B, h*w, D] + [h*w, D]
        return self.transformer(tokens)

    def _feature_stages(self) -> list[FeatureStage]:
        stride = self.config.patch_size * 2 ** sum(s == 2 for s in _stem_strides(self.config.conv_stem))
        return [FeatureStage(f"transformer.encoder_{i}", self.config.dim, stride) for i in range(self.config.depth)]

    def _to_map(self, out: Tensor, input_hw: tuple[int, int], stage: FeatureStage) -> Tensor:
        return out.transpose(1, 2).unflatten(2, (input_hw[0] // stage.reduction, -1))  # [B, N, D] -> [B, D, h, w]

    def forward_head(self, tokens: Tensor) -> Tensor:
        """Mean over tokens, norm and linear classifier: ``[B, N, dim] -> [B, num_classes]``."""
        return self.linear_head(tokens.mean(dim=1))


class BcosViT(WrappedCheckpointMixin, BcosModelMixin, _SimpleViT):
    """B-cos Simple ViT (ViT-C if ``conv_stem`` is set).

    Args:
        patch_size, dim, depth, heads, mlp_dim, conv_stem, image_size: the transformer's shape
            (see :class:`ViTConfig`).
        num_classes: classes; the logit bias defaults to ``-log(num_classes - 1)``.
        in_chans: input channels (6 = RGB + inverse).
        b, max_out: B-cos exponent and MaxOut of every B-cos layer.
        logit_bias, logit_temperature: the fixed logit transform.
    """

    default_cam_layer = "transformer"  # Grad-CAM: the last block's tokens (reshape_transform=tokens_to_map)
    _classifier_path = "linear_head.linear"

    def __init__(self, patch_size: int, dim: int, depth: int, heads: int, mlp_dim: int, conv_stem: Sequence[int] = (),
                 image_size: int = 224, *, num_classes: int = 1000, in_chans: int = 6, b: float = 2, max_out: int = 1,
                 logit_bias: float | None = None, logit_temperature: float | None = None) -> None:  # fmt: skip
        config = ViTConfig(patch_size, dim, depth, heads, mlp_dim, tuple(conv_stem), image_size)
        layers = ViTLayers.bcos(b, max_out)
        super().__init__(config, layers, num_classes=num_classes, in_chans=in_chans)
        self._layers = layers
        self.logit_layer = LogitLayer.for_classes(num_classes, logit_bias, logit_temperature)

    def forward_head(self, tokens: Tensor) -> Tensor:
        """Mean over tokens, norm, B-cos linear classifier, logit transform: ``[B, N, dim] -> [B, num_classes]``."""
        return self.logit_layer(_SimpleViT.forward_head(self, tokens))

    def _new_classifier(self, num_classes: int) -> nn.Module:
        return self._layers.linear(self.num_features, num_classes)


class StandardViT(_SimpleViT):
    """Standard (non-B-cos) Simple ViT baseline (ImageNet-normalised RGB input).

    Args:
        patch_size, dim, depth, heads, mlp_dim, conv_stem, image_size: see :class:`ViTConfig`.
        num_classes, in_chans: classes and input channels.
    """

    default_cam_layer = "transformer"  # Grad-CAM: the last block's tokens (reshape_transform=tokens_to_map)

    def __init__(self, patch_size: int, dim: int, depth: int, heads: int, mlp_dim: int, conv_stem: Sequence[int] = (),
                 image_size: int = 224, *, num_classes: int = 1000, in_chans: int = 3) -> None:  # fmt: skip
        config = ViTConfig(patch_size, dim, depth, heads, mlp_dim, tuple(conv_stem), image_size)
        super().__init__(config, ViTLayers.standard(), num_classes=num_classes, in_chans=in_chans)


_WIDTHS = {"ti": (192, 3, 768), "s": (384, 6, 1536), "b": (768, 12, 3072), "l": (1024, 16, 4096)}  # dim, heads, mlp
_STEMS = {"ti": (24, 48, 96, 192), "s": (48, 96, 192, 384), "b": (64, 128, 128, 256, 256, 512)}
_STEMS["l"] = _STEMS["b"]


def _vit(size: str, patch_size: int, depth: int, conv_stem: tuple[int, ...] = ()) -> ViTConfig:
    dim, heads, mlp_dim = _WIDTHS[size]
    return ViTConfig(patch_size, dim, depth, heads, mlp_dim, conv_stem)


# keyed by the entrypoint name without its "bcos_" / "standard_" prefix
_CONFIGS: dict[str, ViTConfig] = {
    **{f"simple_vit_{s}_patch16_224": _vit(s, 16, 14 if s == "l" else 12) for s in _WIDTHS},
    **{f"vitc_{s}_patch1_14": _vit(s, 1, 13 if s == "l" else 11, _STEMS[s]) for s in _WIDTHS},
}


BCOS_TRANSFORM = TransformConfig(resize_size=256, crop_size=224)
STANDARD_TRANSFORM = TransformConfig(
    resize_size=256, crop_size=224, in_chans=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


def _build_vit(arch: str, pretrained: Pretrained, kwargs: dict[str, Any]) -> nn.Module:
    """Build ``arch`` (``bcos_*`` or ``standard_*``) with its :data:`_CONFIGS` fields as family defaults."""
    cls, transform = (BcosViT, BCOS_TRANSFORM) if arch.startswith("bcos_") else (StandardViT, STANDARD_TRANSFORM)
    return build_model(cls, arch, pretrained, kwargs, transform=transform, **asdict(_CONFIGS[arch.split("_", 1)[1]]))


@register_model
def bcos_simple_vit_ti_patch16_224(pretrained: Pretrained = False, **kwargs: Any) -> BcosViT:
    """B-cos ViT-Ti/16 (dim 192, depth 12, 3 heads)."""
    return _build_vit("bcos_simple_vit_ti_patch16_224", pretrained, kwargs)


@register_model
def bcos_simple_vit_s_patch16_224(pretrained: Pretrained = False, **kwargs: Any) -> BcosViT:
    """B-cos ViT-S/16 (dim 384, depth 12, 6 heads)."""
    return _build_vit("bcos_simple_vit_s_patch16_224", pretrained, kwargs)


@register_model
def bcos_simple_vit_b_patch16_224(pretrained: Pretrained = False, **kwargs: Any) -> BcosViT:
    """B-cos ViT-B/16 (dim 768, depth 12, 12 heads)."""
    return _build_vit("bcos_simple_vit_b_patch16_224", pretrained, kwargs)


@register_model
def bcos_simple_vit_l_patch16_224(pretrained: Pretrained = False, **kwargs: Any) -> BcosViT:
    """B-cos ViT-L/16 (dim 1024, depth 14, 16 heads)."""
    return _build_vit("bcos_simple_vit_l_patch16_224", pretrained, kwargs)


@register_model
def bcos_vitc_ti_patch1_14(pretrained: Pretrained = False, **kwargs: Any) -> BcosViT:
    """B-cos ViT-C-Ti: 4-conv stem (to 14×14 at 224 px), dim 192, depth 11."""
    return _build_vit("bcos_vitc_ti_patch1_14", pretrained, kwargs)


@register_model
def bcos_vitc_s_patch1_14(pretrained: Pretrained = False, **kwargs: Any) -> BcosViT:
    """B-cos ViT-C-S: 4-conv stem, dim 384, depth 11."""
    return _build_vit("bcos_vitc_s_patch1_14", pretrained, kwargs)


@register_model
def bcos_vitc_b_patch1_14(pretrained: Pretrained = False, **kwargs: Any) -> BcosViT:
    """B-cos ViT-C-B: 6-conv stem, dim 768, depth 11."""
    return _build_vit("bcos_vitc_b_patch1_14", pretrained, kwargs)


@register_model
def bcos_vitc_l_patch1_14(pretrained: Pretrained = False, **kwargs: Any) -> BcosViT:
    """B-cos ViT-C-L: 6-conv stem, dim 1024, depth 13."""
    return _build_vit("bcos_vitc_l_patch1_14", pretrained, kwargs)


@register_model
def standard_simple_vit_ti_patch16_224(pretrained: Pretrained = False, **kwargs: Any) -> StandardViT:
    """Standard ViT-Ti/16 baseline."""
    return _build_vit("standard_simple_vit_ti_patch16_224", pretrained, kwargs)


@register_model
def standard_simple_vit_s_patch16_224(pretrained: Pretrained = False, **kwargs: Any) -> StandardViT:
    """Standard ViT-S/16 baseline."""
    return _build_vit("standard_simple_vit_s_patch16_224", pretrained, kwargs)


@register_model
def standard_simple_vit_b_patch16_224(pretrained: Pretrained = False, **kwargs: Any) -> StandardViT:
    """Standard ViT-B/16 baseline."""
    return _build_vit("standard_simple_vit_b_patch16_224", pretrained, kwargs)


@register_model
def standard_simple_vit_l_patch16_224(pretrained: Pretrained = False, **kwargs: Any) -> StandardViT:
    """Standard ViT-L/16 baseline."""
    return _build_vit("standard_simple_vit_l_patch16_224", pretrained, kwargs)


@register_model
def standard_vitc_ti_patch1_14(pretrained: Pretrained = False, **kwargs: Any) -> StandardViT:
    """Standard ViT-C-Ti baseline."""
    return _build_vit("standard_vitc_ti_patch1_14", pretrained, kwargs)


@register_model
def standard_vitc_s_patch1_14(pretrained: Pretrained = False, **kwargs: Any) -> StandardViT:
    """Standard ViT-C-S baseline."""
    return _build_vit("standard_vitc_s_patch1_14", pretrained, kwargs)


@register_model
def standard_vitc_b_patch1_14(pretrained: Pretrained = False, **kwargs: Any) -> StandardViT:
    """Standard ViT-C-B baseline."""
    return _build_vit("standard_vitc_b_patch1_14", pretrained, kwargs)


@register_model
def standard_vitc_l_patch1_14(pretrained: Pretrained = False, **kwargs: Any) -> StandardViT:
    """Standard ViT-C-L baseline."""
    return _build_vit("standard_vitc_l_patch1_14", pretrained, kwargs)
