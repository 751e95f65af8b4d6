#!/usr/bin/env python
"""Forward and explain() latency of bcos-zoo's B-cos models, as ratios measured in one run.

References, measured in the same process with the same weights and inputs:
  * the official B-cos v2 models (PyPI package ``bcos``, if installed),
  * torchvision's ResNet-50 (3-channel input), eager (and channels_last).
Measured: ResNet-50 forward per batch size (also channels_last, and CPU bfloat16 autocast with
``--amp``), explain() and explain_topk(k=5) of one image, ``torch.compile`` and ``bcos_zoo.compile_for_inference``
forward with ``--compile``,
and the ViT-S forward and explain() with ``--vit``. Each timing is the median of ``--repeats``
interleaved runs after warm-up, so slow drifts of a shared machine affect all models alike.

    python scripts/bench_inference.py --batch-sizes 1 8 --threads 2 --vit --json benchmarks/inference-1.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from benchutil import add_run_options, median_ms, write_json

import bcos_zoo

Fns = dict[str, Callable[[], object]]


def _official(name: str) -> Callable[..., torch.nn.Module] | None:
    try:
        from bcos.models import pretrained
    except ImportError:
        return None
    return getattr(pretrained, name)


def _pair(ms: dict[str, float], ratios: dict[str, float], key: str, a: str, b: str) -> None:
    if a in ms and b in ms:
        ratios[key] = ms[a] / ms[b]


def _resnet50(args: argparse.Namespace, ms: dict[str, float], ratios: dict[str, float]) -> None:
    """ResNet-50: forward per batch size, channels_last, autocast; explain and explain_topk of one image."""
    ours = bcos_zoo.create_model("bcos_resnet50").eval()
    build = _official("resnet50")
    official = build(pretrained=False).eval() if build else None
    if official is not None:
        official.load_state_dict(ours.state_dict())
    tv = torchvision.models.resnet50().eval()
    ours_cl = bcos_zoo.create_model("bcos_resnet50").eval().to(memory_format=torch.channels_last)
    ours_cl.load_state_dict(ours.state_dict())
    tv_cl = torchvision.models.resnet50().eval().to(memory_format=torch.channels_last)
    for bs in args.batch_sizes:
        x6 = bcos_zoo.AddInverse()(torch.rand(bs, 3, args.size, args.size))
        x3 = x6[:, :3].contiguous()
        x6_cl, x3_cl = x6.to(memory_format=torch.channels_last), x3.to(memory_format=torch.channels_last)
        fns: Fns = {"ours": lambda: ours(x6), "torchvision": lambda: tv(x3),
                    "ours_cl": lambda: ours_cl(x6_cl), "torchvision_cl": lambda: tv_cl(x3_cl)}  # fmt: skip
        if official is not None:
            fns["official"] = lambda: official(x6)
        with torch.inference_mode():
            got = median_ms(fns, args.repeats, warmup=args.warmup)
        ms.update({f"forward_bs{bs}_{k}": v for k, v in got.items()})
        _pair(got, ratios, f"forward_bs{bs}_vs_torchvision", "ours", "torchvision")
        _pair(got, ratios, f"forward_bs{bs}_vs_official", "ours", "official")
        _pair(got, ratios, f"forward_bs{bs}_channels_last_vs_torchvision_channels_last", "ours_cl", "torchvision_cl")
        print(f"batch {bs:3d} forward:", ", ".join(f"{k} {v:.1f} ms" for k, v in got.items()))
        if args.amp:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                amp = median_ms(
                    {"ours": lambda: ours(x6), "torchvision": lambda: tv(x3)}, args.repeats, warmup=args.warmup
                )
            ms.update({f"forward_bs{bs}_bf16_{k}": v for k, v in amp.items()})
            _pair(amp, ratios, f"forward_bs{bs}_bf16_autocast_vs_torchvision_bf16", "ours", "torchvision")
            print(f"batch {bs:3d} bf16 autocast:", ", ".join(f"{k} {v:.1f} ms" for k, v in amp.items()))
    x6 = bcos_zoo.AddInverse()(torch.rand(1, 3, args.size, args.size))
    x3 = x6[:, :3].contiguous()
    efns: Fns = {"forward": lambda: ours(x6), "explain": lambda: bcos_zoo.explain(ours, x6),
                 "topk5": lambda: bcos_zoo.explain_topk(ours, x6, k=5)}  # fmt: skip
    if official is not None:
        efns["official_explain"] = lambda: official.explain(x6.clone().requires_grad_())
    with torch.inference_mode(False):
        got = median_ms(efns, args.repeats, warmup=args.warmup)
    ms.update({f"explain_bs1_{k}": v for k, v in got.items()})
    _pair(got, ratios, "explain_bs1_vs_own_forward", "explain", "forward")
    _pair(got, ratios, "explain_bs1_vs_official", "explain", "official_explain")
    ratios["explain_topk5_vs_five_explains"] = got["topk5"] / (5 * got["explain"])
    print("batch   1 explain:", ", ".join(f"{k} {v:.1f} ms" for k, v in got.items()))
    if args.compile:
        compiled, frozen = torch.compile(ours), bcos_zoo.compile_for_inference(ours)
        with torch.no_grad():  # as compile_for_inference runs (inference mode would be another graph)
            compiled(x6), frozen(x6)  # compile (not timed)
            fns = {"compiled": lambda: compiled(x6), "frozen": lambda: frozen(x6), "torchvision": lambda: tv(x3)}
            got = median_ms(fns, args.repeats, warmup=args.warmup)
        ms.update({f"compiled_bs1_{k}": v for k, v in got.items()})
        _pair(got, ratios, "compiled_forward_bs1_vs_torchvision_eager", "compiled", "torchvision")
        _pair(got, ratios, "frozen_compiled_forward_bs1_vs_torchvision_eager", "frozen", "torchvision")
        print("batch   1 torch.compile / compile_for_inference:", ", ".join(f"{k} {v:.1f} ms" for k, v in got.items()))


def _vit(args: argparse.Namespace, ms: dict[str, float], ratios: dict[str, float]) -> None:
    """bcos_simple_vit_s_patch16_224 forward (batch 1 and the largest batch size) and explain vs the official ViT."""
    build = _official("simple_vit_s_patch16_224")
    if build is None:
        print("the official bcos package is not installed: skipping the ViT")
        return
    official = build(pretrained=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(official.state_dict(), Path(tmp) / "official.pth")
        ours = bcos_zoo.create_model("bcos_simple_vit_s_patch16_224", pretrained=Path(tmp) / "official.pth").eval()
    for bs in sorted({1, max(args.batch_sizes)}):
        x = bcos_zoo.AddInverse()(torch.rand(bs, 3, 224, 224))
        with torch.inference_mode():
            got = median_ms(
                {"ours": lambda: ours(x), "official": lambda: official(x)}, args.repeats, warmup=args.warmup
            )
        ms.update({f"vit_s_forward_bs{bs}_{k}": v for k, v in got.items()})
        _pair(got, ratios, f"vit_s_forward_bs{bs}_vs_official", "ours", "official")
        print(f"ViT-S batch {bs} forward:", ", ".join(f"{k} {v:.1f} ms" for k, v in got.items()))
    x = bcos_zoo.AddInverse()(torch.rand(1, 3, 224, 224))
    fns: Fns = {"ours": lambda: bcos_zoo.explain(ours, x),
                "official": lambda: official.explain(x.clone().requires_grad_())}  # fmt: skip
    got = median_ms(fns, args.repeats, warmup=args.warmup)
    ms.update({f"vit_s_explain_bs1_{k}": v for k, v in got.items()})
    _pair(got, ratios, "vit_s_explain_bs1_vs_official", "ours", "official")
    print("ViT-S batch 1 explain:", ", ".join(f"{k} {v:.1f} ms" for k, v in got.items()))


def main(argv: list[str] | None = None) -> dict[str, float]:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--size", type=int, default=224)
    add_run_options(p, repeats=7)
    p.add_argument("--amp", action="store_true", help="also time the forward under CPU bfloat16 autocast")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(model) (compiling takes minutes)")
    p.add_argument("--vit", action="store_true", help="also time bcos_simple_vit_s_patch16_224 against the official")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ms: dict[str, float] = {}
    ratios: dict[str, float] = {}
    _resnet50(args, ms, ratios)
    if args.vit:
        _vit(args, ms, ratios)
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    write_json(args.json, "bench_inference.py", argv, ms, ratios)
    return ratios


if __name__ == "__main__":
    main()
