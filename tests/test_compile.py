"""torch.compile builds one graph per mode: plain (no-grad) forward and explanation."""

from __future__ import annotations

import pytest
import torch

import bcos_zoo


@pytest.mark.slow  # ~20 s: dynamo traces ResNet-20 twice
def test_compiled_model_builds_one_graph_per_mode() -> None:
    """Forward, explain, forward, explain: two graphs. The explanation-mode flags leave the modules as
    they were (no instance attribute left behind), so the second plain forward hits the first graph."""
    torch._dynamo.reset()
    graphs: list[torch.fx.GraphModule] = []

    def counting_backend(gm: torch.fx.GraphModule, _inputs: list[torch.Tensor]):
        graphs.append(gm)
        return gm.forward

    model = bcos_zoo.create_model("bcos_resnet20_cifar").eval()
    compiled = torch.compile(model, backend=counting_backend)
    x = torch.rand(2, 6, 32, 32)
    with torch.no_grad():
        plain = compiled(x)
    first = bcos_zoo.explain(compiled, x)
    with torch.no_grad():
        again = compiled(x)
    second = bcos_zoo.explain(compiled, x)
    assert len(graphs) == 2, [g.code.count("\n") for g in graphs]
    torch.testing.assert_close(again, plain)
    torch.testing.assert_close(second.dynamic_linear_weights, first.dynamic_linear_weights)
    torch.testing.assert_close(first.logits, model(x).detach(), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


@pytest.mark.slow  # ~1 min: inductor compiles a small B-cos stack five times
def test_compile_for_inference_is_exact_and_never_stale() -> None:
    """Frozen-weight compilation gives the eager outputs, and a weight changed in place, a loaded state
    dict or a dtype move each make the next call compile a fresh copy: the outputs follow the weights."""
    from bcos_zoo.layers import BcosConv2d, BcosLinear
    from bcos_zoo.layers.norms import BatchNormUncentered2d

    torch.manual_seed(0)
    layers = (BcosConv2d(6, 8, 3, padding=1), BatchNormUncentered2d(8, bias=False), BcosConv2d(8, 4, 3, padding=1),
              torch.nn.Flatten(2), BcosLinear(25, 3))  # fmt: skip
    model = torch.nn.Sequential(*layers).eval()
    model[1].running_var.uniform_(0.5, 2)
    x = torch.rand(2, 6, 5, 5)
    fast = bcos_zoo.compile_for_inference(model)
    out = fast(x)
    assert not out.requires_grad and fast.recompiles == 0
    torch.testing.assert_close(out, model(x).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast(x), out, rtol=0, atol=0)
    assert fast.recompiles == 0  # unchanged weights: the same compiled copy
    with torch.no_grad():
        model[2].linear.weight[0].mul_(-2.0)  # in place: same storage, new version
    changed = fast(x)
    assert fast.recompiles == 1 and not torch.allclose(changed, out)
    torch.testing.assert_close(changed, model(x).detach(), rtol=1e-5, atol=1e-6)
    state = {k: v * 1.5 if k.endswith("running_var") else v for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    torch.testing.assert_close(fast(x), model(x).detach(), rtol=1e-5, atol=1e-6)
    assert fast.recompiles == 2
    model.to(torch.bfloat16)  # a move: new tensors
    assert fast(x.bfloat16()).dtype == torch.bfloat16 and fast.recompiles == 3
    model.double()  # compiled without freezing (no float64 prepacked kernels), still exact
    torch.testing.assert_close(fast(x.double()), model(x.double()).detach())
    assert fast.recompiles == 4
    assert fast.training is False and fast.state_dict is not None  # attributes are the model's own
