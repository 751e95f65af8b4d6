"""The weights registry: every record complete and consistent, names, defaults, aliases, cards."""

from __future__ import annotations

import json

import pytest
import torch

import bcos_zoo
from bcos_zoo import UrlFile
from bcos_zoo.transforms import TransformConfig
from bcos_zoo.pretrained.official import IMAGENET_CLASSES, OFFICIAL_WEIGHTS

pytestmark = pytest.mark.usefixtures("single_thread")

# The official B-cos v2 entry points (bcos.models.pretrained) and the weights each one loads.
OFFICIAL_ENTRY_POINTS = {
    "resnet18": "bcos_resnet18.in1k", "resnet34": "bcos_resnet34.in1k", "resnet50": "bcos_resnet50.in1k",
    "resnet101": "bcos_resnet101.in1k", "resnet152": "bcos_resnet152.in1k",
    "resnext50_32x4d": "bcos_resnext50_32x4d.in1k", "densenet121": "bcos_densenet121.in1k",
    "densenet161": "bcos_densenet161.in1k", "densenet169": "bcos_densenet169.in1k",
    "densenet201": "bcos_densenet201.in1k", "vgg11_bnu": "bcos_vgg11_bnu.in1k",
    "convnext_tiny": "bcos_convnext_tiny.long_in1k", "convnext_base": "bcos_convnext_base.long_in1k",
    "convnext_tiny_bnu": "bcos_convnext_tiny_bnu.long_in1k", "convnext_base_bnu": "bcos_convnext_base_bnu.long_in1k",
    "densenet121_long": "bcos_densenet121.long_in1k", "resnet50_long": "bcos_resnet50.long_in1k",
    "resnet152_long": "bcos_resnet152.long_in1k",
    **{f"{s}_{p}": f"bcos_{s}_{p}.in1k" for s in ("simple_vit_ti", "simple_vit_s", "simple_vit_b", "simple_vit_l")
       for p in ["patch16_224"]},
    **{f"{s}_{p}": f"bcos_{s}_{p}.in1k" for s in ("vitc_ti", "vitc_s", "vitc_b", "vitc_l") for p in ["patch1_14"]},
    **{f"standard_{s}": f"standard_{s}.in1k" for s in (
        "simple_vit_ti_patch16_224", "simple_vit_s_patch16_224", "simple_vit_b_patch16_224", "simple_vit_l_patch16_224",
        "vitc_ti_patch1_14", "vitc_s_patch1_14", "vitc_b_patch1_14", "vitc_l_patch1_14")},
}  # fmt: skip


def test_the_34_official_weights_are_registered_under_their_names():
    assert len(OFFICIAL_WEIGHTS) == len(OFFICIAL_ENTRY_POINTS) == 34
    for entry, name in OFFICIAL_ENTRY_POINTS.items():
        spec = bcos_zoo.get_weights(entry)  # an alias, or for standard_* the architecture itself
        assert spec.name == name and f"entry point `{entry}`" in spec.notes
        assert bcos_zoo.get_weights(name) is spec
    files = [s.filename for spec in OFFICIAL_WEIGHTS for s in spec.sources if isinstance(s, UrlFile)]
    assert len(set(files)) == 34 and all(f.endswith(f"-{f[-14:-4]}.pth") for f in files)
    assert {s.name for s in OFFICIAL_WEIGHTS} <= set(bcos_zoo.list_weights())


