"""The ``bcos-zoo`` command line: list, inspect and fetch weights; predict, explain, evaluate and
measure localisation; train, fine-tune and convert; and a demo that works offline.

Every command has ``--help``. It exits with 0 on success, 1 on an error (one line on stderr; the
traceback only with ``--debug``), 2 on a usage error and 130 when interrupted.

Example:
    $ bcos-zoo demo -o demo/
    $ bcos-zoo explain cat.jpg --model bcos_resnet50 --top-k 3 -o out/
    $ bcos-zoo predict *.png --weights run/model.safetensors --json
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

import bcos_zoo

from . import weights as _weights
from .data import FASHION_MNIST_CLASSES, image_folder_loader, load_fashion_mnist, open_dataset
from .explain import Explanation, explain, explain_topk
from .localisation import ImageSource, default_smoothing, image_batches
from .transforms import create_transform, load_image

__all__ = ["main", "build_parser", "LoadedModel", "load_model", "DEMO_MODEL", "DEMO_MODEL_ENV"]

log = logging.getLogger("bcos_zoo.cli")

ASSETS = Path(__file__).parent / "assets"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL_ENV = "BCOS_ZOO_DEMO_MODEL"
DEMO_MODEL = "bcos_resnet20_cifar.fmnist"
_DELEGATED = ("train", "finetune", "convert")


class UsageError(ValueError):
    """A bad combination of command-line arguments (exit code 2)."""


# ----------------------------------------------------------------------------------------- the model


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


def _parse_kv(items: Sequence[str]) -> dict[str, Any]:
    from .training import parse_key_values as parse

    try:
        return parse(list(items))
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"--model-kwargs: {e}") from None


def _class_names(model: nn.Module, *candidates: Sequence[str] | None) -> tuple[str, ...]:
    n = int(getattr(model, "num_classes", 0))
    spec_classes = getattr(getattr(model, "pretrained_cfg", None), "classes", None)
    for names in (*candidates, spec_classes):
        if names and len(names) == n:
            return tuple(names)
    if n == 1000:
        from torchvision.models import ResNet18_Weights

        return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    return tuple(f"class {i}" for i in range(n))


def _spec_kwargs(spec: Any) -> dict[str, Any]:
    return {"num_classes": spec.num_classes, **spec.model_kwargs} if spec is not None else {}


def _registered(name: str | None) -> Any:
    """The registered weight record called ``name``, or ``None``."""
    try:
        return _weights.get_weights(name) if name else None
    except ValueError:
        return None


def _from_checkpoint(name: str | None, path: Path, kwargs: dict[str, Any]) -> LoadedModel:
    """A model from a local file; architecture, arguments and classes come from its header when it has them."""
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file")
    meta = _weights.weights_metadata(path) if path.suffix == ".safetensors" else {}
    spec = _registered(meta.get("weight"))
    arch = name.partition(".")[0] if name else (spec.arch if spec else meta.get("arch"))
    if not arch:
        raise UsageError(f"{path} does not name its architecture; pass --model ARCH")
    bcos_zoo.model_entrypoint(arch)  # unknown names raise with close matches
    classes = spec.classes if spec else json.loads(meta.get("classes", "null"))
    base = _spec_kwargs(spec) or json.loads(meta.get("model_kwargs", "{}"))
    if classes and "num_classes" not in base:
        base["num_classes"] = len(classes)
    model = bcos_zoo.create_model(arch, pretrained=str(path), **{**base, **kwargs})
    return LoadedModel(model, f"{arch} ({path.name})", _class_names(model, classes))


def _from_registry(name: str, kwargs: dict[str, Any], random_init: bool) -> LoadedModel:
    """A registered weight (``arch.tag``, an alias, or an architecture's default), or random weights."""
    arch, spec = _weights.resolve_model_name(name)
    bcos_zoo.model_entrypoint(arch)
    if random_init:
        model = bcos_zoo.create_model(arch, **{**_spec_kwargs(spec), **kwargs})
        if spec is not None and spec.transform.in_chans == model.in_chans:
            model.transform = create_transform(spec.transform)
        return LoadedModel(model, name, _class_names(model, spec and spec.classes), random_init=True)
    spec = spec or _weights.default_weights(arch)
    if spec is None:
        raise ValueError(
            f"no pretrained weights are registered for {arch}: pass --weights PATH (a checkpoint file), or "
            "--random-init to try the tools on random weights (see 'bcos-zoo list --pretrained')"
        )
    model = bcos_zoo.create_model(spec.name, pretrained=True, **kwargs)
    return LoadedModel(model, spec.name, _class_names(model, spec.classes))


def _set_image_size(model: nn.Module, size: int) -> None:
    """Center-crop to ``size`` (resizing by the weights' resize/crop ratio first, if they resize)."""
    cfg = model.transform.config
    resize = round(size * cfg.resize_size / cfg.crop_size) if cfg.resize_size and cfg.crop_size else size
    model.transform = create_transform(dataclasses.replace(cfg, resize_size=resize, crop_size=size))


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The model the ``--model``/``--weights``/``--random-init``/``--image-size`` options select, in eval mode."""
    kwargs = _parse_kv(args.model_kwargs)
    if args.weights and args.random_init:
        raise UsageError("--random-init and --weights exclude each other")
    if args.weights:
        loaded = _from_checkpoint(args.model, Path(args.weights), kwargs)
    elif args.model:
        loaded = _from_registry(args.model, kwargs, args.random_init)
    else:
        raise UsageError("pass --model NAME (an architecture or weight name) or --weights PATH")
    if args.image_size:
        _set_image_size(loaded.model, args.image_size)
    loaded.model.to(args.device).eval()
    return loaded


# ---------------------------------------------------------------------------------------------- inputs


def _load_images(paths: Sequence[str]) -> list[Image.Image]:
    """Open every image first, so a bad file fails before the model is built."""
    return [load_image(p) for p in paths]


def _shape_batches(tensors: Sequence[Tensor], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``tensors`` in batches of equal shapes (images of different sizes cannot be stacked)."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        by_shape.setdefault(tuple(t.shape), []).append(i)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]


def _progress(iterable: Iterable, total: int | None, desc: str) -> Iterable:
    """A progress bar on a terminal, nothing otherwise."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=None, leave=False, file=sys.stderr, dynamic_ncols=True)


def _output_paths(images: Sequence[str], out: str, suffix: str) -> list[Path]:
    """``OUT.png`` for a single image, else ``OUT/<image stem><suffix>.png`` (numbered if stems repeat)."""
    out_path = Path(out)
    if out_path.suffix.lower() == ".png":
        if len(images) != 1:
            raise UsageError(f"-o {out} names one file, but {len(images)} images were given; pass a directory")
        return [out_path]
    seen: dict[str, int] = {}
    paths = []
    for image in images:
        stem = Path(image).stem
        seen[stem] = seen.get(stem, 0) + 1
        paths.append(out_path / f"{stem}{suffix}{'' if seen[stem] == 1 else f'_{seen[stem]}'}.png")
    return paths


class _FolderImages:
    """Some images of an ImageFolder, loaded when asked for (an :class:`~bcos_zoo.localisation.ImageSource`)."""

    def __init__(self, dataset: Any, indices: Tensor) -> None:
        self.dataset, self.indices = dataset, indices.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, indices: list[int]) -> Tensor:
        return torch.stack([self.dataset[self.indices[i]][0] for i in indices])


