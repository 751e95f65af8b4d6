"""The 34 official B-cos v2 ImageNet weights (release ``v0.0.1-weights`` of B-cos/B-cos-v2).

Why one central file instead of a record next to each architecture: these records are one release
with one provenance (same URL scheme, licence, paper, naming rule and recipes), they mirror a single
upstream table, and the official entry-point names that become aliases are a property of that
release rather than of our architectures. Weights of new families or our own trainings belong next
to their architecture, registered with :func:`bcos_zoo.register_weights`.

Metrics are the published ImageNet-1k validation accuracies (the ``bcos`` package docstrings);
parameter counts are those of the built models (``sum(p.numel())``), which the tests recompute.
The official files are known only by the SHA-256 prefix in their names.
"""

from __future__ import annotations

from pathlib import Path

from ..records import HubFile, UrlFile, WeightSpec, release_file
from ..registry import register_weights
from ..transforms import TransformConfig

__all__ = ["BCOS_V2_CITATION", "HF_ORG", "IMAGENET_CLASSES", "OFFICIAL_WEIGHTS", "PUBLISHED"]

# Converted safetensors published with scripts/publish_weights.py, one hub repository per weight
# (HF_ORG/<arch>.<tag>, file model.safetensors): weight name -> SHA-256 of that file. A published file
# becomes the first source of its record, before the GitHub release. Paste the script's output here.
HF_ORG = "bcos-zoo"
PUBLISHED: dict[str, str] = {}

# torchvision's ImageNet-1k class names, in index order (a text file, so no torchvision import is needed)
IMAGENET_CLASSES: tuple[str, ...] = tuple(
    (Path(__file__).resolve().parents[1] / "assets" / "imagenet_classes.txt").read_text().splitlines()
)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

BCOS_V2_PAPER = "https://arxiv.org/abs/2306.10898"
BCOS_V2_CITATION = """@article{boehle2024bcos,
  title   = {B-cos Alignment for Inherently Interpretable CNNs and Vision Transformers},
  author  = {B{\\"o}hle, Moritz and Singh, Navdeeppal and Fritz, Mario and Schiele, Bernt},
  journal = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
  year    = {2024},
  doi     = {10.1109/TPAMI.2024.3355155}
}"""

# Evaluation transforms of the three upstream experiment families.
_BCOS = TransformConfig(resize_size=256, crop_size=224)  # bcos_final and B-cos ViTs: 256 -> 224, 6 channels
_LONG = TransformConfig(resize_size=232, crop_size=224)  # bcos_final_long
_STANDARD = TransformConfig(resize_size=256, crop_size=224, in_chans=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)

_RECIPES = {
    "bcos_final": (
        "B-cos v2 `bcos_final`: 90 epochs (ResNeXt: 100), Adam lr 1e-3, batch 256 (64 x 4 GPUs), cosine schedule "
        "with a 5-epoch linear warmup, adaptive gradient clipping, binary cross-entropy with uniform off-labels, "
        "RandomResizedCrop 224 and horizontal flips."
    ),
    "bcos_final_long": (
        "B-cos v2 `bcos_final_long`: 600 epochs, batch 1024 (128 x 8 GPUs), train crop 176, TrivialAugmentWide, "
        "random erasing 0.1, mixup 0.2, cutmix 1.0, repeated augmentation x4 (DenseNet: none), EMA, adaptive "
        "gradient clipping, mixed precision; Adam, binary cross-entropy with uniform off-labels."
    ),
    "vit_final": (
        "B-cos v2 `vit_final` (B-cos): 90 epochs, batch 1024 (L models and simple_vit_b: 512), cosine schedule "
        "per step with a 10k-step warmup (large models: 50k), RandAugment magnitude 10, mixup 0.2, Adam lr 1e-3, "
        "adaptive gradient clipping, binary cross-entropy with uniform off-labels."
    ),
    "vit_final_standard": (
        "B-cos v2 `vit_final` (standard baseline): 90 epochs, batch 1024 (L models and simple_vit_b: 512), cosine "
        "schedule per step with a 10k-step warmup (large models: 50k), RandAugment magnitude 10, mixup 0.2, "
        "AdamW lr 1e-3, weight decay 1e-4, cross-entropy, gradient-norm clipping 1.0."
    ),
}
_TRANSFORMS = {"bcos_final": _BCOS, "bcos_final_long": _LONG, "vit_final": _BCOS, "vit_final_standard": _STANDARD}
_TAGS = {"bcos_final": "in1k", "bcos_final_long": "long_in1k", "vit_final": "in1k", "vit_final_standard": "in1k"}

