"""``bcos-zoo list | info | download | convert``: the registry and the weight files."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

import bcos_zoo
from bcos_zoo.cards import render_card
from bcos_zoo.convert import convert_checkpoint
from bcos_zoo.fetch import cache_state
from bcos_zoo.records import WeightSpec

from .common import UsageError, fmt, fmt_params, format_table, pattern

__all__ = ["add_commands", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _arch_params(arch: str) -> int:
    spec = bcos_zoo.default_weights(arch)
    if spec is not None and spec.num_params:
        return spec.num_params
    with torch.device("meta"):
        model = bcos_zoo.create_model(arch)
    return sum(p.numel() for p in model.parameters())


def _own_weights(arch: str) -> list[str]:
    return [w for w in bcos_zoo.list_weights(arch) if bcos_zoo.get_weights(w).arch == arch]


def cmd_list(args: argparse.Namespace) -> int:
    if args.pretrained:
        header = ["weight", "dataset", "top-1", "top-5", "params", "cached"]
        rows: list[list[Any]] = []
        for name in bcos_zoo.list_weights(pattern(args.pattern)):
            spec = bcos_zoo.get_weights(name)
            top5 = spec.metrics.get(spec.dataset or "", {}).get("top5")
            rows.append([name, spec.dataset or "-", fmt(spec.top1()), fmt(top5), fmt_params(spec.num_params),
                         cache_state(spec)])  # fmt: skip
    else:
        header = ["architecture", "weights", "default weight", "top-1", "params"]
        rows = []
        for arch in bcos_zoo.list_models(pattern(args.pattern)):
            default = bcos_zoo.default_weights(arch)
            rows.append([arch, len(_own_weights(arch)), default.name if default else "-",
                         fmt(default and default.top1()), fmt_params(_arch_params(arch))])  # fmt: skip
    if not rows:
        raise ValueError(f"nothing matches {args.pattern!r}; run 'bcos-zoo list' for all names")
    print(format_table(header, rows))
    return 0


def card_dir(args: argparse.Namespace) -> Path:
    """``--card-dir``, else ``model_cards/`` of the source tree."""
    return Path(args.card_dir) if args.card_dir else REPO_ROOT / "model_cards"


def _card_text(spec: WeightSpec, folder: Path) -> str:
    """The weight's card (``<folder>/<name>.md``, else rendered from its record) without YAML front matter."""
    card = folder / f"{spec.name}.md"
    text = card.read_text() if card.is_file() else render_card(spec)
    if text.startswith("---\n"):
        text = text.split("\n---\n", 1)[-1]
    return text.strip()


def _print_file_info(path: Path) -> None:
    header = bcos_zoo.read_header(path)
    tensors = bcos_zoo.read_state_dict(path)
    print(f"# {path.name}\n")
    for key, value in header.to_header().items():
        print(f"- {key}: {value}")
    print(f"- tensors: {len(tensors)} ({sum(t.numel() for t in tensors.values()):,} values)")


def cmd_info(args: argparse.Namespace) -> int:
    name = args.name
    if Path(name).is_file():
        _print_file_info(Path(name))
        return 0
    if bcos_zoo.is_model(name) and bcos_zoo.default_weights(name) is None:
        doc = (bcos_zoo.model_entrypoint(name).__doc__ or "").strip()
        print(f"# {name}\n\n{doc}\n\n- parameters: {fmt_params(_arch_params(name))}")
        print("- weights: none registered (see 'bcos-zoo list --pretrained')")
        return 0
    spec = bcos_zoo.get_weights(name)
    print(_card_text(spec, card_dir(args)))
    measured = card_dir(args) / f"{spec.name}.measured.json"
    if measured.is_file():
        print("\n## Measured with bcos-zoo evaluate\n")
        for dataset, m in json.loads(measured.read_text()).items():
            print(f"- {dataset}: top-1 {m['top1']:.2f} %, top-5 {m['top5']:.2f} % on {m['n']} images ({m['date']})")
    print(f"\ncached: {cache_state(spec)}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    if not args.names and not args.all:
        raise UsageError("name the weights to download, or pass --all")
    specs = [bcos_zoo.get_weights(n) for n in (bcos_zoo.list_weights() if args.all else args.names)]
    failures = []
    for spec in specs:
        try:
            bcos_zoo.create_model(spec.name, pretrained=True)  # fetches, verifies the SHA-256, loads strictly
            print(f"{spec.name}: ok")
        except (bcos_zoo.DownloadError, bcos_zoo.CheckpointError) as e:
            failures.append(f"{spec.name}: {' '.join(str(e).split())}")
    if failures:
        raise bcos_zoo.DownloadError(f"{len(failures)} of {len(specs)} weights failed: " + "; ".join(failures))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    logging.getLogger("bcos_zoo.convert").setLevel(logging.INFO)
    dst, digest = convert_checkpoint(args.src, args.weights, args.out_dir)
    print(f"{dst} (SHA-256 {digest})")
    return 0


def add_commands(add: Any) -> None:
    """Register the subcommands with ``add(name, help) -> parser``."""
    p = add("list", "List architectures (or, with --pretrained, weights) with top-1, parameters and cache state.")
    p.add_argument("pattern", nargs="?", help="fnmatch pattern or a word in the name")
    p.add_argument("--pretrained", action="store_true", help="list weights instead of architectures")
    p.set_defaults(func=cmd_list)

    p = add("info", "Show a weight's model card, an architecture's summary, or a weight file's header.")
    p.add_argument("name", help="weight name (arch.tag), alias, architecture, or a .safetensors/.pth file")
    p.add_argument("--card-dir", help="where model cards are (default: model_cards/ of the source tree)")
    p.set_defaults(func=cmd_info)

    p = add("download", "Fetch weights into the cache and verify their SHA-256.")
    p.add_argument("names", nargs="*", metavar="NAME", help="weight names")
    p.add_argument("--all", action="store_true", help="every registered weight")
    p.set_defaults(func=cmd_download)

    p = add("convert", "Convert an official checkpoint to safetensors (with a full header) plus its model card.")
    p.add_argument("src", type=Path, help="official .pth (or any checkpoint) file")
    p.add_argument("--weights", required=True, help="registered weight name, e.g. bcos_resnet50.in1k or resnet50")
    p.add_argument("--out-dir", type=Path, default=Path("converted"), help="output directory (default: %(default)s)")
    p.set_defaults(func=cmd_convert)
