"""``build_model``: instantiate an architecture, attach its transform, load weights."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn

from ._checkpoint import load_state_dict_strict, read_state_dict
from .transforms import TransformConfig, create_transform

__all__ = ["build_model", "load_checkpoint", "Pretrained"]

Pretrained = bool | str | Path


def _accepted_kwargs(model_cls: type[nn.Module]) -> set[str] | None:
    params = inspect.signature(model_cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self"}


def _check_kwargs(arch: str, model_cls: type[nn.Module], kwargs: dict[str, Any]) -> None:
    accepted = _accepted_kwargs(model_cls)
    unknown = sorted(set(kwargs) - accepted) if accepted is not None else []
    if unknown:
        raise TypeError(
            f"{arch}() got unexpected keyword argument(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(accepted or ()))}"
        )


def convert_state_dict(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a foreign layout (e.g. the official ViT's ``0.`` prefix) to the model's own keys."""
    convert: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = getattr(model, "convert_state_dict", None)
    return convert(state_dict) if convert is not None else state_dict


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a local ``.safetensors`` or official ``.pth`` file into ``model``, strictly."""
    state_dict = convert_state_dict(model, read_state_dict(path))
    load_state_dict_strict(model, state_dict, source=f"checkpoint {path}")


def build_model(
    model_cls: type[nn.Module],
    arch: str,
    pretrained: Pretrained = False,
    *,
    transform: TransformConfig = TransformConfig(),
    **kwargs: Any,
) -> nn.Module:
    """Build ``model_cls(**kwargs)`` as architecture ``arch``.

    Unknown keyword arguments raise a ``TypeError`` listing the accepted ones. The model gets
    ``arch``, ``transform`` (its evaluation preprocessing, adapted to its channel count) and, if
    ``pretrained``, its weights (strictly loaded), their ``transform`` and ``pretrained_cfg``. A
    registered weight sets ``num_classes`` (and any ``model_kwargs`` it needs) over family defaults;
    ``create_model`` and the torch.hub entry points reject conflicting user values first.
    """
    request = None
    if pretrained:
        from . import weights  # the weights registry imports this module, so import lazily

        request = weights.resolve_pretrained(arch, pretrained)  # (True, a tag, a path, a URL, hf-hub:...)
        kwargs = weights.merge_model_kwargs(request, kwargs)  # e.g. num_classes of the weights
    _check_kwargs(arch, model_cls, kwargs)
    model = model_cls(**kwargs)
    model.arch = arch
    in_chans = getattr(model, "in_chans", transform.in_chans)
    cfg = transform if in_chans == transform.in_chans else TransformConfig(**{**transform.to_dict(), "in_chans": in_chans})
    model.transform = create_transform(cfg)
    model.pretrained_cfg = None
    if request is not None:
        weights.load_pretrained(model, arch, request)
    return model
