"""``bcos-zoo evaluate | localisation``: accuracy and the grid pointing game on a dataset."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import bcos_zoo
from bcos_zoo.data import FASHION_MNIST_CLASSES, image_folder_loader, load_fashion_mnist, open_dataset
from bcos_zoo.localisation import ImageSource, image_batches

from .common import (
    LoadedModel, UsageError, add_model_options, fmt, format_table, int_in, model_from_args, progress,
)  # fmt: skip
from .weights import card_dir

__all__ = ["add_commands", "EvalData", "open_eval_data"]


class _FolderImages:
    """Some images of an ImageFolder, loaded when asked for (an :class:`~bcos_zoo.localisation.ImageSource`)."""

    def __init__(self, dataset: Any, indices: Tensor) -> None:
        self.dataset, self.indices = dataset, indices.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, indices: list[int]) -> Tensor:
        return torch.stack([self.dataset[self.indices[i]][0] for i in indices])


@dataclass
class EvalData:
    """The images (the image's own channels) and labels of a ``--data`` argument."""

    images: ImageSource
    labels: Tensor
    classes: tuple[str, ...]
    label: str

    def batches(self, batch_size: int) -> Iterable[tuple[Tensor, Tensor]]:
        return progress(image_batches(self.images, self.labels, batch_size), math.ceil(len(self.labels) / batch_size),
                        "images")


def open_eval_data(spec: str, model: nn.Module, limit: int | None) -> EvalData:
    """The Fashion-MNIST test set or an ImageFolder directory (preprocessed like the model's transform);
    with ``limit``, its first N images (Fashion-MNIST) or N evenly spaced ones (a folder, sorted by class)."""
    data = open_dataset(spec)
    if data.is_fashion_mnist:
        images, labels = load_fashion_mnist(data.root, "test")
        n = min(limit or len(labels), len(labels))
        return EvalData(images[:n], labels[:n], FASHION_MNIST_CLASSES, "fashion-mnist")
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
    return EvalData(_FolderImages(dataset, indices), labels, tuple(dataset.classes), str(data.root))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from bcos_zoo.evaluation import evaluate

    loaded = model_from_args(args)
    data = open_eval_data(args.data, loaded.model, args.limit)
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


def _write_measured(args: argparse.Namespace, loaded: LoadedModel, data: EvalData, metrics: dict[str, Any]) -> Path:
    """Merge the measured figures into ``<card dir>/<weight>.measured.json`` (one entry per dataset);
    a local file without a registered name is recorded under its file name."""
    spec = getattr(loaded.model, "pretrained_cfg", None)
    registered = spec if spec is not None and spec.name in bcos_zoo.list_weights() else None
    if loaded.random_init or not (registered or args.weights):
        raise UsageError("--write-card needs trained weights (a registered weight name or --weights PATH)")
    name = registered.name if registered else Path(args.weights).stem
    path = card_dir(args) / f"{name}.measured.json"
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
    from bcos_zoo.localisation import METHODS, grid_pointing_game, summarize

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    loaded = model_from_args(args)
    data = open_eval_data(args.data, loaded.model, args.limit)
    result = grid_pointing_game(
        loaded.model, data.images, data.labels, grid=args.grid, n_grids=args.n_grids, methods=methods,
        smooth=args.smooth, conf_thresh=args.conf_thresh, seed=args.seed, batch_size=args.batch_size,
        progress=progress,
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
            [m, fmt(s["mean"], 3), fmt(s["p25"], 3), fmt(s["median"], 3), fmt(s["p75"], 3), s["n"]]
            for m, s in summary.items()
        ]
        print(format_table(["method", "mean", "25%", "median", "75%", "n"], rows))
    if args.plot:
        from bcos_zoo.plotting import localisation_figure, save_figure

        print(save_figure(localisation_figure(result.scores, args.grid, title=loaded.describe()), args.plot))
    return 0


def add_commands(add: Any) -> None:
    """Register the subcommands with ``add(name, help) -> parser``."""
    p = add("evaluate", "Top-1/top-5 accuracy on Fashion-MNIST or an ImageFolder directory.")
    add_model_options(p)
    p.add_argument("--data", required=True, help="'fashion-mnist' (test split) or an ImageFolder directory")
    p.add_argument("--limit", type=int_in(1), metavar="N", help="only the first N images")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--write-card", action="store_true", help="record the figures in <card dir>/<weight>.measured.json")
    p.add_argument("--card-dir", help="where model cards are (default: model_cards/ of the source tree)")
    p.set_defaults(func=cmd_evaluate)

    p = add("localisation", "The grid pointing game for the B-cos explanation and post-hoc methods (captum).")
    add_model_options(p)
    p.add_argument("--data", required=True, help="'fashion-mnist' (test split) or an ImageFolder directory")
    p.add_argument("--limit", type=int_in(1), metavar="N", help="draw images from the first N only")
    p.add_argument("--grid", type=int, choices=(2, 3), default=3, help="grid size g: g x g images (default: %(default)s)")
    p.add_argument("--n-grids", type=int_in(1, 100_000), default=500, metavar="N", help="number of grids (default: %(default)s)")
    p.add_argument("--methods", default="bcos,ixg", help="comma-separated: bcos, ixg, intgrad, gradcam (default: %(default)s)")
    p.add_argument("--smooth", type=int_in(1, 255), metavar="K", help="odd box-filter size (default: 15 per 224 pixels of a tile)")
    p.add_argument("--conf-thresh", type=float, default=0.5, help="minimum probability of each image (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", metavar="PNG", help="save a box plot of the scores")
    p.set_defaults(func=cmd_localisation)
