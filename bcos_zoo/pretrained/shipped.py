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
from ..registry import list_models, register_weights
from ..transforms import TransformConfig
from .official import BCOS_V2_CITATION, BCOS_V2_PAPER
from .v1_coda import CODA_CITATION, CODA_PAPER

__all__ = ["shipped_weights"]


_OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW"}
BCOSIFICATION_PAPER = "https://arxiv.org/abs/2411.00715"
BCOSIFICATION_CITATION = """@inproceedings{arya2024bcosification,
  title     = {B-cosification: Transforming Deep Neural Networks to be Inherently Interpretable},
  author    = {Arya, Shreyash and Rao, Sukrut and B{\\"o}hle, Moritz and Schiele, Bernt},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2024}
}"""


# a from-scratch run shipped before the trainer kept histories is plotted as its final evaluation only
_ONE_POINT = "; the from-scratch run's record keeps only its final evaluation, the single point"


def _recipe(record: dict[str, Any]) -> str:
    """How the weights were trained (and, for B-cosified ones, from what and against which
    from-scratch run), from the record's training configuration and run summaries."""
    training, dataset = record["training"], DATASET_NAMES.get(record["dataset"], record["dataset"])
    cfg, runs = training["config"], record.get("comparison", {})
    base, scratch = runs.get("base"), runs.get("from_scratch")
    how = "Trained here with `bcos-zoo train`"
    if base:
        how = (f"B-cosified from a standard `{base['arch']}` trained here ({base['top1']:.2f}% test top-1 in "
               f"{base['wall_time_s'] / 60:.1f} min; command `{base['command']}`), then fine-tuned with `bcos-zoo bcosify`")  # fmt: skip
    schedule = ", B raised linearly from 1 to the model's B" if cfg.get("b_schedule") == "linear" else ""
    w = cfg.get("distill_weight")
    distill = (f", the targets mixing {1 - w:g} x one-hot labels with {w:g} x the standard network's sigmoid "
               "outputs (distillation)") if cfg.get("distill_from") else ""  # fmt: skip
    text = (
        f"{how} on the {dataset} training images: {cfg['epochs']} epochs, "
        f"batch {cfg['batch_size']}, {_OPTIMIZERS[cfg.get('optimizer', 'adam')]} lr {cfg['lr']}, cosine schedule "
        f"{_warmup(cfg['warmup_epochs'])}{schedule}, binary cross-entropy"
        f"{' with uniform off-labels' if cfg['off_label'] else ''}{distill}, {_augmentation(cfg)}, "
        f"seed {training['seed']}. "
        f"Command: `{training['command']}`. Wall time {training['wall_time_s'] / 60:.1f} min on {training['machine']} "
        f"({training['world_size']} process(es))."
    )
    if training.get("continues"):
        text += _continuation(training["continues"], cfg)
    if scratch:
        ratio = training["wall_time_s"] / scratch["wall_time_s"]
        text += (
            f"\n\nFor comparison, a `{scratch['arch']}` trained from scratch on the same data and machine reached "
            f"{scratch['top1']:.2f}% in {scratch['wall_time_s'] / 60:.1f} min (command `{scratch['command']}`): the "
            f"fine-tuning took {ratio:.3f}x that time. Test top-1 after each epoch against wall time (the trainer's "
            f"evaluations on the full test set{_ONE_POINT if len(scratch['history']) == 1 else ''}):"
        )
    if record.get("curves"):
        text += f"\n\n![test top-1 against wall time]({record['curves']})"
    return text


def _warmup(epochs: float) -> str:
    """The learning-rate warm-up before the cosine decay, in words."""
    return "without warm-up" if epochs == 0 else f"after {epochs:g} warm-up epoch(s)"


def _augmentation(cfg: dict[str, Any]) -> str:
    """The training augmentation of a Fashion-MNIST run, in words."""
    parts = [f"random {cfg['shift']}-pixel shifts"] if cfg["shift"] else []
    parts += ["horizontal flips"] if cfg["flip"] else []
    return " and ".join(parts) if parts else "no augmentation"


def _continuation(earlier: dict[str, Any], cfg: dict[str, Any]) -> str:
    """How a run that was resumed with more epochs after it had finished got its weights."""
    return (
        f" The run first ended after {earlier['epochs']} epoch(s) ({earlier['top1']:.2f}% test top-1, "
        f"{earlier['wall_time_s'] / 60:.1f} min; command `{earlier['command']}`) and was then resumed with the command "
        f"above for {cfg['epochs'] - earlier['epochs']} more epoch(s): its first {earlier['epochs']} epochs followed "
        f"the {earlier['epochs']}-epoch cosine schedule, the rest that of {cfg['epochs']} epochs from epoch "
        f"{earlier['epochs']} on; the wall time is the total."
    )


def _notes(record: dict[str, Any]) -> str:
    loc = record["localisation"]
    return (
        f"Measured by scripts/ship_weights.py on the {record['metrics']['test_images']} {DATASET_NAMES.get(record['dataset'], record['dataset'])} test "
        f"images. Grid pointing game ({loc['grid']}x{loc['grid']} grids of confidently and correctly classified test "
        f"images of distinct classes, {loc['n_grids']} grids, smoothing {loc['smooth']}): mean share of positive "
        f"contribution in the correct cell {loc['bcos_mean']:.3f} for the model's own explanation, {loc['ixg_mean']:.3f} "
        f"for Input x Gradient of the same model outside explanation mode ({1 / loc['grid'] ** 2:.3f} for a "
        "uniform map)."
    )


def _paper(record: dict[str, Any]) -> tuple[str, str]:
    """The paper (URL, BibTeX) of the method the weights were trained with: B-cosification for a model
    B-cosified from a standard network, CoDA-Nets for a CoDA-Net, B-cos v2 otherwise."""
    if "base" in record.get("comparison", {}):
        return BCOSIFICATION_PAPER, BCOSIFICATION_CITATION
    if record["arch"] in list_models(family="coda"):
        return CODA_PAPER, CODA_CITATION
    return BCOS_V2_PAPER, BCOS_V2_CITATION


def _spec(record: dict[str, Any]) -> WeightSpec:
    dataset = record["dataset"]
    paper, citation = _paper(record)
    return WeightSpec(
        arch=record["arch"], tag=record["tag"], sources=(PackageFile(record["filename"], record["sha256"]),),
        num_classes=len(record["classes"]), transform=TransformConfig.from_dict(record["transform"]), classes=record["classes"],
        dataset=dataset, metrics={dataset: {k: record["metrics"][k] for k in ("top1", "top5")}},
        num_params=record["num_params"], model_kwargs=record["model_kwargs"], license=record["license"],
        paper=paper, citation=citation, recipe=_recipe(record), notes=_notes(record),
        metrics_note=f"Measured by scripts/ship_weights.py on the full {DATASET_NAMES.get(dataset, dataset)} test set.",
    )  # fmt: skip


def shipped_weights(folder: Path = PACKAGE_WEIGHTS_DIR) -> list[WeightSpec]:
    """The records of every weight shipped in ``folder``."""
    return [_spec(json.loads(path.read_text())) for path in sorted(folder.glob("*.json"))]


# the default of their architecture, also where official weights of it are registered (B-cos v1, CoDA-Nets)
register_weights(shipped_weights(), default=True)
