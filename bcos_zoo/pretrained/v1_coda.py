"""The official B-cos v1 (moboehle/B-cos, CVPR 2022) and CoDA-Nets (moboehle/CoDA-Nets, CVPR 2021) weights.

One table for both because they are one kind of provenance: the same authors' research repositories,
files on the MPI nextcloud (``.../index.php/s/<token>/download``), the same licence situation (the
LICENSE files grant non-commercial research use, the READMEs say "BSD License 2.0": both are recorded)
and, above all, **no published hashes**. Every source is therefore ``UrlFile(trust_on_first_use=True)``:
the SHA-256 of the first download is recorded in the cache and every later download must match it
(:mod:`bcos_zoo.fetch`).

The files are the state dicts the official code saved (``state_dict.pkl``, ``model_epoch_<N>.pkl``),
read with ``torch.load(weights_only=True)`` and cached as safetensors with their keys unchanged; the
models map the official layouts when loading (v1 ImageNet: the ``0.`` prefix of ``Sequential(net, pool,
FinalLayer)``; the 9-layer nets: ``0.`` ... ``8.`` are already our keys; CoDA-Nets: a ``module.`` prefix).

Everything here is from the reference facts: URLs, temperatures, logit biases, preprocessing and
recipes. The repositories publish no per-file accuracy we could cite, so the records carry no
metrics, and no parameter counts either (nothing is typed in by hand).

Names: ``bcos_v1_<net>.in1k`` (``cossched_in1k`` for the cosine-schedule DenseNet-121),
``bcos_simple9_cifar.v1_b<B>_cifar10`` with the dot of B written ``_`` (``v1_b1_25_cifar10``), and
``coda_simple9_cifar.sq<T>_cifar10`` / ``coda_simple9_in100.sq100000_in100`` after the official
experiment names ``9L-S-CoDA-SQ-<T>`` / ``9L-L-CoDA-SQ-100000``.
"""

from __future__ import annotations

import math
from typing import Any

from ..models.coda import CODA_LOGIT_BIAS, IN100_TRANSFORM
from ..models.simple9 import v1_cifar_scale, v1_cifar_temperature
from ..models.v1 import V1_INCEPTION_TRANSFORM, V1_LOGIT_BIAS, V1_TRANSFORM
from ..records import UrlFile, WeightSpec
from ..registry import default_weights, register_weights
from ..transforms import TransformConfig
from .official import IMAGENET_CLASSES

__all__ = ["CIFAR10_CLASSES", "CODA_WEIGHTS", "NEXTCLOUD_URL", "V1_WEIGHTS", "nextcloud_file", "v1_cifar_tag"]

NEXTCLOUD_URL = "https://nextcloud.mpi-klsb.mpg.de/index.php/s/{token}/download"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR_TRANSFORM = TransformConfig(resize_size=32, crop_size=32)  # CIFAR-10 images as they are; others to 32 px
_CIFAR_LOGIT_BIAS = math.log(0.1 / 0.9)


def nextcloud_file(token: str) -> UrlFile:
    """A file shared on the MPI nextcloud; these shares publish no hash, so it is trusted on first use."""
    return UrlFile(NEXTCLOUD_URL.format(token=token), trust_on_first_use=True)


def _licence(repo: str) -> dict[str, str]:
    """The licence fields of weights from ``moboehle/<repo>``: the LICENSE file, and the README's claim."""
    return {
        "license": "other",
        "license_name": "non-commercial-research",
        "license_link": f"https://github.com/moboehle/{repo}/blob/HEAD/LICENSE",
        "license_note": (
            f"The LICENSE file of moboehle/{repo} is a licence for non-commercial research use only, while its "
            "README says the code is licensed under the BSD License 2.0. The two disagree; both are recorded here, "
            "and the non-commercial terms are the safe reading."
        ),
    }


V1_PAPER = (
    "https://openaccess.thecvf.com/content/CVPR2022/html/"
    "Bohle_B-Cos_Networks_Alignment_Is_All_We_Need_for_Interpretability_CVPR_2022_paper.html"
)
V1_CITATION = """@inproceedings{boehle2022bcos,
  title     = {B-cos Networks: Alignment is All We Need for Interpretability},
  author    = {B{\\"o}hle, Moritz and Fritz, Mario and Schiele, Bernt},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2022}
}"""

# ------------------------------------------------------------------------------------------- v1 ImageNet

_V1_AUGMENT = (
    "binary cross-entropy on the logits, RandAugment (n=2, m=9), RandomResizedCrop 224, horizontal flips, "
    "ColorJitter 0.4 and PCA lighting noise 0.1"
)
_V1_STANDARD = f"100 epochs, Adam lr 2.5e-4, batch {{batch}}, {_V1_AUGMENT}"
_V1_COSSCHED = (
    f"200 epochs, Adam with a cosine schedule from 1e-3 to 1e-4 after 10 warm-up epochs, batch 128, {_V1_AUGMENT}"
)

