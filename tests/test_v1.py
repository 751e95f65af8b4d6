"""B-cos v1: the v1 convolution against an explicit formula (and the official deprecated
``BcosConv2dWithScale``, which implements it), the v1 models' checkpoint layout, their logit
transforms and the completeness of their explanations."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import bcos_zoo
from bcos_zoo import create_model, explain
from bcos_zoo.layers import BcosConv2d
from bcos_zoo.layers.bcos_v1 import BcosConv2dV1
from bcos_zoo.models.v1 import V1_LOGIT_BIAS
from bcos_zoo.transforms import add_inverse

pytestmark = pytest.mark.usefixtures("single_thread")


def v1_reference(x: torch.Tensor, weight: torch.Tensor, kernel, stride, padding, b: float, max_out: int,
                 scale: float) -> torch.Tensor:  # fmt: skip
    """The v1 unit written out: unit-norm filters, MaxOut, ``out·(|out|/‖patch‖ + 1e-6)^(b-1) / scale``
    (``out·|out|/‖patch‖ / scale`` for b=2) with ``‖patch‖ = sqrt(Σ patch² + 1e-6)``."""
    n, _, h, w = x.shape
    kh, kw = kernel
    w_unit = weight / weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    patches = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # [N, C*kh*kw, L]
    lin = torch.einsum("ok,nkl->nol", w_unit.flatten(1), patches)  # [N, O*M, L]
    lin = lin.view(n, -1, max_out, lin.shape[-1]).amax(2)  # [N, O, L]
    norm = (patches.square().sum(1, keepdim=True) + 1e-6).sqrt()  # [N, 1, L]
    if b == 1:
        out = lin
    elif b == 2:
        out = lin * lin.abs() / norm
    else:
        out = lin * (lin.abs() / norm + 1e-6) ** (b - 1)
    h_out = (h + 2 * padding[0] - kh) // stride[0] + 1
    return (out / scale).view(n, -1, h_out, (w + 2 * padding[1] - kw) // stride[1] + 1)


LAYER_CASES = [  # in, out, kernel, stride, padding, b, max_out, scale_fact
    (6, 8, (3, 3), (1, 1), (1, 1), 2, 2, 100), (6, 8, (3, 3), (2, 2), (1, 1), 2.5, 2, 1000),
    (5, 4, (1, 7), (1, 1), (0, 3), 1.5, 2, 200), (5, 4, (7, 1), (1, 1), (3, 0), 1, 1, 100),
    (4, 3, (1, 1), (1, 1), (0, 0), 1.25, 1, 100), (4, 3, (5, 5), (3, 3), (0, 0), 2, 1, 200),
]  # fmt: skip


@pytest.mark.parametrize("cin, cout, kernel, stride, padding, b, max_out, scale_fact", LAYER_CASES)
def test_v1_layer_formula(cin, cout, kernel, stride, padding, b, max_out, scale_fact) -> None:
    torch.manual_seed(0)
    layer = BcosConv2dV1(cin, cout, kernel, stride, padding, b=b, max_out=max_out, scale_fact=scale_fact)
    assert layer.scale == pytest.approx(math.sqrt(kernel[0] * kernel[1]) * math.sqrt(cin) / scale_fact)
    assert layer.linear.weight.shape == (cout * max_out, cin, *kernel)
    x = torch.randn(2, cin, 11, 10)
    expected = v1_reference(x, layer.linear.weight, kernel, stride, padding, b, max_out, layer.scale)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.oracle
@pytest.mark.parametrize("b", [1.5, 2])
def test_v1_layer_matches_official_with_scale(b: float) -> None:
    BcosConv2dWithScale = pytest.importorskip("bcos.modules.bcosconv2d").BcosConv2dWithScale

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        theirs = BcosConv2dWithScale(6, 8, 3, 2, 1, b=b, max_out=2, scale_factor=1000)
    ours = BcosConv2dV1(6, 8, 3, 2, 1, b=b, max_out=2, scale_fact=1000)
    ours.load_state_dict(theirs.state_dict())
    assert ours.scale == pytest.approx(theirs.scale)
    x = torch.randn(2, 6, 9, 9, generator=torch.Generator().manual_seed(0))
    ref = theirs(x)
    torch.testing.assert_close(ours(x), ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item())


@pytest.mark.parametrize("b", [1.25, 2, 2.5])
def test_v1_layer_explanation_mode_is_linear(b: float) -> None:
    torch.manual_seed(0)
    layer = BcosConv2dV1(6, 4, 3, 1, 1, b=b)
    x = torch.randn(1, 6, 7, 7, requires_grad=True)
    plain = layer(x)
    layer.set_explanation_mode(True)
    out = layer(x)
    torch.testing.assert_close(out, plain)  # same values, only the gradient path changes
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close((grad * x).sum(), out.sum(), rtol=1e-5, atol=1e-5)


def test_v1_layer_from_conv_and_errors() -> None:
    v2 = BcosConv2d(6, 4, 3, padding=1, max_out=2)
    v1 = BcosConv2dV1.from_conv(v2, scale_fact=200)
    assert v1.linear is v2.linear and v1.scale == pytest.approx(3 * math.sqrt(6) / 200)
    x = torch.randn(1, 6, 5, 5)
    torch.testing.assert_close(v1(x), v2(x) / v1.scale)
    with pytest.raises(ValueError, match="groups"):
        BcosConv2dV1.from_conv(BcosConv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="positive"):
        BcosConv2dV1(4, 4, scale=0.0)
    assert "scale=" in repr(v1)


# ------------------------------------------------------------------------------------------------
# Models: official (``0.``-prefixed) checkpoint layout, shapes (MaxOut 2 doubles every conv's filters)

LAYOUT = {
    "bcos_v1_resnet34": (37, {
        "0.conv1.linear.weight": (128, 6, 7, 7), "0.layer1.0.conv1.linear.weight": (128, 64, 3, 3),
        "0.layer2.0.conv1.linear.weight": (256, 64, 3, 3), "0.layer2.0.downsample.0.linear.weight": (256, 64, 1, 1),
        "0.layer4.2.conv2.linear.weight": (1024, 512, 3, 3), "0.fc.linear.weight": (2000, 512, 1, 1),
    }),
    "bcos_v1_densenet121": (121, {
        "0.features.conv0.linear.weight": (128, 6, 7, 7),
        "0.features.denseblock1.denselayer1.conv1.linear.weight": (256, 64, 1, 1),
        "0.features.denseblock1.denselayer1.conv2.linear.weight": (64, 128, 3, 3),
        "0.features.transition1.conv.linear.weight": (256, 256, 1, 1),
        "0.features.denseblock4.denselayer16.conv1.linear.weight": (256, 992, 1, 1),
        "0.classifier.linear.weight": (2000, 1024, 1, 1),
    }),
    "bcos_v1_vgg11": (11, {
        "0.features.0.linear.weight": (128, 6, 3, 3), "0.features.2.linear.weight": (256, 64, 3, 3),
        "0.features.5.linear.weight": (512, 256, 3, 3), "0.features.11.linear.weight": (1024, 512, 3, 3),
        "0.classifier.0.linear.weight": (8192, 512, 7, 7), "0.classifier.1.linear.weight": (8192, 4096, 1, 1),
        "0.classifier.2.linear.weight": (2000, 4096, 1, 1),
    }),
    "bcos_v1_inception_v3": (98, {
        "0.Conv2d_1a_3x3.conv.linear.weight": (64, 6, 3, 3), "0.Conv2d_4a_3x3.conv.linear.weight": (384, 80, 3, 3),
        "0.Mixed_5b.branch_pool.conv.linear.weight": (64, 192, 1, 1),
        "0.Mixed_6a.branch3x3.conv.linear.weight": (768, 288, 3, 3),
        "0.Mixed_6b.branch7x7_2.conv.linear.weight": (256, 128, 1, 7),
        "0.Mixed_6e.branch7x7dbl_5.conv.linear.weight": (384, 192, 1, 7),
        "0.Mixed_7a.branch7x7x3_4.conv.linear.weight": (384, 192, 3, 3),
        "0.Mixed_7c.branch3x3dbl_3b.conv.linear.weight": (768, 384, 3, 1),
        "0.AuxLogits.conv1.conv.linear.weight": (1536, 128, 5, 5), "0.AuxLogits.fc.linear.weight": (2000, 768, 1, 1),
        "0.fc.linear.weight": (2000, 2048, 1, 1),
    }),
}  # fmt: skip
TEMPERATURE = {"bcos_v1_resnet34": 10, "bcos_v1_densenet121": 1e-3, "bcos_v1_vgg11": 0.1, "bcos_v1_inception_v3": 1}


def _meta(arch: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(arch, **kwargs)


@pytest.mark.parametrize("arch", sorted(LAYOUT))
def test_v1_layout_and_logit_transform(arch: str) -> None:
    model = _meta(arch)
    official = model.to_official_state_dict()
    count, shapes = LAYOUT[arch]
    assert len(official) == count and all(k.endswith(".linear.weight") for k in official)
    assert {k: tuple(official[k].shape) for k in shapes} == shapes
    assert model.convert_state_dict(official).keys() == model.state_dict().keys()
    assert model.logit_layer.logit_bias == pytest.approx(math.log(0.01 / 0.99)) == pytest.approx(V1_LOGIT_BIAS)
    assert model.logit_layer.logit_temperature == pytest.approx(TEMPERATURE[arch])
    convs = [m for m in model.modules() if isinstance(m, BcosConv2d)]
    assert all(isinstance(m, BcosConv2dV1) and m.max_out == 2 and m.b == 2 for m in convs) and len(convs) == count
    assert model.in_chans == 6 and model.num_classes == 1000


def test_v1_scales_per_model() -> None:
    resnet, vgg, inception = (_meta(a) for a in ("bcos_v1_resnet34", "bcos_v1_vgg11", "bcos_v1_inception_v3"))
    assert resnet.conv1.scale == pytest.approx(7 * math.sqrt(6) / 100)
    assert resnet.fc.scale == pytest.approx(math.sqrt(512) / 100)
    assert vgg.features[0].scale == pytest.approx(3 * math.sqrt(6) / 1000)
    assert vgg.classifier[0].scale == pytest.approx(7 * math.sqrt(512) / 1000)
    assert inception.Mixed_6b.branch7x7_2.conv.scale == pytest.approx(math.sqrt(7) * math.sqrt(128) / 200)
    assert inception.fc.scale == pytest.approx(math.sqrt(2048) / 200)
    assert [type(m).__name__ for m in vgg.features] == ["BcosConv2dV1", "AvgPool2d"] * 2 + (
        ["BcosConv2dV1", "BcosConv2dV1", "AvgPool2d"] * 3
    )


def test_v1_official_checkpoint_loads_strictly(tmp_path) -> None:
    torch.manual_seed(0)
    source = create_model("bcos_v1_densenet121")
    torch.save(source.to_official_state_dict(), tmp_path / "state_dict.pkl")
    model = create_model("bcos_v1_densenet121", pretrained=tmp_path / "state_dict.pkl").eval()
    x = torch.rand(1, 6, 32, 32)
    torch.testing.assert_close(model(x), source.eval()(x))
    with pytest.raises(bcos_zoo.CheckpointError):
        create_model("bcos_v1_resnet34", pretrained=tmp_path / "state_dict.pkl")


def _image(size: int, batch: int = 2) -> torch.Tensor:
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    return add_inverse(x)


@pytest.mark.parametrize("arch, size, kwargs", [
    ("bcos_v1_resnet34", 32, {}), ("bcos_v1_densenet121", 32, {}), ("bcos_v1_vgg11", 32, {"hidden_features": 64}),
    ("bcos_v1_inception_v3", 80, {"aux_logits": False}),
])  # fmt: skip
def test_v1_explanation_complete(arch: str, size: int, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, **kwargs).eval()
    expl = explain(model, _image(size))
    total = expl.contribution_map.sum((-2, -1)) + expl.bias_contribution
    logits = expl.logits.gather(1, expl.target[:, None])[:, 0]
    assert expl.bias_contribution.eq(V1_LOGIT_BIAS).all()
    torch.testing.assert_close(total, logits, rtol=1e-4, atol=1e-4 * logits.abs().max().item())


def test_v1_inception_aux_and_classifier_reset() -> None:
    torch.manual_seed(0)
    model = create_model("bcos_v1_inception_v3", num_classes=5).eval()
    x = _image(299, batch=1)  # the auxiliary head needs the full 17x17 map
    with torch.no_grad():
        logits, aux = model.forward_with_aux(x)
        torch.testing.assert_close(logits, model(x))
    assert logits.shape == aux.shape == (1, 5)
    no_aux = _meta("bcos_v1_inception_v3", aux_logits=False)
    assert not any(k.startswith("AuxLogits") for k in no_aux.state_dict())
    resnet = _meta("bcos_v1_resnet34")
    resnet.reset_classifier(7)
    assert isinstance(resnet.fc, BcosConv2dV1) and resnet.fc.linear.weight.shape == (14, 512, 1, 1)
    assert resnet.fc.scale == pytest.approx(math.sqrt(512) / 100)
