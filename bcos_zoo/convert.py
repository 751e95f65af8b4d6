"""Convert an official B-cos ``.pth`` checkpoint into ``<arch>.<tag>.safetensors`` plus its model card.

    bcos-zoo convert resnet_50_long-ef38a88533.pth --weights resnet50_long --out-dir converted/

The file's SHA-256 is checked against the record (official names carry a prefix); it is then loaded
like any ``pretrained=`` file (read with ``torch.load(weights_only=True)``, keys mapped by the
model's ``convert_state_dict`` hook, one strict load that lists every key that does not fit) and
written in the model's own layout with a full :class:`~bcos_zoo.records.WeightHeader`. Upload the
results with ``scripts/publish_weights.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .builder import create_model
from .cards import render_card
from .checkpoint import check_finite, save_weights
from .errors import CheckpointError, HashMismatchError
from .files import sha256_file
from .records import UrlFile, WeightHeader, redact_url
from .registry import get_weights
from .version import __version__

__all__ = ["convert_checkpoint"]

log = logging.getLogger(__name__)


def convert_checkpoint(src: Path, name: str, out_dir: Path) -> tuple[Path, str]:
    """Convert ``src`` for the registered weights ``name``.

    Returns:
        The written ``<out_dir>/<arch>.<tag>.safetensors`` and its SHA-256.

    Example:
        >>> convert_checkpoint(Path("resnet_50-ead259efe4.pth"), "resnet50", Path("converted"))
    """
    spec = get_weights(name)
    source_sha = sha256_file(src)
    matching = [s for s in spec.sources if isinstance(s, UrlFile) and s.filename == src.name]
    for source in matching:
        expected = source.sha256 or source.sha256_prefix or ""
        if not source_sha.startswith(expected):
            raise HashMismatchError(f"{src} is not the file {spec.name} names: SHA-256 {source_sha}, expected {expected}")
    if not matching:
        log.warning("%s is not one of the registered files of %s; its SHA-256 is not checked", src.name, spec.name)
    model = create_model(spec.arch, pretrained=src, **spec.build_kwargs)
    state = model.state_dict()
    check_finite(state, str(src))
    n_params = sum(p.numel() for p in model.parameters())
    if spec.num_params is not None and n_params != spec.num_params:
        raise CheckpointError(f"{spec.arch} has {n_params:,} parameters, the record says {spec.num_params:,}")
    header = WeightHeader(
        arch=spec.arch, weight=spec.name, model_kwargs=spec.build_kwargs, classes=spec.classes,
        transform=spec.transform, source=redact_url(matching[0].url) if matching else src.name,
        source_sha256=source_sha, bcos_zoo_version=__version__,
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{spec.name}.safetensors"
    digest = save_weights(state, dst, header)
    (out_dir / f"{spec.name}.md").write_text(render_card(spec))
    log.info("wrote %s (SHA-256 %s) and its card", dst, digest)
    return dst, digest
