"""``bcosify``: turn a trained standard network into a B-cos network (B-cosification, Arya et al., NeurIPS 2024).

The converted model keeps every trained weight and is a full bcos-zoo model (``transform``,
``explain``, ``reset_classifier``, ``get_classifier``; see :class:`~bcos_zoo.models.bcosified.BcosifiedNet`
for what changes). It gets a registered identity (``bcosified_resnet50``, ``bcosified_simple_vit_s_patch16_224``,
``bcosified`` with ``base="torchvision:vgg11_bn"``, ...), so its weights, saved with
``bcos_zoo.save_weights(model.state_dict(), path, model.weight_header())``, reload with
``bcos_zoo.load_model(path)``. Fine-tune it with the B-cos recipe (``bcos-zoo bcosify``).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .models.bcosified import IMAGENET_MEAN, IMAGENET_STD, BcosifiedNet
from .models.bcosify_rules import family_of
from .models.vit import _CONFIGS
from .registry import is_model
from .transforms import TransformConfig, create_transform

__all__ = ["StandardTeacher", "bcosify", "load_standard"]

log = logging.getLogger(__name__)

_TORCHVISION_PREFIXES = {"ResNet": ("resnet", "resnext", "wide_resnet"), "DenseNet": ("densenet",), "VGG": ("vgg",)}


def _shapes(net: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _depth(net: nn.Module) -> int:
    """The depth torchvision's names count: convs (without the shortcut projections) plus linear layers."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for n, m in net.named_modules() if "downsample" not in n)


def _torchvision_name(net: nn.Module, num_classes: int) -> str | None:
    """The torchvision builder that makes exactly ``net``'s structure (compared on the meta device), if any;
    only builders whose name carries ``net``'s depth are tried."""
    import torchvision

    prefixes = _TORCHVISION_PREFIXES.get(type(net).__name__, ())
    if type(net).__module__.split(".")[0] != "torchvision" or not prefixes:
        return None
    shapes, depth = _shapes(net), str(_depth(net))
    for name in sorted(torchvision.models.list_models(module=torchvision.models)):
        if name.startswith(prefixes) and re.search(r"\d+", name).group() == depth:  # resnext50_32x4d: 50
            with torch.device("meta"):
                candidate = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
            if type(candidate) is type(net) and _shapes(candidate) == shapes:
                return name
    return None


def _vit_identity(net: nn.Module) -> tuple[str | None, dict[str, Any]]:
    config = asdict(net.config)
    base = getattr(net, "arch", "")
    if not (base.startswith("standard_") and base[len("standard_") :] in _CONFIGS):
        shape = {k: v for k, v in config.items() if k not in ("depth", "image_size")}
        base = next((f"standard_{n}" for n, c in _CONFIGS.items()
                     if {k: v for k, v in asdict(c).items() if k in shape} == shape), "")  # fmt: skip
    arch = f"bcosified_{base[len('standard_'):]}" if base else None
    return arch, {**config, "conv_stem": list(config["conv_stem"])}


def _cnn_identity(net: nn.Module, num_classes: int) -> tuple[str | None, dict[str, Any]]:
    base = getattr(net, "arch", None)
    if not (isinstance(base, str) and base.startswith("standard_") and is_model(base)):
        name = _torchvision_name(net, num_classes)
        base = f"torchvision:{name}" if name else None
    if base is None:
        return None, {}
    short = base.split(":", 1)[-1].removeprefix("standard_")
    arch = f"bcosified_{short}"
    return (arch, {}) if is_model(arch) else ("bcosified", {"base": base})


def _source_normalisation(net: nn.Module) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The standard network's input normalisation: its transform's, else ImageNet's for torchvision models."""
    config = getattr(getattr(net, "transform", None), "config", None)
    if isinstance(config, TransformConfig):
        return config.mean, config.std
    if type(net).__module__.split(".")[0] == "torchvision":
        return IMAGENET_MEAN, IMAGENET_STD
    return None, None


def _eval_transform(net: nn.Module, in_chans: int) -> TransformConfig:
    """The standard network's resize and crop (ImageNet's 256 -> 224 if unknown), without mean/std."""
    config = getattr(getattr(net, "transform", None), "config", None)
    if isinstance(config, TransformConfig):
        return TransformConfig(config.resize_size, config.crop_size, config.interpolation, in_chans)
    return TransformConfig(resize_size=256, crop_size=224, in_chans=in_chans)