@dataclass
class _Data:
    """The images (the image's own channels) and labels of a ``--data`` argument."""

    images: ImageSource
    labels: Tensor
    classes: tuple[str, ...]
    label: str

    def batches(self, batch_size: int) -> Iterable[tuple[Tensor, Tensor]]:
        return _progress(
            image_batches(self.images, self.labels, batch_size), math.ceil(len(self.labels) / batch_size), "images"
        )


def _open_data(spec: str, model: nn.Module, limit: int | None) -> _Data:
    """The Fashion-MNIST test set or an ImageFolder directory (preprocessed like the model's transform);
    with ``limit``, its first N images (Fashion-MNIST) or N evenly spaced ones (a folder, sorted by class)."""
    data = open_dataset(spec)
    if data.is_fashion_mnist:
        images, labels = load_fashion_mnist(data.root, "test")
        n = min(limit or len(labels), len(labels))
        return _Data(images[:n], labels[:n], FASHION_MNIST_CLASSES, "fashion-mnist")
    cfg = model.transform.config
    if not cfg.crop_size:
        raise UsageError(f"{getattr(model, 'arch', 'the model')} has no fixed input size: pass --image-size N")
    dataset = image_folder_loader(data.root, train=False, image_size=cfg.crop_size, resize_size=cfg.resize_size,
                                  batch_size=1, color_chans=cfg.color_chans, workers=0).dataset  # fmt: skip
    if len(dataset.classes) > model.num_classes:
        raise ValueError(f"{data.root} has {len(dataset.classes)} class folders, the model {model.num_classes} classes")
    n = min(limit or len(dataset), len(dataset))
    indices = torch.linspace(0, len(dataset) - 1, n).round().long()
    labels = torch.tensor(dataset.targets)[indices]
    return _Data(_FolderImages(dataset, indices), labels, tuple(dataset.classes), str(data.root))


