"""B-cosified networks: trained standard CNNs and ViTs turned into B-cos networks (Arya et al., NeurIPS 2024).

A :class:`BcosifiedNet` is ``normalize`` (the standard network's input normalisation as a bias-free
linear map of ``[x, 1 - x]``), ``model`` (the standard network converted module by module,
:mod:`.bcosify_rules`, under its own module names) and ``logit_layer`` (bias ``-log(C - 1)``). Its
state-dict keys are those of the official B-cosification checkpoints without their Lightning
``model.`` prefix: ``model.<torchvision names>``, e.g. ``model.fc.linear.weight`` ``[1000, 2048, 1, 1]``;
:meth:`BcosifiedNet.convert_state_dict` accepts both (and a prefix-less dict).

Architectures (each builds the standard network, converts it, and loads weights if asked):
``bcosified_resnet18``, ``bcosified_resnet50``, ``bcosified_densenet121`` (torchvision, ImageNet
mean/std inside), ``bcosified_resnet20_cifar`` (``standard_resnet20_cifar``; ``in_chans=2`` for
grayscale), ``bcosified_simple_vit_*`` / ``bcosified_vitc_*`` (the ``standard_*`` ViTs) and
``bcosified``, whose ``base`` names any other supported network (``"torchvision:vgg11_bn"``,
``"standard_resnet56_cifar"``, ...). :func:`bcosify` gives converted models these identities, so
their weight files reload with ``bcos_zoo.load_model(path)``.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ..builder import Pretrained, build_model, create_model
from ..layers import bcos_conv_factory
from ..layers.bcosified import BcosifiedConv2d, BcosifiedLinear, InputNormalization
from ..records import WeightHeader
from ..registry import register_model
from ..transforms import TransformConfig, color_channels, has_inverse
from ._base import BcosModelMixin
from ._features import FeatureStage
from .bcosify_rules import convert_
from .densenet import densenet_stages
from .standard_resnet import resnet_stages
from .vgg import vgg_stages
from .vit import _CONFIGS, BCOS_TRANSFORM, STANDARD_TRANSFORM, StandardViT

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "BcosifiedCNN", "BcosifiedNet", "BcosifiedViT", "standard_cnn"]

IMAGENET_MEAN: tuple[float, ...] = STANDARD_TRANSFORM.mean or ()
IMAGENET_STD: tuple[float, ...] = STANDARD_TRANSFORM.std or ()
_IMAGENET = TransformConfig(resize_size=256, crop_size=224)
_SMALL = TransformConfig(resize_size=None, crop_size=None)


class BcosifiedNet(BcosModelMixin, nn.Module):
    """A standard network, B-cosified in place (its tensors are reused): see the module docstring.

    Args:
        net: a supported standard network (torchvision ResNet / ResNeXt / wide ResNet, DenseNet, VGG;
            bcos-zoo ``standard_resnet*_cifar`` and ``standard_*`` ViTs).
        mean, std: the normalisation the standard network was trained with (``None``: none, i.e. 0 and 1).
        b: the B-cos exponent of every unit (1: the converted network is the standard one's linear
            pieces; changeable later with :func:`bcos_zoo.layers.bcosified.set_b_`).
        keep_relu: keep the ReLUs (else they become identities).
        logit_bias, logit_temperature: the logit layer (bias default ``-log(C - 1)``).
    """

    def __init__(self, net: nn.Module, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 b: float = 2.0, keep_relu: bool = True, logit_bias: float | None = None,
                 logit_temperature: float | None = None) -> None:  # fmt: skip
        nn.Module.__init__(self)
        net, family, colors = convert_(net, b=b, keep_relu=keep_relu)
        classifier = net.get_submodule(family.classifier)
        conv = isinstance(classifier, BcosifiedConv2d)
        num_classes = classifier.out_channels if conv else classifier.out_features
        self._init_bcos(num_classes=num_classes, in_chans=2 * colors, conv=bcos_conv_factory(b, 1, BcosifiedConv2d),
                        logit_bias=logit_bias, logit_temperature=logit_temperature)  # fmt: skip
        self.family, self._trunk = family.name, family.trunk
        self._head_path, self._classifier_path = f"model.{family.head}", f"model.{family.classifier}"
        self._head_modules = ("logit_layer", self._head_path)  # what features-only mode drops
        self.num_features = classifier.in_channels if conv else classifier.in_features
        self.normalize = InputNormalization(mean or (0.0,) * colors, std or (1.0,) * colors)
        self.model = net
        self.final_relu = nn.ReLU() if family.final_relu and keep_relu else nn.Identity()
        self.model_kwargs: dict[str, Any] = {}  # what rebuilds it by name (set by the architectures and bcosify)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[N, in_chans, H, W]`` -> the feature map before the classifier (CNNs) or the tokens (ViTs)."""
        x = self.normalize(x)
        if self.family == "vit":
            return self.model.forward_features(x)
        for name in self._trunk:
            x = self.model.get_submodule(name)(x)
        return self.final_relu(x)

    def _feature_stages(self) -> list[FeatureStage]:
        """The standard network's stages (timm's choice for its family), under ``model.``."""
        net = self.model
        stages = {
            "resnet": lambda: resnet_stages(net),
            "densenet": lambda: densenet_stages(net.features),
            "vgg": lambda: vgg_stages(net.features, self.in_chans),
            "vit": lambda: net._feature_stages(),
        }[self.family]()
        return [dataclasses.replace(s, module=f"model.{s.module}") for s in stages]

    def _to_map(self, out: Tensor, input_hw: tuple[int, int], stage: FeatureStage) -> Tensor:
        return self.model._to_map(out, input_hw, stage) if self.family == "vit" else out

    def forward_head(self, x: Tensor) -> Tensor:
        """CNNs: classifier convs, global average pool, logit layer; ViTs: token mean, norm, classifier, logit layer."""
        if self.family == "vit":
            return self.logit_layer(self.model.forward_head(x))
        return super().forward_head(x)

    def get_feature_extractor(self) -> nn.Module:
        """The modules before the classifier, sharing this model's parameters (e.g. to freeze them).

        For CNNs it computes the features too; a ViT adds its positional embedding between the
        patch embedding and the transformer, so compute ViT features with :meth:`forward_features`."""
        if self.family == "vit":
            return nn.Sequential(OrderedDict(normalize=self.normalize, to_patch_embedding=self.model.to_patch_embedding,
                                             transformer=self.model.transformer))  # fmt: skip
        parts = [("normalize", self.normalize), *((n, self.model.get_submodule(n)) for n in self._trunk)]
        return nn.Sequential(OrderedDict([*parts, ("final_relu", self.final_relu)]))

    def _new_classifier(self, num_classes: int) -> nn.Module:
        """A fresh classifier, as a standard ``nn.Linear`` head would be initialised, converted like the trained one."""
        old = self.get_classifier()
        ref = old.linear.weight
        weight = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype).weight
        if self.family == "vit":
            return BcosifiedLinear.from_weight(weight, b=old.b)
        template = nn.Conv2d(1, 1, 1, device="meta")
        return BcosifiedConv2d.from_weight(weight.reshape(num_classes, self.num_features, 1, 1), template, b=old.b)

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if self.model_kwargs:
            self.model_kwargs["num_classes"] = num_classes

    def convert_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Official B-cosification keys (``model.model.<names>``, as in a Lightning ``state_dict``), ours
        (``model.<names>``) or bare network keys (``<names>``) -> ours."""
        keys = list(state_dict)
        if keys and all(k.startswith("model.model.") for k in keys):
            return {k[len("model.") :]: v for k, v in state_dict.items()}
        if keys and not any(k.startswith("model.") for k in keys):
            return {f"model.{k}": v for k, v in state_dict.items()}
        return dict(state_dict)

    def weight_header(self, classes: Sequence[str] | None = None) -> WeightHeader:
        """The header that lets ``bcos_zoo.load_model`` rebuild this model from its saved weights.

        Example:
            >>> bcos_zoo.save_weights(model.state_dict(), "model.safetensors", model.weight_header())
        """
        arch = getattr(self, "arch", None)
        if not arch or not self.model_kwargs:
            raise ValueError("this model has no registered identity (arch, model_kwargs); build it with bcosify() "
                             "or create_model('bcosified_...') to save it in a reloadable form")  # fmt: skip
        transform = self.transform.config if hasattr(self, "transform") else None
        return WeightHeader(arch=arch, model_kwargs=self.model_kwargs, classes=classes, transform=transform)


def _recorded(**kwargs: Any) -> dict[str, Any]:
    """Architecture arguments as a header stores them (JSON types, ``None`` left out)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items() if v is not None}