# official entry point, our architecture, upstream experiment (base/name), release file,
# top-1, top-5 (%), parameters, notes
_TABLE: list[tuple[str, str, str, str, float, float, int, str]] = [
    ("resnet18", "bcos_resnet18", "bcos_final/resnet_18", "resnet_18-68b4160fff.pth", 68.736, 87.430, 11_693_120, ""),
    ("resnet34", "bcos_resnet34", "bcos_final/resnet_34", "resnet_34-a63425a03e.pth", 72.284, 90.052, 21_797_568, ""),
    ("resnet50", "bcos_resnet50", "bcos_final/resnet_50", "resnet_50-ead259efe4.pth", 75.882, 92.064, 25_538_880,
     "The upstream README lists top-5 92.528 and 25.52M parameters; the docstring values are used here."),
    ("resnet101", "bcos_resnet101", "bcos_final/resnet_101", "resnet_101-84c3658278.pth", 76.532, 92.538, 44_504_896, ""),
    ("resnet152", "bcos_resnet152", "bcos_final/resnet_152", "resnet_152-42051a77c1.pth", 76.484, 92.398, 60_125_504, ""),
    ("resnext50_32x4d", "bcos_resnext50_32x4d", "bcos_final/resnext_50_32x4d", "resnext_50_32x4d-57af241ab9.pth",
     75.820, 91.810, 25_003_200, "Trained for 100 epochs."),
    ("densenet121", "bcos_densenet121", "bcos_final/densenet_121", "densenet_121-b8daf96afb.pth", 73.612, 91.106, 7_945_440, ""),
    ("densenet161", "bcos_densenet161", "bcos_final/densenet_161", "densenet_161-9e9ea51353.pth", 76.622, 92.554, 28_584_144, ""),
    ("densenet169", "bcos_densenet169", "bcos_final/densenet_169", "densenet_169-7037ee0604.pth", 75.186, 91.786, 14_078_688, ""),
    ("densenet201", "bcos_densenet201", "bcos_final/densenet_201", "densenet_201-00ac87066f.pth", 75.480, 91.992, 19_907_808, ""),
    ("vgg11_bnu", "bcos_vgg11_bnu", "bcos_final/vgg_11_bnu", "vgg_11_bnu-34036029f0.pth", 69.310, 88.388, 132_855_872, ""),
    ("convnext_tiny", "bcos_convnext_tiny", "bcos_final_long/convnext_tiny_pn", "convnext_tiny_pn-539b1bfb37.pth",
     77.488, 93.192, 28_543_392, "Position norms (eps 1e-6). Checkpoint: epoch 596, EMA weights."),
    ("convnext_base", "bcos_convnext_base", "bcos_final_long/convnext_base_pn", "convnext_base_pn-b0495852c6.pth",
     79.650, 94.614, 88_466_304, "Position norms (eps 1e-6). Checkpoint: epoch 581, non-EMA weights."),
    ("convnext_tiny_bnu", "bcos_convnext_tiny_bnu", "bcos_final_long/convnext_tiny_bnu",
     "convnext_tiny_bnu-dbd7f5ef9d.pth", 76.826, 93.090, 28_543_392, "Checkpoint: epoch 456, EMA weights."),
    ("convnext_base_bnu", "bcos_convnext_base_bnu", "bcos_final_long/convnext_base_bnu",
     "convnext_base_bnu-7c32a704b3.pth", 80.142, 94.834, 88_466_304, "Checkpoint: epoch 541, EMA weights."),
    ("densenet121_long", "bcos_densenet121", "bcos_final_long/densenet_121", "densenet_121_long-5175461597.pth",
     77.302, 93.234, 7_945_440, "Checkpoint: epoch 596, non-EMA weights."),
    ("resnet50_long", "bcos_resnet50", "bcos_final_long/resnet_50", "resnet_50_long-ef38a88533.pth", 79.468, 94.452,
     25_538_880, "Checkpoint: epoch 580, non-EMA weights. The upstream README lists 25.52M parameters."),
    ("resnet152_long", "bcos_resnet152", "bcos_final_long/resnet_152", "resnet_152_long-0b4b434939.pth", 80.144, 94.116,
     60_125_504, "Checkpoint: epoch 433, non-EMA weights."),
    ("simple_vit_ti_patch16_224", "bcos_simple_vit_ti_patch16_224", "vit_final/bcos_simple_vit_ti_patch16_224",
     "bcos_simple_vit_ti_patch16_224-4b0824b1c1.pth", 59.960, 81.838, 5_800_128, ""),
    ("simple_vit_s_patch16_224", "bcos_simple_vit_s_patch16_224", "vit_final/bcos_simple_vit_s_patch16_224",
     "bcos_simple_vit_s_patch16_224-75e99d1f73.pth", 69.246, 88.096, 22_217_088,
     "The upstream docstring lists 22.28M parameters; the built model has 22,217,088."),
    ("simple_vit_b_patch16_224", "bcos_simple_vit_b_patch16_224", "vit_final/bcos_simple_vit_b_patch16_224",
     "bcos_simple_vit_b_patch16_224-1fc4750806.pth", 74.408, 91.156, 86_901_504, ""),
    ("simple_vit_l_patch16_224", "bcos_simple_vit_l_patch16_224", "vit_final/bcos_simple_vit_l_patch16_224",
     "bcos_simple_vit_l_patch16_224-9613b2ad0a.pth", 75.060, 91.378, 178_787_328, ""),
    ("vitc_ti_patch1_14", "bcos_vitc_ti_patch1_14", "vit_final/bcos_vitc_ti_patch1_14",
     "bcos_vitc_ti_patch1_14-ddd6193a77.pth", 67.260, 86.774, 5_318_712, ""),
    ("vitc_s_patch1_14", "bcos_vitc_s_patch1_14", "vit_final/bcos_vitc_s_patch1_14",
     "bcos_vitc_s_patch1_14-cf55c88f0c.pth", 74.504, 91.288, 20_878_704, ""),
    ("vitc_b_patch1_14", "bcos_vitc_b_patch1_14", "vit_final/bcos_vitc_b_patch1_14",
     "bcos_vitc_b_patch1_14-a13c46397b.pth", 77.152, 92.926, 81_326_016,
     "The upstream docstring lists 81.37M parameters; the built model has 81,326,016."),
    ("vitc_l_patch1_14", "bcos_vitc_l_patch1_14", "vit_final/bcos_vitc_l_patch1_14",
     "bcos_vitc_l_patch1_14-8739e18b8d.pth", 77.782, 92.966, 167_444_160, ""),
    ("standard_simple_vit_ti_patch16_224", "standard_simple_vit_ti_patch16_224", "vit_final_standard/simple_vit_ti_patch16_224",
     "standard_simple_vit_ti_patch16_224-2ae8c65a39.pth", 70.230, 89.380, 5_670_184, ""),
    ("standard_simple_vit_s_patch16_224", "standard_simple_vit_s_patch16_224", "vit_final_standard/simple_vit_s_patch16_224",
     "standard_simple_vit_s_patch16_224-f2934fcdcf.pth", 74.470, 91.226, 21_956_200, ""),
    ("standard_simple_vit_b_patch16_224", "standard_simple_vit_b_patch16_224", "vit_final_standard/simple_vit_b_patch16_224",
     "standard_simple_vit_b_patch16_224-87074200ed.pth", 75.300, 91.026, 86_378_728, ""),
    ("standard_simple_vit_l_patch16_224", "standard_simple_vit_l_patch16_224", "vit_final_standard/simple_vit_l_patch16_224",
     "standard_simple_vit_l_patch16_224-62dc536e03.pth", 75.710, 90.050, 178_104_296, ""),
    ("standard_vitc_ti_patch1_14", "standard_vitc_ti_patch1_14", "vit_final_standard/vitc_ti_patch1_14",
     "standard_vitc_ti_patch1_14-a5d6bded37.pth", 72.590, 90.788, 5_334_952, ""),
    ("standard_vitc_s_patch1_14", "standard_vitc_s_patch1_14", "vit_final_standard/vitc_s_patch1_14",
     "standard_vitc_s_patch1_14-34ecd7288e.pth", 75.756, 91.994, 20_910_184, ""),
    ("standard_vitc_b_patch1_14", "standard_vitc_b_patch1_14", "vit_final_standard/vitc_b_patch1_14",
     "standard_vitc_b_patch1_14-4d374b0220.pth", 76.790, 92.024, 81_388_648, ""),
    ("standard_vitc_l_patch1_14", "standard_vitc_l_patch1_14", "vit_final_standard/vitc_l_patch1_14",
     "standard_vitc_l_patch1_14-560e48f246.pth", 77.866, 92.298, 167_541_352, ""),
]  # fmt: skip


