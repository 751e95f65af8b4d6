"""The registry: architectures (``@register_model``), their weights and the aliases of those weights.

Architecture names are the builders' function names (``bcos_resnet50``); weight names are
``<arch>.<tag>`` (``bcos_resnet50.long_in1k``); an alias is another name of one weight (the official
B-cos v2 entry-point name ``resnet50_long``). ``hubconf.py`` exposes exactly :func:`list_models`.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable
from typing import TypeVar

from torch import nn

from .records import WeightSpec

__all__ = [
    "register_model", "model_entrypoint", "is_model", "list_models", "register_weights", "list_weights",
    "get_weights", "default_weights", "registered_weights", "weights_for", "tags_of", "resolve_name", "unknown_name_error",
]  # fmt: skip

ModelFn = TypeVar("ModelFn", bound=Callable[..., nn.Module])

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_MODEL_FAMILY: dict[str, str] = {}
_WEIGHTS: dict[str, WeightSpec] = {}  # "arch.tag" -> record
_DEFAULTS: dict[str, str] = {}  # arch -> name of its default weight
_ALIASES: dict[str, str] = {}  # alias -> weight name


def unknown_name_error(kind: str, name: str, known: Iterable[str], listing: str = "bcos_zoo.list_models()") -> ValueError:
    """A ValueError naming the unknown ``name`` and its closest known matches."""
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {kind} {name[:200]!r}.{hint} See {listing} for all names.")


# ---------------------------------------------------------------------------------------- architectures


def register_model(fn: ModelFn) -> ModelFn:
    """Register a builder under its function name (lowercase, unique); its module names the family."""
    name = fn.__name__
    if name != name.lower() or name in _MODEL_ENTRYPOINTS:
        raise ValueError(f"model names must be lowercase and unique: {name!r}")
    _MODEL_ENTRYPOINTS[name] = fn
    _MODEL_FAMILY[name] = fn.__module__.rsplit(".", 1)[-1]
    return fn


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered architecture."""
    return name in _MODEL_ENTRYPOINTS


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``; an unknown name raises with close matches."""
    try:
        return _MODEL_ENTRYPOINTS[name]
    except KeyError:
        raise unknown_name_error("model", name, _MODEL_ENTRYPOINTS) from None


def list_models(pattern: str | list[str] = "*", *, family: str | None = None, pretrained: bool = False) -> list[str]:
    """Sorted architecture names matching an fnmatch ``pattern`` (or any of a list of them).

    Args:
        pattern: e.g. ``"bcos_resnet*"``.
        family: only this family (the module name: ``resnet``, ``vit``, ...).
        pretrained: only architectures with registered weights.

    Example:
        >>> bcos_zoo.list_models("bcos_resnet*", pretrained=True)
        ['bcos_resnet101', 'bcos_resnet152', 'bcos_resnet18', 'bcos_resnet34', 'bcos_resnet50']
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return sorted(
        n
        for n in _MODEL_ENTRYPOINTS
        if any(fnmatch.fnmatchcase(n, p) for p in patterns)
        and (family is None or _MODEL_FAMILY[n] == family)
        and (not pretrained or n in _DEFAULTS)
    )


# ---------------------------------------------------------------------------------------------- weights


def register_weights(weights: WeightSpec | Iterable[WeightSpec], *, default: bool = False, replace: bool = False) -> None:
    """Register pretrained weight records (your fine-tuned model, a mirror, ...).

    The first weight registered for an architecture is its default (what ``pretrained=True``
    loads) until one is registered with ``default=True``. The architecture does not need to exist
    yet; it is looked up when the weights are loaded.

    Args:
        weights: one record or several.
        default: make these the default of their architecture.
        replace: allow replacing a record that has the same name.

    Example:
        >>> bcos_zoo.register_weights(bcos_zoo.WeightSpec(
        ...     arch="bcos_resnet18", tag="ft_cub200", num_classes=200,
        ...     sources=(bcos_zoo.HubFile("me/bcos_resnet18.ft_cub200"),),
        ...     transform=bcos_zoo.TransformConfig(resize_size=256, crop_size=224)))
        >>> model = bcos_zoo.create_model("bcos_resnet18.ft_cub200", pretrained=True)
    """
    for spec in [weights] if isinstance(weights, WeightSpec) else list(weights):
        _check_registrable(spec, replace)
        _WEIGHTS[spec.name] = spec
        _ALIASES.update((alias, spec.name) for alias in spec.aliases)
        if default or spec.arch not in _DEFAULTS:
            _DEFAULTS[spec.arch] = spec.name


