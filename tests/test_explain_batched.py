"""explain_topk (one forward + one batched backward for K targets) and intermediate-layer explanations."""

from __future__ import annotations

import pytest
import torch

import bcos_zoo
from bcos_zoo.explain import explain, explain_topk
from bcos_zoo.transforms import add_inverse

FIELDS = (
    "logits",
    "prediction",
    "target",
    "dynamic_linear_weights",
    "contribution_map",
    "bias_contribution",
    "explanation",
)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return bcos_zoo.create_model("bcos_resnet20_cifar", in_chans=2, norm_layer="bnu-linear").eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return bcos_zoo.create_model("bcos_simple_vit_ti_patch16_224", image_size=32, depth=1).eval()


def _inputs(channels: int, size: int, batch: int = 3) -> torch.Tensor:
    x = torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(1))
    return add_inverse(x)


@pytest.mark.parametrize("name", ["cnn", "vit"])
def test_topk_equals_one_by_one(name, request):
    model = request.getfixturevalue(name)
    x = _inputs(1, 20) if name == "cnn" else _inputs(3, 32, batch=2)
    batched = explain_topk(model, x, 3)
    assert len(batched) == 3
    assert torch.equal(torch.stack([e.target for e in batched], 1), model(x).topk(3, 1).indices)
    for e in batched:
        single = explain(model, x, target=e.target)
        for field in FIELDS:
            torch.testing.assert_close(getattr(e, field), getattr(single, field), rtol=1e-5, atol=1e-6, msg=field)


def test_topk_runs_one_forward_pass(cnn):
    calls = []
    handle = cnn.register_forward_hook(lambda *_: calls.append(1))
    try:
        explain_topk(cnn, _inputs(1, 16), 4)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_given_targets_per_image(cnn):
    x = _inputs(1, 16, batch=2)
    out = explain_topk(cnn, x, targets=[[1, 7], [3, 3]])
    assert [e.target.tolist() for e in out] == [[1, 3], [7, 3]]
    shared = explain_topk(cnn, x, targets=[2, 5])  # [K]: the same classes for every image
    assert [e.target.tolist() for e in shared] == [[2, 2], [5, 5]]
    torch.testing.assert_close(out[0].contribution_map[0], explain(cnn, x[:1], target=1).contribution_map[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 11}, "k must be between 1 and 10"),
        ({"targets": [[1, 2]] * 3}, r"\[B, K\]"),
        ({"targets": [[1, 10]] * 2}, "out of range"),
    ],
)
def test_topk_errors(cnn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        explain_topk(cnn, _inputs(1, 16, batch=2), **kwargs)


def _layer_totals(model, x, layer: str) -> torch.Tensor:
    store = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        with torch.no_grad(), bcos_zoo.explanation_mode(model):
            model(x)
    finally:
        handle.remove()
    out = store[0]
    return out.sum((-2, -1)) if out.dim() == 4 else out.sum(1)


@pytest.mark.parametrize(
    ("name", "layer"), [("cnn", "layer3.1"), ("cnn", "layer2.0.bn1"), ("vit", "transformer.encoder_0")]
)
def test_layer_channel_completeness(name, layer, request):
    """The explained quantity, the channel's activation summed over positions, equals the sum of contributions."""
    model = request.getfixturevalue(name)
    x = _inputs(1, 20) if name == "cnn" else _inputs(3, 32, batch=2)
    out = explain(model, x, layer=layer, channel=5)
    totals = _layer_totals(model, x, layer)
    assert out.target.tolist() == [5] * x.shape[0]
    torch.testing.assert_close(
        out.contribution_map.sum((-2, -1)) + out.bias_contribution, totals[:, 5], rtol=1e-4, atol=1e-5
    )
    assert torch.equal(out.prediction, model(x).argmax(1))
    most_active = explain(model, x, layer=layer)  # default: each image's largest channel total
    assert torch.equal(most_active.target, totals.argmax(1))


def test_layer_in_model_method_and_topk(cnn):
    x = _inputs(1, 16, batch=2)
    torch.testing.assert_close(cnn.explain(x, layer="layer3", channel=2).contribution_map,
                               explain(cnn, x, layer="layer3", channel=2).contribution_map)  # fmt: skip
    top = explain_topk(cnn, x, 2, layer="layer3")
    assert torch.equal(torch.stack([e.target for e in top], 1), _layer_totals(cnn, x, "layer3").topk(2, 1).indices)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"channel": 3}, ValueError, "channel= selects a channel of layer="),
        ({"layer": "layer3", "target": 1}, ValueError, "not target="),
        ({"layer": "layer33"}, ValueError, "Did you mean: layer3"),
        ({"layer": "layer3", "channel": 64}, ValueError, "target channel out of range"),
    ],
)
def test_layer_errors(cnn, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        explain(cnn, _inputs(1, 16, batch=1), **kwargs)
