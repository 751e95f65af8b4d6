"""What the ``bcos-zoo`` commands share: usage errors, option types, the model and data options."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import bcos_zoo
from bcos_zoo.registry import resolve_name
from bcos_zoo.transforms import create_transform

__all__ = [
    "UsageError", "Parser", "int_in", "parse_key_values", "LoadedModel", "add_model_options", "model_from_args",
    "shape_batches", "progress", "format_table", "fmt", "fmt_params", "pattern", "MAX_IMAGE_SIZE",
]  # fmt: skip

MAX_IMAGE_SIZE = 4096  # --image-size: larger crops would allocate far more memory than any model needs


class UsageError(ValueError):
    """A bad combination of command-line arguments (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """Usage errors as one line that points to ``--help``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]``, else a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def parse_key_values(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs with JSON values where they parse (``in_chans=2``, ``norm_layer=bnu-linear``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--model-kwargs: expected key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------------- the model


@dataclass
class LoadedModel:
    """A model ready for inference, with what the outputs need: a label and class names."""

    model: nn.Module
    label: str
    classes: tuple[str, ...]
    random_init: bool = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def probabilities(self, logits: Tensor) -> Tensor:
        """Sigmoid for B-cos models (trained with binary cross-entropy), softmax for standard ones."""
        to_prob = getattr(self.model, "to_probabilities", None)
        return to_prob(logits) if to_prob is not None else logits.softmax(-1)

    def class_index(self, text: str) -> int:
        """A class given as an index or a name (case-insensitive); unknown ones raise with close matches."""
        n = len(self.classes)
        if text.lstrip("-").isdigit():
            if not 0 <= int(text) < n:
                raise ValueError(f"class index {text} is out of range: {self.label} has classes 0 to {n - 1}")
            return int(text)
        lowered = [c.lower() for c in self.classes]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        close = difflib.get_close_matches(text.lower(), lowered, n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(repr(self.classes[lowered.index(c)]) for c in close)}?" if close else ""
        raise ValueError(f"unknown class {text!r} for {self.label}.{hint} Give a class name or an index 0 to {n - 1}")

    def describe(self) -> str:
        return f"{self.label} - RANDOM INIT, not a trained model" if self.random_init else self.label


def _class_names(model: nn.Module, names: Sequence[str] | None) -> tuple[str, ...]:
    """The weights' class names, ImageNet's for an unnamed 1000-class model, else ``class i``."""
    n = int(getattr(model, "num_classes", 0))
    if names and len(names) == n:
        return tuple(names)
    if n == 1000:
        from bcos_zoo.pretrained.official import IMAGENET_CLASSES

        return IMAGENET_CLASSES
    return tuple(f"class {i}" for i in range(n))


def _from_file(name: str | None, path: Path, kwargs: dict[str, Any]) -> LoadedModel:
    """A model from a local file; architecture, arguments and classes come from its header when it has them."""
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file")
    arch = name.partition(".")[0] if name else None
    model = bcos_zoo.create_model(arch, pretrained=str(path), **kwargs)
    classes = model.pretrained_cfg.classes if model.pretrained_cfg else None
    return LoadedModel(model, f"{model.arch} ({path.name})", _class_names(model, classes))


def _from_registry(name: str, kwargs: dict[str, Any], random_init: bool) -> LoadedModel:
    """A registered weight (``arch.tag``, an alias, or an architecture's default), or random weights."""
    if random_init:
        arch, spec = resolve_name(name)
        model = bcos_zoo.create_model(arch, **{**(spec.build_kwargs if spec else {}), **kwargs})
        if spec is not None and spec.transform.in_chans == model.in_chans:
            model.transform = create_transform(spec.transform)
        return LoadedModel(model, name, _class_names(model, spec and spec.classes), random_init=True)
    if bcos_zoo.is_model(name) and bcos_zoo.default_weights(name) is None:
        raise ValueError(
            f"no pretrained weights are registered for {name}: pass --weights PATH (a checkpoint file), or "
            "--random-init to try the tools on random weights (see 'bcos-zoo list --pretrained')"
        )
    model = bcos_zoo.create_model(name, pretrained=True, **kwargs)
    return LoadedModel(model, model.pretrained_cfg.name, _class_names(model, model.pretrained_cfg.classes))


def _set_image_size(model: nn.Module, size: int) -> None:
    """Center-crop to ``size`` (resizing by the weights' resize/crop ratio first, if they resize)."""
    cfg = model.transform.config
    resize = round(size * cfg.resize_size / cfg.crop_size) if cfg.resize_size and cfg.crop_size else size
    model.transform = create_transform(dataclasses.replace(cfg, resize_size=resize, crop_size=size))


def model_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model the ``--model``/``--weights``/``--random-init``/``--image-size`` options select, in eval mode."""
    kwargs = parse_key_values(args.model_kwargs)
    if args.weights and args.random_init:
        raise UsageError("--random-init and --weights exclude each other")
    if args.weights:
        loaded = _from_file(args.model, Path(args.weights), kwargs)
    elif args.model:
        loaded = _from_registry(args.model, kwargs, args.random_init)
    else:
        raise UsageError("pass --model NAME (an architecture or weight name) or --weights PATH")
    if args.image_size:
        _set_image_size(loaded.model, args.image_size)
    loaded.model.to(args.device).eval()
    return loaded


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", help="architecture (bcos_resnet50), weight name (bcos_resnet50.in1k) or alias")
    g.add_argument("--weights", metavar="PATH",
                   help="a local .safetensors/.pth checkpoint (architecture from --model or the file's header)")  # fmt: skip
    g.add_argument("--model-kwargs", nargs="+", default=[], metavar="KEY=VALUE",
                   help="architecture options, e.g. in_chans=2")  # fmt: skip
    g.add_argument("--random-init", action="store_true", help="random weights, to try the tools (outputs say so)")
    g.add_argument("--image-size", type=int_in(1, MAX_IMAGE_SIZE), metavar="N",
                   help=f"center-crop size, 1 to {MAX_IMAGE_SIZE} (the resize is scaled along)")  # fmt: skip
    g.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    g.add_argument("--batch-size", type=int_in(1, 4096), default=32, help="images per forward pass (default: %(default)s)")


# ------------------------------------------------------------------------------------------------- helpers


def shape_batches(tensors: Sequence[Tensor], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``tensors`` in batches of equal shapes (images of different sizes cannot be stacked)."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        by_shape.setdefault(tuple(t.shape), []).append(i)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]


def progress(iterable: Iterable, total: int | None, desc: str) -> Iterable:
    """A progress bar on a terminal, nothing otherwise."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=None, leave=False, file=sys.stderr, dynamic_ncols=True)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def pattern(text: str | None) -> str:
    """fnmatch pattern; a plain word matches anywhere in the name."""
    if not text:
        return "*"
    return text if any(ch in text for ch in "*?[") else f"*{text}*"