def _sources(name: str, filename: str) -> tuple[HubFile | UrlFile, ...]:
    release = release_file(filename)
    return (HubFile(f"{HF_ORG}/{name}", sha256=PUBLISHED[name]), release) if name in PUBLISHED else (release,)


def _official(entry: str, arch: str, experiment: str, filename: str, top1: float, top5: float, num_params: int,
              notes: str) -> WeightSpec:  # fmt: skip
    """One release checkpoint; everything but the table columns is shared."""
    base = experiment.split("/")[0]
    upstream = experiment.replace("vit_final_standard/", "vit_final/")
    provenance = f"Official B-cos v2 weights: experiment `{upstream}`, entry point `{entry}`, file `{filename}`."
    return WeightSpec(
        arch=arch,
        tag=_TAGS[base],
        sources=_sources(f"{arch}.{_TAGS[base]}", filename),
        num_classes=1000,
        transform=_TRANSFORMS[base],
        classes=IMAGENET_CLASSES,
        dataset="imagenet-1k",
        metrics={"imagenet-1k": {"top1": top1, "top5": top5}},
        num_params=num_params,
        license="other",
        license_name="imagenet-terms-noncommercial",
        license_link="https://www.image-net.org/download.php",
        paper=BCOS_V2_PAPER,
        citation=BCOS_V2_CITATION,
        recipe=_RECIPES[base],
        notes=" ".join(filter(None, [provenance, notes])),
        aliases=() if entry == arch else (entry,),
    )


OFFICIAL_WEIGHTS: tuple[WeightSpec, ...] = tuple(_official(*row) for row in _TABLE)


def _register() -> None:
    """Register every record; the best top-1 of each architecture is its default (the long recipe where present)."""
    best: dict[str, WeightSpec] = {}
    for spec in OFFICIAL_WEIGHTS:
        if spec.arch not in best or spec.top1() > best[spec.arch].top1():
            best[spec.arch] = spec
    for spec in OFFICIAL_WEIGHTS:
        register_weights(spec, default=best[spec.arch] is spec)


_register()
