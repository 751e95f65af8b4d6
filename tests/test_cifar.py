"""Small-input models: the CIFAR ResNets against the official ``bcos`` package (norm ablations) and
the plain 9-layer B-cos net of B-cos v1."""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bcos_zoo import create_model, explain
from bcos_zoo.layers.bcos_v1 import BcosConv2dV1
from bcos_zoo.models.simple9 import BcosSimple9, v1_cifar_scale, v1_cifar_temperature
from bcos_zoo.transforms import add_inverse

official_resnet = pytest.importorskip("bcos.models.resnet")
from bcos.modules import norms as N
from bcos.modules.bcosconv2d import BcosConv2d as OfficialBcosConv2d

pytestmark = [pytest.mark.oracle, pytest.mark.usefixtures("single_thread")]

BIAS = -math.log(9)

# the official CIFAR-10 norm ablation's NORMS_MAP and suffix wrappers (facts §5)
OFFICIAL_NORMS = {
    "an": N.centered_norms.AllNorm2d, "bn": N.centered_norms.BatchNorm2d,
    "gn": partial(N.centered_norms.DetachableGroupNorm2d, 2), "in": N.centered_norms.DetachableGNInstanceNorm2d,
    "ln": N.centered_norms.DetachableGNLayerNorm2d, "pn": N.centered_norms.DetachablePositionNorm2d,
    "anu": N.uncentered_norms.AllNormUncentered2d, "bnu": N.uncentered_norms.BatchNormUncentered2d,
    "gnu": partial(N.uncentered_norms.GroupNormUncentered2d, 2), "inu": N.uncentered_norms.GNInstanceNormUncentered2d,
    "lnu": N.uncentered_norms.GNLayerNormUncentered2d, "pnu": N.uncentered_norms.PositionNormUncentered2d,
}  # fmt: skip
WRAPPERS = {"": lambda f: f, "linear": N.NoBias, "unaffine": N.Unaffine}

# (depth, norm, max_out): every norm family, every suffix, every depth, with and without MaxOut
CASES = [
    (20, "none", 2), (20, "none", 1), (32, "bnu-linear", 2), (44, "bn", 2), (56, "gnu-unaffine", 2),
    (20, "pn-linear", 2), (20, "lnu", 1), (20, "an", 2), (20, "inu-linear", 2), (20, "anu-unaffine", 2),
    (20, "gn", 2), (20, "pnu", 2), (20, "in-unaffine", 2), (20, "ln-linear", 2), (20, "bnu", 1),
]  # fmt: skip


def _official_norm(name: str):
    if name == "none":
        return nn.Identity
    base, _, suffix = name.partition("-")
    return WRAPPERS[suffix](OFFICIAL_NORMS[base])


