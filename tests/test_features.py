"""timm-style feature extraction: feature_info, forward_intermediates, features_only, explanations of
intermediate features, and gradient checkpointing, for every model family."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import bcos_zoo
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
}
SIZES = {"bcos_v1_inception_v3": 299}  # the smallest input of the rest: 32 for the small-input nets, else 64


def build(family: str, **extra) -> tuple[torch.nn.Module, torch.Tensor]:
    name, kwargs, size = FAMILIES[family]
    torch.manual_seed(0)
    model = bcos_zoo.create_model(name, **kwargs, **extra).eval()
    return model, torch.rand(2, model.in_chans, size, size)


def check_declared_stages(model: torch.nn.Module, size: int) -> None:
    """feature_info matches the maps forward_intermediates returns (on the meta device: no compute)."""
    x = torch.empty(1, model.in_chans, size, size, device="meta")
    info = model.feature_info
    final, maps = model.forward_intermediates(x)
    assert len(maps) == len(info) > 0 and info.out_indices == tuple(range(len(info)))
    names = dict(model.named_modules())
    for i, fmap in enumerate(maps):
        assert info.module_name(i) in names
        assert fmap.shape[1] == info.channels(i)
        assert round(math.log2(size / fmap.shape[-1])) == math.log2(info.reduction(i))  # nominal: Inception's maps are smaller
    assert final.shape == model.forward_features(x).shape
    if maps[-1].dim() == final.dim():  # CNNs: the last stage is what the head classifies
        assert maps[-1].shape == final.shape


@pytest.mark.parametrize("family", FAMILIES)
def test_feature_info_describes_the_maps(family):
    name, kwargs, size = FAMILIES[family]
    with torch.device("meta"):
        model = bcos_zoo.create_model(name, **kwargs)
    check_declared_stages(model, size)


def test_full_size_layouts_have_timms_stages():
    with torch.device("meta"):
        resnet = bcos_zoo.create_model("bcos_resnet50")
        inception = bcos_zoo.create_model("bcos_v1_inception_v3")
    assert resnet.feature_info.module_name() == ["bn1", "layer1", "layer2", "layer3", "layer4"]
    assert resnet.feature_info.channels() == [64, 256, 512, 1024, 2048]
    assert resnet.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert inception.feature_info.channels() == [64, 192, 288, 768, 2048]
    check_declared_stages(inception, 299)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [a for a in bcos_zoo.list_models() if not a.startswith("standard_resnet")])
def test_every_architecture_declares_its_stages(arch):
    with torch.device("meta"):
        model = bcos_zoo.create_model(arch)
    small = any(k in arch for k in ("cifar", "vit"))
    check_declared_stages(model, SIZES.get(arch, 32 if small else 64))


@pytest.mark.parametrize("family", ["resnet_cifar", "densenet", "vgg", "convnext", "simple9", "v1_vgg", "vit"])
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
    with pytest.raises(TypeError, match="standard_resnet20_cifar has no feature stages"):
        bcos_zoo.create_model("standard_resnet20_cifar", features_only=True)


def test_features_only_model_returns_the_stages_and_drops_the_rest():
    full = bcos_zoo.create_model("bcos_resnet20_cifar", pretrained=True).eval()
    model = bcos_zoo.create_model("bcos_resnet20_cifar", pretrained=True, features_only=True, out_indices=(1, -2)).eval()
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


# ------------------------------------------------------------------------------------ gradient checkpointing


def _loss_and_grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(1)  # stochastic depth draws the same masks in both runs
    loss = model(x).logsumexp(1).sum()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return loss.detach(), grads


@pytest.mark.parametrize("family", ["resnet_cifar", "convnext", "vit"])
def test_grad_checkpointing_same_gradients_same_state(family):
    model, x = build(family, **({"stochastic_depth_prob": 0.5} if family != "vit" else {}))
    model.train()
    plain_loss, plain = _loss_and_grads(model, x)
    plain_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(build(family, **({"stochastic_depth_prob": 0.5} if family != "vit" else {}))[0].state_dict())
    model.set_grad_checkpointing(True)
    loss, grads = _loss_and_grads(model, x)
    torch.testing.assert_close(loss, plain_loss)
    torch.testing.assert_close(grads, plain, rtol=1e-5, atol=1e-6)
    # batch-norm running statistics are updated once per step, not again by the recomputation
    torch.testing.assert_close(model.state_dict(), plain_state)


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


def test_explanations_with_grad_checkpointing_are_the_same():
    model, x = build("resnet_cifar")
    expected = bcos_zoo.explain_topk(model, x, 2)
    model.set_grad_checkpointing(True)
    for got, want in zip(bcos_zoo.explain_topk(model, x, 2), expected):
        torch.testing.assert_close(got.dynamic_linear_weights, want.dynamic_linear_weights)
    got = bcos_zoo.explain(model, x, layer="layer2", channel=1)
    model.set_grad_checkpointing(False)
    torch.testing.assert_close(got.contribution_map, bcos_zoo.explain(model, x, layer="layer2", channel=1).contribution_map)
