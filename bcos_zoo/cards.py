"""Model cards and the README weights table, rendered from the weights registry.

A card is Markdown with Hugging Face YAML front matter, so the same text is a hub repository's
README.md. ``scripts/gen_model_cards.py`` writes them to ``model_cards/`` (and checks them in a test);
``bcos-zoo convert``, ``bcos-zoo info`` and ``scripts/publish_weights.py`` use them too.
"""

from __future__ import annotations

import re

from .records import DATASET_NAMES, HubFile, PackageFile, Source, UrlFile, WeightSpec
from .registry import default_weights
from .torchhub import torch_hub_repo

__all__ = ["CARD_NAME", "TABLE_END", "TABLE_START", "render_card", "render_table"]

TABLE_START, TABLE_END = "<!-- model-table:start -->", "<!-- model-table:end -->"
CARD_NAME = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+\.md$")
_IMAGENET_TERMS = (
    "These weights were trained on {dataset} and are subject to the ImageNet terms of access: non-commercial "
    "research and educational use only."
)
_IMAGENET_DATASETS = ("imagenet-1k", "imagenet-100")  # ImageNet-100 is a subset of ImageNet-1k
_TRUST_ON_FIRST_USE = (
    "The publisher gives no hash for this file, so bcos-zoo trusts its first download: it records the file's SHA-256 "
    "in the cache (`weights/{name}.trusted.sha256` in `$BCOS_ZOO_CACHE`, default `~/.cache/bcos_zoo`) and says so "
    "in a `TrustOnFirstUseWarning` that shows the digest. Every later download must have that SHA-256 and is "
    "otherwise refused (`HashMismatchError`, naming both digests). If the publisher really replaced the file, "
    "delete that record to trust the new one."
)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _source_line(source: Source) -> str:
    """A source as it is registered (mirror variables are not applied, so the card is reproducible)."""
    if isinstance(source, HubFile):
        where = f"https://huggingface.co/{source.repo_id}/blob/{source.revision}/{source.filename}"
    elif isinstance(source, PackageFile):
        where = f"shipped with the package: `bcos_zoo/assets/weights/{source.filename}`"
    else:
        where = source.url
    if source.sha256:
        return f"{where} (SHA-256 `{source.sha256}`)"
    if isinstance(source, UrlFile) and source.trust_on_first_use:
        return f"{where} (no published hash: trusted on first use, see Integrity)"
    prefix = getattr(source, "sha256_prefix", None)
    return f"{where} (SHA-256 prefix `{prefix}`)" if prefix else where


def _front_matter(spec: WeightSpec) -> list[str]:
    lines = ["---", "library_name: bcos-zoo", f"license: {spec.license or 'unknown'}"]
    lines += [
        f"{key}: {value}"
        for key, value in (("license_name", spec.license_name), ("license_link", spec.license_link))
        if value
    ]
    lines += ["pipeline_tag: image-classification", "tags:"]
    lines += [f"- {t}" for t in ("image-classification", "bcos-zoo", "bcos", "interpretability", "explainability")]
    if spec.dataset:
        lines += ["datasets:", f"- {spec.dataset}"]
    if spec.metrics:
        lines += ["metrics:", "- accuracy", "model-index:", f"- name: {spec.name}", "  results:"]
        for dataset, values in spec.metrics.items():
            lines += ["  - task:", "      type: image-classification", "    dataset:",
                      f"      name: {DATASET_NAMES.get(dataset, dataset)}", f"      type: {dataset}", "    metrics:"]  # fmt: skip
            for key, value in values.items():
                lines += [
                    "    - type: accuracy",
                    f"      name: {key.replace('top', 'top-')} accuracy",
                    f"      value: {value}",
                ]
    return lines + ["---", ""]


def _usage(spec: WeightSpec) -> list[str]:
    bcos = spec.transform.add_inverse  # B-cos models see [RGB, 1 - RGB]; the standard baselines do not
    code = [
        "```python",
        "import bcos_zoo",
        "from PIL import Image",
        "",
        f'model = bcos_zoo.create_model("{spec.name}", pretrained=True).eval()',
        f'x = model.transform(Image.open("image.jpg"))[None]  # [1, {spec.transform.in_chans}, H, W]',
        "logits = model(x)",
    ]
    if bcos:
        code += [
            "probabilities = model.to_probabilities(logits)  # sigmoids: B-cos models are trained with BCE",
            "explanation = model.explain(x)  # contribution maps, exact for B-cos networks",
        ]
    code += ["```", ""]
    other = [f'`bcos_zoo.create_model("{alias}", pretrained=True)` (official B-cos v2 name)' for alias in spec.aliases]
    other.append(f'`torch.hub.load("{torch_hub_repo()}", "{spec.arch}", pretrained="{spec.tag}")`')
    return ["## Usage", "", *code, "The same weights: " + ", ".join(other) + ".", ""]


