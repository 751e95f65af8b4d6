"""ONNX export of a model's plain forward pass, and its check with onnxruntime.

The exporter is the TorchScript-based one (``torch.onnx.export(..., dynamo=False)``). With torch
2.14 both exporters produce graphs whose onnxruntime outputs equal PyTorch's for every family,
but the ``torch.export``-based default (``dynamo=True``) needs the extra ``onnxscript`` package and
took ~10x longer (15 s against 1.4 s for a CIFAR ResNet-20 on this project's CPU machine), and the
B-cos forward pass has no data-dependent control flow that would need it. torch deprecates the
TorchScript exporter, so the choice is made in one place (:data:`USE_DYNAMO`).

What is exported is the ordinary forward pass (logits, or the feature maps of a features-only
model), never explanation mode: the graph holds the B-cos non-linearities, not a detached copy.
The batch dimension is dynamic; the spatial size is the one exported.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from .layers import explanation_mode

__all__ = ["USE_DYNAMO", "export_onnx", "onnx_max_deviation"]

#: which torch.onnx exporter is used (see the module docstring)
USE_DYNAMO = False
DEFAULT_OPSET = 17


@contextlib.contextmanager
def _plain_inference(model: nn.Module) -> Iterator[None]:
    """Eval mode, no explanation mode, no gradient checkpointing; everything restored afterwards."""
    training, checkpointing = model.training, getattr(model, "grad_checkpointing", False)
    model.eval()
    if checkpointing:
        model.set_grad_checkpointing(False)
    try:
        with explanation_mode(model, active=False), torch.no_grad():
            yield
    finally:
        model.train(training)
        if checkpointing:
            model.set_grad_checkpointing(True)


def _output_names(model: nn.Module) -> list[str]:
    """``logits``, or one ``feature_<i>`` per stage a features-only model returns."""
    out_indices = getattr(model, "_out_indices", None)
    return ["logits"] if out_indices is None else [f"feature_{i}" for i in out_indices]


def export_onnx(model: nn.Module, path: str | os.PathLike, example: Tensor, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model``'s forward pass for inputs shaped like ``example`` to the ONNX file ``path``.

    Args:
        model: any bcos-zoo model (its mode and settings are restored afterwards).
        path: the ``.onnx`` file to write.
        example: an input batch ``[N, C, H, W]`` on the model's device; N is exported as dynamic.
        opset: the ONNX opset version.

    Example:
        >>> x = model.transform(img)[None]
        >>> export_onnx(model, "model.onnx", x)
        >>> onnx_max_deviation(model, "model.onnx", x)  # ~1e-6
    """
    if not isinstance(example, Tensor) or example.dim() != 4:
        raise ValueError("example must be an input batch [N, C, H, W] (e.g. model.transform(img)[None])")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    outputs = _output_names(model)
    dynamic = {name: {0: "batch"} for name in ["input", *outputs]}
    with _plain_inference(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shape checks become constants
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")  # its own internals
        model(example)  # fills the weight-only caches tracing records as constants (a CoDA-Net's QR factors)
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=outputs,
                          dynamic_axes=dynamic, opset_version=opset, dynamo=USE_DYNAMO)  # fmt: skip
    return path


def onnx_max_deviation(model: nn.Module, path: str | os.PathLike, x: Tensor) -> float:
    """Run the ONNX file with onnxruntime (CPU) on ``x`` and return the largest deviation from
    PyTorch's outputs, relative to their largest magnitude (per output; the worst one).

    Raises ``ImportError`` naming the extra to install when onnxruntime is missing.
    """
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError("checking an ONNX export needs onnxruntime: pip install 'bcos-zoo[onnx]'") from e
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.detach().cpu().float().numpy()})
    with _plain_inference(model):
        expected = model(x)
    expected = [expected] if isinstance(expected, Tensor) else list(expected)
    if len(got) != len(expected):
        raise RuntimeError(f"{path} has {len(got)} outputs, the model {len(expected)}")
    worst = 0.0
    for ours, theirs in zip(expected, got):
        ours = ours.detach().cpu().float()
        diff = (ours - torch.from_numpy(theirs)).abs().max().item()
        worst = max(worst, diff / max(ours.abs().max().item(), 1e-12))
    return worst