def bcosify(model: nn.Module, *, num_classes: int | None = None, b: float = 2.0, mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None, keep_relu: bool = True,
            logit_bias: float | None = None) -> BcosifiedNet:  # fmt: skip
    """A B-cos network made from the trained standard network ``model`` (left unchanged; its weights are copied).

    Every conv/linear becomes a B-cos unit keeping its trained weights (B=2 by default), the first
    layer reads ``[z, -z]`` with weights ``[W/2, -W/2]``, the input normalisation moves inside as a
    bias-free linear map of ``[x, 1 - x]`` (so contributions sum exactly to logit - logit bias),
    BatchNorm becomes the bias-free uncentered B-cos BN with the trained scale and variance, MaxPool
    an AvgPool, biases are dropped, the classifier a 1×1 B-cos conv before the global pool, and
    ``LogitLayer(-log(C - 1))`` ends the model. ViTs: q/k/v stay plain (detached in explanation
    mode), GELU's gate and the centred norms' variance are detached in explanation mode.

    Supported: torchvision ResNet, ResNeXt, wide ResNet, DenseNet, VGG (with and without BN),
    bcos-zoo ``standard_resnet*_cifar`` and ``standard_*`` ViTs. ConvNeXt is refused: its head
    normalises the pooled features with a LayerNorm before the Linear classifier, so moving the
    classifier before the pool (the recipe) is not an equivalence, and the recipe was not validated
    on its channels-last blocks. Any module of another type raises a ``TypeError`` naming it.

    Args:
        model: the trained standard network.
        num_classes: a new classifier for this many classes (``None``: keep the trained one).
        b: the B-cos exponent (1 to 2; ``TrainConfig(b_schedule="linear")`` raises it from 1 during fine-tuning).
        mean, std: the normalisation ``model`` was trained with; default: its bcos-zoo transform's,
            ImageNet's for torchvision models, else none.
        keep_relu: keep the ReLUs (the paper's default) or make them identities.
        logit_bias: default ``-log(C - 1)``.

    Example:
        >>> model = bcos_zoo.bcosify(torchvision.models.resnet50(weights="DEFAULT")).eval()
        >>> out = model.explain(model.transform("cat.jpg")[None])
        >>> bcos_zoo.save_weights(model.state_dict(), "b.safetensors", model.weight_header())
        >>> bcos_zoo.load_model("b.safetensors")  # bcosified_resnet50
    """
    family = family_of(model)
    default_mean, default_std = _source_normalisation(model)
    mean, std = mean if mean is not None else default_mean, std if std is not None else default_std
    net = copy.deepcopy(model)
    converted = BcosifiedNet(net, mean=mean, std=std, b=b, keep_relu=keep_relu, logit_bias=logit_bias)
    converted.train(model.training)
    trained_classes = converted.num_classes
    if family.name == "vit":
        arch, kwargs = _vit_identity(model)
    else:
        arch, kwargs = _cnn_identity(model, trained_classes)
    if num_classes is not None and num_classes != trained_classes:
        converted.reset_classifier(num_classes)
    converted.transform = create_transform(_eval_transform(model, converted.in_chans))
    converted.pretrained_cfg = None
    if arch is None:
        log.warning("bcosify: %s matches no registered architecture; the converted model works but its weight "
                    "file cannot be rebuilt by name", type(model).__name__)  # fmt: skip
        return converted
    converted.arch = arch
    converted.model_kwargs = {**kwargs, "num_classes": converted.num_classes, "in_chans": converted.in_chans, "b": b,
                              "mean": list(converted.normalize.mean), "std": list(converted.normalize.std)}  # fmt: skip
    if family.name != "vit":
        converted.model_kwargs["keep_relu"] = keep_relu
    if logit_bias is not None:
        converted.model_kwargs["logit_bias"] = logit_bias
    return converted


def _torchvision_model(name: str) -> nn.Module:
    """torchvision's ``name`` with its DEFAULT weights, if they are in torchvision's cache (nothing is downloaded)."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise FileNotFoundError(
            f"torchvision's weights of {name} are not in its cache ({cached}); fetch them once where there is internet "
            f"(torchvision.models.get_model({name!r}, weights='DEFAULT')) and copy the file there, or pass --from FILE"
        )
    model = torchvision.models.get_model(name, weights=None)
    model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    return model  # bcosify moves ImageNet's mean/std (torchvision's preprocessing) inside


def load_standard(source: str) -> nn.Module:
    """A trained standard network: ``"torchvision:NAME"`` (its DEFAULT weights from torchvision's cache), a
    bcos-zoo weight file of a standard network, or a registered standard weight or architecture name."""
    from .builder import create_model, load_model

    if source.startswith("torchvision:"):
        return _torchvision_model(source.split(":", 1)[1])
    if Path(source).is_file():
        return load_model(source)
    return create_model(source, pretrained=True)


class StandardTeacher(nn.Module):
    """The standard network a :class:`BcosifiedNet` was made from, reading the B-cos model's own input.

    ``forward([x, 1 - x])`` normalises the image as the standard network was trained to see it (the
    first half of the converted model's :class:`InputNormalization`, i.e. ``(x - mean) / std``) and
    returns the standard network's logits: distillation targets for fine-tuning the converted model
    (``TrainConfig(distill_from=...)``). Frozen and always in eval mode (running BN statistics).
    """

    def __init__(self, standard: nn.Module, student: BcosifiedNet) -> None:
        super().__init__()
        if not isinstance(student, BcosifiedNet):
            raise TypeError(f"distillation from the standard network needs a B-cosified model, "
                            f"got {type(student).__name__}")
        self.normalize, self.net = copy.deepcopy(student.normalize), standard.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> StandardTeacher:
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        z = self.normalize(x)
        return self.net(z[:, : z.shape[1] // 2])
