"""ONNX export of every family: onnxruntime's outputs equal PyTorch's; ``bcos-zoo export``."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_features import FAMILIES, build

import bcos_zoo
from bcos_zoo.cli import main
from bcos_zoo.layers import model_in_explanation_mode

pytestmark = pytest.mark.usefixtures("single_thread")

TOLERANCE = 1e-4  # relative to the largest output


def round_trip(model: torch.nn.Module, tmp_path, size: int, batch: int = 3) -> float:
    """Export with a batch of 1, run onnxruntime on another batch size (the batch axis is dynamic)."""
    path = bcos_zoo.export_onnx(model, tmp_path / "model.onnx", torch.rand(1, model.in_chans, size, size))
    return bcos_zoo.onnx_max_deviation(model, path, torch.rand(batch, model.in_chans, size, size))


def test_onnx_outputs_equal_pytorchs_for_a_vit(tmp_path):
    model, x = build("vit")  # the CNNs: test_cli_export_... and the slow tests below
    assert round_trip(model, tmp_path, x.shape[-1]) < TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "vit"])
def test_onnx_outputs_equal_pytorchs_small_families(family, tmp_path):
    model, x = build(family)
    assert round_trip(model, tmp_path, x.shape[-1]) < TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bcos_densenet121", "bcos_convnext_tiny",
                                  "bcos_v1_inception_v3", "bcos_vitc_ti_patch1_14", "bcos_simple_vit_ti_patch16_224"])  # fmt: skip
def test_onnx_round_trip_of_the_full_size_models(arch, tmp_path):
    torch.manual_seed(0)
    model = bcos_zoo.create_model(arch).eval()
    size = 299 if "inception" in arch else 224 if "vit" in arch else 64
    assert round_trip(model, tmp_path, size, batch=2) < TOLERANCE


def test_export_is_the_plain_forward_and_leaves_the_model_as_it_was(tmp_path):
    """A model in training mode, explanation mode and with checkpointing exports its eval forward."""
    model, x = build("resnet_cifar")  # batch norms: training mode would change the outputs
    with torch.no_grad():
        expected = model(x)
    model.train().set_grad_checkpointing(True)
    with model.explanation_mode():
        path = bcos_zoo.export_onnx(model, tmp_path / "m.onnx", x)
        assert model.training and model.grad_checkpointing and model_in_explanation_mode(model)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"input batch \[N, C, H, W\]"):
        bcos_zoo.export_onnx(model, tmp_path / "m.onnx", x[0])


def test_cli_export_verifies_with_onnxruntime(tmp_path, capsys, monkeypatch):
    out = tmp_path / "feat.onnx"
    argv = ["export", "--format", "onnx", "--model", "bcos_resnet20_cifar", "--pretrained", "--out-indices", "1", "2"]
    assert main([*argv, "--opset", "17", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out}: bcos_resnet20_cifar.fmnist, input [batch, 2, 28, 28], ONNX opset 17" in printed
    deviation = float(printed.split("max deviation from PyTorch: ")[1].split()[0])
    assert out.is_file() and deviation < TOLERANCE

    import onnx

    graph = onnx.load(str(out)).graph
    assert [o.name for o in graph.output] == ["feature_1", "feature_2"]

    find_spec = importlib.util.find_spec
    hidden = lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    assert main([*argv[:5], "--input-size", "16", "-o", str(tmp_path / "r.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM INIT" in printed and "not verified: onnxruntime is not installed" in printed

    assert main(["export", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "pass --model NAME" in capsys.readouterr().err
    assert main(["export", "--model", "bcos_resnet20_cifar", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "pass --input-size N" in capsys.readouterr().err
