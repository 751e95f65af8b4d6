"""Weights trained by bcos-zoo itself and shipped inside the package (``bcos_zoo/assets/weights/``).

Each ``<arch>.<tag>.json`` record next to its ``.safetensors`` file was written by
``scripts/ship_weights.py`` from a finished ``bcos-zoo train`` run: the file's SHA-256, the dataset,
classes and preprocessing, the test-set accuracy and pointing-game score measured by the evaluation
code, and the training command, seed, wall time and machine. This module turns every record into a
registered :class:`~bcos_zoo.records.WeightSpec`, so shipped weights load offline like any other:
``create_model("bcos_resnet20_cifar.fmnist", pretrained=True)``. Nothing here is specific to one
dataset, and nothing in the records is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..records import DATASET_NAMES, PACKAGE_WEIGHTS_DIR, PackageFile, WeightSpec
from ..registry import register_weights
from ..transforms import TransformConfig
from .official import BCOS_V2_CITATION, BCOS_V2_PAPER

__all__ = ["shipped_weights"]


def _recipe(record: dict[str, Any]) -> str:
    training, dataset = record["training"], DATASET_NAMES.get(record["dataset"], record["dataset"])
    cfg = training["config"]
    return (
        f"Trained here with `bcos-zoo train` on the {dataset} training images: {cfg['epochs']} epochs, "
        f"batch {cfg['batch_size']}, Adam lr {cfg['lr']}, cosine schedule with {cfg['warmup_epochs']} warmup "
        f"epoch(s), binary cross-entropy{' with uniform off-labels' if cfg['off_label'] else ''}, random "
        f"{cfg['shift']}-pixel shifts{' and horizontal flips' if cfg['flip'] else ''}, seed {training['seed']}. "
        f"Command: `{training['command']}`. Wall time {training['wall_time_s'] / 60:.1f} min on {training['machine']} "
        f"({training['world_size']} process(es))."
    )


def _notes(record: dict[str, Any]) -> str:
    loc = record["localisation"]
    return (
        f"Measured by scripts/ship_weights.py on the {record['metrics']['test_images']} {DATASET_NAMES.get(record['dataset'], record['dataset'])} test "
        f"images. Grid pointing game ({loc['grid']}x{loc['grid']} grids of confidently and correctly classified test "
        f"images of distinct classes, {loc['n_grids']} grids, smoothing {loc['smooth']}): mean share of positive "
        f"contribution in the correct cell {loc['bcos_mean']:.3f} for the B-cos explanation, {loc['ixg_mean']:.3f} "
        f"for Input x Gradient of the same model outside explanation mode ({1 / loc['grid'] ** 2:.3f} for a "
        "uniform map)."
    )


def _spec(record: dict[str, Any]) -> WeightSpec:
    dataset = record["dataset"]
    return WeightSpec(
        arch=record["arch"], tag=record["tag"], sources=(PackageFile(record["filename"], record["sha256"]),),
        num_classes=len(record["classes"]), transform=TransformConfig.from_dict(record["transform"]), classes=record["classes"],
        dataset=dataset, metrics={dataset: {k: record["metrics"][k] for k in ("top1", "top5")}},
        num_params=record["num_params"], model_kwargs=record["model_kwargs"], license=record["license"],
        paper=BCOS_V2_PAPER, citation=BCOS_V2_CITATION, recipe=_recipe(record), notes=_notes(record),
        metrics_note=f"Measured by scripts/ship_weights.py on the full {DATASET_NAMES.get(dataset, dataset)} test set.",
    )  # fmt: skip


def shipped_weights(folder: Path = PACKAGE_WEIGHTS_DIR) -> list[WeightSpec]:
    """The records of every weight shipped in ``folder``."""
    return [_spec(json.loads(path.read_text())) for path in sorted(folder.glob("*.json"))]


register_weights(shipped_weights())