# --------------------------------------------------------------------------------------------- commands


def _format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def _pattern(text: str | None) -> str:
    """fnmatch pattern; a plain word matches anywhere in the name."""
    if not text:
        return "*"
    return text if any(ch in text for ch in "*?[") else f"*{text}*"


def _cache_state(spec: Any) -> str:
    """``shipped`` (inside the package), ``yes`` (in the local cache or the Hugging Face cache) or ``no``."""
    package_file = getattr(_weights, "PackageFile", None)
    if package_file is not None and any(isinstance(s, package_file) for s in spec.sources):
        return "shipped"
    cache_path = getattr(_weights, "_cache_path", None)
    if cache_path is not None and _weights.cached_file_ok(cache_path(spec)):
        return "yes"
    from huggingface_hub import try_to_load_from_cache

    hub = [s for s in spec.sources if isinstance(s, _weights.HubFile) and s.filename.endswith(".safetensors")]
    cached = any(isinstance(try_to_load_from_cache(s.repo_id, s.filename, revision=s.revision), str) for s in hub)
    return "yes" if cached else "no"


def _arch_params(arch: str) -> int:
    spec = _weights.default_weights(arch)
    if spec is not None and spec.num_params:
        return spec.num_params
    with torch.device("meta"):
        model = bcos_zoo.create_model(arch)
    return sum(p.numel() for p in model.parameters())


def cmd_list(args: argparse.Namespace) -> int:
    pattern = _pattern(args.pattern)
    if args.pretrained:
        rows = []
        for name in _weights.list_weights(pattern):
            spec = _weights.get_weights(name)
            top5 = spec.metrics.get(spec.dataset or "", {}).get("top5")
            rows.append([name, spec.dataset or "-", _fmt(spec.top1()), _fmt(top5), _fmt_params(spec.num_params),
                         _cache_state(spec)])  # fmt: skip
        header = ["weight", "dataset", "top-1", "top-5", "params", "cached"]
    else:
        rows = []
        for arch in bcos_zoo.list_models(pattern):
            default = _weights.default_weights(arch)
            n_weights = len([w for w in _weights.list_weights(arch) if _weights.get_weights(w).arch == arch])
            rows.append([arch, n_weights, default.name if default else "-", _fmt(default and default.top1()),
                         _fmt_params(_arch_params(arch))])  # fmt: skip
        header = ["architecture", "weights", "default weight", "top-1", "params"]
    if not rows:
        raise ValueError(f"nothing matches {args.pattern!r}; run 'bcos-zoo list' for all names")
    print(_format_table(header, rows))
    return 0


def _card_dir(args: argparse.Namespace) -> Path:
    return Path(args.card_dir) if args.card_dir else REPO_ROOT / "model_cards"


def _card_text(spec: Any, card_dir: Path) -> str:
    """The weight's card (``<card dir>/<name>.md``, else rendered from its record) without YAML front matter."""
    card = card_dir / f"{spec.name}.md"
    if card.is_file():
        text = card.read_text()
    else:
        from ._cards import render_card

        text = render_card(spec)
    if text.startswith("---\n"):
        text = text.split("\n---\n", 1)[-1]
    return text.strip()