def standard_cnn(base: str, num_classes: int, in_chans: int) -> nn.Module:
    """The standard network ``base`` (``"torchvision:NAME"`` or a bcos-zoo ``standard_*`` architecture)
    with random weights, for a B-cosified model of ``in_chans`` channels (the image and its inverse)."""
    if not has_inverse(in_chans):
        raise ValueError(f"a B-cosified model takes the image and its inverse: in_chans=2 (gray) or 6, got {in_chans}")
    colors = color_channels(in_chans)
    if base.startswith("torchvision:"):
        if colors != 3:
            raise ValueError(f"{base} reads RGB images: in_chans must be 6, got {in_chans}")
        import torchvision

        return torchvision.models.get_model(base.split(":", 1)[1], weights=None, num_classes=num_classes)
    if not base.startswith("standard_"):
        raise ValueError(f"base must be 'torchvision:<name>' or a bcos-zoo standard_* architecture, got {base!r}")
    return create_model(base, num_classes=num_classes, in_chans=colors)


class BcosifiedCNN(BcosifiedNet):
    """A B-cosified CNN built by name: ``base`` (``"torchvision:resnet50"``, ``"standard_resnet20_cifar"``),
    then converted. ``in_chans`` counts the image and its inverse (6 for RGB, 2 for gray); the other
    arguments are those of :class:`BcosifiedNet`."""

    default_cam_layer = ("model.layer4", "model.layer3", "model.features")  # Grad-CAM: the last stage

    def __init__(self, base: str = "standard_resnet20_cifar", *, num_classes: int = 1000, in_chans: int = 6,
                 b: float = 2.0, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 keep_relu: bool = True, logit_bias: float | None = None) -> None:  # fmt: skip
        net = standard_cnn(base, num_classes, in_chans)
        super().__init__(net, mean=mean, std=std, b=b, keep_relu=keep_relu, logit_bias=logit_bias)
        self.model_kwargs = _recorded(base=base, num_classes=num_classes, in_chans=in_chans, b=b, mean=mean, std=std,
                                      keep_relu=keep_relu, logit_bias=logit_bias)  # fmt: skip


