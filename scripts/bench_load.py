#!/usr/bin/env python
"""How long loading pretrained weights takes, as ratios against the official package in the same run.

    python scripts/bench_load.py --arch bcos_resnet50 --repeats 5 [--json benchmarks/load-run1.json]

Both sides get the same weights from local files (nothing is downloaded):
  * ours: ``bcos_zoo.create_model(arch, pretrained=<file>.safetensors)`` (meta-device build, one read,
    one strict assignment),
  * official: the ``bcos`` package's constructor (random init) + ``torch.load(<file>.pth)`` +
    ``load_state_dict`` (PyPI ``bcos``, installed with the test extras),
  * ours the eager way: ``create_model(arch)`` + ``load_state_dict`` of the safetensors file, to show
    what the meta-device build saves.
Each timing is the median of ``--repeats`` interleaved runs after ``--warmup`` untimed ones; ``--json`` saves
the run for ``scripts/gen_perf_section.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import bcos_zoo
from benchutil import add_run_options, median_ms, write_json

OFFICIAL = {"bcos_resnet50": "resnet50", "bcos_resnet18": "resnet18", "bcos_densenet121": "densenet121"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="bcos_resnet50", choices=sorted(OFFICIAL))
    add_run_options(parser, repeats=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bcos.models import pretrained as official

    build_official = getattr(official, OFFICIAL[args.arch])
    with tempfile.TemporaryDirectory() as tmp:
        state = bcos_zoo.create_model(args.arch).state_dict()
        st, pth = Path(tmp) / "w.safetensors", Path(tmp) / "w.pth"
        bcos_zoo.save_weights(state, st, bcos_zoo.WeightHeader(arch=args.arch))
        torch.save(state, pth)

        def eager() -> None:
            bcos_zoo.create_model(args.arch).load_state_dict(bcos_zoo.read_state_dict(st))

        def official_load() -> None:
            build_official(pretrained=False).load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))

        ms = median_ms({"ours": lambda: bcos_zoo.create_model(args.arch, pretrained=st), "official": official_load,
                         "ours_eager": eager}, args.repeats, args.warmup)  # fmt: skip
    for name, value in ms.items():
        print(f"{name}: {value:.0f} ms")
    ratios = {f"load_{args.arch}_vs_official": ms["ours"] / ms["official"],
              f"load_{args.arch}_vs_eager_build": ms["ours"] / ms["ours_eager"]}  # fmt: skip
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}")
    write_json(args.json, "bench_load.py", argv, {f"{k}_{args.arch}": v for k, v in ms.items()}, ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