# official experiment, our architecture, tag, nextcloud token, logit temperature, training, extra kwargs, notes
_V1_IMAGENET: list[tuple[str, str, str, str, float, str, dict[str, Any], str]] = [
    ("densenet_121", "bcos_v1_densenet121", "in1k", "LW2HsNDzAzaaaDH", 1e-3, _V1_STANDARD.format(batch=256), {},
     "Trained with `memory_efficient=False` (which changes nothing in the weights)."),
    ("densenet_121_cossched", "bcos_v1_densenet121", "cossched_in1k", "G8kdm73qWn4L8Lg", 1e-3, _V1_COSSCHED, {}, ""),
    ("resnet_34", "bcos_v1_resnet34", "in1k", "mYe6TggQsDymZbk", 10.0, _V1_STANDARD.format(batch=256), {}, ""),
    ("vgg_11", "bcos_v1_vgg11", "in1k", "kEHgFSSKMEdeA5N", 0.1, _V1_STANDARD.format(batch=128), {},
     "Input embedding of 6 channels (`emb_ch=6`)."),
    ("inception_v3", "bcos_v1_inception_v3", "in1k", "QSEo6QSNgPZqNfi", 1.0,
     _V1_STANDARD.format(batch=256) + ", with the auxiliary classifier", {"aux_logits": True},
     ("The checkpoint holds the auxiliary classifier (`AuxLogits`), so the model is built with it; `forward` "
      "returns the main logits.")),
]  # fmt: skip


def _v1_imagenet(experiment: str, arch: str, tag: str, token: str, temperature: float, training: str,
                 extra: dict[str, Any], notes: str) -> WeightSpec:  # fmt: skip
    """One v1 ImageNet checkpoint: ``Sequential(net, pool, FinalLayer(bias=log(0.01/0.99), norm=T))``."""
    provenance = (
        f"Official B-cos v1 weights: experiment `{experiment}` of `experiments/Imagenet/bcos/experiment_parameters.py`, "
        "a plain state dict `state_dict.pkl` of `Sequential(net, MyAdaptiveAvgPool2d, FinalLayer)` (keys "
        "`0.<net keys>`, mapped to ours when loading)."
    )
    return WeightSpec(
        arch=arch,
        tag=tag,
        sources=(nextcloud_file(token),),
        num_classes=1000,
        transform=V1_INCEPTION_TRANSFORM if arch == "bcos_v1_inception_v3" else V1_TRANSFORM,
        classes=IMAGENET_CLASSES,
        dataset="imagenet-1k",
        model_kwargs={"logit_temperature": temperature, "logit_bias": V1_LOGIT_BIAS, **extra},
        paper=V1_PAPER,
        citation=V1_CITATION,
        recipe=f"B-cos v1 `{experiment}`: {training}. Logit temperature {temperature:g}, logit bias log(0.01/0.99).",
        notes=" ".join(filter(None, [provenance, notes])),
        **_licence("B-cos"),
    )


# ------------------------------------------------------------------------------------------ v1 CIFAR-10

# B of the 9-layer net 9L-M2-B<B>, nextcloud token
_V1_CIFAR: list[tuple[float, str]] = [
    (1.0, "q8cRRojXZ2WNWbS"), (1.25, "oX6H7jQiSN2dfWJ"), (1.5, "3LxnBCarS8Lpq5b"), (1.75, "XLwEnaKr9bYQJaN"),
    (2.0, "mksX2CJMCDQbMYb"), (2.25, "qFsqLPdHLQyNHwH"), (2.5, "XwEAFrPSEYJ2C79"),
]  # fmt: skip


def v1_cifar_tag(b: float) -> str:
    """``v1_b<B>_cifar10`` with the dot of B written ``_``: 1.25 -> ``v1_b1_25_cifar10``, 2 -> ``v1_b2_cifar10``."""
    return f"v1_b{b:g}_cifar10".replace(".", "_")


def _v1_cifar(b: float, token: str) -> WeightSpec:
    """One v1 CIFAR-10 9-layer net: B, MaxOut 2, scale ``10^(-2+1.5·(2.5-B))``, v1's temperature, bias log(0.1/0.9)."""
    scale, temperature = v1_cifar_scale(b), v1_cifar_temperature(b)
    return WeightSpec(
        arch="bcos_simple9_cifar",
        tag=v1_cifar_tag(b),
        sources=(nextcloud_file(token),),
        num_classes=10,
        transform=_CIFAR_TRANSFORM,
        classes=CIFAR10_CLASSES,
        dataset="cifar10",
        model_kwargs={
            "b": b,
            "max_out": 2,
            "scale": scale,
            "logit_temperature": temperature,
            "logit_bias": _CIFAR_LOGIT_BIAS,
        },
        paper=V1_PAPER,
        citation=V1_CITATION,
        recipe=(
            f"B-cos v1 CIFAR-10 `9L-M2-B{b:g}`: 100 epochs, Adam, batch 64, cosine learning-rate schedule from 1e-3, "
            "binary cross-entropy on the logits, horizontal flips and 32-pixel crops with 4-pixel padding. "
            f"B={b:g}, MaxOut 2, every layer divided by 10^(-2+1.5·(2.5-B)) = {scale:.6g}, logit temperature "
            f"{temperature:g}, logit bias log(0.1/0.9)."
        ),
        notes=(
            f"Official B-cos v1 weights: `9L-M2-B{b:g}` of `experiments/CIFAR10/bcos/experiment_parameters.py`, a plain "
            "state dict `state_dict.pkl` of `Sequential(9 B-cos convs, MyAdaptiveAvgPool2d, FinalLayer)`, whose keys "
            "`0.linear.weight` ... `8.linear.weight` are this model's."
        ),
        **_licence("B-cos"),
    )


