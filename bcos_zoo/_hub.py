"""torch.hub entry points: one per registered architecture, documented from the weights registry.

``hubconf.py`` exposes :func:`hub_entrypoints`; ``torch.hub.help(repo, name)`` then shows the
architecture's weights and their published metrics, which are never written by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ._builder import Pretrained
from ._registry import list_models, model_entrypoint
from .weights import WeightSpec, check_user_kwargs, default_weights, get_weights, list_weights

__all__ = ["TORCH_HUB_REPO", "hub_docstring", "hub_entrypoints", "weight_summary"]

TORCH_HUB_REPO = "<owner>/bcos-zoo"  # the GitHub repository users pass to torch.hub.load


def weight_summary(spec: WeightSpec) -> str:
    """``"bcos_resnet50.in1k: imagenet-1k top-1 75.882, top-5 92.064; 25.54M params"``."""
    parts = [
        f"{ds} " + ", ".join(f"{k.replace('top', 'top-')} {v:.3f}" for k, v in m.items())
        for ds, m in spec.metrics.items()
    ]
    if spec.num_params is not None:
        parts.append(f"{spec.num_params / 1e6:.2f}M params")
    return f"{spec.name}: {'; '.join(parts) or 'no published metrics'}"


def hub_docstring(arch: str) -> str:
    """The architecture's own summary line followed by its weights, default first."""
    summary = (model_entrypoint(arch).__doc__ or arch).strip().splitlines()[0]
    default = default_weights(arch)
    lines = [summary, ""]
    if default is None:
        lines.append("No pretrained weights are registered; pretrained= accepts a file, URL or 'hf-hub:<org>/<repo>'.")
    else:
        others = [get_weights(n) for n in list_weights(arch) if n != default.name and get_weights(n).arch == arch]
        pick = f'; pretrained="{others[0].tag}" picks another by tag' if others else ""
        lines.append(f"Weights (pretrained=True loads the first{pick}):")
        lines += [f"    {weight_summary(s)}" for s in [default, *others]]
    lines += [
        "",
        "Args:",
        "    pretrained: False, True, a weight tag, a local file, an http(s) URL or 'hf-hub:<org>/<repo>'.",
        "    **kwargs: architecture options (num_classes, in_chans, ...).",
        "",
        "Example:",
        f'    >>> model = torch.hub.load("{TORCH_HUB_REPO}", "{arch}"{", pretrained=True" if default else ""}).eval()',
    ]
    return "\n".join(lines)


def _entrypoint(arch: str) -> Callable[..., nn.Module]:
    build = model_entrypoint(arch)

    def entrypoint(pretrained: Pretrained = False, **kwargs: Any) -> nn.Module:
        check_user_kwargs(arch, pretrained, kwargs)
        return build(pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = arch
    entrypoint.__module__ = build.__module__
    entrypoint.__doc__ = hub_docstring(arch)
    return entrypoint


def hub_entrypoints() -> dict[str, Callable[..., nn.Module]]:
    """``{architecture: entry point}`` for every registered architecture (what ``hubconf.py`` exports)."""
    return {arch: _entrypoint(arch) for arch in list_models()}
