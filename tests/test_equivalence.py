"""Every CNN architecture against the official ``bcos`` 0.1.3 implementation (the test oracle).

For each architecture the official model is built (random init), its norms are calibrated and then
randomised, its state dict is saved as an official-style ``.pth`` and loaded strictly into ours
through ``create_model(..., pretrained=path)``. Both models then see the same input in float64:
logits, dynamic linear weights W(x) and the RGBA explanation must agree.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import bcos_zoo
from bcos_zoo import CheckpointError, create_model, list_models
from bcos_zoo.transforms import add_inverse

pretrained = pytest.importorskip("bcos.models.pretrained", reason="the official bcos package is the test oracle")

pytestmark = [pytest.mark.oracle, pytest.mark.usefixtures("single_thread")]

# ours -> official entrypoint in bcos.models.pretrained
OFFICIAL_NAMES = {
    "bcos_resnet18": "resnet18",
    "bcos_resnet34": "resnet34",
    "bcos_resnet50": "resnet50",
    "bcos_resnet101": "resnet101",
    "bcos_resnet152": "resnet152",
    "bcos_resnext50_32x4d": "resnext50_32x4d",
    "bcos_densenet121": "densenet121",
    "bcos_densenet161": "densenet161",
    "bcos_densenet169": "densenet169",
    "bcos_densenet201": "densenet201",
    "bcos_vgg11_bnu": "vgg11_bnu",
    "bcos_convnext_tiny": "convnext_tiny",
    "bcos_convnext_base": "convnext_base",
    "bcos_convnext_tiny_bnu": "convnext_tiny_bnu",
    "bcos_convnext_base_bnu": "convnext_base_bnu",
}
CNN_FAMILIES = ("resnet", "densenet", "vgg", "convnext")
SIZE = 64  # input side: every CNN downsamples by 32, so the last stage sees 2×2
REL_TOL = 1e-5


def _rand_image(gen: torch.Generator, batch: int) -> Tensor:
    """A random image plus its inverse, ``[batch, 6, SIZE, SIZE]`` in [0, 1] as the models expect."""
    rgb = torch.rand(batch, 3, SIZE, SIZE, generator=gen)
    return add_inverse(rgb)


@torch.no_grad()
def _calibrate_and_randomise(model: nn.Module, gen: torch.Generator) -> None:
    """Make the test non-trivial: at random init the running variances are 1, so a deep B-cos
    network's logits are tiny (below float64 resolution next to the logit bias). One training-mode
    pass with momentum 1 sets each batch norm's running variance to realistic statistics; then every
    norm weight and layer scale is drawn from U(0.5, 1.5) and every running variance is scaled by
    U(0.5, 2). ``running_mean`` gets random values too: uncentered norms must ignore it."""
    batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if batch_norms:
        for m in batch_norms:
            m.momentum = 1.0
        model.train()(_rand_image(gen, 2))
        for m in batch_norms:
            m.momentum = 0.1
    model.eval()
    for name, p in model.named_parameters():
        if not name.endswith("linear.weight"):  # norm weights and ConvNeXt layer scales
            p.copy_(torch.empty_like(p).uniform_(0.5, 1.5, generator=gen))
    for name, buf in model.named_buffers():
        if name.endswith("running_var"):
            buf.mul_(torch.empty_like(buf).uniform_(0.5, 2.0, generator=gen))
        elif name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=gen))


def _assert_close(ours: Tensor, ref: Tensor, what: str) -> None:
    """``|ours - ref| <= REL_TOL * max|ref|`` elementwise."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs official {tuple(ref.shape)}"
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert err <= REL_TOL * scale, f"{what}: max abs difference {err:.3g}, official max abs {scale:.3g}"


def _shapes(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def _norm_eps(model: nn.Module) -> dict[str, float]:
    """Each norm's eps (not in the state dict, and 1e-5 vs 1e-6 is below the logit tolerance)."""
    return {name: m.eps for name, m in model.named_modules() if hasattr(m, "eps")}


def test_every_cnn_is_covered() -> None:
    """A new CNN architecture must be added to the equivalence table (CIFAR variants have no oracle entrypoint)."""
    archs = {n for family in CNN_FAMILIES for n in list_models(family=family) if not n.endswith("_cifar")}
    assert archs == set(OFFICIAL_NAMES)


#: 10-24 s each here; their twins of the same layout (ConvNeXt-T: only depth and width differ; bcos_vgg11) run by default
SLOW = {"bcos_convnext_base", "bcos_convnext_base_bnu", "bcos_vgg11_bnu"}


@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in sorted(OFFICIAL_NAMES)]
)
def test_matches_official(arch: str, tmp_path) -> None:
    gen = torch.Generator().manual_seed(sum(map(ord, arch)))
    official = getattr(pretrained, OFFICIAL_NAMES[arch])()
    _calibrate_and_randomise(official, gen)
    path = tmp_path / f"{OFFICIAL_NAMES[arch]}.pth"
    torch.save(official.state_dict(), path)  # the layout of the released checkpoints
    ours = create_model(arch, pretrained=path).eval()
    path.unlink()
    assert _shapes(ours) == _shapes(official)
    assert _norm_eps(ours) == _norm_eps(official)
    assert ours.logit_layer.logit_bias == official.logit_layer.logit_bias
    assert ours.logit_layer.logit_temperature == official.logit_layer.logit_temperature
    bias = official.logit_layer.logit_bias

    official.double()
    ours.double()
    x = _rand_image(gen, 1).double()
    target = int(torch.randint(1000, (1,), generator=gen))
    captured: list[Tensor] = []  # the official logits, taken from its explain() forward pass
    official.logit_layer.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    ref = official.explain(x.clone().requires_grad_(), idx=target)
    with torch.no_grad():
        logits = ours(x)
    out = ours.explain(x, target=target)

    ref_logits = captured[0] - bias
    # the pre-bias logits must be well above float64 resolution next to the bias, or the test is vacuous
    assert ref_logits.abs().max() > 1e6 * torch.finfo(torch.float64).eps * abs(bias)
    _assert_close(logits - bias, ref_logits, "logits (plain forward)")
    _assert_close(out.logits - bias, ref_logits, "logits (explanation mode)")
    assert int(out.prediction) == ref["prediction"]
    assert ref["dynamic_linear_weights"].abs().max() > 0
    _assert_close(out.dynamic_linear_weights, ref["dynamic_linear_weights"], "dynamic linear weights")
    _assert_close(out.explanation[0], torch.from_numpy(ref["explanation"]), "RGBA explanation")


def test_unknown_keyword_raises() -> None:
    with pytest.raises(TypeError, match="colour"):
        create_model("bcos_densenet121", colour="red")
    with pytest.raises(TypeError, match="bias"):
        bcos_zoo.model_entrypoint("bcos_convnext_tiny")(bias=True)


@pytest.mark.parametrize(
    ("weights", "into", "label", "key"),
    [
        ("bcos_resnet18", "bcos_resnet34", "missing keys", "layer1.2.conv1.linear.weight"),
        ("bcos_resnet34", "bcos_resnet18", "unexpected keys", "layer1.2.conv1.linear.weight"),
    ],
)
def test_mismatched_checkpoint_raises(weights: str, into: str, label: str, key: str, tmp_path) -> None:
    path = tmp_path / f"{weights}.pth"
    torch.save(create_model(weights).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        create_model(into, pretrained=path)
    message = str(info.value)
    assert label in message and key in message