V1_WEIGHTS: tuple[WeightSpec, ...] = (
    *(_v1_imagenet(*row) for row in _V1_IMAGENET),
    *(_v1_cifar(b, token) for b, token in _V1_CIFAR),
)


# ------------------------------------------------------------------------------------------- CoDA-Nets

CODA_PAPER = "https://arxiv.org/abs/2104.00032"
CODA_CITATION = """@inproceedings{boehle2021coda,
  title     = {Convolutional Dynamic Alignment Networks for Interpretable Classifications},
  author    = {B{\\"o}hle, Moritz and Fritz, Mario and Schiele, Bernt},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2021}
}"""
_CODA_CIFAR_TRAINING = (
    "200 epochs, Adam with lr 2.5e-4 · 1.5^(-floor(epoch/30)), batch 8 with a virtual batch of 16 (gradient "
    "accumulation), binary cross-entropy on the logits, horizontal flips and 32-pixel crops with 4-pixel padding"
)
_CODA_IN100_TRAINING = (
    "the first 100 ImageNet-1k classes, 60 epochs, Adam with lr rising linearly from 2.5e-4 to 1e-3 over 15 epochs, "
    "then 1e-3 / 2^floor(epoch/20), batch 4 with a virtual batch of 64, binary cross-entropy on the logits, "
    "Resize 256, RandomCrop 240, horizontal flips and RandAugment (n=2, m=10); CenterCrop 240 for testing"
)
# logit temperature T of 9L-S-CoDA-SQ-<T> -> nextcloud token (epoch 200; none is published for T = 10000)
_CODA_CIFAR: list[tuple[int, str]] = [
    (10, "H8FgwMHJTTTYDJw"), (50, "SqPBioqmxEWbH9g"), (100, "yk7LajwLwpXXzf5"), (500, "zfeYMASLtKNGgsQ"),
    (1000, "8ykMc8XLQMtCxHo"), (5000, "6iY992FYEsfHkeA"),
]  # fmt: skip
_CODA_IN100 = (100000, "pArrgmncXAAiH5R")


def _coda(
    arch: str, temperature: int, token: str, experiment: str, epoch: int, training: str, **fields: Any
) -> WeightSpec:
    """One CoDA-Nets checkpoint: squashing DAUs, ``x / T + log(0.1/0.9)``, a plain state dict ``model_epoch_<N>.pkl``."""
    return WeightSpec(
        arch=arch,
        sources=(nextcloud_file(token),),
        model_kwargs={"temperature": float(temperature), "norm": "squash", "logit_bias": CODA_LOGIT_BIAS},
        paper=CODA_PAPER,
        citation=CODA_CITATION,
        recipe=f"CoDA-Nets `{experiment}`: {training}. Logit temperature {temperature:g}, logit bias log(0.1/0.9).",
        notes=(
            f"Official CoDA-Nets weights: `{experiment}` (`interpretability/utils.py::_model_urls`), epoch {epoch}, a "
            f"plain state dict `model_epoch_{epoch}.pkl` whose keys `<i>.weight_mod.weighting_f.*` are this model's "
            "(a DataParallel `module.` prefix is stripped when loading)."
        ),
        **_licence("CoDA-Nets"),
        **fields,
    )


CODA_WEIGHTS: tuple[WeightSpec, ...] = (
    *(
        _coda("coda_simple9_cifar", t, token, f"9L-S-CoDA-SQ-{t}", 200, _CODA_CIFAR_TRAINING, tag=f"sq{t}_cifar10",
              num_classes=10, transform=_CIFAR_TRANSFORM, classes=CIFAR10_CLASSES, dataset="cifar10")
        for t, token in _CODA_CIFAR
    ),
    _coda("coda_simple9_in100", *_CODA_IN100, "9L-L-CoDA-SQ-100000", 60, _CODA_IN100_TRAINING, tag="sq100000_in100",
          num_classes=100, transform=IN100_TRANSFORM, classes=IMAGENET_CLASSES[:100], dataset="imagenet-100"),
)  # fmt: skip

# What ``pretrained=True`` loads for an architecture that has no default yet (shipped weights stay defaults).
PREFERRED = {"bcos_v1_densenet121.in1k", f"bcos_simple9_cifar.{v1_cifar_tag(2.0)}", "coda_simple9_cifar.sq1000_cifar10"}


def _register(specs: tuple[WeightSpec, ...]) -> None:
    """Register every record; an architecture without a default gets the preferred one."""
    free = {s.arch for s in specs if default_weights(s.arch) is None}
    for spec in specs:
        register_weights(spec, default=spec.arch in free and spec.name in PREFERRED)


_register(V1_WEIGHTS + CODA_WEIGHTS)
