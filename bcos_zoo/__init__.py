"""bcos-zoo: B-cos networks, their pretrained weights and their explanations.

Example:
    >>> import bcos_zoo
    >>> model = bcos_zoo.create_model("bcos_resnet18").eval()
    >>> out = model.explain(model.transform("cat.jpg")[None])
    >>> out.contribution_map.sum((-2, -1)) + out.bias_contribution  # == out.logits[0, out.target]
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import (
    models,  # noqa: F401  (registers the architectures)
    weights_fmnist,  # noqa: F401  (registers the weights shipped in the package)
    weights_official,  # noqa: F401  (registers the official B-cos v2 weights)
)
from ._builder import Pretrained
from ._checkpoint import CheckpointError
from ._registry import is_model, model_entrypoint, register_model
from .explain import Explanation, explain, explain_topk, gradient_to_image
from .layers import explanation_mode
from .transforms import AddInverse, TransformConfig, create_transform
from .weights import (
    DownloadError,
    HashMismatchError,
    HubFile,
    OfflineError,
    PackageFile,
    UrlFile,
    WeightSpec,
    check_user_kwargs,
    get_weights,
    list_models,
    list_weights,
    register_weights,
    release_file,
    resolve_model_name,
    resolve_pretrained,
)

__version__ = "0.1.0"

__all__ = [
    "create_model", "list_models", "is_model", "model_entrypoint", "register_model", "explain", "explain_topk",
    "Explanation", "gradient_to_image", "explanation_mode", "AddInverse", "TransformConfig", "create_transform",
    "CheckpointError", "__version__", "list_weights", "get_weights", "register_weights", "WeightSpec", "HubFile",
    "UrlFile", "PackageFile", "release_file", "DownloadError", "HashMismatchError", "OfflineError",
]  # fmt: skip


def create_model(name: str, pretrained: Pretrained | WeightSpec = False, **kwargs: Any) -> nn.Module:
    """Build a model by architecture, weight name (``arch.tag``) or alias, optionally with weights.

    Args:
        name: an architecture (``bcos_resnet50``, see :func:`list_models`), a weight name
            (``bcos_resnet50.long_in1k``, see :func:`list_weights`) or an official B-cos v2 entry-point
            name (``resnet50_long``). Without ``pretrained`` a weight name builds its architecture.
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
        >>> model = bcos_zoo.create_model("bcos_resnet50", pretrained="model.safetensors")
    """
    arch, spec = resolve_model_name(name)
    if spec is not None and pretrained:
        if pretrained is not True and resolve_pretrained(arch, pretrained) != spec:
            raise ValueError(
                f"{name!r} selects the weights {spec.name}, but pretrained={pretrained!r} asks for others; pass "
                f"pretrained=True, or the architecture name {arch!r} with pretrained={pretrained!r}"
            )
        pretrained = spec.tag
    check_user_kwargs(arch, pretrained, kwargs)
    return model_entrypoint(arch)(pretrained=pretrained, **kwargs)