class BcosifiedViT(BcosifiedNet):
    """A B-cosified ``standard_*`` Simple ViT built by name (arguments of :class:`~bcos_zoo.models.vit.StandardViT`
    and :class:`BcosifiedNet`; ``in_chans`` counts the image and its inverse)."""

    default_cam_layer = "model.transformer"  # Grad-CAM: the last block's tokens (reshape_transform=tokens_to_map)
    _output_formats, _final_norm = ("NCHW", "NLC"), "model.linear_head.norm"

    def __init__(self, patch_size: int, dim: int, depth: int, heads: int, mlp_dim: int, conv_stem: Sequence[int] = (),
                 image_size: int = 224, *, num_classes: int = 1000, in_chans: int = 6, b: float = 2.0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 logit_bias: float | None = None) -> None:  # fmt: skip
        if not has_inverse(in_chans):
            raise ValueError(f"a B-cosified model takes the image and its inverse: in_chans=2 or 6, got {in_chans}")
        net = StandardViT(patch_size, dim, depth, heads, mlp_dim, conv_stem, image_size, num_classes=num_classes,
                          in_chans=color_channels(in_chans))  # fmt: skip
        super().__init__(net, mean=mean, std=std, b=b, logit_bias=logit_bias)
        self.model_kwargs = _recorded(patch_size=patch_size, dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim,
                                      conv_stem=tuple(conv_stem), image_size=image_size, num_classes=num_classes,
                                      in_chans=in_chans, b=b, mean=mean, std=std, logit_bias=logit_bias)  # fmt: skip


def _cnn(arch: str, base: str, pretrained: Pretrained, kwargs: dict[str, Any], **defaults: Any) -> BcosifiedCNN:
    """``base`` is the architecture's network; for ``bcosified`` the user's ``base=`` (in ``kwargs``) wins."""
    transform = _IMAGENET if str(kwargs.get("base", base)).startswith("torchvision:") else _SMALL
    defaults = defaults if "base" in kwargs else {**defaults, "base": base}
    return build_model(BcosifiedCNN, arch, pretrained, kwargs, transform=transform, **defaults)


def _vit(arch: str, pretrained: Pretrained, kwargs: dict[str, Any]) -> BcosifiedViT:
    config = _CONFIGS[arch.split("_", 1)[1]]
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}  # patch_size, dim, ... image_size
    return build_model(BcosifiedViT, arch, pretrained, kwargs, transform=BCOS_TRANSFORM, mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, **fields)  # fmt: skip


