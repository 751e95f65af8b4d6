"""Layer-level tests: B-cos conv / linear against their formulas (and the official layers), every norm
against the official ``bcos.modules.norms`` class, and the ``explanation_mode`` switch."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from bcos_zoo.layers import (
    NORM_NAMES,
    BatchNorm2d,
    BcosConv2d,
    BcosLinear,
    DetachableLayerNorm,
    DetachablePositionNorm2d,
    explanation_mode,
    get_norm_layer,
    model_in_explanation_mode,
)
from bcos_zoo.layers import norms as our_norms

official = pytest.importorskip("bcos.modules", reason="the official bcos package is the test oracle")
official_norms = official.norms

pytestmark = [pytest.mark.oracle, pytest.mark.usefixtures("single_thread")]

B_VALUES = [1, 1.5, 2, 2.5]


def _close(ours: Tensor, ref: Tensor, what: str, rtol: float = 1e-10) -> None:
    """float64 agreement relative to the reference's largest magnitude."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    err, scale = (ours - ref).abs().max().item(), ref.abs().max().item()
    assert err <= rtol * max(scale, 1e-300), f"{what}: max abs difference {err:.3g} (reference max abs {scale:.3g})"


def _bcos_scaling(lin: Tensor, norm: Tensor, b: float, detach: bool) -> Tensor:
    """The B-cos non-linearity applied to the unit-norm response ``lin`` given the input norm:
    ``lin * |lin|/norm`` for B=2, ``lin * (|lin/norm| + 1e-6)^(B-1)`` otherwise; the factor is a
    constant for autograd in explanation mode."""
    if b == 1:
        return lin
    ref_lin, ref_norm = (lin.detach(), norm.detach()) if detach else (lin, norm)
    factor = ref_lin.abs() / ref_norm if b == 2 else ((ref_lin / ref_norm).abs() + 1e-6) ** (b - 1)
    return factor * lin


