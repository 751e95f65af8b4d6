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
