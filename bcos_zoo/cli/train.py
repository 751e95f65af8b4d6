"""``bcos-zoo train | finetune``: the options of :class:`bcos_zoo.training.TrainConfig` (also ``scripts/train.py``,
which works under torchrun)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Any

from .common import int_in, parse_key_values

__all__ = ["add_commands", "add_train_options", "config_from_args", "run_training"]


def add_train_options(p: argparse.ArgumentParser, finetune: bool, from_help: str | None = None) -> None:
    """The :class:`~bcos_zoo.training.TrainConfig` options (``bcosify`` passes ``from_help`` and has no ``--model``)."""
    from bcos_zoo.training import TrainConfig

    d = TrainConfig()
    if from_help is None:
        p.add_argument("--model", default=d.model, help="architecture name (default: %(default)s)")
        p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                       help="architecture options, e.g. in_chans=2 norm_layer=bnu-linear")
    p.add_argument("--data", default=d.data, help="'fashion-mnist', 'fashion-mnist:DIR', a folder of idx files, "
                   "or an ImageFolder root (with train/ and val/)")
    p.add_argument("--out", default=d.out, help="output directory (checkpoints, final weights, card)")
    p.add_argument("--epochs", type=int_in(1, 100_000), default=d.epochs, help="epochs to train (default: %(default)s)")
    p.add_argument("--batch-size", type=int_in(1, 65_536), default=d.batch_size, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(default: %(default)s)")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs,
                   help="linear learning-rate warm-up, in epochs, before the cosine decay (default: %(default)s)")
    p.add_argument("--off-label", action="store_true", help="uniform off-label targets 1/C in the BCE loss")
    p.add_argument("--ema-decay", type=float, default=None, help="keep an EMA of the weights with this decay (per step)")
    p.add_argument("--shift", type=int_in(0, 64), default=d.shift, help="max random translation in pixels (Fashion-MNIST)")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="disable random horizontal flips")
    p.add_argument("--seed", type=int, default=d.seed, help="fixes init, data order, augmentation (%(default)s)")
    p.add_argument("--from", dest="init_from", default=None, required=finetune,
                   help=from_help or "fine-tune: a registered weight name or a checkpoint file")
    p.add_argument("--freeze-features", action="store_true", help="fine-tune only the classifier")
    p.add_argument("--image-size", type=int_in(8, 4096), default=d.image_size, help="crop size for ImageFolder data")
    p.add_argument("--max-steps-per-epoch", type=int_in(1), default=None, help="cap steps per epoch (smoke tests)")
    p.add_argument("--eval-limit", type=int_in(1), default=None, help="evaluate on the first N test images only")
    p.add_argument("--threads", type=int_in(1, 1024), default=None, help="torch intra-op threads")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.* if present")
    p.add_argument("--optimizer", choices=("adam", "adamw"), default=d.optimizer, help="(default: %(default)s)")
    p.add_argument("--b-schedule", choices=("linear",), default=None,
                   help="'linear': raise B of every B-cos unit from 1 (first step) to the model's B (last step)")
    p.add_argument("--eval-at-start", action="store_true", help="also evaluate before the first step (epoch 0)")


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~bcos_zoo.training.TrainConfig` of parsed ``train``/``finetune`` options."""
    from bcos_zoo.training import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    return TrainConfig(**{**values, "model_kwargs": parse_key_values(getattr(args, "model_kwargs", []))})


def run_training(cfg: Any, args: argparse.Namespace) -> int:
    """Train ``cfg`` (a :class:`~bcos_zoo.training.TrainConfig`) as ``--threads`` and ``--resume`` say; print it."""
    import torch
    import torch.distributed as dist

    from bcos_zoo.training import train

    logging.getLogger("bcos_zoo.training").setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train(cfg, resume=args.resume)
    if dist.is_initialized():
        dist.destroy_process_group()
    print(json.dumps({k: v for k, v in result.items() if k != "shards"}))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    return run_training(config_from_args(args), args)


def add_commands(add: Any) -> None:
    """Register the subcommands with ``add(name, help) -> parser``."""
    p = add("train", "Train a model with the B-cos recipe (BCE, Adam, cosine schedule); works under torchrun.")
    add_train_options(p, finetune=False)
    p.set_defaults(func=cmd_train)
    p = add("finetune", "Fine-tune: train from --from WEIGHTS (a registered name or a file) with a new classifier.")
    add_train_options(p, finetune=True)
    p.set_defaults(func=cmd_train)
