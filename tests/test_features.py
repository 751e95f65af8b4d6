"""timm-style feature extraction: feature_info, forward_intermediates, features_only, explanations of
intermediate features, and gradient checkpointing, for every model family."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import bcos_zoo
from bcos_zoo.builder import build_model
from bcos_zoo.models.convnext import StageConfig

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]
TINY_VGG = [8, "M", 8, "M", 16, "M", 16, "M", 16, "M"]
TINY_DENSENET = {"growth_rate": 4, "block_config": (1, 2, 1, 1), "num_init_features": 8}
TINY_CONVNEXT = {"stages": [StageConfig(8, 16, 1), StageConfig(16, 16, 1), StageConfig(16, None, 2)]}

#: (architecture, small-build arguments, input side): one entry per family and layout, all cheap to run
FAMILIES = {
    "resnet_cifar": ("bcos_resnet20_cifar", {"norm_layer": "bnu-linear"}, 16),
    "resnet": ("bcos_resnet18", {"layers": [1, 1, 1, 1], "num_classes": 7}, 64),
    "resnext": ("bcos_resnext50_32x4d", {"layers": [1, 1, 1, 1], "num_classes": 7}, 64),
    "densenet": ("bcos_densenet121", {**TINY_DENSENET, "num_classes": 7}, 64),
    "vgg": ("bcos_vgg11_bnu", {"cfg": TINY_VGG, "hidden_features": 8, "num_classes": 7}, 32),
    "convnext": ("bcos_convnext_tiny", {**TINY_CONVNEXT, "num_classes": 7}, 32),
    "simple9": ("bcos_simple9_cifar", {}, 16),
    "v1_resnet": ("bcos_v1_resnet34", {"layers": [1, 1, 1, 1], "num_classes": 7}, 64),
    "v1_densenet": ("bcos_v1_densenet121", {**TINY_DENSENET, "num_classes": 7}, 64),
    "v1_vgg": ("bcos_v1_vgg11", {"cfg": TINY_VGG, "hidden_features": 8, "num_classes": 7}, 32),
    "vit": ("bcos_simple_vit_ti_patch16_224", {"depth": 2, "num_classes": 7}, 32),
    "vitc": ("bcos_vitc_ti_patch1_14", {"depth": 1, "num_classes": 7}, 32),
    "standard_vit": ("standard_simple_vit_ti_patch16_224", {"depth": 1, "num_classes": 7}, 32),
    "standard_resnet_cifar": ("standard_resnet20_cifar", {}, 16),
    "coda": ("coda_simple9_cifar", {"rank_scale": 0.125}, 16),
    "bcosified_resnet_cifar": ("bcosified_resnet20_cifar", {"in_chans": 2}, 16),
    "bcosified_resnet": ("bcosified", {"base": "torchvision:resnet18", "num_classes": 7}, 64),
    "bcosified_densenet": ("bcosified", {"base": "torchvision:densenet121", "num_classes": 7}, 64),
    "bcosified_vgg": ("bcosified", {"base": "torchvision:vgg11_bn", "num_classes": 7}, 224),  # its pool: 7x7 out
    "bcosified_vit": ("bcosified_simple_vit_ti_patch16_224", {"depth": 2, "num_classes": 7}, 32),
}
SIZES = {"bcos_v1_inception_v3": 299}  # the smallest input of the rest: 32 for the small-input nets, else 64


def build(family: str, **extra) -> tuple[torch.nn.Module, torch.Tensor]:
    name, kwargs, size = FAMILIES[family]
    torch.manual_seed(0)
    model = bcos_zoo.create_model(name, **kwargs, **extra).eval()
    return model, torch.rand(2, model.in_chans, size, size)


def check_declared_stages(model: torch.nn.Module, size: int) -> None:
    """feature_info matches the maps forward_intermediates returns (on the model's device; meta: no compute)."""
    device = next(model.parameters()).device
    x = torch.rand(1, model.in_chans, size, size, device=device)
    info = model.feature_info
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert final.shape == model.forward_features(x).shape
    assert len(maps) == len(info) > 0 and info.out_indices == tuple(range(len(info)))
    names = dict(model.named_modules())
    for i, fmap in enumerate(maps):
        assert info.module_name(i) in names
        assert fmap.shape[1] == info.channels(i)
        # the map's side is the input's over the reduction, to within a factor of 2**0.5 (Inception's unpadded
        # convs shrink its maps a little more than nominal; CoDA-Nets' ImageNet-100 stem has stride 3)
        assert round(math.log2(size / fmap.shape[-1] / info.reduction(i))) == 0
    if maps[-1].dim() == final.dim():  # CNNs: the last stage is what the head classifies
        assert maps[-1].shape == final.shape


#: the same code as another family (or full-width torchvision networks): slow only
VARIANTS = ("resnext", "v1_resnet", "v1_densenet", "standard_vit", "bcosified_resnet", "bcosified_densenet",
            "bcosified_vgg")


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in VARIANTS else f for f in FAMILIES])
def test_feature_info_describes_the_maps(family):
    model, x = build(family)
    check_declared_stages(model, x.shape[-1])


