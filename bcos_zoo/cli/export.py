"""``bcos-zoo export``: a model's forward pass as an ONNX file, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import torch

import bcos_zoo
from bcos_zoo.export import DEFAULT_OPSET, export_onnx, onnx_max_deviation

from .common import UsageError, int_in, parse_key_values

__all__ = ["MAX_DEVIATION", "add_commands"]

MAX_DEVIATION = 1e-4  # relative to the largest output: what an export must meet to count as correct


def _pretrained(value: str | None) -> bool | str:
    """``--pretrained`` alone: the default weights; with a value: a tag, file, URL or ``hf-hub:`` id."""
    return True if value == "" else value or False


def _input_size(model: torch.nn.Module, size: int | None) -> int:
    cfg = model.transform.config
    size = size or cfg.crop_size or cfg.resize_size
    if size is None:
        raise UsageError(f"{model.arch} takes any input size and its preprocessing fixes none: pass --input-size N")
    return size


def cmd_export(args: argparse.Namespace) -> int:
    if args.model is None and not args.pretrained:
        raise UsageError(
            "pass --model NAME, or --pretrained FILE (a bcos-zoo .safetensors that names its architecture)"
        )
    pretrained = _pretrained(args.pretrained)
    kwargs: dict[str, Any] = parse_key_values(args.model_kwargs)
    if args.out_indices is not None:
        kwargs.update(features_only=True, out_indices=tuple(args.out_indices))
    model = bcos_zoo.create_model(args.model, pretrained=pretrained, **kwargs).to(args.device).eval()
    size = _input_size(model, args.input_size)
    example = torch.rand(1, model.in_chans, size, size, device=args.device)
    path = export_onnx(model, args.output, example, opset=args.opset)
    what = model.pretrained_cfg.name if model.pretrained_cfg else f"{model.arch} (RANDOM INIT: no --pretrained)"
    print(f"{path}: {what}, input [batch, {model.in_chans}, {size}, {size}], ONNX opset {args.opset}")
    if importlib.util.find_spec("onnxruntime") is None:
        print("not verified: onnxruntime is not installed (pip install 'bcos-zoo[onnx]')")
        return 0
    check = torch.rand(2, model.in_chans, size, size, device=args.device)  # another batch size: the axis is dynamic
    deviation = onnx_max_deviation(model, path, check)
    print(f"onnxruntime max deviation from PyTorch: {deviation:.2e} (relative, batch of 2)")
    if deviation > MAX_DEVIATION:
        raise RuntimeError(f"the ONNX outputs deviate by {deviation:.2e} > {MAX_DEVIATION:g}; {path} is not reliable")
    return 0


def add_commands(add: Any) -> None:
    """Register the subcommand with ``add(name, help) -> parser``."""
    p = add("export", "Export a model's forward pass (logits, or feature maps) to ONNX and verify it with onnxruntime.")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="output format (default: %(default)s)")
    p.add_argument("--model", "-m", help="architecture, weight name (arch.tag) or alias")
    p.add_argument("--pretrained", nargs="?", const="", default=None, metavar="WEIGHTS",
                   help="load weights: alone the default ones, or a tag, file, URL or hf-hub:<org>/<repo>")  # fmt: skip
    p.add_argument("--model-kwargs", nargs="+", default=[], metavar="KEY=VALUE", help="architecture options")
    p.add_argument("--out-indices", type=int, nargs="+", metavar="I",
                   help="export the features-only model with these stages (timm's out_indices)")  # fmt: skip
    p.add_argument("--input-size", type=int_in(8, 4096), metavar="N",
                   help="input side (default: the preprocessing's crop size)")  # fmt: skip
    p.add_argument("--opset", type=int_in(7, 30), default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device used for the export (default: %(default)s)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    p.set_defaults(func=cmd_export)
