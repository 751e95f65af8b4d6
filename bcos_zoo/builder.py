"""Building models: what ``pretrained=`` asks for, the architecture arguments, and loading the weights.

Every architecture entry point calls :func:`build_model` with the family's defaults and the user's
keyword arguments *apart*, so the builder itself judges conflicts: a weight's ``num_classes`` (or
another argument it was trained with) wins over a family default, and contradicts a user value
with a ``ValueError``, whichever entry point was called.

``pretrained=`` is resolved once per model (:func:`resolve_weights`) into a verified local file:

- ``True``: the architecture's default weights; a tag (``"long_in1k"``), weight name, alias or
  :class:`~bcos_zoo.records.WeightSpec`: registered weights;
- a local ``.safetensors`` / ``.pth`` file, an ``http(s)://`` URL or
  ``hf-hub:<org>/<repo>[/<file>][@<revision>]`` (file ``model.safetensors`` by default). A
  bcos-zoo safetensors header (:class:`~bcos_zoo.records.WeightHeader`) supplies the architecture,
  its arguments, classes and preprocessing, so ``load_model("run/model.safetensors")`` needs no name.

Mapping a checkpoint's keys to the model's layout (the official ViTs' ``0.`` prefix, ...) happens
here and only here, through the model's ``convert_state_dict`` hook: the file is read once, checked
against the model built on the ``meta`` device, and its tensors assigned strictly once.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from . import fetch, registry
from .checkpoint import check_fits, read_header, read_state_dict
from .errors import CheckpointError
from .records import HubFile, Source, UrlFile, WeightHeader, WeightSpec, redact_url
from .transforms import TransformConfig, create_transform

__all__ = [
    "Pretrained", "Selection", "ResolvedWeights", "build_model", "create_model", "load_model", "select_weights",
    "fetch_weights", "resolve_weights", "parse_hf_hub",
]  # fmt: skip

Pretrained = Union[bool, str, os.PathLike, WeightSpec]
Selection = Union[WeightSpec, HubFile, UrlFile, Path]  # what pretrained= names, before anything is fetched
_MAX_PRETRAINED_LEN = 2048


@dataclass(frozen=True)
class ResolvedWeights:
    """What ``pretrained=`` resolved to: a verified local file and what is known about it.

    Attributes:
        file: the local checkpoint (shipped, cached, fetched, or the user's own file).
        header: its bcos-zoo header (empty for files without one).
        spec: the registered record, when the weights are registered ones.
        source: where an unregistered file came from (its URL, hub file, or ``file://`` path).
    """

    file: Path
    header: WeightHeader
    spec: WeightSpec | None = None
    source: Source | None = None

    @property
    def arch(self) -> str | None:
        return self.spec.arch if self.spec is not None else self.header.arch

    @property
    def build_kwargs(self) -> dict[str, Any]:
        """Architecture arguments the weights need."""
        return self.spec.build_kwargs if self.spec is not None else dict(self.header.model_kwargs)

    def describe(self) -> str:
        return self.spec.name if self.spec is not None else redact_url(self.source.describe()) if self.source else str(self.file)


def parse_hf_hub(text: str) -> HubFile:
    """``hf-hub:<org>/<repo>[/<file>][@<revision>]`` -> :class:`~bcos_zoo.records.HubFile` (validated)."""
    ref, _, revision = text.split(":", 1)[1].partition("@")
    org, _, rest = ref.partition("/")
    repo, _, filename = rest.partition("/")
    return HubFile(f"{org}/{repo}", filename or "model.safetensors", revision or "main")


def _wants_weights(pretrained: object) -> bool:
    """Anything but ``False``/``None`` asks for weights (so ``pretrained=""`` is an error, not random weights)."""
    return pretrained is not False and pretrained is not None


def _check_pretrained_type(pretrained: object) -> str:
    if isinstance(pretrained, bool) or not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(
            f"pretrained must be True/False, a weight tag or name, a file path, a URL or 'hf-hub:<org>/<repo>', "
            f"not {type(pretrained).__name__} {pretrained!r:.60}"
        )
    text = os.fspath(pretrained)
    if not isinstance(text, str) or not text.strip() or len(text) > _MAX_PRETRAINED_LEN:
        raise ValueError(f"pretrained={text!r:.80} is empty or too long; pass False for random weights, or a tag/file/URL")
    return text


def select_weights(arch: str | None, pretrained: Pretrained) -> Selection:
    """What ``pretrained=`` asks for, without fetching anything: a record, a remote source or a local file.

    Example:
        >>> select_weights("bcos_resnet50", "in1k").name
        'bcos_resnet50.in1k'
    """
    if pretrained is True:
        spec = registry.default_weights(arch) if arch else None
        if spec is None:
            raise ValueError(
                f"no pretrained weights are registered for {arch!r} (see bcos_zoo.list_models(pretrained=True)); "
                "pass a file, an http(s) URL or 'hf-hub:<org>/<repo>', or register some with bcos_zoo.register_weights"
            )
        return spec
    if isinstance(pretrained, WeightSpec):
        if arch and pretrained.arch != arch:
            raise ValueError(f"weights {pretrained.name} are for {pretrained.arch}, not {arch}")
        return pretrained
    text = _check_pretrained_type(pretrained)
    spec = registry.weights_for(arch, text) if arch and isinstance(pretrained, str) else None
    if spec is not None:
        return spec
    if text.startswith(("http://", "https://")):
        return UrlFile(text)
    if text.startswith(("hf-hub:", "hf_hub:")):
        return parse_hf_hub(text)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    tags = ", ".join(registry.tags_of(arch)) if arch else ""
    raise ValueError(
        f"pretrained={text!r:.200}{f' for {arch}' if arch else ''}: not "
        + (f"a tag of its weights ({tags or 'none registered'}), " if arch else "")
        + "an existing file, an http(s):// URL or 'hf-hub:<org>/<repo>'"
    )


def fetch_weights(selection: Selection, arch: str | None = None) -> ResolvedWeights:
    """A verified local file for what :func:`select_weights` returned (shipped, cached or fetched now).

    A file whose header names a registered weight (of ``arch``, if given) is taken as that weight.
    """
    if isinstance(selection, WeightSpec):
        return ResolvedWeights(fetch.weight_file(selection), WeightHeader(), spec=selection)
    if isinstance(selection, Path):
        file, source = selection, UrlFile(selection.resolve().as_uri())
    else:
        file, source = fetch.source_file(selection), selection
    header = read_header(file)
    spec = registry.registered_weights(header.weight) if header.weight else None
    spec = spec if spec is not None and arch in (None, spec.arch) else None
    return ResolvedWeights(file, header, spec=spec, source=None if spec else source)


def resolve_weights(arch: str | None, pretrained: Pretrained) -> ResolvedWeights:
    """:func:`select_weights` then :func:`fetch_weights`: ``pretrained=`` as a verified local file."""
    return fetch_weights(select_weights(arch, pretrained), arch)


# -------------------------------------------------------------------------------------------- building


def _accepted_kwargs(model_cls: type[nn.Module]) -> set[str] | None:
    params = inspect.signature(model_cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self"}


def _check_kwargs(arch: str, model_cls: type[nn.Module], kwargs: Mapping[str, Any], where: str) -> None:
    accepted = _accepted_kwargs(model_cls)
    unknown = sorted(set(kwargs) - accepted) if accepted is not None else []
    if unknown:
        raise TypeError(
            f"{arch}() got unexpected keyword argument(s) {', '.join(unknown)}{where}; "
            f"accepted: {', '.join(sorted(accepted or ()))}"
        )


def _check_conflicts(what: str, needed: Mapping[str, Any], user: Mapping[str, Any]) -> None:
    """torchvision's rule: a user argument that contradicts what the weights were trained with raises."""
    for key, value in needed.items():
        if key in user and user[key] != value:
            fix = f"; to fine-tune, load them and call model.reset_classifier({user[key]})" if key == "num_classes" else ""
            raise ValueError(f"{what} were trained with {key}={value!r}, but {key}={user[key]!r} was passed{fix}")


def _transform_for(model: nn.Module, family: TransformConfig, weights: ResolvedWeights | None) -> TransformConfig:
    """The weights' preprocessing if known, else the family's adapted to the model's channel count."""
    if weights is not None and weights.spec is not None:
        return weights.spec.transform
    if weights is not None and weights.header.transform is not None:
        return weights.header.transform
    in_chans = getattr(model, "in_chans", family.in_chans)
    return family if in_chans == family.in_chans else TransformConfig(**{**family.to_dict(), "in_chans": in_chans})


def build_model(model_cls: type[nn.Module], arch: str, pretrained: Pretrained | ResolvedWeights, kwargs: Mapping[str, Any],
                *, transform: TransformConfig, **defaults: Any) -> nn.Module:  # fmt: skip
    """Build ``model_cls`` as architecture ``arch``, optionally with weights.

    Args:
        model_cls: the family's class.
        arch: the registered architecture name.
        pretrained: see the module docstring (or weights already resolved by :func:`create_model`).
        kwargs: the user's keyword arguments, as given; unknown names raise ``TypeError``. Two are
            the builder's own (so every entry point, torch.hub's too, takes them): ``features_only=True``
            and ``out_indices`` (default: all stages) return the model as a feature extractor whose
            forward gives the stages' maps (timm's convention; see ``model.feature_info``).
        transform: the family's evaluation preprocessing (replaced by the weights' own).
        **defaults: what the entry point sets (structure and family defaults); the weights' arguments
            override these, the user's override both unless they contradict the weights.

    Returns:
        The model with ``arch``, ``transform`` and ``pretrained_cfg`` (``None`` without weights).
    """
    kwargs = dict(kwargs)
    features_only, out_indices = kwargs.pop("features_only", False), kwargs.pop("out_indices", None)
    if out_indices is not None and not features_only:
        raise ValueError(f"{arch}: out_indices={out_indices!r} selects feature stages; pass features_only=True with it")
    _check_kwargs(arch, model_cls, kwargs, "")
    weights = pretrained if isinstance(pretrained, ResolvedWeights) else None
    if _wants_weights(pretrained) and weights is None:
        selection = select_weights(arch, pretrained)
        if isinstance(selection, WeightSpec):  # judged before anything is downloaded
            _check_conflicts(selection.name, selection.build_kwargs, kwargs)
        weights = fetch_weights(selection, arch)
    needed = _needed_kwargs(arch, model_cls, weights, kwargs) if weights is not None else {}
    options = {**defaults, **needed, **kwargs}
    model = model_cls(**options) if weights is None else _with_weights(model_cls, options, weights)
    model.arch = arch
    model.transform = create_transform(_transform_for(model, transform, weights))
    model.pretrained_cfg = None if weights is None else weights.spec or _adhoc_spec(model, weights)
    if features_only:
        if not hasattr(model, "set_features_only"):
            raise TypeError(f"{arch} has no feature stages (features_only=True); use a B-cos architecture or a ViT")
        model.set_features_only(out_indices)
    return model


def _needed_kwargs(arch: str, model_cls: type[nn.Module], weights: ResolvedWeights, user: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments the weights were trained with, checked against the architecture and the user's."""
    if weights.arch not in (None, arch):
        raise ValueError(f"{weights.describe()} holds weights of {weights.arch}, not {arch}; pass {weights.arch!r}")
    needed = weights.build_kwargs
    _check_kwargs(arch, model_cls, needed, f" in the header of {weights.file}")
    _check_conflicts(weights.describe(), needed, user)
    return needed


def _with_weights(model_cls: type[nn.Module], options: Mapping[str, Any], weights: ResolvedWeights) -> nn.Module:
    """The model with the file's weights, read once.

    The model is built on the ``meta`` device (no memory, no random initialisation that the weights
    would overwrite), the file's keys are mapped by its ``convert_state_dict`` hook and every key and
    shape is checked, so weights that do not fit fail before anything is allocated (a header asking for
    ``num_classes=100000`` costs nothing); then the tensors are assigned in place of the meta ones. A
    cached download that does not fit is evicted, so a fixed source is fetched again next time.
    """
    state = read_state_dict(weights.file)
    with torch.device("meta"):
        model = model_cls(**options)
    convert = getattr(model, "convert_state_dict", None)
    state = convert(state) if convert else state
    try:
        check_fits(model, state, source=f"checkpoint {weights.file}")
    except CheckpointError:
        if weights.spec is None:
            fetch.evict(weights.file)
        raise
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True, assign=True)
    if _has_meta_tensors(model):  # a tensor the state dict does not hold (none of ours has one): build for real
        model = model_cls(**options)
        model.load_state_dict(state, strict=True)
    return model


def _has_meta_tensors(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [v for m in model.modules() for v in vars(m).values() if isinstance(v, torch.Tensor)]
    return any(t.is_meta for t in tensors)


def _adhoc_spec(model: nn.Module, weights: ResolvedWeights) -> WeightSpec:
    """A record for weights given as a file, URL or hub repo rather than by name (``model.pretrained_cfg``)."""
    source = weights.source or UrlFile(weights.file.resolve().as_uri())
    tag = "hf_hub" if isinstance(source, HubFile) else "local" if source.url.startswith("file:") else "url"
    if isinstance(source, UrlFile):
        source = UrlFile(redact_url(source.url))
    classes = weights.header.classes
    num_classes = int(getattr(model, "num_classes", 0))
    return WeightSpec(arch=model.arch, tag=tag, sources=(source,), num_classes=num_classes,
                      transform=model.transform.config, classes=classes if classes and len(classes) == num_classes else None)  # fmt: skip


# ------------------------------------------------------------------------------------------ the factory


def _selected(arch: str, spec: WeightSpec, pretrained: Pretrained) -> WeightSpec:
    """``create_model("arch.tag", pretrained=...)``: the weights, unless ``pretrained`` asks for others."""
    same = pretrained is True or pretrained == spec
    if not same and isinstance(pretrained, str):
        same = registry.weights_for(arch, pretrained) == spec
    if not same:
        raise ValueError(
            f"the model name selects the weights {spec.name}, but pretrained={pretrained!r} asks for others; pass "
            f"pretrained=True, or the architecture name {arch!r} with pretrained={pretrained!r}"
        )
    return spec


def create_model(name: str | None = None, pretrained: Pretrained = False, **kwargs: Any) -> nn.Module:
    """Build a model by architecture, weight name (``arch.tag``) or alias, optionally with weights.

    Args:
        name: an architecture (``bcos_resnet50``, see :func:`list_models`), a weight name
            (``bcos_resnet50.long_in1k``, see :func:`list_weights`) or an official B-cos v2 entry-point
            name (``resnet50_long``). Without ``pretrained`` a weight name builds its architecture.
            ``None``: the architecture named in the header of the ``pretrained`` file.
        pretrained: ``False`` (random init); ``True`` (the weights ``name`` selects, else the
            architecture's default, its best); a tag (``"long_in1k"``); a local ``.safetensors`` /
            ``.pth`` file; an ``http(s)://`` URL; ``"hf-hub:<org>/<repo>[@revision]"``; a :class:`WeightSpec`.
        **kwargs: architecture options (``num_classes``, ``in_chans``, ``b``, ``norm_layer``,
            ``logit_bias``, ...); unknown ones raise ``TypeError``, and values that contradict the
            weights (e.g. another ``num_classes``) raise ``ValueError``.

    Returns:
        The model, with ``model.transform`` (its evaluation preprocessing) and ``model.pretrained_cfg``
        (the :class:`WeightSpec` of the loaded weights, ``None`` without weights).

    Example:
        >>> model = bcos_zoo.create_model("bcos_resnet50", pretrained=True).eval()
        >>> model.pretrained_cfg.name
        'bcos_resnet50.long_in1k'
        >>> model = bcos_zoo.create_model("resnet50", pretrained=True)  # bcos_resnet50.in1k
        >>> model = bcos_zoo.create_model(pretrained="runs/fmnist/model.safetensors")  # arch from the header
    """
    arch, spec = registry.resolve_name(name) if name is not None else (None, None)
    if arch is not None:
        registry.model_entrypoint(arch)  # an unknown name raises with close matches
    resolved: Pretrained | ResolvedWeights = pretrained
    if spec is not None and _wants_weights(pretrained):
        resolved = _selected(arch, spec, pretrained)
    elif arch is None:
        if not _wants_weights(pretrained) or pretrained is True:
            raise ValueError("create_model needs a model name, or pretrained=<a bcos-zoo .safetensors file or URL>")
        resolved = resolve_weights(None, pretrained)
        arch = resolved.arch
        if arch is None:
            raise CheckpointError(
                f"{resolved.describe()} does not name its architecture (no bcos-zoo header); pass it: "
                f"create_model('<architecture>', pretrained=...)"
            )
    return registry.model_entrypoint(arch)(pretrained=resolved, **kwargs)


def load_model(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """A model from a bcos-zoo ``.safetensors`` file (or its URL / ``hf-hub:`` id) alone: architecture,
    arguments, class names and preprocessing come from its header.

    Example:
        >>> model = bcos_zoo.load_model("runs/fmnist/model.safetensors").eval()
        >>> model.pretrained_cfg.classes[:2]
        ('T-shirt/top', 'Trouser')
    """
    return create_model(None, pretrained=path, **kwargs)