def test_full_width_resnet_has_timms_stages():
    info = bcos_zoo.create_model("bcos_resnet50", layers=[1, 1, 1, 1]).feature_info  # full widths, fewer blocks
    assert info.module_name() == ["bn1", "layer1", "layer2", "layer3", "layer4"]
    assert (info.channels(), info.reduction()) == ([64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32])
    assert info[2] == {"module": "layer2", "num_chs": 512, "reduction": 8, "index": 2}


@pytest.mark.slow
@pytest.mark.parametrize("arch", bcos_zoo.list_models())
def test_every_architecture_declares_its_stages(arch):
    """Every registered architecture at full size, on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = bcos_zoo.create_model(arch)
    small = any(k in arch for k in ("cifar", "vit"))
    check_declared_stages(model, SIZES.get(arch, 32 if small else 64))


@pytest.mark.parametrize("family", ["resnet_cifar", "densenet", "vgg", "convnext", "simple9", "v1_vgg", "vit", "coda",
                                    "standard_resnet_cifar", "bcosified_resnet_cifar", "bcosified_vit"])
def test_intermediates_are_the_stage_outputs(family):
    model, x = build(family)
    info = model.feature_info
    hooked = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: hooked.setdefault(n, o))
               for n in info.module_name()]  # fmt: skip
    with torch.no_grad():
        logits = model(x)
        final, maps = model.forward_intermediates(x)
        for h in handles:
            h.remove()
        torch.testing.assert_close(model.forward_head(final), logits)
        torch.testing.assert_close(final, model.forward_features(x))
        for i, fmap in enumerate(maps):
            out = hooked[info.module_name(i)]
            assert fmap.shape[:2] == (2, info.channels(i)) and fmap.shape[-1] == x.shape[-1] // info.reduction(i)
            torch.testing.assert_close(fmap, out if out.dim() == 4 else out.transpose(1, 2).reshape(fmap.shape))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        first = model.forward_intermediates(x, indices=[0, -len(info)], stop_early=True)
    torch.testing.assert_close(last_two, maps[-2:])
    torch.testing.assert_close(first[1], maps[:1])
    torch.testing.assert_close(first[0], hooked[info.module_name(0)])  # stopped after stage 0


def test_vit_maps_are_its_tokens_row_major_and_norm_applies_the_final_norm():
    model, x = build("vit")
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        tokens = model.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        normed = model.forward_intermediates(x, indices=[-1], norm=True, output_fmt="NLC", intermediates_only=True)
    assert maps[0].shape == (2, 192, 2, 2) and tokens[0].shape == (2, 4, 192)
    torch.testing.assert_close(maps[1][:, :, 1, 0], tokens[1][:, 2])  # token (row 1, column 0)
    torch.testing.assert_close(normed[0], model.linear_head.norm(tokens[1]))


def test_bad_arguments_name_the_problem():
    model, x = build("resnet_cifar")
    with pytest.raises(ValueError, match="feature index 4 is out of range: this model has stages 0 to 3"):
        model.forward_intermediates(x, indices=[4])
    with pytest.raises(ValueError, match="asks for the last 5 of 4 stages"):
        model.forward_intermediates(x, indices=5)
    with pytest.raises(ValueError, match="output_fmt='NLC': BcosResNet supports NCHW"):
        model.forward_intermediates(x, output_fmt="NLC")
    with pytest.raises(ValueError, match="norm=True: BcosResNet has no final norm"):
        model.forward_intermediates(x, norm=True)
    with pytest.raises(ValueError, match="pass features_only=True with it"):
        bcos_zoo.create_model("bcos_resnet20_cifar", out_indices=(1,))
    with pytest.raises(TypeError, match="plain has no feature stages"):  # a network that declares none
        build_model(torch.nn.Identity, "plain", False, {"features_only": True}, transform=bcos_zoo.TransformConfig())


def test_features_only_model_returns_the_stages_and_drops_the_rest():
    full = bcos_zoo.create_model("bcos_resnet20_cifar", pretrained=True).eval()
    model = bcos_zoo.create_model("bcos_resnet20_cifar", pretrained=True, features_only=True, out_indices=(1, -2))
    model.eval()
    x = torch.rand(2, 1, 28, 28)
    x = torch.cat([x, 1 - x], 1)
    with torch.no_grad():
        features = model(x)
        expected = full.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    assert isinstance(features, list) and len(features) == 2
    torch.testing.assert_close(features, expected)
    info = model.feature_info
    assert (info.module_name(), info.channels(), info.reduction()) == (["layer1", "layer2"], [16, 32], [1, 2])
    assert [d["index"] for d in info] == [1, 2]
    assert not [k for k in model.state_dict() if k.startswith(("fc.", "layer3."))]  # nothing unused is kept
    assert model.pretrained_cfg.name == "bcos_resnet20_cifar.fmnist"
    with pytest.raises(ValueError, match="keeps stages up to 2, not 3"):
        model.forward_intermediates(x, indices=[3])
    with pytest.raises(ValueError, match="features-only already"):
        model.set_features_only((0,))


PRUNING = ("resnet_cifar", "densenet", "convnext", "vit")  # top-level, nested and doubly nested stage modules


@pytest.mark.parametrize("family", [f if f in PRUNING else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES])
def test_features_only_equals_the_full_models_stages(family):
    """Dropping what runs after the last stage (by registration order) changes no kept stage."""
    full, x = build(family)
    last = len(full.feature_info) // 2
    features, _ = build(family, features_only=True, out_indices=(0, last))
    with torch.no_grad():
        torch.testing.assert_close(features(x), full.forward_intermediates(x, [0, last], intermediates_only=True))
    assert sum(p.numel() for p in features.parameters()) < sum(p.numel() for p in full.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("last", [1, 3])  # after the stem pools; after the Mixed blocks
def test_features_only_inception_equals_its_stages(last):
    torch.manual_seed(0)
    full = bcos_zoo.create_model("bcos_v1_inception_v3").eval()
    torch.manual_seed(0)
    features = bcos_zoo.create_model("bcos_v1_inception_v3", features_only=True, out_indices=(last,)).eval()
    x = torch.rand(1, 6, 75, 75)
    with torch.no_grad():
        torch.testing.assert_close(features(x), full.forward_intermediates(x, [last], intermediates_only=True))


def test_features_only_vit_drops_the_later_blocks_and_the_head():
    name, kwargs, size = FAMILIES["vit"]
    model = bcos_zoo.create_model(name, **kwargs, features_only=True, out_indices=[0]).eval()
    assert [tuple(t.shape) for t in model(torch.rand(2, 6, size, size))] == [(2, 192, 2, 2)]
    assert not [k for k in model.state_dict() if k.startswith(("transformer.encoder_1.", "linear_head."))]


def test_features_only_passes_through_torch_hub():
    model = torch.hub.load(str(REPO), "bcos_resnet20_cifar", source="local", features_only=True, out_indices=(2,))
    out = model.eval()(torch.rand(1, 6, 16, 16))
    assert [tuple(t.shape) for t in out] == [(1, 32, 8, 8)] and model.feature_info.channels() == [32]


def test_explaining_a_stage_is_complete():
    """Each stage is dynamic linear: its channel total equals the sum of its contributions, also on a
    features-only model and for a ViT block (whose positional embedding lands in bias_contribution)."""
    model = bcos_zoo.create_model("bcos_resnet20_cifar", pretrained=True).eval()
    features = bcos_zoo.create_model("bcos_resnet20_cifar", pretrained=True, features_only=True, out_indices=(1,))
    x = torch.rand(2, 2, 20, 20)
    x[:, 1] = 1 - x[:, 0]
    layer = model.feature_info.module_name(1)
    with torch.no_grad():
        totals = model.forward_intermediates(x, indices=[1], intermediates_only=True)[0].sum((-2, -1))  # [B, C]
    out = bcos_zoo.explain(model, x, layer=layer, channel=[3, 9])
    torch.testing.assert_close(out.contribution_map.sum((-2, -1)) + out.bias_contribution, totals[[0, 1], [3, 9]])
    same = bcos_zoo.explain(features.eval(), x, layer=layer, channel=[3, 9])
    torch.testing.assert_close(same.contribution_map, out.contribution_map)
    with pytest.raises(TypeError, match=r"not logits \(features-only\?\); explain a stage instead"):
        bcos_zoo.explain(features, x)

    vit, xv = build("vit")
    with torch.no_grad():
        maps = vit.forward_intermediates(xv, indices=[0], intermediates_only=True)[0]
    out = bcos_zoo.explain(vit, xv, layer=vit.feature_info.module_name(0), channel=5)
    assert out.bias_contribution.abs().min() > 0  # the positional embedding's share
    torch.testing.assert_close(out.contribution_map.sum((-2, -1)) + out.bias_contribution, maps[:, 5].sum((-2, -1)))


@pytest.mark.parametrize("family", ["coda", "bcosified_resnet_cifar"])
def test_explaining_a_stage_of_a_coda_or_bcosified_net_is_complete(family):
    model, x = build(family)
    x[:, x.shape[1] // 2 :] = 1 - x[:, : x.shape[1] // 2]  # the image and its inverse
    layer = model.feature_info.module_name(1)
    with torch.no_grad():
        totals = model.forward_intermediates(x, indices=[1], intermediates_only=True)[0].sum((-2, -1))
    out = bcos_zoo.explain(model, x, layer=layer, channel=[2, 5])
    torch.testing.assert_close(out.contribution_map.sum((-2, -1)) + out.bias_contribution, totals[[0, 1], [2, 5]])


# ------------------------------------------------------------------------------------ gradient checkpointing


def _loss_and_grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(1)  # stochastic depth draws the same masks in both runs
    loss = model(x).logsumexp(1).sum()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return loss.detach(), grads


@pytest.mark.parametrize("family", ["resnet_cifar", "convnext", "densenet", "vit"])
def test_grad_checkpointing_same_gradients_same_state(family):
    """In training mode, with batch norms (resnet, densenet) and stochastic depth (resnet, convnext)."""
    options = {"stochastic_depth_prob": 0.5} if family in ("resnet_cifar", "convnext") else {}
    model, x = build(family, **options)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    plain_loss, plain = _loss_and_grads(model, x)
    plain_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(initial)
    model.set_grad_checkpointing(True)
    loss, grads = _loss_and_grads(model, x)
    torch.testing.assert_close(loss, plain_loss)
    torch.testing.assert_close(grads, plain, rtol=1e-5, atol=1e-6)
    # batch-norm running statistics are updated once per step, not again by the recomputation
    torch.testing.assert_close(model.state_dict(), plain_state)
    assert any(not torch.equal(initial[k], v) for k, v in plain_state.items()) == (
        family in ("resnet_cifar", "densenet")
    )


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass (deterministic, unlike the peak RSS)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return total


@pytest.mark.parametrize("family", ["resnet_cifar", "vit"])
def test_grad_checkpointing_keeps_far_fewer_activations(family):
    model, x = build(family)
    x = x.repeat(4, 1, 1, 1)
    plain = _saved_bytes(model, x)
    model.set_grad_checkpointing(True)
    assert _saved_bytes(model, x) < 0.4 * plain


_PEAK_RSS = r"""
import re, sys, torch, bcos_zoo
def peak_kb():  # VmHWM: ru_maxrss would start at the (large) parent's peak after fork + exec
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
torch.set_num_threads(1)
model = bcos_zoo.create_model("bcos_resnet20_cifar", norm_layer="bnu-linear").train()
model.set_grad_checkpointing(sys.argv[1] == "1")
x = torch.rand(32, 6, 64, 64)
before = peak_kb()
model(x).sum().backward()
print(peak_kb() - before)
"""


@pytest.mark.slow
def test_grad_checkpointing_lowers_the_peak_memory_of_a_training_step():
    """Peak RSS growth of one forward/backward pass, each in a fresh process (measured: 642 -> 410 MB).

    A fixed malloc mmap threshold makes freed tensor buffers leave the process at once: with glibc's dynamic
    threshold the peak also counts freed memory it kept, and varied from run to run (checkpointed ÷ plain
    0.70-0.84 on one machine, 0.64 in every run with the fixed threshold)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}

    def peak_kb(flag: str) -> int:
        command = [sys.executable, "-c", _PEAK_RSS, flag]
        run = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        return int(run.stdout.split()[-1])

    plain, checkpointed = peak_kb("0"), peak_kb("1")
    assert plain > 300_000 and checkpointed < 0.8 * plain, (plain, checkpointed)


def test_explanations_with_grad_checkpointing_are_the_same():
    model, x = build("resnet_cifar")
    expected = bcos_zoo.explain_topk(model, x, 2)
    model.set_grad_checkpointing(True)
    for got, want in zip(bcos_zoo.explain_topk(model, x, 2), expected):
        torch.testing.assert_close(got.dynamic_linear_weights, want.dynamic_linear_weights)
    layers = ("layer2", "layer2.1.conv1")  # a checkpointed stage, and a layer inside one
    got = [bcos_zoo.explain(model, x, layer=name, channel=1).contribution_map for name in layers]
    model.set_grad_checkpointing(False)
    torch.testing.assert_close(
        got, [bcos_zoo.explain(model, x, layer=name, channel=1).contribution_map for name in layers]
    )
    densenet, x = build("densenet")  # hooks on a container of checkpointed blocks still fire
    expected = bcos_zoo.explain(densenet, x, layer="features", channel=2).contribution_map
    densenet.set_grad_checkpointing(True)
    torch.testing.assert_close(bcos_zoo.explain(densenet, x, layer="features", channel=2).contribution_map, expected)