def _randomise(sd: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights and running statistics, so that no norm is an identity."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        r = torch.randn(v.shape, generator=g)
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = 0.5 + r.abs()
        elif (k.endswith("weight") and v.dim() == 1) or k.endswith(("running_mean", "bias")):
            out[k] = (1 + 0.2 * r) if k.endswith("weight") else 0.2 * r
        else:
            out[k] = r
    return out


def _image(batch: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return add_inverse(x)


def _rel(a: torch.Tensor, b: torch.Tensor, offset: float = 0.0) -> float:
    return ((a - b).abs().max() / (b - offset).abs().max()).item()


@pytest.mark.parametrize("depth, norm, max_out", CASES)
def test_cifar_resnet_matches_official(depth: int, norm: str, max_out: int, tmp_path) -> None:
    theirs = getattr(official_resnet, f"cifar10_resnet{depth}")(
        conv_layer=partial(OfficialBcosConv2d, b=2, max_out=max_out), norm_layer=_official_norm(norm), logit_bias=BIAS
    )
    sd = _randomise(theirs.state_dict())
    theirs.load_state_dict(sd)
    torch.save(sd, tmp_path / "official.pth")
    ours = create_model(
        f"bcos_resnet{depth}_cifar", pretrained=tmp_path / "official.pth", norm_layer=norm, max_out=max_out
    )
    x = _image()
    # training mode: batch statistics and running-statistics updates
    theirs_train, ours_train = copy.deepcopy(theirs).train(), copy.deepcopy(ours).train()
    assert _rel(ours_train(x), theirs_train(x), BIAS) < 1e-4
    for k, v in theirs_train.state_dict().items():
        torch.testing.assert_close(ours_train.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    # evaluation and explanation
    theirs.eval(), ours.eval()
    with torch.no_grad():
        assert _rel(ours(x), theirs(x), BIAS) < 1e-4
    ref = theirs.explain(x[:1].clone().requires_grad_(True))
    expl = explain(ours, x[:1], target=ref["explained_class_idx"])
    assert _rel(expl.dynamic_linear_weights, ref["dynamic_linear_weights"]) < 1e-4
    # complete unless a norm adds a constant (a bias, or the running mean of a centered batch norm)
    base, _, suffix = norm.partition("-")
    if norm == "none" or (suffix in ("linear", "unaffine") and base not in ("bn", "an")):
        total = expl.contribution_map.sum((-2, -1)) + expl.bias_contribution
        torch.testing.assert_close(total, expl.logits[0, expl.target], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# The plain 9-layer B-cos net (B-cos v1, CIFAR-10)

V1_SHAPES = [(128, 6, 3, 3), (128, 64, 3, 3), (256, 64, 3, 3), (256, 128, 3, 3), (256, 128, 3, 3),
             (512, 128, 3, 3), (512, 256, 3, 3), (512, 256, 3, 3), (20, 256, 1, 1)]  # fmt: skip


def test_simple9_structure() -> None:
    model = create_model("bcos_simple9_cifar")
    convs = [model.get_submodule(str(i)) for i in range(9)]
    assert all(isinstance(c, BcosConv2dV1) for c in convs) and model.get_classifier() is convs[8]
    assert [c.kernel_size[0] for c in convs] == [3] * 8 + [1]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 1, 2, 1, 1, 1]
    assert [c.padding[0] for c in convs] == [1] * 8 + [0]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 128, 256, 256, 256, 10]
    assert all(c.max_out == 2 and c.b == 2 for c in convs)
    assert model.logit_layer.logit_bias == pytest.approx(BIAS)
    assert list(model.state_dict()) == [f"{i}.linear.weight" for i in range(9)]
    assert [tuple(v.shape) for v in model.state_dict().values()] == V1_SHAPES
    assert model(_image(size=28)).shape == (2, 10) and model(_image(size=32)).shape == (2, 10)


def test_simple9_loads_v1_checkpoint_layout(tmp_path) -> None:
    sd = {f"{i}.linear.weight": torch.randn(s) for i, s in enumerate(V1_SHAPES)}
    torch.save(sd, tmp_path / "state_dict.pkl")
    model = create_model("bcos_simple9_cifar", pretrained=tmp_path / "state_dict.pkl")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_simple9_v1_defaults() -> None:
    # 9L-M2-B{b}: scale 10^(-2 + 1.5 (2.5 - b)), T = 10^{-3,-3,-2,1,2,2,3}
    table = {1: -3, 1.25: -3, 1.5: -2, 1.75: 1, 2: 2, 2.25: 2, 2.5: 3}
    for b, log_t in table.items():
        model = BcosSimple9(b=b)
        assert model.scale == pytest.approx(10 ** (-2 + 1.5 * (2.5 - b)))
        assert model.get_submodule("3").scale == pytest.approx(model.scale)
        assert model.logit_layer.logit_temperature == pytest.approx(10.0**log_t)
    assert v1_cifar_temperature(1.875) == pytest.approx(10**1.5)  # interpolated in log10
    assert v1_cifar_temperature(3.0) == pytest.approx(1000) and v1_cifar_scale(2) == pytest.approx(10**-1.25)
    custom = BcosSimple9(b=1.5, max_out=1, scale=1.0, logit_temperature=2.0, num_classes=5, in_chans=2)
    assert custom.scale == 1.0 and custom.logit_layer.logit_temperature == 2.0
    assert custom.get_submodule("0").linear.weight.shape == (64, 2, 3, 3)
    assert custom.logit_layer.logit_bias == pytest.approx(-math.log(4))


@pytest.mark.parametrize("b, max_out", [(1, 2), (1.25, 2), (1.75, 1), (2, 2), (2.5, 2)])
def test_simple9_explanation_complete(b: float, max_out: int) -> None:
    torch.manual_seed(0)
    model = create_model("bcos_simple9_cifar", b=b, max_out=max_out).eval()
    x = _image(size=12)
    expl = explain(model, x)
    total = expl.contribution_map.sum((-2, -1)) + expl.bias_contribution
    torch.testing.assert_close(total, expl.logits.gather(1, expl.target[:, None])[:, 0], rtol=1e-4, atol=1e-4)
    assert torch.isfinite(expl.dynamic_linear_weights).all()


def test_simple9_trains() -> None:
    """Adam with BCE learns a small class-dependent problem (v1's scale keeps the norm-free net alive)."""
    g = torch.Generator().manual_seed(0)
    templates = torch.rand(10, 1, 8, 8, generator=g)
    y = torch.arange(20) % 10
    x = (0.7 * templates[y] + 0.3 * torch.rand(20, 1, 8, 8, generator=g)).clamp(0, 1)
    x = add_inverse(x)
    target = F.one_hot(y, 10).float()
    torch.manual_seed(0)
    model = create_model("bcos_simple9_cifar", in_chans=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    uniform = F.binary_cross_entropy_with_logits(torch.full((1, 10), BIAS), F.one_hot(torch.tensor([0]), 10).float())
    assert min(losses[-5:]) < 0.5 * uniform.item()
    assert (model(x).argmax(1) == y).float().mean() > 0.8


def test_simple9_without_scale_is_dead() -> None:
    """Why the v1 scale is the default: without it the activations of the norm-free net vanish."""
    torch.manual_seed(0)
    model = create_model("bcos_simple9_cifar", scale=1.0)
    with torch.no_grad():
        out = model(_image(size=28))
    torch.testing.assert_close(out, torch.full_like(out, BIAS * 1.0), atol=1e-4, rtol=0)
