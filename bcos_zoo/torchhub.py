"""torch.hub entry points: one per registered architecture, documented from the weights registry.

``hubconf.py`` exposes :func:`hub_entrypoints`; ``torch.hub.help(repo, name)`` then shows the
architecture's weights and their published metrics, which are never written by hand. The GitHub
repository users pass to ``torch.hub.load`` is read from the project's metadata
(``[project.urls] Repository`` in ``pyproject.toml``), so a fork sets it with one edit.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

from torch import nn

from .records import WeightSpec
from .registry import default_weights, get_weights, list_models, list_weights, model_entrypoint

__all__ = ["torch_hub_repo", "hub_docstring", "hub_entrypoints", "weight_summary"]

_GITHUB = re.compile(r"^https://github\.com/([^/\s]+/[^/\s]+?)(?:\.git)?/?$")


def _repository_url() -> str | None:
    """``[project.urls] Repository`` of the source tree's ``pyproject.toml``, else of the installed package."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        import tomllib

        return tomllib.loads(pyproject.read_text())["project"]["urls"]["Repository"]
    except (ImportError, OSError, KeyError, ValueError):
        pass
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        urls = metadata("bcos-zoo").get_all("Project-URL") or []
    except PackageNotFoundError:
        return None
    return next((u.split(",", 1)[1].strip() for u in urls if u.lower().startswith("repository,")), None)


@functools.cache
def torch_hub_repo() -> str:
    """``"<owner>/<name>"`` of the GitHub repository that ``torch.hub.load`` takes, from the project metadata.

    Example:
        >>> torch_hub_repo()
        'bcos-zoo/bcos-zoo'
    """
    url = _repository_url() or ""
    match = _GITHUB.match(url)
    if match is None:
        raise ValueError(f"[project.urls] Repository in pyproject.toml must be https://github.com/<owner>/<name>, got {url!r}")
    return match.group(1)


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
        f'    >>> model = torch.hub.load("{torch_hub_repo()}", "{arch}"{", pretrained=True" if default else ""}).eval()',
    ]
    return "\n".join(lines)


def _entrypoint(arch: str) -> Callable[..., nn.Module]:
    """The architecture's own builder (which judges its arguments itself) with the registry's docstring."""
    build = model_entrypoint(arch)

    @functools.wraps(build)
    def entrypoint(*args: object, **kwargs: object) -> nn.Module:
        return build(*args, **kwargs)

    entrypoint.__doc__ = hub_docstring(arch)
    return entrypoint


def hub_entrypoints() -> dict[str, Callable[..., nn.Module]]:
    """``{architecture: entry point}`` for every registered architecture (what ``hubconf.py`` exports)."""
    return {arch: _entrypoint(arch) for arch in list_models()}
