#!/usr/bin/env python
"""Time of one training step (forward, BCE loss, backward, Adam) of bcos-zoo's layers against the official
``bcos`` package's, same architecture, weights and batch, measured in one run.

    python scripts/bench_train.py --threads 2 --json benchmarks/train-1.json

Models: ``bcos_resnet20_cifar`` (MaxOut 2, no norm; the official ``cifar10_resnet20`` with the same layers)
at 32 px and ``bcos_resnet50`` (the official ``resnet50`` entrypoint) at 224 px, small batches. Each timing
is the median of ``--repeats`` interleaved steps after warm-up.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from benchutil import add_run_options, median_ms, write_json
from torch import nn

import bcos_zoo


def _official(arch: str) -> nn.Module:
    from bcos.models import pretrained
    from bcos.models.resnet import cifar10_resnet20
    from bcos.modules.bcosconv2d import BcosConv2d

    if arch == "bcos_resnet20_cifar":
        conv = functools.partial(BcosConv2d, b=2, max_out=2)
        return cifar10_resnet20(conv_layer=conv, norm_layer=nn.Identity, logit_bias=-math.log(9))
    return pretrained.resnet50(pretrained=False)


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step of ``model`` (in training mode) with its own Adam optimiser."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    target = F.one_hot(y, num_classes=model(x[:1]).shape[1]).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(x), target).backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> dict[str, float]:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", default=["bcos_resnet20_cifar", "bcos_resnet50"],
                   choices=["bcos_resnet20_cifar", "bcos_resnet50"])  # fmt: skip
    p.add_argument("--cifar-batch", type=int, default=32)
    p.add_argument("--imagenet-batch", type=int, default=2)
    add_run_options(p, repeats=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ms: dict[str, float] = {}
    ratios: dict[str, float] = {}
    for arch in args.archs:
        cifar = arch.endswith("_cifar")
        bs, size = (args.cifar_batch, 32) if cifar else (args.imagenet_batch, 224)
        ours = bcos_zoo.create_model(arch).train()
        official = _official(arch).train()
        official.load_state_dict(ours.state_dict())
        x = bcos_zoo.AddInverse()(torch.rand(bs, 3, size, size))
        y = torch.randint(0, 10 if cifar else 1000, (bs,))
        got = median_ms(
            {"ours": _step(ours, x, y), "official": _step(official, x, y)}, args.repeats, warmup=args.warmup
        )
        ms.update({f"{arch}_bs{bs}_{k}": v for k, v in got.items()})
        ratios[f"train_step_{arch}_bs{bs}_vs_official"] = got["ours"] / got["official"]
        print(f"{arch} batch {bs} at {size} px: ours {got['ours']:.1f} ms, official {got['official']:.1f} ms; "
              f"ours/official = {got['ours'] / got['official']:.2f}x")  # fmt: skip
    write_json(args.json, "bench_train.py", argv, ms, ratios)
    return ratios


if __name__ == "__main__":
    main()
