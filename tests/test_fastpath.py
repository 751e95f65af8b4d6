"""The eval fast path (cached normalised filters, BN folding) is exact and never stale."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from bcos_zoo.layers import BatchNormUncentered2d, BcosConv2d, explanation_mode
from bcos_zoo.layers.fold import link_conv_norm_pairs
from bcos_zoo.models.resnet import BasicBlock, BcosResNet, Bottleneck


def _randomise_norms_(model: nn.Module, seed: int) -> None:
    """Non-trivial eval statistics and scales (one negative, one zero) so folding has something to fold."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BatchNormUncentered2d):
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 2 + 0.3)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 2 + 0.5)
                m.weight[0] = -m.weight[0]
                m.weight[-1] = 0.0


def _tiny_resnet(block: type = BasicBlock, seed: int = 0) -> BcosResNet:
    torch.manual_seed(seed)
    model = BcosResNet(block, [1, 1, 1], num_classes=5, inplanes=8, small_inputs=True, norm_layer="bnu-linear")
    _randomise_norms_(model, seed)
    return model


def _scratch_copy(model: BcosResNet, block: type = BasicBlock) -> BcosResNet:
    """A model built from scratch with ``model``'s current state (its caches start empty)."""
    fresh = _tiny_resnet(block, seed=123).to(next(model.parameters()).dtype)
    fresh.load_state_dict(model.state_dict())
    return fresh.eval()


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x.to(next(model.parameters()).dtype)) - model.logit_layer.logit_bias


def _assert_same(model: BcosResNet, x: Tensor, block: type = BasicBlock) -> None:
    ours, ref = _logits(model, x), _logits(_scratch_copy(model, block), x)
    assert ours.abs().max() > 1e-3, "degenerate test: the logits carry no signal"
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_pairs_are_linked_and_folded() -> None:
    model = _tiny_resnet(Bottleneck).eval()
    # stem, 3 convs per block and the 3 projection shortcuts; never the classifier (no norm after it)
    assert link_conv_norm_pairs(model) == 1 + 3 * 3 + 3
    conv = model.layer1[0].conv1
    with torch.no_grad():
        model(torch.rand(1, 6, 8, 8))
    assert conv._folded_norm() is None  # the weights require grad outside no_grad
    with torch.no_grad():
        assert conv._folded_norm() is model.layer1[0].bn1


def test_cache_is_never_stale() -> None:
    """Change a weight, a norm scale and a running variance in place, change dtype, load a new state
    dict, train a step and return to eval: every time the output equals a model built from scratch."""
    x = torch.rand(2, 6, 8, 8)
    model = _tiny_resnet().eval()
    _assert_same(model, x)
    conv, norm = model.layer1[0].conv1, model.layer1[0].bn1
    with torch.no_grad():
        conv.linear.weight.mul_(torch.rand_like(conv.linear.weight))
    _assert_same(model, x)
    with torch.no_grad():
        norm.weight.mul_(-2.0)
    _assert_same(model, x)
    with torch.no_grad():
        norm.running_var.mul_(3.0)
    _assert_same(model, x)
    model.double()
    _assert_same(model, x)
    model.float()
    _assert_same(model, x)
    other = _tiny_resnet(seed=7)
    model.load_state_dict(other.state_dict())
    _assert_same(model, x)
    model.train()
    model(torch.rand(4, 6, 8, 8))  # updates the running variances
    model.eval()
    _assert_same(model, x)


