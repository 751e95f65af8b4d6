"""Core behaviour: explain() invariants and errors, transforms, factory errors, fine-tuning API."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bcos_zoo
from bcos_zoo import AddInverse, explain, explanation_mode
from bcos_zoo.transforms import TransformConfig, create_transform


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = bcos_zoo.create_model("bcos_resnet20_cifar", norm_layer="bnu-linear", num_classes=7).eval()
    # give the norms non-trivial statistics so logits are not ~ the bias alone
    for mod in m.modules():
        if isinstance(mod, bcos_zoo.layers.BatchNormUncentered2d):
            mod.running_var.uniform_(0.01, 0.05)
    return m


@pytest.fixture()
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return AddInverse()(torch.rand(3, 3, 32, 32))


def test_completeness_and_shapes(model: torch.nn.Module, x: torch.Tensor) -> None:
    out = model.explain(x)
    target_logits = out.logits.gather(1, out.target[:, None])[:, 0]
    assert (target_logits - out.bias_contribution).abs().min() > 1e-3, "test needs non-trivial logits"
    torch.testing.assert_close(out.contribution_map.sum((-2, -1)) + out.bias_contribution, target_logits, rtol=1e-5, atol=1e-5)
    assert out.bias_contribution.tolist() == pytest.approx([-np.log(6)] * 3)
    assert out.dynamic_linear_weights.shape == x.shape
    assert out.contribution_map.shape == (3, 32, 32)
    assert out.explanation.shape == (3, 32, 32, 4)
    assert out.explanation.min() >= 0 and out.explanation.max() <= 1
    assert torch.equal(out.prediction, out.logits.argmax(1)) and torch.equal(out.target, out.prediction)


def test_explanation_equals_input_gradient_in_explanation_mode(model: torch.nn.Module, x: torch.Tensor) -> None:
    inp = x.clone().requires_grad_()
    with explanation_mode(model):
        model(inp)[:, 2].sum().backward()
    torch.testing.assert_close(explain(model, x, target=2).dynamic_linear_weights, inp.grad)


def test_targets(model: torch.nn.Module, x: torch.Tensor) -> None:
    per_sample = explain(model, x, target=[0, 3, 6])
    assert per_sample.target.tolist() == [0, 3, 6]
    single = explain(model, x[1:2], target=3)
    torch.testing.assert_close(per_sample.dynamic_linear_weights[1:2], single.dynamic_linear_weights)
    assert explain(model, x, target=torch.tensor(4)).target.tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="out of range"):
        explain(model, x, target=7)
    with pytest.raises(ValueError, match="2 entries for a batch of 3"):
        explain(model, x, target=[1, 2])


def test_no_gradient_leaks(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    before = x.detach().clone()
    first = explain(model, x)
    second = explain(model, x)
    torch.testing.assert_close(first.dynamic_linear_weights, second.dynamic_linear_weights, rtol=0, atol=0)
    assert x.grad is None and torch.equal(x.detach(), before)
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        third = explain(model, x.detach())
    torch.testing.assert_close(first.dynamic_linear_weights, third.dynamic_linear_weights, rtol=0, atol=0)
    assert not any(m.detach for m in model.modules() if isinstance(m, bcos_zoo.layers.Detachable))


def test_official_mapping_keys(model: torch.nn.Module, x: torch.Tensor) -> None:
    out = explain(model, x[:1])
    assert isinstance(out["prediction"], int) and out["explained_class_idx"] == out["prediction"]
    assert isinstance(out["explanation"], np.ndarray) and out["explanation"].shape == (32, 32, 4)
    assert out["contribution_map"].shape == (1, 32, 32)
    assert set(out) >= {"prediction", "explained_class_idx", "dynamic_linear_weights", "contribution_map", "explanation"}
    with pytest.raises(KeyError, match="available keys"):
        out["nope"]


def test_input_errors(model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="AddInverse"):
        explain(model, torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        explain(model, torch.rand(6, 32))
    with pytest.raises(TypeError, match="float"):
        explain(model, torch.zeros(1, 6, 32, 32, dtype=torch.uint8))
    with pytest.warns(UserWarning, match="training mode"):
        explain(model.train(), AddInverse()(torch.rand(2, 3, 32, 32)))
    model.eval()


def test_explanation_mode_restores_state(model: torch.nn.Module) -> None:
    conv = model.conv1
    conv.set_explanation_mode(True)  # a previously set state must survive the context
    with pytest.raises(RuntimeError):
        with explanation_mode(model):
            assert model.fc.detach and conv.detach
            raise RuntimeError("boom")
    assert conv.detach and not model.fc.detach
    conv.set_explanation_mode(False)

    @model.explanation_mode()
    def inside() -> bool:
        return bcos_zoo.layers.model_in_explanation_mode(model)

    assert inside() and not bcos_zoo.layers.model_in_explanation_mode(model)


def test_unknown_model_and_kwargs() -> None:
    with pytest.raises(ValueError, match="bcos_resnet50"):
        bcos_zoo.create_model("bcos_resnet5")
    with pytest.raises(TypeError, match="unexpected keyword argument.*bogus"):
        bcos_zoo.create_model("bcos_resnet18", bogus=1)
    with pytest.raises(ValueError, match="unknown norm layer 'bnu-lin'.*bnu-linear"):
        bcos_zoo.create_model("bcos_resnet18", norm_layer="bnu-lin")


def test_reset_classifier_and_feature_extractor() -> None:
    m = bcos_zoo.create_model("bcos_resnet18", num_classes=10).eval()
    m.reset_classifier(3)
    assert m.get_classifier().linear.weight.shape == (3, 512, 1, 1)
    assert m.logit_layer.logit_bias == pytest.approx(-np.log(2))
    x = AddInverse()(torch.rand(2, 3, 64, 64))
    assert m(x).shape == (2, 3)
    assert m.get_feature_extractor()(x).shape == (2, 512, 2, 2)


# ------------------------------------------------------------------------------------ transforms


def _png_bytes(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="PNG" if img.mode != "CMYK" else "JPEG")
    buf.seek(0)
    return Image.open(buf)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "I;16", "1", "LA"])
def test_transform_accepts_every_mode(mode: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    img = rgb.convert(mode) if mode != "I;16" else Image.fromarray(np.full((40, 50), 40000, dtype=np.uint16))
    t = create_transform(resize_size=36, crop_size=32)
    out = t(_png_bytes(img))
    assert out.shape == (6, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out[:3] + out[3:], torch.ones(3, 32, 32))
    if mode == "I;16":  # 16-bit values are scaled, not clipped to white
        assert out[0].mean().item() == pytest.approx(40000 / 65535, abs=1e-3)


def test_transform_matches_official_preset(tmp_path: Path) -> None:
    bcos_presets = pytest.importorskip("bcos.data.presets")
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 260, 3), dtype=np.uint8))
    ours = bcos_zoo.create_model("bcos_resnet18").transform(img)
    theirs = bcos_presets.ImageNetClassificationPresetEval(crop_size=224, is_bcos=True)(img)
    torch.testing.assert_close(ours, theirs)
    path = tmp_path / "img.png"
    img.save(path)
    torch.testing.assert_close(bcos_zoo.create_model("bcos_resnet18").transform(path), theirs)


def test_transform_tensors_and_channels() -> None:
    u8 = torch.randint(0, 256, (3, 30, 30), dtype=torch.uint8)
    t = create_transform(TransformConfig(resize_size=None, crop_size=None))
    torch.testing.assert_close(t(u8)[:3], u8.float() / 255)
    gray = create_transform(TransformConfig(resize_size=None, crop_size=None, in_chans=2))
    assert gray(u8).shape == (2, 30, 30) and gray(u8[0]).shape == (2, 30, 30)
    rgb = create_transform(TransformConfig(resize_size=None, crop_size=None, in_chans=6))
    assert rgb(u8[:1]).shape == (6, 30, 30)
    with pytest.raises(ValueError, match="already preprocessed"):
        rgb(torch.rand(6, 30, 30))


def test_corrupt_image_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[:200])
    with pytest.raises(ValueError, match="cannot read image"):
        create_transform()(path)
    with pytest.raises(FileNotFoundError):
        create_transform()(tmp_path / "missing.png")


@pytest.mark.parametrize("k", [1, 2, 3, 4, 15])
def test_box_smoothing_equals_the_square_mean_filter(k: int) -> None:
    """The two 1-D passes of the explanation's alpha smoothing give avg_pool2d's k×k mean (odd and even k)."""
    from bcos_zoo.explain import _box_smooth

    x = torch.rand(2, 1, 37, 50)
    expected = torch.nn.functional.avg_pool2d(x, k, stride=1, padding=(k - 1) // 2)
    got = _box_smooth(x, k)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
