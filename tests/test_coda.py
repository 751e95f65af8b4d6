"""CoDA-Nets: the Dynamic Alignment Unit against its per-position definition, explanation mode, the
two architectures (structure, completeness, official checkpoint layout)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import bcos_zoo
from bcos_zoo import CheckpointError, create_model
from bcos_zoo.layers import CoDAConv2d, explanation_mode
from bcos_zoo.models.coda import CODA_LOGIT_BIAS, CoDANet

pytestmark = pytest.mark.usefixtures("single_thread")


def per_position_dau(layer: CoDAConv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DAU written out naively, one output position at a time: the dynamic weights of unit j are
    channels ``p·D + j`` of ``B(A ∗ x)`` (patch index p over input channel, kernel row, kernel column),
    applied to the zero-padded input patch and divided by the norm of the weights.

    Returns the output ``[N, D, H', W']``, the weights ``[N, D, P, H', W']`` and the norms ``[N, D, H', W']``."""
    a, b = layer.weight_mod.weighting_f
    generated = b(a(x))  # [N, D·P, H', W']
    n, _, ho, wo = generated.shape
    d, (kh, kw), (sh, sw) = layer.out_channels, layer.kernel_size, layer.stride
    padded = F.pad(x, (layer.padding[1], layer.padding[1], layer.padding[0], layer.padding[0]))
    out, weights, norms = (x.new_zeros(n, d, ho, wo), x.new_zeros(n, d, generated.shape[1] // d, ho, wo),
                           x.new_zeros(n, d, ho, wo))  # fmt: skip
    for i in range(ho):
        for k in range(wo):
            patch = padded[:, :, i * sh : i * sh + kh, k * sw : k * sw + kw].reshape(n, -1)  # [N, P]
            for j in range(d):
                w = generated[:, j::d, i, k]  # [N, P]: channels p·D + j
                norm = w.norm(dim=1)
                norm = (1 + norm**2) / norm if layer.norm == "squash" else norm
                out[:, j, i, k] = (w * patch).sum(1) / norm
                weights[:, j, :, i, k], norms[:, j, i, k] = w, norm
    return out, weights, norms


def _layer(cin: int, d: int, kernel: int, stride: int, padding: int | None, rank: int, norm: str = "squash",
           groups: int = 1, seed: int = 0) -> CoDAConv2d:  # fmt: skip
    torch.manual_seed(seed)
    return CoDAConv2d(cin, d, kernel, stride, padding, rank=rank, norm=norm, groups=groups).double()


GEOMETRIES = [  # in, units, kernel, stride, padding, rank, norm, groups
    (6, 4, 3, 1, None, 5, "squash", 1), (3, 5, 5, 2, 2, 7, "l2", 1), (4, 3, 3, 2, 0, 8, "squash", 2),
    (5, 3, 1, 1, 0, 9, "l2", 1), (2, 6, 7, 3, 3, 4, "squash", 1), (3, 2, 3, 1, 1, 40, "squash", 1),
]  # fmt: skip


@pytest.mark.parametrize("cin, d, kernel, stride, padding, rank, norm, groups", GEOMETRIES)
def test_dau_matches_per_position_formula(cin, d, kernel, stride, padding, rank, norm, groups) -> None:
    layer = _layer(cin, d, kernel, stride, padding, rank, norm, groups)
    x = torch.rand(2, cin, 7, 6, dtype=torch.float64)
    expected, _, _ = per_position_dau(layer, x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)
    layer.float()  # float32 agrees to float32 precision
    torch.testing.assert_close(layer(x.float()).double(), expected, rtol=2e-5, atol=1e-6)


def test_dau_gradients_match_formula() -> None:
    """Training gradients (input and every parameter) are those of the explicit formula: the QR
    factorisation of the norm is held constant without changing the gradient."""
    layer = _layer(4, 3, 3, 1, 1, 6, groups=3)
    x = torch.rand(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    (layer(x) * g).sum().backward()
    ours = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x.grad = None
    layer.zero_grad()
    (per_position_dau(layer, x)[0] * g).sum().backward()
    for got, want in zip(ours, [x.grad] + [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_dau_accurate_where_weights_cancel() -> None:
    """Where ``B h`` and ``b`` nearly cancel, the float32 layer is as accurate as the explicit formula in
    float32; the Gram form ``hᵀBᵀBh + 2bᵀBh + ‖b‖²`` of ‖w‖² would lose two more digits here."""
    layer = _layer(8, 4, 3, 1, 1, 16)
    a, b = layer.weight_mod.weighting_f
    x = 0.5 + 0.01 * torch.rand(1, 8, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # bias = -B h at the centre, plus 1% noise: ‖w‖ is ~100× smaller than ‖B h‖
        bh = b.weight.flatten(1) @ a(x)[0, :, 5, 5]
        noise = torch.randn(bh.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        b.bias.copy_(-bh + 0.01 * bh.abs().mean() * noise)
        expected, weights, _ = per_position_dau(layer, x)
        layer.float()
        explicit32 = per_position_dau(layer, x.float())[0].double()
        ours = layer(x.float()).double()
        m = layer.weight_mod.factors()  # [D, P, R+1] = [B_j | b_j]
        h, bj, cj = a(x.float()), m[..., :-1], m[..., -1]
        gram = torch.einsum("nrhw,jpr,jps,nshw->njhw", h, bj, bj, h) + 2 * torch.einsum("jp,jpr,nrhw->njhw", cj, bj, h)
        gram = gram + cj.square().sum(1)[None, :, None, None]
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # positions whose patch is nearly constant
    rel = lambda got, want: ((got - want) / want)[inner].abs()
    norm_sq = weights.square().sum(2)
    assert rel(ours, expected).max() < 3 * rel(explicit32, expected).max()
    assert rel(ours, expected).median() < 3 * rel(explicit32, expected).median()
    assert rel(gram.double(), norm_sq).median() > 100 * rel(weights.float().square().sum(2).double(), norm_sq).median()


def test_dau_explanation_mode_detaches_weights_and_norm() -> None:
    layer = _layer(3, 4, 3, 2, 1, 5)
    x = torch.rand(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    out, weights, norms = per_position_dau(layer, x.detach())
    with explanation_mode(layer):
        y = layer(x)
        (y * g).sum().backward()
    torch.testing.assert_close(y, out)
    # the hand-computed linear map: sum_j g_j · w_j / norm_j, put back on each patch
    per_patch = (g[:, :, None] * weights / norms[:, :, None]).sum(1)  # [N, P, H', W']
    linear_map = F.fold(per_patch.flatten(2), (7, 7), 3, padding=1, stride=2)
    torch.testing.assert_close(x.grad, linear_map, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in layer.parameters()), "the dynamic weights are constants"
    assert not layer.detach
    x.grad = None
    (layer(x) * g).sum().backward()
    assert (x.grad - linear_map).abs().max() > 1e-3, "outside explanation mode weights and norm depend on x"


def test_dau_errors() -> None:
    with pytest.raises(ValueError, match="norm must be one of squash, l2"):
        CoDAConv2d(3, 4, 3, rank=4, norm="l1")
    with pytest.raises(ValueError, match="groups=3 must divide rank=4"):
        CoDAConv2d(3, 4, 3, rank=4, groups=3)
    with pytest.raises(ValueError, match="must be positive"):
        CoDAConv2d(3, 4, 3, rank=0)
    assert CoDAConv2d(3, 4, 5, rank=2).padding == (2, 2)  # the official default (k - 1) // 2


# ------------------------------------------------------------------------------------------ architectures


def _meta(arch: str, **kwargs: object) -> CoDANet:
    with torch.device("meta"):
        return create_model(arch, **kwargs)


def _geometry(model: CoDANet) -> list[tuple]:
    layers = [model.get_submodule(str(i)) for i in range(9)]
    return [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], m.rank) for m in layers]


def test_coda_simple9_cifar_structure() -> None:
    model = _meta("coda_simple9_cifar")
    assert _geometry(model) == [
        (6, 16, 3, 1, 1, 32), (16, 16, 3, 1, 1, 32), (16, 32, 3, 2, 1, 64), (32, 32, 3, 1, 1, 64),
        (32, 32, 3, 1, 1, 64), (32, 64, 3, 2, 1, 64), (64, 64, 3, 1, 1, 64), (64, 64, 3, 1, 1, 64),
        (64, 10, 1, 1, 0, 64),
    ]  # fmt: skip
    assert f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M" == "7.78M"
    assert list(model.state_dict()) == [
        f"{i}.weight_mod.weighting_f.{k}" for i in range(9) for k in ("0.weight", "1.weight", "1.bias")
    ]
    assert model.state_dict()["1.weight_mod.weighting_f.1.weight"].shape == (16 * 16 * 9, 32, 1, 1)
    assert model.logit_layer.logit_temperature == 1000
    assert model.logit_layer.logit_bias == pytest.approx(math.log(1 / 9))
    assert model.get_classifier() is model.get_submodule("8") and model.num_classes == 10 and model.in_chans == 6
    gray = _meta("coda_simple9_cifar", in_chans=2, norm="l2", rank_scale=0.25, temperature=64, num_classes=3)
    assert [g[5] for g in _geometry(gray)] == [8, 8] + [16] * 7 and _geometry(gray)[0][0] == 2
    assert all(m.norm == "l2" for m in gray.modules() if isinstance(m, CoDAConv2d))
    assert gray.logit_layer.logit_temperature == 64 and gray.num_classes == 3
    assert _meta("coda_simple9_cifar", rank_scale=0.001).ranks == (1,) * 9
    with pytest.raises(ValueError, match="rank_scale must be positive"):
        _meta("coda_simple9_cifar", rank_scale=0)


def test_coda_simple9_in100_structure() -> None:
    model = _meta("coda_simple9_in100")
    assert _geometry(model) == [
        (6, 16, 7, 3, 3, 64), (16, 32, 3, 1, 1, 64), (32, 32, 3, 1, 1, 64), (32, 64, 3, 2, 1, 128),
        (64, 64, 3, 1, 1, 128), (64, 64, 3, 1, 1, 128), (64, 64, 3, 2, 1, 256), (64, 64, 3, 1, 1, 256),
        (64, 100, 3, 1, 1, 256),
    ]  # fmt: skip
    assert model.logit_layer.logit_temperature == 1e5 and model.num_classes == 100
    cfg = model.transform.config
    assert (cfg.resize_size, cfg.crop_size, cfg.in_chans, cfg.mean) == (256, 240, 6, None)
    assert _meta("coda_simple9_cifar").transform.config.crop_size is None


def _image(batch: int, size: int, chans: int = 3) -> torch.Tensor:
    return bcos_zoo.AddInverse()(torch.rand(batch, chans, size, size, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("arch, kwargs, size", [
    ("coda_simple9_cifar", {"rank_scale": 0.25}, 12),
    ("coda_simple9_cifar", {"norm": "l2", "in_chans": 2, "temperature": 10, "rank_scale": 0.25}, 12),
    ("coda_simple9_in100", {"rank_scale": 0.125, "num_classes": 7}, 24),
])  # fmt: skip
def test_coda_explanations_are_complete(arch: str, kwargs: dict, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(arch, **kwargs).eval()
    x = _image(2, size, 1 if kwargs.get("in_chans") == 2 else 3)
    top2 = bcos_zoo.explain_topk(model, x, 2)  # batched, one backward pass for both classes
    for out in top2:
        logits = out.logits.gather(1, out.target[:, None])[:, 0]
        torch.testing.assert_close(out.contribution_map.sum((-2, -1)) + out.bias_contribution, logits,
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        assert (out.bias_contribution == model.logit_layer.logit_bias).all()
        contributions = (out.contribution_map.sum((-2, -1)) * model.logit_layer.logit_temperature).abs()
        assert (contributions > 1e-3).all(), "the explanation must not be empty"
    features = bcos_zoo.explain(model, x, layer="4", channel=3)  # an intermediate layer's channel total
    with torch.no_grad():
        total = model.get_feature_extractor()[:5](x)[:, 3].sum((-2, -1))
    torch.testing.assert_close(features.contribution_map.sum((-2, -1)), total, rtol=1e-5, atol=1e-6)


def test_coda_sum_pool_and_classifier_reset() -> None:
    torch.manual_seed(0)
    model = create_model("coda_simple9_cifar", rank_scale=0.25).eval()
    x = _image(2, 12)
    with torch.no_grad():
        pooled = model.get_classifier()(model.get_feature_extractor()(x)).sum((-2, -1))
        torch.testing.assert_close(model(x), pooled / 1000 + CODA_LOGIT_BIAS)
        model.reset_classifier(4)
        assert model(x).shape == (2, 4) and model.logit_layer.logit_bias == pytest.approx(-math.log(3))
    new = model.get_classifier()
    assert isinstance(new, CoDAConv2d) and new.kernel_size == (1, 1)
    assert (new.in_channels, new.out_channels, new.rank) == (64, 4, 16)


def test_coda_loads_official_checkpoints(tmp_path) -> None:
    """``model_epoch_200.pkl`` of the official code: a plain state dict with our keys, or ``module.``-prefixed."""
    torch.manual_seed(0)
    source = create_model("coda_simple9_cifar", rank_scale=0.25).eval()
    official = source.state_dict()
    torch.save(official, tmp_path / "model_epoch_200.pkl")
    torch.save({f"module.{k}": v for k, v in official.items()}, tmp_path / "dataparallel.pkl")
    x = _image(1, 8)
    for name in ("model_epoch_200.pkl", "dataparallel.pkl"):
        model = create_model("coda_simple9_cifar", rank_scale=0.25, pretrained=tmp_path / name).eval()
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    assert source.convert_state_dict({f"module.{k}": v for k, v in official.items()}).keys() == official.keys()
    broken = {k: v for k, v in official.items() if k != "3.weight_mod.weighting_f.1.bias"}
    broken["9.weight_mod.weighting_f.0.weight"] = official["8.weight_mod.weighting_f.0.weight"]
    torch.save(broken, tmp_path / "broken.pkl")
    with pytest.raises(CheckpointError, match=r"missing keys: 3\.weight_mod\.weighting_f\.1\.bias") as err:
        create_model("coda_simple9_cifar", rank_scale=0.25, pretrained=tmp_path / "broken.pkl")
    assert "unexpected keys: 9.weight_mod.weighting_f.0.weight" in str(err.value)
    with pytest.raises(CheckpointError, match="shape mismatches: 0.weight_mod"):  # the full-rank model's weights
        create_model("coda_simple9_cifar", pretrained=tmp_path / "model_epoch_200.pkl")


@pytest.mark.slow
def test_coda_trains_on_fashion_mnist_and_reloads(tmp_path) -> None:
    """``bcos-zoo train --model coda_simple9_cifar --model-kwargs in_chans=2 ...``: a few steps, then the
    final weights rebuild the model from their header and explain it completely."""
    from bcos_zoo.training import TrainConfig, train

    cfg = TrainConfig(model="coda_simple9_cifar", model_kwargs={"in_chans": 2, "rank_scale": 0.25},
                      out=str(tmp_path / "run"), epochs=1, batch_size=16, max_steps_per_epoch=3, eval_limit=64)  # fmt: skip
    result = train(cfg)
    assert math.isfinite(result["train_loss"]) and result["test_n"] == 64
    model = bcos_zoo.load_model(tmp_path / "run" / "model.safetensors").eval()
    assert model.arch == "coda_simple9_cifar" and model.in_chans == 2 and model.ranks[0] == 8
    assert model.transform.config.crop_size == 28
    out = model.explain(bcos_zoo.AddInverse()(torch.rand(2, 1, 28, 28)))
    logits = out.logits.gather(1, out.target[:, None])[:, 0]
    torch.testing.assert_close(out.contribution_map.sum((-2, -1)) + out.bias_contribution, logits, rtol=1e-5, atol=1e-6)


def test_dau_caches_its_qr_factor_in_eval_mode_and_never_serves_it_stale() -> None:
    torch.manual_seed(0)
    dau, x = CoDAConv2d(4, 6, kernel_size=3, rank=5).eval(), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        dau(x)
        dau.weight_mod.weighting_f[1].weight.mul_(torch.rand_like(dau.weight_mod.weighting_f[1].weight))
        dau.weight_mod.weighting_f[1].bias.add_(1.0)
        got = dau(x)  # the factor of the changed weights, not the cached one
    fresh = copy.deepcopy(dau).train()  # a copy starts with an empty cache; training mode never caches
    torch.testing.assert_close(got, fresh(x).detach(), rtol=1e-6, atol=1e-6)


def test_tracing_a_dau_uses_the_cached_factor_as_a_constant() -> None:
    """ONNX has no QR: a traced DAU records the factor of an earlier eager forward, or says what to do."""
    dau, x = CoDAConv2d(4, 6, kernel_size=3, rank=5).eval(), torch.randn(1, 4, 8, 8)
    with torch.no_grad(), pytest.raises(RuntimeError, match="ONNX has no QR.*bcos_zoo.export_onnx"):
        torch.jit.trace(dau, x)
    with torch.no_grad():
        expected = dau(x)
        traced = torch.jit.trace(dau, x)
    assert "linalg_qr" not in str(traced.graph)
    torch.testing.assert_close(traced(x), expected)