def _licence(spec: WeightSpec) -> list[str]:
    text = [
        f"`{spec.license_name or spec.license or 'unknown'}`" + (f": {spec.license_link}" if spec.license_link else "")
    ]
    if spec.dataset in _IMAGENET_DATASETS and spec.license == "other":
        text.insert(0, _IMAGENET_TERMS.format(dataset=DATASET_NAMES[spec.dataset]))
    note = [spec.license_note, ""] if spec.license_note else []
    return ["## Licence", "", " ".join(text) + ". The bcos-zoo code is Apache-2.0.", "", *note]


def render_card(spec: WeightSpec) -> str:
    """The model card of one weight, entirely from its record."""
    dataset = DATASET_NAMES.get(spec.dataset or "", spec.dataset or "an unspecified dataset")
    lines = [
        *_front_matter(spec),
        f"# {spec.name}",
        "",
        f"`{spec.arch}` with the `{spec.tag}` weights, trained on {dataset}.",
    ]
    lines += ["", spec.notes, ""] if spec.notes else [""]
    lines += _usage(spec)
    lines += [
        "## Preprocessing",
        "",
        spec.transform.describe() + ".",
        "",
        "`model.transform` does this for a PIL image, a path or a tensor.",
        "",
    ]
    if spec.metrics:
        lines += ["## Results", "", "| dataset | top-1 (%) | top-5 (%) |", "|---|---|---|"]
        lines += [
            f"| {DATASET_NAMES.get(d, d)} | {_pct(m.get('top1'))} | {_pct(m.get('top5'))} |"
            for d, m in spec.metrics.items()
        ]
        lines += ["", spec.metrics_note, ""]
    lines += ["## Model details", "", f"- Architecture: `{spec.arch}`"]
    if spec.num_params is not None:
        lines.append(f"- Parameters: {spec.num_params:,}")
    lines.append(
        f"- Classes: {spec.num_classes}" + (" (names in `model.pretrained_cfg.classes`)" if spec.classes else "")
    )
    if spec.model_kwargs:
        lines.append("- Architecture arguments: " + ", ".join(f"`{k}={v!r}`" for k, v in spec.model_kwargs.items()))
    if spec.aliases:
        lines.append("- Aliases: " + ", ".join(f"`{a}`" for a in spec.aliases))
    lines.append("- Weight files, tried in order:")
    lines += [f"  - {_source_line(s)}" for s in spec.sources]
    if spec.paper:
        lines.append(f"- Paper: {spec.paper}")
    lines.append("")
    if spec.trust_on_first_use:
        lines += ["## Integrity", "", _TRUST_ON_FIRST_USE.format(name=spec.name), ""]
    if spec.recipe:
        lines += ["## Training recipe", "", spec.recipe, ""]
    lines += _licence(spec)
    if spec.citation:
        lines += ["## Citation", "", "```bibtex", spec.citation, "```", ""]
    return "\n".join(lines)


def render_table(specs: list[WeightSpec]) -> str:
    """The README table of all weights (default weights of an architecture in bold)."""
    rows = [
        "| weights | top-1 (%) | top-5 (%) | params | resize → crop | aliases |",
        "|---|---|---|---|---|---|",
    ]
    for spec in specs:
        name = f"[{spec.name}](model_cards/{spec.name}.md)"
        name = f"**{name}**" if default_weights(spec.arch) is spec else name
        metrics = spec.metrics.get(spec.dataset or "", {})
        params = f"{spec.num_params / 1e6:.2f}M" if spec.num_params else ""
        t = spec.transform
        rows.append(f"| {name} | {_pct(metrics.get('top1'))} | {_pct(metrics.get('top5'))} | {params} | "
                    f"{t.resize_size or '–'} → {t.crop_size or '–'} | {', '.join(spec.aliases)} |")  # fmt: skip
    note = (
        "Bold: the default weights of the architecture (`pretrained=True`). Generated by `scripts/gen_model_cards.py`."
    )
    return "\n".join([TABLE_START, "", *rows, "", note, "", TABLE_END])