def reference_bcos_conv2d(x: Tensor, weight: Tensor, *, b: float, max_out: int, stride, padding, dilation,
                          groups: int, detach: bool) -> Tensor:  # fmt: skip
    """The B-cos convolution written out with ``unfold`` from the facts sheet: unit-norm filters
    (no eps), patch norm ``sqrt(sum x² + 1e-6)`` per group, MaxOut over consecutive filters before
    the cosine scaling."""
    n, _, h, w = x.shape
    om, cg, kh, kw = weight.shape
    o = om // max_out
    stride, padding, dilation = (_pair(v) for v in (stride, padding, dilation))
    w_hat = weight / weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    patches = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # [N, C*kh*kw, L]
    patches = patches.view(n, groups, cg * kh * kw, -1)  # [N, G, Cg*kh*kw, L]
    lin = torch.einsum("gok,ngkl->ngol", w_hat.view(groups, om // groups, -1), patches)  # [N, G, OM/G, L]
    lin = lin.reshape(n, o, max_out, -1).amax(2)  # [N, O, L]
    norm = (patches.square().sum(2) + 1e-6).sqrt().repeat_interleave(o // groups, dim=1)  # [N, O, L]
    out = _bcos_scaling(lin, norm, b, detach)
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return out.view(n, o, h_out, w_out)


def reference_bcos_linear(x: Tensor, weight: Tensor, *, b: float, max_out: int, detach: bool) -> Tensor:
    """B-cos linear: unit-norm rows, MaxOut, input norm ``‖x‖ + 1e-12`` (eps outside the root)."""
    w_hat = weight / weight.norm(dim=1, keepdim=True)
    lin = (x @ w_hat.T).unflatten(-1, (-1, max_out)).amax(-1)  # [..., O]
    return _bcos_scaling(lin, x.norm(dim=-1, keepdim=True) + 1e-12, b, detach)


def _outputs_and_grads(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, weight: Tensor,
                       gen: torch.Generator) -> list[Tensor]:  # fmt: skip
    """``fn(x, weight)`` and the gradients of a random projection of it w.r.t. x and weight."""
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    out = fn(x, weight)
    upstream = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    gx, gw = torch.autograd.grad(out, [x, weight], upstream)
    return [out.detach(), gx, gw]


def _module_fn(module: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """Run ``module`` with its ``linear.weight`` replaced by the given tensor (to get its gradient)."""

    def run(x: Tensor, weight: Tensor) -> Tensor:
        return torch.func.functional_call(module, {"linear.weight": weight}, (x,))

    return run


# (in, out, kernel, stride, padding, dilation, groups, max_out)
CONV_CONFIGS = [
    (6, 8, 3, 1, 1, 1, 1, 1),  # plain 3×3
    (6, 5, 7, 2, 3, 1, 1, 1),  # ResNet stem
    (6, 4, 1, 2, 0, 1, 1, 3),  # strided 1×1 shortcut + MaxOut
    (8, 12, 3, 2, 1, 1, 4, 1),  # grouped, strided (ResNeXt)
    (8, 8, 7, 1, 3, 1, 8, 1),  # depthwise (ConvNeXt)
    (8, 6, 3, 1, 1, 1, 2, 2),  # grouped + MaxOut
    (6, 4, 3, 1, 2, 2, 1, 1),  # dilated
    (8, 6, 3, 2, 2, 2, 2, 2),  # dilated + grouped + MaxOut (the official layer fails here)
    (6, 4, (2, 3), (2, 1), (0, 1), 1, 1, 1),  # non-square
    (6, 4, 4, 4, 0, 1, 1, 1),  # ConvNeXt patchify stem
]


@pytest.mark.parametrize("b", B_VALUES)
@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=[f"conv{i}" for i in range(len(CONV_CONFIGS))])
def test_bcos_conv2d_matches_formula(cfg: tuple, b: float) -> None:
    cin, cout, k, s, p, d, g, m = cfg
    gen = torch.Generator().manual_seed(0)
    layer = BcosConv2d(cin, cout, k, s, p, d, g, b=b, max_out=m).double()
    x = torch.randn(2, cin, 9, 10, generator=gen, dtype=torch.float64)
    weight = layer.linear.weight.detach().clone()
    assert weight.shape == (cout * m, cin // g, *_pair(k))
    oracle = None
    if not (d > 1 and m > 1):  # the official patch norm has out*max_out channels when dilated
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "dilation > 1 is much slower!"
            oracle = official.BcosConv2d(cin, cout, k, s, p, d, g, b=b, max_out=m).double()
    for detach in (False, True):
        ref_fn = functools.partial(reference_bcos_conv2d, b=b, max_out=m, stride=s, padding=p, dilation=d,
                                   groups=g, detach=detach)  # fmt: skip
        ref = _outputs_and_grads(ref_fn, x, weight, torch.Generator().manual_seed(1))
        with explanation_mode(layer, active=detach):
            ours = _outputs_and_grads(_module_fn(layer), x, weight, torch.Generator().manual_seed(1))
        for what, o, r in zip(("output", "grad x", "grad weight"), ours, ref):
            _close(o, r, f"{what} (explanation mode={detach})")
        if oracle is not None:
            oracle.set_explanation_mode(detach)
            theirs = _outputs_and_grads(_module_fn(oracle), x, weight, torch.Generator().manual_seed(1))
            for what, o, r in zip(("output", "grad x", "grad weight"), ours, theirs):
                _close(o, r, f"{what} vs official (explanation mode={detach})")


def test_bcos_conv2d_inference_path_and_linearity() -> None:
    """The allocation-saving path under ``no_grad`` gives the same values, and in explanation mode
    a layer is exactly linear: ``out == (d out / d x) · x`` for each output unit."""
    gen = torch.Generator().manual_seed(0)
    layer = BcosConv2d(6, 4, 3, padding=1).double()
    x = torch.randn(1, 6, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        fast = layer(x)
    with explanation_mode(layer):
        out = layer(x)
    assert not fast.requires_grad and out.requires_grad
    _close(fast, out.detach(), "no_grad output")
    (grad,) = torch.autograd.grad(out[0, 1, 2, 3], x)
    _close((grad * x).sum(), out[0, 1, 2, 3].detach(), "W(x)·x")


@pytest.mark.parametrize("b", B_VALUES)
@pytest.mark.parametrize("max_out", [1, 3])
@pytest.mark.parametrize("shape", [(4, 10), (2, 3, 10)])
def test_bcos_linear_matches_formula(shape: tuple[int, ...], max_out: int, b: float) -> None:
    gen = torch.Generator().manual_seed(0)
    layer = BcosLinear(10, 7, b=b, max_out=max_out).double()
    oracle = official.BcosLinear(10, 7, b=b, max_out=max_out).double()
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    weight = layer.linear.weight.detach().clone()
    assert weight.shape == (7 * max_out, 10)
    for detach in (False, True):
        ref_fn = functools.partial(reference_bcos_linear, b=b, max_out=max_out, detach=detach)
        ref = _outputs_and_grads(ref_fn, x, weight, torch.Generator().manual_seed(1))
        layer.set_explanation_mode(detach)
        oracle.set_explanation_mode(detach)
        ours = _outputs_and_grads(_module_fn(layer), x, weight, torch.Generator().manual_seed(1))
        theirs = _outputs_and_grads(_module_fn(oracle), x, weight, torch.Generator().manual_seed(1))
        for what, o, r, t in zip(("output", "grad x", "grad weight"), ours, ref, theirs):
            _close(o, r, f"{what} (explanation mode={detach})")
            _close(o, t, f"{what} vs official (explanation mode={detach})")


SQUARE_ALIGN_SHAPES = [((2, 5, 3, 4), (2, 1, 3, 4)), ((2, 2, 3, 3, 4), (2, 2, 1, 3, 4)), ((3, 2, 6), (3, 2, 1))]


@pytest.mark.parametrize("shapes", SQUARE_ALIGN_SHAPES, ids=["conv", "grouped conv", "linear"])
def test_square_align_derivatives(shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    """The B=2 unit's hand-written backward (``bcos_scale`` in training) equals autograd's derivative of
    ``out·|out|/norm``, first and second order, for the broadcast shapes conv, grouped conv and linear use."""
    from bcos_zoo.layers.bcos import _SquareAlign

    gen = torch.Generator().manual_seed(0)
    out = torch.randn(shapes[0], generator=gen, dtype=torch.float64, requires_grad=True)
    norm = (torch.rand(shapes[1], generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(_SquareAlign.apply, (out, norm))
    assert torch.autograd.gradgradcheck(_SquareAlign.apply, (out, norm))
    probe = torch.randn(shapes[0], generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad((_SquareAlign.apply(out, norm) * probe).sum(), (out, norm))
    ref = torch.autograd.grad((out * (out.abs() / norm) * probe).sum(), (out, norm))
    for what, o, r in zip(("grad out", "grad norm"), ours, ref):
        _close(o, r, what)


@pytest.mark.parametrize(("shape", "max_out", "dim"), [((2, 6, 3, 4), 2, 1), ((2, 9, 3, 4), 3, 1), ((3, 2, 8), 2, 2)],
                         ids=["conv M=2", "conv M=3", "linear"])  # fmt: skip
def test_max_out_derivatives(shape: tuple[int, ...], max_out: int, dim: int) -> None:
    """MaxOut's hand-written backward equals autograd's through ``amax`` (first and second order) where no
    two units tie; at a tie the first unit (M = 2) or every tied unit (M > 2) gets the whole gradient."""
    from bcos_zoo.layers.bcos import _MaxOut

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    fn = functools.partial(_MaxOut.apply, max_out=max_out, dim=dim)

    def ref(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(dim, (-1, max_out)).amax(dim + 1)

    _close(fn(x), ref(x), "MaxOut")
    probe = torch.randn(fn(x).shape, dtype=torch.float64)
    _close(torch.autograd.grad((fn(x) * probe).sum(), x)[0], torch.autograd.grad((ref(x) * probe).sum(), x)[0], "grad")
    assert torch.autograd.gradcheck(fn, (x,)) and torch.autograd.gradgradcheck(fn, (x,))
    tied = torch.tensor([[1.0, 1.0, 0.5, 2.0, 2.0, 2.0]], requires_grad=True)
    (grad,) = torch.autograd.grad(_MaxOut.apply(tied, 2, 1), tied, torch.tensor([[3.0, 5.0, 7.0]]))
    assert grad.tolist() == [[3.0, 0.0, 0.0, 5.0, 7.0, 0.0]]  # M = 2: to the first of two tied units, as max
    (grad,) = torch.autograd.grad(_MaxOut.apply(tied, 3, 1), tied, torch.tensor([[3.0, 5.0]]))
    assert grad.tolist() == [[3.0, 3.0, 0.0, 5.0, 5.0, 5.0]]  # M > 2: to every tied unit


def test_bcos_linear_rejects_bias() -> None:
    with pytest.raises(ValueError, match="bias"):
        BcosLinear(4, 3, bias=True)


# ---------------------------------------------------------------------------------------------- norms

C = 4
OFFICIAL_BASES: dict[str, Callable[..., nn.Module]] = {  # the CIFAR-10 ablation's NORMS_MAP
    "bn": official_norms.BatchNorm2d,
    "an": official_norms.AllNorm2d,
    "gn": functools.partial(official_norms.DetachableGroupNorm2d, 2),
    "in": official_norms.DetachableGNInstanceNorm2d,
    "ln": official_norms.DetachableGNLayerNorm2d,
    "pn": official_norms.DetachablePositionNorm2d,
    "bnu": official_norms.BatchNormUncentered2d,
    "anu": official_norms.AllNormUncentered2d,
    "gnu": functools.partial(official_norms.GroupNormUncentered2d, 2),
    "inu": official_norms.GNInstanceNormUncentered2d,
    "lnu": official_norms.GNLayerNormUncentered2d,
    "pnu": official_norms.PositionNormUncentered2d,
    "tokenln": official_norms.DetachableLayerNorm,  # the ViT norm, over the last dim of [N, T, C]
}
OFFICIAL_WRAPPERS = {"": lambda make: make, "linear": official_norms.NoBias, "unaffine": official_norms.Unaffine}
RUNNING_STATS = ("bn", "an", "bnu", "anu")

NORM_CASES: list[tuple[str, dict]] = [(name, {}) for name in NORM_NAMES if name != "none"] + [
    ("tokenln", {}),
    ("tokenln-linear", {}),
    ("bnu-linear", {"momentum": None}),
    ("anu", {"momentum": None}),
    ("bnu", {"track_running_stats": False}),
    ("pn-linear", {"eps": 1e-6}),
    ("bn", {"momentum": None}),
]


def _build_norms(name: str, kwargs: dict) -> tuple[nn.Module, nn.Module]:
    """(ours, official) for a norm name of the B-cos ablation, with the official's randomised
    parameters and buffers loaded (strictly) into ours."""
    base, _, suffix = name.partition("-")
    theirs = OFFICIAL_WRAPPERS[suffix](OFFICIAL_BASES[base])(C, **kwargs).double()
    if base == "tokenln":
        ours = DetachableLayerNorm(C, bias=suffix != "linear", **kwargs)
    else:
        ours = get_norm_layer(name, **kwargs)(C)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in theirs.named_parameters():
            p.copy_(
                torch.rand(p.shape, generator=gen) + 0.5 if pname == "weight" else torch.randn(p.shape, generator=gen)
            )
        for bname, buf in theirs.named_buffers():
            if bname in ("running_var", "running_mean"):
                buf.copy_(
                    torch.rand(buf.shape, generator=gen) + 0.5
                    if bname == "running_var"
                    else torch.randn(buf.shape, generator=gen)
                )
    ours.double().load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _norm_step(module: nn.Module, x: Tensor, upstream: Tensor) -> list[Tensor]:
    x = x.detach().requires_grad_()
    params = [p for _, p in sorted(module.named_parameters())]
    out = module(x)
    grads = torch.autograd.grad(out, [x, *params], upstream)
    return [out.detach(), *grads]


@pytest.mark.parametrize(("name", "kwargs"), NORM_CASES, ids=[f"{n}{k or ''}" for n, k in NORM_CASES])
def test_norm_matches_official(name: str, kwargs: dict) -> None:
    """Same outputs, gradients (i.e. the same things detached in explanation mode) and running-stat
    updates as the official norm, in train and eval mode, with and without explanation mode."""
    ours, theirs = _build_norms(name, kwargs)
    base = name.partition("-")[0]
    gen = torch.Generator().manual_seed(1)
    shape = (3, 5, C) if base == "tokenln" else (3, C, 5, 6)
    for training in (True, False):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) + 0.5  # not centered: centering matters
        upstream = torch.randn(shape, generator=gen, dtype=torch.float64)
        normal_grads = None
        for explaining in (False, True):
            ours.train(training)
            theirs.train(training)
            if base in ("bn", "an") and training and explaining:
                with pytest.raises(RuntimeError, match="eval"):
                    ours.set_explanation_mode(True)
                with pytest.raises(AssertionError):
                    theirs.set_explanation_mode(True)
                continue
            ours.set_explanation_mode(explaining)
            theirs.set_explanation_mode(explaining)
            mine, ref = _norm_step(ours, x, upstream), _norm_step(theirs, x, upstream)
            labels = ["output", "grad x"] + [f"grad {n}" for n, _ in sorted(ours.named_parameters())]
            for what, o, r in zip(labels, mine, ref):
                _close(o, r, f"{what} (training={training}, explanation mode={explaining})")
            for key, value in theirs.state_dict().items():
                _close(ours.state_dict()[key].double(), value.double(), f"{key} after a step")
            # explanation mode must detach something exactly where the statistics depend on the input
            input_stats = base not in RUNNING_STATS or training or not kwargs.get("track_running_stats", True)
            if explaining and base not in ("bn", "an"):
                changed = not torch.allclose(mine[1], normal_grads, rtol=1e-8, atol=0)
                assert changed == input_stats, "explanation mode changed the input gradient" + ("n't" * input_stats)
            normal_grads = mine[1]


def test_every_norm_class_is_tested() -> None:
    classes = {type(_build_norms(name, kwargs)[0]) for name, kwargs in NORM_CASES}
    exported = {getattr(our_norms, n) for n in our_norms.__all__}
    assert {c for c in exported if isinstance(c, type) and issubclass(c, nn.Module)} <= classes


# --------------------------------------------------------------------------------- explanation mode


def _tiny_model() -> nn.Sequential:
    return nn.Sequential(
        BcosConv2d(6, 4, 3, padding=1), DetachablePositionNorm2d(4, bias=False), BcosConv2d(4, 3, 1)
    ).double()


def _flags(model: nn.Module) -> list[bool]:
    return [m.detach for m in model if hasattr(m, "detach")]


def test_explanation_mode_context_manager_restores_previous_state() -> None:
    model = _tiny_model()
    model[0].set_explanation_mode(True)  # a module that was already in explanation mode stays so
    with explanation_mode(model) as entered:
        assert entered is model and model_in_explanation_mode(model)
    assert _flags(model) == [True, False, False]
    with pytest.raises(KeyError), explanation_mode(model):
        raise KeyError("boom")
    assert _flags(model) == [True, False, False]


def test_explanation_mode_nested_and_reentrant() -> None:
    model = _tiny_model()
    ctx = explanation_mode(model)
    with ctx:
        with explanation_mode(model, active=False):
            assert _flags(model) == [False, False, False]
        assert model_in_explanation_mode(model)
        with ctx:  # the same instance entered twice
            assert model_in_explanation_mode(model)
        assert model_in_explanation_mode(model)
    assert _flags(model) == [False, False, False]
    model[2] = BcosConv2d(4, 3, 1)  # a module swapped in after first use is switched too
    with ctx:
        assert model[2].detach
    assert not model[2].detach


def test_explanation_mode_decorator() -> None:
    model = _tiny_model()

    @explanation_mode(model)
    def depth(n: int) -> list[bool]:
        if n == 0:
            return _flags(model)
        return depth(n - 1)  # re-entered while active

    @explanation_mode(model)
    def fail() -> None:
        raise RuntimeError("inside")

    assert depth(2) == [True, True, True]
    assert _flags(model) == [False, False, False]
    with pytest.raises(RuntimeError, match="inside"):
        fail()
    assert _flags(model) == [False, False, False]


def test_explanation_mode_failed_entry_restores() -> None:
    """A module refusing explanation mode (a centered batch norm in training) leaves no module switched."""
    model = nn.Sequential(BcosConv2d(6, 4, 1), BatchNorm2d(4), BcosConv2d(4, 3, 1)).train()
    ctx = explanation_mode(model)
    with pytest.raises(RuntimeError, match="eval"), ctx:
        pass
    assert _flags(model) == [False, False, False]
    model.eval()
    with ctx:  # still usable afterwards
        assert model_in_explanation_mode(model)
    assert _flags(model) == [False, False, False]


def test_explanation_mode_makes_network_linear() -> None:
    model = _tiny_model()
    x = torch.randn(1, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    with explanation_mode(model):
        out = model(x)[0, 1, 2, 2]
    (grad,) = torch.autograd.grad(out, x)
    _close((grad * x).sum(), out.detach(), "W(x)·x")
    y = torch.randn_like(x)
    with torch.no_grad():
        assert not torch.allclose(model(x + y), model(x) + model(y))  # the network itself is not linear


@pytest.mark.parametrize("dims", [(0, 2, 3), (0, 1, 2, 3)], ids=["batch norm", "all norm"])
def test_batch_variance_derivatives(dims: tuple[int, ...]) -> None:
    """The uncentred batch norms' variance (two passes, hand-written backward) equals ``Tensor.var`` and
    its first and second derivatives, on values far from zero mean (where a one-pass E[x²] - E[x]² loses digits)."""
    from bcos_zoo.layers.norms import _BatchVariance

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64) * 0.1 + 30).requires_grad_()
    fn = functools.partial(_BatchVariance.apply, dims=dims)
    _close(fn(x), x.var(dim=dims, unbiased=False), "variance")
    assert torch.autograd.gradcheck(fn, (x,)) and torch.autograd.gradgradcheck(fn, (x,))
    big = torch.randn(64, 8, 20, 20, generator=gen) * 0.1 + 30  # float32: as accurate as Tensor.var
    ref = big.double().var(dim=dims, unbiased=False)
    assert ((_BatchVariance.apply(big, dims).double() - ref).abs() / ref).max() < 1e-5


@pytest.mark.parametrize("groups", [1, 3])
def test_channel_squares_derivatives(groups: int) -> None:
    """The patch norms' channel sum of squares (hand-written backward) against ``square().sum()``."""
    from bcos_zoo.layers.bcos import _ChannelSquares

    x = torch.randn(2, 6, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    fn = functools.partial(_ChannelSquares.apply, groups=groups)
    _close(fn(x), x.square().unflatten(1, (groups, -1)).sum(2), "sum of squares")
    assert torch.autograd.gradcheck(fn, (x,)) and torch.autograd.gradgradcheck(fn, (x,))