def test_eval_weight_gradients_and_explanations_unchanged() -> None:
    """Eval-mode weight gradients (fine-tuning with frozen norms) and input gradients in explanation
    mode equal those of the plain layers (no links, no cache: a model whose layers are never folded)."""
    x = torch.rand(2, 6, 8, 8, dtype=torch.float64)
    model = _tiny_resnet().double().eval()
    plain = copy.deepcopy(model)
    for m in plain.modules():
        m.__dict__.pop("_fold_norm", None)
    for net in (model, plain):
        net(x).sum().backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    grads = []
    for net in (model, plain):
        for p in net.parameters():
            p.requires_grad_(False)  # the fast path applies
        xr = x.clone().requires_grad_(True)
        with explanation_mode(net):
            grads.append(torch.autograd.grad(net(xr)[:, 1].sum(), xr)[0])
    assert model.layer1[0].conv1._folded_norm() is not None
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel_size, groups", [(1, 1), (3, 1), (3, 2)])
def test_folded_conv_norm_pair_is_exact(kernel_size: int, groups: int) -> None:
    torch.manual_seed(kernel_size + groups)
    pair = nn.Sequential(BcosConv2d(4, 6, kernel_size, padding=kernel_size // 2, groups=groups),
                         BatchNormUncentered2d(6, bias=False)).double()  # fmt: skip
    _randomise_norms_(pair, 0)
    plain = copy.deepcopy(pair).eval()
    pair.eval()
    assert link_conv_norm_pairs(pair) == 1
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        assert pair[0]._folded_norm() is pair[1]
        torch.testing.assert_close(pair(x), plain(x), rtol=1e-12, atol=1e-14)
        seen: list[Tensor] = []
        handle = pair[0].register_forward_hook(lambda _m, _i, out: seen.append(out))
        pair(x)
        handle.remove()
        torch.testing.assert_close(seen[0], plain[0](x))  # a hooked conv shows its own, unfolded output
        torch.testing.assert_close(pair[1](pair[0](x)), plain(x), rtol=1e-12, atol=1e-14)


def test_only_exact_pairs_fold() -> None:
    """MaxOut > 1, B != 2 or a norm bias would make folding inexact: such pairs are not linked."""
    for conv, norm in [(BcosConv2d(4, 6, max_out=2), BatchNormUncentered2d(6, bias=False)),
                       (BcosConv2d(4, 6, b=1.5), BatchNormUncentered2d(6, bias=False)),
                       (BcosConv2d(4, 6), BatchNormUncentered2d(6))]:  # fmt: skip
        assert link_conv_norm_pairs(nn.Sequential(conv, norm).eval()) == 0


def test_cache_filled_under_inference_mode_serves_explanations() -> None:
    """Filters cached inside ``torch.inference_mode()`` are normal tensors: a later explanation works."""
    model = _tiny_resnet().eval()
    x = torch.rand(1, 6, 8, 8)
    with torch.inference_mode():
        model(x)
    from bcos_zoo import explain

    e = explain(model, x)
    torch.testing.assert_close(e.contribution_map.sum() + e.bias_contribution.sum(), e.logits.max())


def test_residual_sum_in_place_only_without_a_graph() -> None:
    """Blocks add the shortcut into their output under no_grad (one block-sized tensor less), and out of place
    when autograd records or the sum would change dtype; the model's output is the same either way."""
    from bcos_zoo.models.resnet import add_residual

    out, identity = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    expected = out + identity
    with torch.no_grad():
        got = add_residual(out, identity)
    assert got is out and torch.equal(got, expected)
    leaf = torch.randn(2, 4, 3, 3, requires_grad=True)
    assert add_residual(leaf, identity) is not leaf and leaf.grad_fn is None
    low = torch.randn(2, 4, 3, 3, dtype=torch.bfloat16)
    with torch.no_grad():
        mixed = add_residual(low, identity)
    assert mixed is not low and mixed.dtype == torch.float32
    model = _tiny_resnet(Bottleneck).eval()
    x = torch.rand(2, 6, 16, 16)
    with torch.no_grad():
        fast = model(x)
    torch.testing.assert_close(fast, model(x.requires_grad_()), rtol=1e-6, atol=1e-6)


def test_pointwise_conv_runs_as_matmul_only_without_filter_gradients() -> None:
    """A 1×1 B-cos conv is a matrix product when no filter gradient is needed (equal to the convolution, also
    strided on odd sizes), and a convolution otherwise: in training, on channels_last input, padded or grouped."""
    from bcos_zoo.layers.bcos import _pointwise_matmul

    torch.manual_seed(0)
    conv = BcosConv2d(8, 12, 1).eval()
    x = torch.randn(3, 8, 5, 7)
    w = conv.linear.normalized_weight()
    with torch.no_grad():
        assert _pointwise_matmul(conv.linear, x, w, None)
        torch.testing.assert_close(conv.linear(x), torch.nn.functional.conv2d(x, w), rtol=1e-6, atol=1e-6)
        assert not _pointwise_matmul(conv.linear, x.to(memory_format=torch.channels_last), w, None)
        assert not _pointwise_matmul(conv.linear, x, w, torch.zeros(12))
    assert not _pointwise_matmul(conv.linear, x, conv.linear.weight, None)  # the filters need a gradient
    strided = BcosConv2d(8, 12, 1, stride=2).eval()
    ws = strided.linear.normalized_weight()
    with torch.no_grad():
        assert _pointwise_matmul(strided.linear, x, ws, None)
        got = strided.linear(x)  # 5×7 sampled at stride 2: 3×4
        assert got.shape == (3, 12, 3, 4) and got.is_contiguous()
        torch.testing.assert_close(got, torch.nn.functional.conv2d(x, ws, stride=2), rtol=1e-6, atol=1e-6)
    for other in (BcosConv2d(8, 12, 1, padding=1), BcosConv2d(8, 12, 1, groups=2), BcosConv2d(8, 12, 3, padding=1)):
        assert not _pointwise_matmul(other.linear, x, other.linear.weight.detach(), None)
    xg = x.clone().requires_grad_()  # the input gradient through the product equals the convolution's
    for layer in (conv, strided):
        layer.linear.weight.requires_grad_(False)  # as explain() freezes the weights
        assert _pointwise_matmul(layer.linear, xg, layer.linear.normalized_weight(), None)
        with explanation_mode(layer):
            (grad,) = torch.autograd.grad(layer(xg).sum(), xg)
        layer.linear.weight.requires_grad_(True)
        training = copy.deepcopy(layer).train()  # training: the convolution path, same filters
        with explanation_mode(training):
            (expected,) = torch.autograd.grad(training(xg).sum(), xg)
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
