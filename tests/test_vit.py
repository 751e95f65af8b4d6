"""B-cos and standard ViTs against the official ``bcos`` package (the oracle), plus explanations.

The official models are built on the meta device and filled with random tensors (fast even for
ViT-L), saved in the official format where cheap, and loaded into ours.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import bcos_zoo
from bcos_zoo import create_model, explain
from bcos_zoo.models.vit import BcosViT, PosEmbSinCos2d, StandardViT
from bcos_zoo.transforms import add_inverse

official = pytest.importorskip("bcos.models.pretrained")

pytestmark = [pytest.mark.oracle, pytest.mark.usefixtures("single_thread")]

SIZES = ("ti", "s", "b", "l")
NAMES = [f"simple_vit_{s}_patch16_224" for s in SIZES] + [f"vitc_{s}_patch1_14" for s in SIZES]
BIAS = -math.log(999)

# model.parameters() counts of the official models (facts §4.1, "computed")
NUM_PARAMS = {
    "bcos_simple_vit_ti_patch16_224": 5_800_128, "bcos_simple_vit_s_patch16_224": 22_217_088,
    "bcos_simple_vit_b_patch16_224": 86_901_504, "bcos_simple_vit_l_patch16_224": 178_787_328,
    "bcos_vitc_ti_patch1_14": 5_318_712, "bcos_vitc_s_patch1_14": 20_878_704,
    "bcos_vitc_b_patch1_14": 81_326_016, "bcos_vitc_l_patch1_14": 167_444_160,
    "standard_simple_vit_ti_patch16_224": 5_670_184, "standard_simple_vit_s_patch16_224": 21_956_200,
    "standard_simple_vit_b_patch16_224": 86_378_728, "standard_simple_vit_l_patch16_224": 178_104_296,
    "standard_vitc_ti_patch1_14": 5_334_952, "standard_vitc_s_patch1_14": 20_910_184,
    "standard_vitc_b_patch1_14": 81_388_648, "standard_vitc_l_patch1_14": 167_541_352,
}  # fmt: skip


def _random_state(sd: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values of the right scale: unit-variance outputs for matrices, norm weights near 1."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        r = torch.randn(v.shape, generator=g)
        if v.dim() >= 2:
            out[k] = r / math.sqrt(v[0].numel())
        else:
            out[k] = 1 + 0.2 * r if k.endswith("weight") else 0.1 * r
    return out


def _official(name: str, bcos: bool) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The official entrypoint with random weights, and its (official-layout) state dict."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = getattr(official, name if bcos else f"standard_{name}")(pretrained=False)
    sd = _random_state(model.state_dict())
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval(), sd


def _ours_from_memory(arch: str, sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    with torch.device("meta"):
        model = create_model(arch)
    model.load_state_dict(model.convert_state_dict(sd) if hasattr(model, "convert_state_dict") else sd, assign=True)
    return model.eval()


def _input(bcos: bool, size: int = 32, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if not bcos:
        return torch.randn(batch, 3, size, size, generator=g)
    x = torch.rand(batch, 3, size, size, generator=g)
    return add_inverse(x)


def _rel(a: torch.Tensor, b: torch.Tensor, offset: float = 0.0) -> float:
    """max |a - b| relative to the scale of ``b - offset``."""
    return ((a - b).abs().max() / (b - offset).abs().max()).item()


def _check_against_official(arch: str, theirs: torch.nn.Module, ours: torch.nn.Module, x: torch.Tensor) -> None:
    bcos = arch.startswith("bcos_")
    with torch.no_grad():
        ref, out = theirs(x), ours(x)
    assert _rel(out, ref, BIAS if bcos else 0.0) < 1e-4
    if not bcos:
        return
    x1 = x[:1].clone().requires_grad_(True)
    ref_expl = theirs.explain(x1)
    expl = explain(ours, x[:1], target=ref_expl["explained_class_idx"])
    assert _rel(expl.dynamic_linear_weights, ref_expl["dynamic_linear_weights"]) < 1e-4
    assert _rel(expl.contribution_map, ref_expl["contribution_map"].detach()) < 1e-4


@pytest.mark.parametrize("bcos", [True, False], ids=["bcos", "standard"])
@pytest.mark.parametrize("name", NAMES)
def test_matches_official(name: str, bcos: bool, tmp_path) -> None:
    arch = f"{'bcos' if bcos else 'standard'}_{name}"
    theirs, sd = _official(name, bcos)
    if "_b_" in name or "_l_" in name:  # big: load in memory (the file route is tested on the small ones)
        ours = _ours_from_memory(arch, sd)
    else:
        path = tmp_path / f"{arch}.pth"
        torch.save(sd, path)
        ours = create_model(arch, pretrained=path).eval()
    _check_against_official(arch, theirs, ours, _input(bcos))


@pytest.mark.parametrize(
    "arch", ["bcos_simple_vit_ti_patch16_224", "bcos_vitc_ti_patch1_14", "standard_vitc_ti_patch1_14"]
)
def test_full_size_224(arch: str) -> None:
    bcos = arch.startswith("bcos_")
    theirs, sd = _official(arch.split("_", 1)[1], bcos)
    _check_against_official(arch, theirs, _ours_from_memory(arch, sd), _input(bcos, size=224, batch=1))


@pytest.mark.parametrize("arch", sorted(NUM_PARAMS))
def test_num_params(arch: str) -> None:
    with torch.device("meta"):
        model = create_model(arch)
    assert sum(p.numel() for p in model.parameters()) == NUM_PARAMS[arch]


def test_state_dict_layout_round_trip() -> None:
    _, sd = _official("vitc_ti_patch1_14", bcos=True)
    ours = _ours_from_memory("bcos_vitc_ti_patch1_14", sd)
    assert len(sd) == 77 and all(k.startswith("0.") for k in sd)
    mine = ours.state_dict()
    assert not any(k.startswith("0.") for k in mine)
    assert "to_patch_embedding.conv_stem.9.linear.weight" in mine
    assert "transformer.encoder_0.attn.to_qkv.weight" in mine and "linear_head.linear.linear.weight" in mine
    back = ours.to_official_state_dict()
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    assert ours.convert_state_dict(mine).keys() == mine.keys()  # our own layout passes through
    # standard ViTs have no prefix at all: keys are identical
    _, std_sd = _official("vitc_ti_patch1_14", bcos=False)
    with torch.device("meta"):
        std = create_model("standard_vitc_ti_patch1_14")
    assert std.state_dict().keys() == std_sd.keys() and len(std_sd) == 132


@pytest.mark.parametrize("arch", bcos_zoo.list_models("bcos_*vit*"))
def test_explanation_complete_with_pos_emb(arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, depth=2, image_size=32).eval()
    x = _input(True, size=32, batch=2)
    expl = explain(model, x)
    logits = model(x).gather(1, expl.target[:, None])[:, 0]
    total = expl.contribution_map.sum((-2, -1)) + expl.bias_contribution
    torch.testing.assert_close(total, logits.detach(), rtol=1e-4, atol=1e-4)
    pos_share = expl.bias_contribution - BIAS  # the positional embedding's share of each logit
    assert (pos_share.abs() > 1e-4 * logits.abs().max()).all()


def test_attention_detaches_only_in_explanation_mode() -> None:
    torch.manual_seed(0)
    model = create_model("bcos_simple_vit_ti_patch16_224", depth=1).eval()
    attn = model.transformer.encoder_0.attn
    tokens = torch.randn(1, 4, 192, requires_grad=True)
    (g_normal,) = torch.autograd.grad(attn(tokens).sum(), tokens)
    with model.explanation_mode():
        (g_detached,) = torch.autograd.grad(attn(tokens).sum(), tokens)
        assert attn.detach
    assert not attn.detach
    assert not torch.allclose(g_normal, g_detached)
    # explanation mode's own path (attention matrix outside autograd) is SDPA with q and k detached:
    # same output, same gradients for the tokens and every weight
    with model.explanation_mode():
        out = attn(tokens)
        grads = torch.autograd.grad(out.sum(), [tokens, attn.to_qkv.weight, attn.to_out.linear.weight])
    with model.explanation_mode():
        qkv = attn.to_qkv(attn.norm(tokens))
        q, k, v = (t.unflatten(-1, (attn.heads, attn.dim_head)).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        ref = attn.to_out(F.scaled_dot_product_attention(q.detach(), k.detach(), v).transpose(1, 2).flatten(2))
    ref_grads = torch.autograd.grad(ref.sum(), [tokens, attn.to_qkv.weight, attn.to_out.linear.weight])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_pos_emb_formula() -> None:
    h, w, dim = 3, 5, 16
    pe = PosEmbSinCos2d()(torch.zeros(1, h, w, dim))
    omega = 10_000.0 ** -(torch.arange(4) / 3)
    y, x = 2, 3  # token y * w + x
    expected = torch.cat([(x * omega).sin(), (x * omega).cos(), (y * omega).sin(), (y * omega).cos()])
    torch.testing.assert_close(pe[y * w + x], expected)


def test_patch_order_is_row_column_channel() -> None:
    model = create_model("bcos_simple_vit_ti_patch16_224", depth=1)
    x = torch.arange(6 * 16 * 32, dtype=torch.float32).view(1, 6, 16, 32)
    patches = model.to_patch_embedding.patchify(x)  # [1, 1, 2, 16*16*6]
    assert patches.shape == (1, 1, 2, 1536)
    # second patch, pixel (row 2, col 3), channel 4 -> index (2 * 16 + 3) * 6 + 4
    assert patches[0, 0, 1, (2 * 16 + 3) * 6 + 4] == x[0, 4, 2, 16 + 3]


def test_overrides_and_errors() -> None:
    model = create_model("bcos_vitc_s_patch1_14", image_size=64, depth=1, num_classes=7)
    assert isinstance(model, BcosViT) and len(model.transformer) == 1 and model.image_size == 64
    assert model(_input(True, size=64, batch=1)).shape == (1, 7)
    assert model.logit_layer.logit_bias == pytest.approx(-math.log(6))
    with pytest.raises(ValueError, match="divisible"):
        create_model("bcos_simple_vit_ti_patch16_224", image_size=40)
    with pytest.raises(TypeError, match="unexpected keyword"):
        create_model("bcos_simple_vit_ti_patch16_224", dropout=0.1)
    std = create_model("standard_simple_vit_ti_patch16_224", depth=1)
    assert isinstance(std, StandardViT) and std.in_chans == 3 and std.num_classes == 1000
    assert std.transform.config.mean == (0.485, 0.456, 0.406) and std.transform.config.in_chans == 3
    assert not hasattr(std, "logit_layer")


def test_reset_classifier() -> None:
    model = create_model("bcos_simple_vit_ti_patch16_224", depth=1)
    assert model.get_classifier() is model.linear_head.linear
    model.reset_classifier(5)
    assert model(_input(True, size=32, batch=1)).shape == (1, 5)
    assert model.get_classifier().linear.weight.shape == (5, 192)
    assert model.logit_layer.logit_bias == pytest.approx(-math.log(4))
