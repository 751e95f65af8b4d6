"""Convert an official B-cos ``.pth`` checkpoint to ``<arch>.<tag>.safetensors`` plus its model card.

    bcos-zoo convert resnet_50_long-ef38a88533.pth --weights resnet50_long --out-dir converted/

The file is read with ``torch.load(weights_only=True)``, its SHA-256 is checked against the record
(official names carry a prefix), its keys are mapped by the architecture's ``convert_state_dict``
hook, and a key/shape report is printed before the strict load. The output header holds the weight
name, the architecture, the tag, the source file and its SHA-256. Upload the results with
``scripts/publish_weights.py``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from . import weights
from ._cards import render_card
from ._checkpoint import CheckpointError, load_state_dict_strict, state_dict_differences
from ._download import check_sha256, sha256_file

log = logging.getLogger("bcos_zoo.convert")

__all__ = ["convert", "key_report", "main"]


def key_report(state: dict, model) -> tuple[list[str], bool]:
    """Lines comparing checkpoint and model keys/shapes, and whether they match exactly."""
    own = model.state_dict()
    missing, unexpected, shapes = state_dict_differences(own, state)
    values = sum(t.numel() for t in state.values())
    lines = [f"checkpoint: {len(state)} tensors ({values:,} values); model: {len(own)} tensors"]
    for label, items in (("missing in checkpoint", missing), ("unexpected in checkpoint", unexpected),
                         ("shape mismatches", shapes)):  # fmt: skip
        lines += [f"{label}: {len(items)}"] + [f"  {item}" for item in items[:20]]
    return lines, not (missing or unexpected or shapes)


def convert(src: Path, name: str, out_dir: Path) -> tuple[Path, str]:
    """Convert ``src`` for the registered weights ``name``; returns the output file and its SHA-256."""
    spec = weights.get_weights(name)
    source_sha = sha256_file(src)
    matching = [s for s in spec.sources if isinstance(s, weights.UrlFile) and s.filename == src.name]
    for source in matching:
        check_sha256(source_sha, source.sha256 or source.sha256_prefix, str(src))
    if not matching:
        log.warning("%s is not one of the registered files of %s; its SHA-256 is not checked", src.name, spec.name)
    from . import create_model, __version__

    model = create_model(spec.arch, **weights.merge_model_kwargs(spec, {}))
    state = weights.converted_state_dict(src, model)
    lines, ok = key_report(state, model)
    log.info("\n".join(lines))
    if not ok:
        raise CheckpointError(f"{src} does not fit {spec.arch}; see the report above")
    load_state_dict_strict(model, state, source=str(src))
    n_params = sum(p.numel() for p in model.parameters())
    if spec.num_params is not None and n_params != spec.num_params:
        raise CheckpointError(f"{spec.arch} has {n_params:,} parameters, the record says {spec.num_params:,}")
    url = matching[0].url if matching else src.name
    meta = {"weight": spec.name, "arch": spec.arch, "tag": spec.tag, "source": url, "source_sha256": source_sha,
            "bcos_zoo_version": __version__}  # fmt: skip
    dst = out_dir / f"{spec.name}.safetensors"
    digest = weights.save_weights(state, dst, meta)
    (out_dir / f"{spec.name}.md").write_text(render_card(spec))
    log.info("wrote %s (SHA-256 %s) and its card", dst, digest)
    return dst, digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bcos-zoo convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="official .pth (or any checkpoint) file")
    parser.add_argument("--weights", required=True, help="registered weight name, e.g. bcos_resnet50.in1k or resnet50")
    parser.add_argument(
        "--out-dir", type=Path, default=Path("converted"), help="output directory (default: converted/)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    convert(args.src, args.weights, args.out_dir)
    return 0
