#!/usr/bin/env python
"""Forward and explain() latency of bcos-zoo's B-cos ResNet-50, as ratios measured in one run.

References, measured in the same process with the same weights and inputs:
  * the official B-cos v2 ResNet-50 (PyPI package ``bcos``, if installed),
  * torchvision's ResNet-50 (3-channel input).
Each timing is the median of ``--repeats`` interleaved runs after warm-up, so slow drifts of a
shared machine affect all models alike.

    python scripts/bench_inference.py --batch-sizes 1 8 16 --threads 2
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

import torch
import torchvision

import bcos_zoo
from benchutil import median_ms


def _official_resnet50(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module | None:
    try:
        from bcos.models.pretrained import resnet50
    except ImportError:
        return None
    model = resnet50(pretrained=False).eval()
    model.load_state_dict(state_dict)
    return model


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the ratios as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = bcos_zoo.create_model("bcos_resnet50").eval()
    official = _official_resnet50(ours.state_dict())
    tv = torchvision.models.resnet50().eval()
    ratios: dict[str, float] = {}
    for bs in args.batch_sizes:
        x6 = bcos_zoo.AddInverse()(torch.rand(bs, 3, args.size, args.size))
        x3 = x6[:, :3].contiguous()
        fns: dict[str, Callable[[], object]] = {"ours": lambda: ours(x6), "torchvision": lambda: tv(x3)}
        if official is not None:
            fns["official"] = lambda: official(x6)
        with torch.inference_mode():
            ms = median_ms(fns, args.repeats, warmup=2)
        line = f"batch {bs:3d} forward: ours {ms['ours']:.1f} ms, torchvision {ms['torchvision']:.1f} ms"
        ratios[f"forward_bs{bs}_vs_torchvision"] = ms["ours"] / ms["torchvision"]
        if official is not None:
            line += f", official {ms['official']:.1f} ms; ours/official = {ms['ours'] / ms['official']:.2f}x"
            ratios[f"forward_bs{bs}_vs_official"] = ms["ours"] / ms["official"]
        print(line + f"; ours/torchvision = {ratios[f'forward_bs{bs}_vs_torchvision']:.2f}x")
        if bs == 1:
            fwd = ms["ours"]
            efns: dict[str, Callable[[], object]] = {"ours": lambda: bcos_zoo.explain(ours, x6)}
            if official is not None:
                efns["official"] = lambda: official.explain(x6.clone().requires_grad_())
            ems = median_ms(efns, args.repeats, warmup=2)
            ratios["explain_bs1_vs_own_forward"] = ems["ours"] / fwd
            line = f"batch   1 explain: ours {ems['ours']:.1f} ms = {ratios['explain_bs1_vs_own_forward']:.2f}x our forward"
            if official is not None:
                ratios["explain_bs1_vs_official"] = ems["ours"] / ems["official"]
                line += f"; official {ems['official']:.1f} ms = {ems['official'] / ms['official']:.2f}x its forward"
            print(line)
    if args.json:
        print(json.dumps(ratios, indent=2))
    return ratios


if __name__ == "__main__":
    main()