def cmd_info(args: argparse.Namespace) -> int:
    name = args.name
    if bcos_zoo.is_model(name) and _weights.default_weights(name) is None:
        entry = bcos_zoo.model_entrypoint(name)
        print(f"# {name}\n\n{(entry.__doc__ or '').strip()}\n\n- parameters: {_fmt_params(_arch_params(name))}")
        print("- weights: none registered (see 'bcos-zoo list --pretrained')")
        return 0
    spec = _weights.get_weights(name)
    print(_card_text(spec, _card_dir(args)))
    measured = _card_dir(args) / f"{spec.name}.measured.json"
    if measured.is_file():
        print("\n## Measured with bcos-zoo evaluate\n")
        for dataset, m in json.loads(measured.read_text()).items():
            print(f"- {dataset}: top-1 {m['top1']:.2f} %, top-5 {m['top5']:.2f} % on {m['n']} images ({m['date']})")
    print(f"\ncached: {_cache_state(spec)}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    if not args.names and not args.all:
        raise UsageError("name the weights to download, or pass --all")
    specs = [_weights.get_weights(n) for n in (_weights.list_weights() if args.all else args.names)]
    failures = []
    for spec in specs:
        try:
            bcos_zoo.create_model(spec.name, pretrained=True)  # fetches, verifies the SHA-256, loads strictly
            print(f"{spec.name}: ok")
        except (_weights.DownloadError, bcos_zoo.CheckpointError) as e:
            failures.append(f"{spec.name} ({str(e).splitlines()[0]})")
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(specs)} weights failed: " + "; ".join(failures))
    return 0


def _predict_batches(loaded: LoadedModel, inputs: list[Tensor], batch_size: int) -> Iterator[tuple[list[int], Tensor]]:
    with torch.no_grad():
        for indices in _shape_batches(inputs, batch_size):
            yield indices, loaded.model(torch.stack([inputs[i] for i in indices]).to(loaded.device)).float().cpu()


def cmd_predict(args: argparse.Namespace) -> int:
    images = _load_images(args.images)
    loaded = load_model(args)
    inputs = [loaded.model.transform(img) for img in images]
    k = min(args.top_k, len(loaded.classes))
    results: list[dict[str, Any]] = [{} for _ in images]
    for indices, logits in _predict_batches(loaded, inputs, args.batch_size):
        probs = loaded.probabilities(logits)
        top = logits.topk(k, dim=1).indices
        for row, i in enumerate(indices):
            preds = [{"rank": r + 1, "index": c, "class": loaded.classes[c], "probability": probs[row, c].item(),
                      "logit": logits[row, c].item()} for r, c in enumerate(top[row].tolist())]  # fmt: skip
            results[i] = {
                "image": args.images[i],
                "model": loaded.label,
                "random_init": loaded.random_init,
                "predictions": preds,
            }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    kind = "sigmoid" if hasattr(loaded.model, "to_probabilities") else "softmax"
    print(f"model: {loaded.describe()} ({kind} probabilities)")
    for result in results:
        print(result["image"])
        for p in result["predictions"]:
            print(f"  {p['rank']:>2}. {p['class']:<24} p={p['probability']:.4f}  logit={p['logit']:+.4f}")
    return 0


def _row_title(loaded: LoadedModel, e: Explanation, row: int, layer: str | None) -> str:
    target = int(e.target[row])
    if layer is not None:
        total = float(e.contribution_map[row].sum() + e.bias_contribution[row])
        return f"{layer} channel {target} (sum {total:.3g})"
    prob = float(loaded.probabilities(e.logits[row : row + 1].float())[0, target])
    return f"{loaded.classes[target]} (p={prob:.2f})" if prob >= 0.01 else f"{loaded.classes[target]} (p={prob:.1e})"


def _explain_images(loaded: LoadedModel, paths: Sequence[str], images: Sequence[Image.Image], outputs: Sequence[Path],
                    args: argparse.Namespace) -> list[tuple[Tensor, Explanation, int, str]]:  # fmt: skip
    """Explain every image (in batches) and write one figure each.

    Returns:
        Per image, (input, explanation, row in it, title) of its first explained target.
    """
    from .plotting import explanation_figure, save_figure

    targets = [loaded.class_index(t) for t in args.target] if args.target else None
    inputs = [loaded.model.transform(img) for img in images]
    firsts = []
    for indices in _shape_batches(inputs, args.batch_size):
        x = torch.stack([inputs[i] for i in indices]).to(loaded.device)
        smooth = default_smoothing(min(x.shape[-2:]))  # the papers' 15 pixels at 224, scaled to the image
        if args.layer:
            expls = [explain(loaded.model, x, layer=args.layer, channel=args.channel, smooth=smooth)]
        else:
            expls = explain_topk(
                loaded.model, x, args.top_k or 1, targets=[targets] if targets else None, smooth=smooth
            )
        for row, i in enumerate(indices):
            titles = [_row_title(loaded, e, row, args.layer) for e in expls]
            panels = [(e.explanation[row], e.contribution_map[row]) for e in expls]
            fig = explanation_figure(x[row], panels, titles, overlay=args.overlay,
                                     suptitle=f"{Path(paths[i]).name} | {loaded.describe()}")  # fmt: skip
            print(save_figure(fig, outputs[i]))
            firsts.append((x[row].cpu(), expls[0], row, titles[0]))
    return firsts