def _check_registrable(spec: WeightSpec, replace: bool) -> None:
    if not isinstance(spec, WeightSpec):
        raise TypeError(f"register_weights expects WeightSpec records, got {type(spec).__name__}")
    if not spec.sources or spec.num_classes < 1:
        raise ValueError(f"{spec.name}: a registered weight needs at least one source and num_classes >= 1")
    if spec.name in _WEIGHTS and not replace:
        raise ValueError(f"weights {spec.name!r} are already registered; pass replace=True to replace them")
    for alias in spec.aliases:
        if _ALIASES.get(alias, spec.name) != spec.name or alias in _DEFAULTS or is_model(alias):
            raise ValueError(f"alias {alias!r} of {spec.name} is already an architecture or another weight's alias")


def list_weights(pattern: str | list[str] = "*") -> list[str]:
    """Sorted names (``arch.tag``) of registered weights whose name or architecture matches ``pattern``.

    Example:
        >>> bcos_zoo.list_weights("bcos_resnet50")
        ['bcos_resnet50.in1k', 'bcos_resnet50.long_in1k']
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return sorted(
        name
        for name, spec in _WEIGHTS.items()
        if any(fnmatch.fnmatchcase(n, p) for p in patterns for n in (name, spec.arch))
    )


def default_weights(arch: str) -> WeightSpec | None:
    """The weights ``pretrained=True`` loads for ``arch``, if any are registered."""
    return _WEIGHTS[_DEFAULTS[arch]] if arch in _DEFAULTS else None


def get_weights(name: str) -> WeightSpec:
    """The record for a weight name (``arch.tag``), an alias (``resnet50_long``) or an architecture (its default).

    Example:
        >>> bcos_zoo.get_weights("resnet50_long").name
        'bcos_resnet50.long_in1k'
    """
    name = _ALIASES.get(name, name)
    spec = _WEIGHTS.get(name) or default_weights(name)
    if spec is None:
        raise unknown_name_error("weights", name, [*_WEIGHTS, *_ALIASES], listing="bcos_zoo.list_weights()")
    return spec


def registered_weights(name: str) -> WeightSpec | None:
    """The record registered under exactly this weight name (``arch.tag``), or ``None``."""
    return _WEIGHTS.get(name)


def weights_for(arch: str, text: str) -> WeightSpec | None:
    """A registered weight of ``arch`` selected by tag (``"in1k"``), name or alias; ``None`` if none is.

    A name of another architecture's weight raises, since it cannot be loaded into ``arch``.
    """
    spec = _WEIGHTS.get(_ALIASES.get(text, text if "." in text else f"{arch}.{text}"))
    if spec is not None and spec.arch != arch:
        raise ValueError(f"weights {spec.name} are for {spec.arch}, not {arch}")
    return spec


def tags_of(arch: str) -> list[str]:
    """The tags of the weights registered for ``arch`` (for error messages)."""
    return [_WEIGHTS[n].tag for n in list_weights(arch) if _WEIGHTS[n].arch == arch]


def resolve_name(name: str) -> tuple[str, WeightSpec | None]:
    """``arch``, ``arch.tag`` or an alias -> (architecture, the weights the name selects or ``None``)."""
    if name in _ALIASES or "." in name:
        spec = get_weights(name)
        return spec.arch, spec
    return name, None
