"""Every registered architecture: shapes, finiteness, gradients, explain() and completeness."""

from __future__ import annotations

import pytest
import torch

import bcos_zoo
from bcos_zoo.layers import Detachable

ALL = bcos_zoo.list_models()


def _small(name: str) -> tuple[dict[str, object], int]:
    """Keyword arguments and input size that keep each architecture small but complete."""
    if "vit" in name:
        return {"depth": 1}, 64
    if name == "coda_simple9_in100":  # full ranks cost a 4-GFLOP QR per layer at any batch size
        return {"rank_scale": 0.25}, 48
    if name.endswith("_cifar"):
        return {}, 32
    if name == "bcos_v1_inception_v3":
        return {}, 96
    return {}, 64


def _build(name: str) -> torch.nn.Module:
    kwargs, _ = _small(name)
    torch.manual_seed(0)
    return bcos_zoo.create_model(name, num_classes=5, **kwargs)


def _input(model: torch.nn.Module, name: str, batch: int = 2) -> torch.Tensor:
    size = _small(name)[1]
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    return bcos_zoo.AddInverse()(x) if model.in_chans == 6 else x


def test_registry_is_complete() -> None:
    expected = {
        *(f"bcos_resnet{d}" for d in (18, 34, 50, 101, 152)), "bcos_resnext50_32x4d",
        *(f"bcos_densenet{d}" for d in (121, 161, 169, 201)), "bcos_vgg11_bnu",
        *(f"bcos_convnext_{s}{n}" for s in ("tiny", "base") for n in ("", "_bnu")),
        *(f"{k}_simple_vit_{s}_patch16_224" for k in ("bcos", "standard") for s in "tsbl" if s != "t"),
        *(f"{k}_simple_vit_ti_patch16_224" for k in ("bcos", "standard")),
        *(f"{k}_vitc_{s}_patch1_14" for k in ("bcos", "standard") for s in ("ti", "s", "b", "l")),
        "bcos_simple9_cifar", *(f"bcos_resnet{d}_cifar" for d in (20, 32, 44, 56)),
        *(f"bcos_v1_{n}" for n in ("densenet121", "resnet34", "vgg11", "inception_v3")),
        "coda_simple9_cifar", "coda_simple9_in100",
    }  # fmt: skip
    assert expected <= set(ALL), sorted(expected - set(ALL))


#: the larger B-cosified nets (1-2.5 s each here); their conversion rules run by default in tests/test_bcosify.py
BCOSIFIED_SLOW = {"bcosified_resnet50", "bcosified_densenet121", *(f"bcosified_{v}" for v in (
    "simple_vit_b_patch16_224", "simple_vit_l_patch16_224", "vitc_b_patch1_14", "vitc_l_patch1_14"))}  # fmt: skip
#: 11-19 s here (VGG's 4096-channel 7×7 classifier conv); their v2 twin of the same layout runs by default
SLOW = {"bcos_v1_vgg11", "bcos_vgg11_bnu"} | BCOSIFIED_SLOW


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ALL])
def test_forward_backward(name: str, single_thread: None) -> None:
    model = _build(name).train()
    x = _input(model, name)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    unreached = [n for n, p in model.named_parameters() if p.grad is None and not n.startswith("AuxLogits.")]
    assert not unreached, f"parameters without gradient: {unreached[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _calibrate(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Set batch-norm running statistics from one batch, as training would: at random init the
    unit running variances shrink deep networks' outputs below float32 resolution."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(x)
    model.eval()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BCOSIFIED_SLOW else n
                                  for n in ALL if not n.startswith("standard_")])  # fmt: skip
def test_explain_is_complete(name: str, single_thread: None) -> None:
    model = _build(name)
    x = _input(model, name)
    _calibrate(model, x)
    out = model.explain(x, target=[1, 3])
    logits = out.logits.gather(1, out.target[:, None])[:, 0]
    contributions = out.contribution_map.sum((-2, -1))
    scale = (x * out.dynamic_linear_weights).abs().sum((1, 2, 3))
    assert (scale > 0).all(), "the explanation must not be empty"
    assert ((contributions + out.bias_contribution - logits).abs() <= 1e-4 * scale + 1e-6).all()
    assert out.dynamic_linear_weights.shape == x.shape
    assert out.explanation.shape == (2, *x.shape[-2:], 4)
    assert out.explanation.min() >= 0 and out.explanation.max() <= 1
    assert not any(m.detach for m in model.modules() if isinstance(m, Detachable)), "explanation mode restored"


def test_standard_vits_are_not_explainable() -> None:
    model = _build("standard_simple_vit_ti_patch16_224").eval()
    assert model.in_chans == 3 and not hasattr(model, "explain")
