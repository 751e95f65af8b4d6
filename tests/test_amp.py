"""Autocast: convolutions and matmuls run in low precision, norms in float32, explanations stay complete."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import bcos_zoo
from bcos_zoo.layers import patch_norms
from bcos_zoo.models.resnet import BasicBlock, BcosResNet


def _tiny_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return BcosResNet(BasicBlock, [1, 1, 1], num_classes=5, inplanes=8, small_inputs=True, norm_layer="bnu-linear")


def _tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return bcos_zoo.create_model("bcos_simple_vit_ti_patch16_224", depth=1, image_size=16, patch_size=8)


@pytest.mark.parametrize("build", [_tiny_resnet, _tiny_vit], ids=["resnet-bnu", "vit-depth1"])
def test_cpu_bfloat16_autocast_forward_and_explain(build: Callable[[], torch.nn.Module]) -> None:
    model = build().eval()
    x = bcos_zoo.AddInverse()(torch.rand(2, 3, 16, 16))
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16  # autocast does something
    scale = (ref - model.logit_layer.logit_bias if hasattr(model, "logit_layer") else ref).abs().max()
    torch.testing.assert_close(low.float(), ref, rtol=1e-2, atol=0.05 * float(scale))  # bfloat16: 8 mantissa bits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e = bcos_zoo.explain(model, x)
    total = e.contribution_map.flatten(1).sum(1) + e.bias_contribution
    chosen = e.logits.gather(1, e.target[:, None])[:, 0].float()
    torch.testing.assert_close(total.float(), chosen, rtol=1e-2, atol=1e-2 * float(scale))


def test_patch_norms_accumulate_half_inputs_in_float32() -> None:
    x = torch.rand(1, 64, 6, 6).bfloat16()
    norms = patch_norms(x, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert norms.dtype == torch.float32
    torch.testing.assert_close(norms, patch_norms(x.float(), (3, 3), (1, 1), (1, 1), (1, 1), 1))