@pytest.mark.parametrize("name", bcos_zoo.list_weights())
def test_record_is_complete(name):
    spec = bcos_zoo.get_weights(name)
    assert spec.name == name == name.lower() and spec.sources
    hashed = spec.sha256 is not None or (spec.sha256_prefix is not None and len(spec.sha256_prefix) >= 8)
    assert hashed != spec.trust_on_first_use  # a published hash, or explicitly none (v1, CoDA-Nets): never both
    assert isinstance(spec.transform, TransformConfig) and spec.transform.describe()
    assert spec.classes is not None and len(spec.classes) == spec.num_classes
    if spec.dataset == "imagenet-1k":
        assert spec.classes == IMAGENET_CLASSES and spec.classes[0] == "tench"
    # the v1 and CoDA-Nets repositories publish no per-file accuracy, and their counts are not typed in
    assert spec.trust_on_first_use or (spec.metrics and spec.num_params is not None)
    if spec.metrics:
        top1, top5 = spec.metrics[spec.dataset]["top1"], spec.metrics[spec.dataset]["top5"]
        assert 0 < top1 < top5 < 100
    assert spec.num_params is None or (isinstance(spec.num_params, int) and spec.num_params > 0)
    assert spec.license and (spec.license != "other" or (spec.license_name and spec.license_link))
    assert spec.paper and spec.citation and spec.recipe
    json.dumps(spec.to_dict())  # serialisable, e.g. as a hub repository's config.json


def test_names_unique_lowercase_and_aliases_do_not_shadow_architectures():
    names = bcos_zoo.list_weights()
    assert len(names) == len(set(names)) and all(n == n.lower() and n.count(".") == 1 for n in names)
    aliases = [a for n in names for a in bcos_zoo.get_weights(n).aliases]
    assert len(aliases) == len(set(aliases))
    assert not set(aliases) & set(bcos_zoo.list_models()) and not set(aliases) & set(names)


def test_one_default_per_architecture_and_it_is_the_best():
    specs = [bcos_zoo.get_weights(n) for n in bcos_zoo.list_weights()]
    for arch in {s.arch for s in specs}:
        default = bcos_zoo.get_weights(arch)
        measured = [s.top1() for s in specs if s.arch == arch and s.top1() is not None]
        assert default.arch == arch and (not measured or default.top1() == max(measured))
    assert bcos_zoo.get_weights("bcos_resnet50").tag == "long_in1k"
    assert bcos_zoo.get_weights("bcos_densenet121").tag == "long_in1k"


def test_list_models_pretrained_and_list_weights():
    with_weights = bcos_zoo.list_models(pretrained=True)
    assert with_weights == sorted(a for a in bcos_zoo.list_models() if bcos_zoo.list_weights(a))
    assert bcos_zoo.list_models("bcos_resnet*", pretrained=True) == [
        "bcos_resnet101", "bcos_resnet152", "bcos_resnet18", "bcos_resnet20_cifar", "bcos_resnet34", "bcos_resnet50"]  # fmt: skip
    assert bcos_zoo.list_weights("bcos_resnet50") == ["bcos_resnet50.in1k", "bcos_resnet50.long_in1k"]
    assert bcos_zoo.list_weights("*.long_in1k") == sorted(n for n in OFFICIAL_ENTRY_POINTS.values() if "long" in n)


def test_every_weights_architecture_is_registered():
    """Fails until every family with official weights (ViT, DenseNet, VGG, ConvNeXt) is in bcos_zoo.models."""
    missing = sorted({bcos_zoo.get_weights(n).arch for n in bcos_zoo.list_weights()} - set(bcos_zoo.list_models()))
    assert not missing, f"weights registered for architectures that do not exist: {missing}"


@pytest.mark.parametrize("name", [n for n in bcos_zoo.list_weights() if bcos_zoo.get_weights(n).num_params])
def test_num_params_equal_the_built_model(name):
    spec = bcos_zoo.get_weights(name)
    if not bcos_zoo.is_model(spec.arch):
        pytest.skip(f"{spec.arch} is not registered yet (see test_every_weights_architecture_is_registered)")
    with torch.device("meta"):  # nothing is allocated
        model = bcos_zoo.create_model(spec.arch, **spec.build_kwargs)
    assert sum(p.numel() for p in model.parameters()) == spec.num_params


def test_model_cards_and_readme_table_are_up_to_date(load_script):
    changed, orphans = load_script("gen_model_cards").stale_files()
    assert not changed and not orphans, (
        f"out of date: {sorted(map(str, [*changed, *orphans]))}; run: python scripts/gen_model_cards.py"
    )