def _check_explain_args(args: argparse.Namespace) -> None:
    if args.target and args.top_k:
        raise UsageError("pass either --target or --top-k, not both")
    if args.layer and (args.target or args.top_k):
        raise UsageError("--layer explains a channel (--channel C); it cannot be combined with --target or --top-k")
    if args.channel is not None and not args.layer:
        raise UsageError("--channel needs --layer NAME")


def cmd_explain(args: argparse.Namespace) -> int:
    _check_explain_args(args)
    outputs = _output_paths(args.images, args.output, "_explained")
    images = _load_images(args.images)
    loaded = load_model(args)
    _explain_images(loaded, args.images, images, outputs, args)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    loaded = load_model(args)
    data = _open_data(args.data, loaded.model, args.limit)
    start = time.time()
    metrics = evaluate(loaded.model, data.batches(args.batch_size))
    metrics = {**metrics, "seconds": round(time.time() - start, 1)}
    if args.json:
        print(
            json.dumps(
                {"model": loaded.label, "random_init": loaded.random_init, "data": data.label, **metrics}, indent=2
            )
        )
    else:
        print(f"{loaded.describe()} on {data.label} ({metrics['n']} images): "
              f"top-1 {metrics['top1']:.2f} %, top-5 {metrics['top5']:.2f} %, BCE {metrics['bce']:.4f}")  # fmt: skip
    if args.write_card:
        print(_write_measured(args, loaded, data, metrics))
    return 0


def _write_measured(args: argparse.Namespace, loaded: LoadedModel, data: _Data, metrics: dict[str, Any]) -> Path:
    """Merge the measured figures into ``<card dir>/<weight>.measured.json`` (one entry per dataset);
    a local file without a registered name is recorded under its file name."""
    registered = _registered(getattr(getattr(loaded.model, "pretrained_cfg", None), "name", None))
    if loaded.random_init or not (registered or args.weights):
        raise UsageError("--write-card needs trained weights (a registered weight name or --weights PATH)")
    name = registered.name if registered else Path(args.weights).stem
    path = _card_dir(args) / f"{name}.measured.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    record[data.label if data.label == "fashion-mnist" else Path(data.label).name] = {
        "top1": metrics["top1"], "top5": metrics["top5"], "bce": metrics["bce"], "n": metrics["n"],
        "limit": args.limit, "date": time.strftime("%Y-%m-%d"), "bcos_zoo": bcos_zoo.__version__,
        "command": "bcos-zoo " + " ".join(sys.argv[1:]) if sys.argv[1:] else "bcos-zoo evaluate",
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def cmd_localisation(args: argparse.Namespace) -> int:
    from .localisation import METHODS, grid_pointing_game, summarize

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    loaded = load_model(args)
    data = _open_data(args.data, loaded.model, args.limit)
    result = grid_pointing_game(
        loaded.model, data.images, data.labels, grid=args.grid, n_grids=args.n_grids, methods=methods,
        smooth=args.smooth, conf_thresh=args.conf_thresh, seed=args.seed, batch_size=args.batch_size,
        progress=_progress,
    )  # fmt: skip
    if not result.grids:
        raise ValueError(
            f"only {len(result.per_class)} classes have correctly classified images with probability > "
            f"{args.conf_thresh}; a {args.grid}x{args.grid} grid needs {args.grid**2}: "
            "use more images or a lower --conf-thresh"
        )
    summary = summarize(result.scores)
    if args.json:
        record = {"model": loaded.label, "random_init": loaded.random_init, "grid": args.grid,
                  "grids": len(result.grids), "smooth": result.smooth, "conf_thresh": args.conf_thresh,
                  "scores": summary}  # fmt: skip
        print(json.dumps(record, indent=2))
    else:
        print(f"{loaded.describe()}: {len(result.grids)} grids of {args.grid}x{args.grid}, smoothing {result.smooth}, "
              f"chance level {1 / args.grid**2:.3f}")  # fmt: skip
        rows = [
            [m, _fmt(s["mean"], 3), _fmt(s["p25"], 3), _fmt(s["median"], 3), _fmt(s["p75"], 3), s["n"]]
            for m, s in summary.items()
        ]
        print(_format_table(["method", "mean", "25%", "median", "75%", "n"], rows))
    if args.plot:
        from .plotting import localisation_figure, save_figure

        print(save_figure(localisation_figure(result.scores, args.grid, title=loaded.describe()), args.plot))
    return 0


