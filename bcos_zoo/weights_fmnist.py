"""Weights trained by bcos-zoo itself on Fashion-MNIST and shipped inside the package.

Each ``bcos_zoo/assets/weights/<arch>.<tag>.json`` record was written by
``scripts/ship_weights.py`` from a finished ``bcos-zoo train`` run: the file's sha256, the test-set
accuracy and pointing-game score measured by the evaluation code, and the training command, seed,
wall time and machine. This module turns every record into a registered :class:`WeightSpec`, so the
shipped weights load offline like any other: ``create_model("bcos_resnet20_cifar.fmnist", pretrained=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .data import FASHION_MNIST_CLASSES
from .transforms import TransformConfig
from .weights import PACKAGE_WEIGHTS_DIR, PackageFile, WeightSpec, register_weights
from .weights_official import BCOS_V2_CITATION, BCOS_V2_PAPER

__all__ = ["FMNIST_TRANSFORM", "shipped_weights"]

# Fashion-MNIST images are 28×28 grayscale; the models see [x, 1 - x] (2 channels).
FMNIST_TRANSFORM = TransformConfig(resize_size=28, crop_size=28, in_chans=2)


def _recipe(training: dict[str, Any]) -> str:
    cfg = training["config"]
    return (
        f"Trained here with `bcos-zoo train` on the 60k Fashion-MNIST training images: {cfg['epochs']} epochs, "
        f"batch {cfg['batch_size']}, Adam lr {cfg['lr']}, cosine schedule with {cfg['warmup_epochs']} warmup "
        f"epoch(s), binary cross-entropy{' with uniform off-labels' if cfg['off_label'] else ''}, random "
        f"{cfg['shift']}-pixel shifts{' and horizontal flips' if cfg['flip'] else ''}, seed {training['seed']}. "
        f"Command: `{training['command']}`. Wall time {training['wall_time_s'] / 60:.1f} min on {training['machine']} "
        f"({training['world_size']} process(es))."
    )


def _notes(record: dict[str, Any]) -> str:
    loc = record["localisation"]
    return (
        f"Measured by scripts/ship_weights.py on the {record['metrics']['test_images']} Fashion-MNIST test images. "
        f"Grid pointing game ({loc['grid']}x{loc['grid']} grids of confidently and correctly classified test "
        f"images of distinct classes, {loc['n_grids']} grids, smoothing {loc['smooth']}): mean share of positive "
        f"contribution in the correct cell {loc['bcos_mean']:.3f} for the B-cos explanation, {loc['ixg_mean']:.3f} "
        f"for Input x Gradient of the same model outside explanation mode ({1 / loc['grid'] ** 2:.3f} for a "
        "uniform map)."
    )


def _spec(record: dict[str, Any]) -> WeightSpec:
    return WeightSpec(
        arch=record["arch"], tag=record["tag"], sources=(PackageFile(record["filename"], record["sha256"]),),
        num_classes=len(FASHION_MNIST_CLASSES), transform=FMNIST_TRANSFORM, classes=FASHION_MNIST_CLASSES,
        dataset="fashion_mnist", metrics={"fashion_mnist": {k: record["metrics"][k] for k in ("top1", "top5")}},
        num_params=record["num_params"], model_kwargs=record["model_kwargs"], license="apache-2.0",
        paper=BCOS_V2_PAPER, citation=BCOS_V2_CITATION,
        recipe=_recipe(record["training"]), notes=_notes(record),
    )  # fmt: skip


def shipped_weights(folder: Path = PACKAGE_WEIGHTS_DIR) -> list[WeightSpec]:
    """The records of every weight shipped in ``folder``."""
    return [_spec(json.loads(path.read_text())) for path in sorted(folder.glob("*.json"))]


for _spec_record in shipped_weights():
    register_weights(_spec_record)
