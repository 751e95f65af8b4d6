"""``bcos-zoo bcosify``: B-cosify a trained standard network and fine-tune it with the B-cos recipe.

The converted model is written to ``OUT/bcosified.safetensors`` (before any step; ``--resume`` reuses
it, though ``--distill`` loads the standard network again as the teacher), then fine-tuned by the
project's trainer like ``bcos-zoo train``: ``last.*`` every epoch, and
at the end ``model.safetensors`` (reloadable with ``bcos_zoo.load_model``), ``summary.json`` and a
model card. ``last.json`` / ``summary.json`` keep the epoch history with cumulative wall times,
starting with the converted model's accuracy at ``epoch 0``, ``wall_time 0``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from .train import add_train_options, config_from_args, run_training

__all__ = ["add_commands", "convert_to_file"]

log = logging.getLogger("bcos_zoo.cli")

FROM_HELP = (
    "the trained standard network: 'torchvision:NAME' (torchvision's architecture with its DEFAULT weights, "
    "taken from torchvision's own cache only: nothing is downloaded), a bcos-zoo .safetensors file of a standard "
    "network (e.g. a 'bcos-zoo train --model standard_resnet20_cifar' run), or a registered standard weight or "
    "architecture name (standard_simple_vit_ti_patch16_224.in1k)"
)


def convert_to_file(args: argparse.Namespace, dst: Path) -> None:
    """B-cosify ``--from`` as the options say and write it (with its rebuilding header) to ``dst``."""
    import bcos_zoo
    from bcos_zoo.bcosification import load_standard

    standard = load_standard(args.init_from)
    classes = getattr(getattr(standard, "pretrained_cfg", None), "classes", None)
    model = bcos_zoo.bcosify(standard, b=args.b, keep_relu=not args.drop_relu, mean=args.mean, std=args.std)
    if model.model_kwargs == {}:
        raise ValueError(f"--from {args.init_from}: the converted network has no registered architecture to train as")
    dst.parent.mkdir(parents=True, exist_ok=True)
    bcos_zoo.save_weights(model.state_dict(), dst, model.weight_header(classes))
    log.warning("bcosify: %s -> %s (%s)", args.init_from, dst, model.arch)


def cmd_bcosify(args: argparse.Namespace) -> int:
    import bcos_zoo

    converted = Path(args.out) / "bcosified.safetensors"
    if not (args.resume and converted.is_file()):
        convert_to_file(args, converted)
    header = bcos_zoo.read_header(converted)
    kwargs = {k: v for k, v in header.model_kwargs.items() if k != "num_classes"}
    distill = {"distill_from": args.init_from, "distill_weight": args.distill} if args.distill is not None else {}
    cfg = dataclasses.replace(config_from_args(args), model=header.arch, model_kwargs=kwargs, init_from=str(converted),
                              keep_classifier=True, **distill)  # fmt: skip
    return run_training(cfg, args)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (0.485,0.456,0.406): {text!r}") from None


def add_commands(add: Any) -> None:
    """Register ``bcosify`` with ``add(name, help) -> parser``."""
    p = add("bcosify", "B-cosify a trained standard network (every conv/linear a B-cos unit keeping its weights) "
            "and fine-tune it with the B-cos recipe (BCE, AdamW, cosine schedule); writes weights and a card.")
    add_train_options(p, finetune=True, from_help=FROM_HELP)
    p.add_argument("--b", type=float, default=2.0, help="the B-cos exponent B of every unit (default: %(default)s)")
    p.add_argument("--drop-relu", action="store_true", help="replace the ReLUs by identities (the paper keeps them)")
    p.add_argument("--mean", type=_floats, default=None,
                   help="the standard network's input mean, e.g. 0.485,0.456,0.406 (default: from its transform; "
                   "ImageNet's for torchvision; none otherwise)")
    p.add_argument("--std", type=_floats, default=None, help="its input std (as --mean)")
    p.add_argument("--distill", type=float, nargs="?", const=0.5, default=None, metavar="WEIGHT",
                   help="knowledge distillation: the BCE targets become (1 - WEIGHT) * one-hot + WEIGHT * the "
                   "standard network's sigmoid outputs on the same batch (WEIGHT default 0.5; costs one no-grad "
                   "forward of the standard network per step)")
    p.set_defaults(func=cmd_bcosify, lr=1e-4, optimizer="adamw", warmup_epochs=0.0, eval_at_start=True)
    p.epilog = ("Defaults follow the B-cosification recipe for CNNs: AdamW, lr 1e-4, no warm-up, weight decay 0 "
                "(ViTs: --optimizer adam --lr 1e-3). --eval-at-start is on: the history starts at epoch 0.")