def _demo_model(args: argparse.Namespace) -> LoadedModel:
    """``--model``/``--weights`` if given, else the default demo model (shipped, so offline)."""
    if args.weights or args.model:
        return load_model(args)
    name = os.environ.get(DEMO_MODEL_ENV) or DEMO_MODEL
    return load_model(argparse.Namespace(**{**vars(args), "model": name}))


def cmd_demo(args: argparse.Namespace) -> int:
    from .plotting import explanation_grid, save_figure

    bundled = sorted(str(p) for p in ASSETS.glob("*.png"))
    paths = bundled + list(args.images)
    images = _load_images(paths)
    loaded = _demo_model(args)
    args.target, args.layer, args.channel = None, None, None
    outputs = _output_paths(paths, args.output, "_explained")
    firsts = _explain_images(loaded, paths, images, outputs, args)
    grid = explanation_grid([x for x, *_ in firsts], [e.explanation[r] for _, e, r, _ in firsts],
                            [t for *_, t in firsts], overlay=True, suptitle=loaded.describe())  # fmt: skip
    print(save_figure(grid, Path(args.output) / "overview.png"))
    return 0


def _run_delegated(command: str, argv: list[str]) -> int:
    """``train``/``finetune`` run :func:`bcos_zoo.training.main`; ``convert`` runs :func:`bcos_zoo.convert.main`."""
    if command == "convert":
        from .convert import main as convert_main

        return int(convert_main(argv) or 0)
    from . import training

    if command == "finetune":
        parser = training.build_parser(_Parser(prog="bcos-zoo finetune", description="Fine-tune: train from --from."))
        next(a for a in parser._actions if a.dest == "init_from").required = True
        parser.parse_args(argv)  # --help, and the --from check
    return int(training.main(argv) or 0)


# ---------------------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line that points to ``--help``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", help="architecture (bcos_resnet50), weight name (bcos_resnet50.in1k) or alias")
    g.add_argument(
        "--weights",
        metavar="PATH",
        help="a local .safetensors/.pth checkpoint (architecture from --model or the file's header)",
    )
    g.add_argument(
        "--model-kwargs", nargs="+", default=[], metavar="KEY=VALUE", help="architecture options, e.g. in_chans=2"
    )
    g.add_argument("--random-init", action="store_true", help="random weights, to try the tools (outputs say so)")
    g.add_argument("--image-size", type=int, metavar="N", help="center-crop size (the resize is scaled along)")
    g.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")


def _explain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top-k", type=int, metavar="K", help="explain the K most likely classes (default: the top one)")
    p.add_argument("--overlay", action="store_true", help="blend the explanation on the image instead of black")