@register_model
def bcosified(pretrained: Pretrained = False, **kwargs: Any) -> BcosifiedCNN:
    """B-cosified CNN named by ``base=`` (``"torchvision:vgg11_bn"``, ``"standard_resnet56_cifar"``, ...;
    default ``standard_resnet20_cifar``); pass the standard network's ``mean``/``std``."""
    return _cnn("bcosified", "standard_resnet20_cifar", pretrained, kwargs)


@register_model
def bcosified_resnet18(pretrained: Pretrained = False, **kwargs: Any) -> BcosifiedCNN:
    """B-cosified torchvision ResNet-18 (ImageNet mean/std inside; official B-cosification key layout)."""
    return _cnn("bcosified_resnet18", "torchvision:resnet18", pretrained, kwargs, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@register_model
def bcosified_resnet50(pretrained: Pretrained = False, **kwargs: Any) -> BcosifiedCNN:
    """B-cosified torchvision ResNet-50 (ImageNet mean/std inside; official B-cosification key layout)."""
    return _cnn("bcosified_resnet50", "torchvision:resnet50", pretrained, kwargs, mean=IMAGENET_MEAN, std=IMAGENET_STD)


@register_model
def bcosified_densenet121(pretrained: Pretrained = False, **kwargs: Any) -> BcosifiedCNN:
    """B-cosified torchvision DenseNet-121 (ImageNet mean/std inside; official B-cosification key layout)."""
    return _cnn("bcosified_densenet121", "torchvision:densenet121", pretrained, kwargs, mean=IMAGENET_MEAN,
                std=IMAGENET_STD)  # fmt: skip


@register_model
def bcosified_resnet20_cifar(pretrained: Pretrained = False, **kwargs: Any) -> BcosifiedCNN:
    """B-cosified ``standard_resnet20_cifar`` (no mean/std unless given; ``in_chans=2`` for grayscale)."""
    return _cnn("bcosified_resnet20_cifar", "standard_resnet20_cifar", pretrained, kwargs)


@register_model
def bcosified_simple_vit_ti_patch16_224(pretrained: Pretrained = False, **kwargs: Any) -> BcosifiedViT:
    """B-cosified standard ViT-Ti/16."""
    return _vit("bcosified_simple_vit_ti_patch16_224", pretrained, kwargs)


@register_model
def bcosified_simple_vit_s_patch16_224(pretrained: Pretrained = False, **kwargs: Any) -> BcosifiedViT:
    """B-cosified standard ViT-S/16."""
    return _vit("bcosified_simple_vit_s_patch16_224", pretrained, kwargs)


@register_model
def bcosified_simple_vit_b_patch16_224(pretrained: Pretrained = False, **kwargs: Any) -> BcosifiedViT:
    """B-cosified standard ViT-B/16."""
    return _vit("bcosified_simple_vit_b_patch16_224", pretrained, kwargs)


@register_model
def bcosified_simple_vit_l_patch16_224(pretrained: Pretrained = False, **kwargs: Any) -> BcosifiedViT:
    """B-cosified standard ViT-L/16."""
    return _vit("bcosified_simple_vit_l_patch16_224", pretrained, kwargs)


@register_model
def bcosified_vitc_ti_patch1_14(pretrained: Pretrained = False, **kwargs: Any) -> BcosifiedViT:
    """B-cosified standard ViT-C-Ti (conv stem)."""
    return _vit("bcosified_vitc_ti_patch1_14", pretrained, kwargs)


@register_model
def bcosified_vitc_s_patch1_14(pretrained: Pretrained = False, **kwargs: Any) -> BcosifiedViT:
    """B-cosified standard ViT-C-S (conv stem)."""
    return _vit("bcosified_vitc_s_patch1_14", pretrained, kwargs)


@register_model
def bcosified_vitc_b_patch1_14(pretrained: Pretrained = False, **kwargs: Any) -> BcosifiedViT:
    """B-cosified standard ViT-C-B (conv stem)."""
    return _vit("bcosified_vitc_b_patch1_14", pretrained, kwargs)


@register_model
def bcosified_vitc_l_patch1_14(pretrained: Pretrained = False, **kwargs: Any) -> BcosifiedViT:
    """B-cosified standard ViT-C-L (conv stem)."""
    return _vit("bcosified_vitc_l_patch1_14", pretrained, kwargs)
