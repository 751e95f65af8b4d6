"""Architecture registry: every model builder is registered by name with ``@register_model``.

The weights registry (``bcos_zoo.weights``) hangs off these names; ``hubconf.py`` exposes exactly
``list_models()``.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, TypeVar

from torch import nn

__all__ = ["register_model", "list_models", "model_entrypoint", "is_model", "unknown_name_error"]

ModelFn = TypeVar("ModelFn", bound=Callable[..., nn.Module])

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_MODEL_FAMILY: dict[str, str] = {}


def register_model(fn: ModelFn) -> ModelFn:
    """Register a builder under its function name (lowercase, unique)."""
    name = fn.__name__
    if name != name.lower() or name in _MODEL_ENTRYPOINTS:
        raise ValueError(f"model names must be lowercase and unique: {name!r}")
    _MODEL_ENTRYPOINTS[name] = fn
    _MODEL_FAMILY[name] = fn.__module__.rsplit(".", 1)[-1]
    return fn


def list_models(pattern: str | list[str] = "*", *, family: str | None = None) -> list[str]:
    """Sorted architecture names matching an fnmatch ``pattern`` (or any of a list of them)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return sorted(
        n
        for n in _MODEL_ENTRYPOINTS
        if any(fnmatch.fnmatchcase(n, p) for p in patterns) and (family is None or _MODEL_FAMILY[n] == family)
    )


def is_model(name: str) -> bool:
    return name in _MODEL_ENTRYPOINTS


def unknown_name_error(kind: str, name: str, known: list[str], listing: str = "bcos_zoo.list_models()") -> ValueError:
    """A ValueError naming the unknown ``name`` and its closest known matches."""
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {kind} {name!r}.{hint} See {listing} for all names.")


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``; an unknown name raises with close matches."""
    try:
        return _MODEL_ENTRYPOINTS[name]
    except KeyError:
        raise unknown_name_error("model", name, list(_MODEL_ENTRYPOINTS)) from None