def _add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    def add(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], **kw)

    p = add("list", "List architectures (or, with --pretrained, weights) with top-1, parameters and cache state.")
    p.add_argument("pattern", nargs="?", help="fnmatch pattern or a word in the name")
    p.add_argument("--pretrained", action="store_true", help="list weights instead of architectures")
    p.set_defaults(func=cmd_list)

    p = add("info", "Show a weight's model card (or an architecture's summary).")
    p.add_argument("name", help="weight name (arch.tag), alias or architecture")
    p.add_argument("--card-dir", help="where model cards are (default: model_cards/ of the source tree)")
    p.set_defaults(func=cmd_info)

    p = add("download", "Fetch weights into the cache and verify their SHA-256.")
    p.add_argument("names", nargs="*", metavar="NAME", help="weight names")
    p.add_argument("--all", action="store_true", help="every registered weight")
    p.set_defaults(func=cmd_download)

    p = add("predict", "Classify images: top classes with probabilities (sigmoid for B-cos models) and logits.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _model_options(p)
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes per image (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_predict)

    p = add("explain", "Write a PNG per image: the input, the B-cos explanation and the contribution map per class.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _model_options(p)
    p.add_argument("--target", action="append", metavar="CLASS", help="class index or name (repeat for several)")
    _explain_options(p)
    p.add_argument(
        "--layer", metavar="NAME", help="explain a channel of this layer (a name from model.named_modules())"
    )
    p.add_argument("--channel", type=int, metavar="C", help="with --layer: the channel (default: the most active)")
    p.add_argument("-o", "--output", default="explanations", metavar="OUT", help="directory, or a .png for one image")
    p.set_defaults(func=cmd_explain)

    p = add("evaluate", "Top-1/top-5 accuracy on Fashion-MNIST or an ImageFolder directory.")
    _model_options(p)
    p.add_argument("--data", required=True, help="'fashion-mnist' (test split) or an ImageFolder directory")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--write-card", action="store_true", help="record the figures in <card dir>/<weight>.measured.json")
    p.add_argument("--card-dir", help="where model cards are (default: model_cards/ of the source tree)")
    p.set_defaults(func=cmd_evaluate)

    p = add("localisation", "The grid pointing game for the B-cos explanation and post-hoc methods (captum).")
    _model_options(p)
    p.add_argument("--data", required=True, help="'fashion-mnist' (test split) or an ImageFolder directory")
    p.add_argument("--limit", type=int, metavar="N", help="draw images from the first N only")
    p.add_argument(
        "--grid", type=int, choices=(2, 3), default=3, help="grid size g: g x g images (default: %(default)s)"
    )
    p.add_argument("--n-grids", type=int, default=500, metavar="N", help="number of grids (default: %(default)s)")
    p.add_argument(
        "--methods", default="bcos,ixg", help="comma-separated: bcos, ixg, intgrad, gradcam (default: %(default)s)"
    )
    p.add_argument("--smooth", type=int, metavar="K", help="odd box-filter size (default: 15 per 224 pixels of a tile)")
    p.add_argument(
        "--conf-thresh", type=float, default=0.5, help="minimum probability of each image (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", metavar="PNG", help="save a box plot of the scores")
    p.set_defaults(func=cmd_localisation)

    p = add("demo", "Explain the bundled sample images (and yours) with the default model; works offline.")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="more images to explain")
    _model_options(p)
    _explain_options(p)
    p.add_argument(
        "-o", "--output", default="bcos_zoo_demo", metavar="DIR", help="output directory (default: %(default)s)"
    )
    p.set_defaults(func=cmd_demo)

    for name, text in [("train", "Train a model (options: 'bcos-zoo train --help')."),
                       ("finetune", "Fine-tune: train from --from WEIGHTS (options: 'bcos-zoo finetune --help')."),
                       ("convert", "Convert an official checkpoint to safetensors plus its model card.")]:  # fmt: skip
        sub.add_parser(name, help=text, add_help=False)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    description = "B-cos networks from the command line: weights, predictions, explanations and their evaluation."
    parser = _Parser(prog="bcos-zoo", description=description, parents=[common])
    parser.add_argument("--version", action="version", version=f"bcos-zoo {bcos_zoo.__version__}")
    _add_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True), common)
    return parser


# ------------------------------------------------------------------------------------------------ main


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, KeyError) or not text:
        text = f"{type(error).__name__}: {text or repr(error)}"
    return text


def _setup_logging() -> None:
    logging.basicConfig(format="bcos-zoo: %(message)s", level=logging.WARNING)
    warnings.showwarning = lambda message, category, *_a, **_k: log.warning("%s", message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bcos-zoo`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    _setup_logging()
    try:
        if command in _DELEGATED and argv[0] == command:
            return _run_delegated(command, argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("bcos-zoo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # the command line reports every error in one line
        if debug:
            raise
        print(f"bcos-zoo {command or ''}: error: {_one_line(e)}".replace(" :", ":"), file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
