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

from . import models  # noqa: F401  (registers the architectures)
from ._builder import Pretrained
from ._checkpoint import CheckpointError
from ._registry import is_model, list_models, model_entrypoint, register_model
from .explain import Explanation, explain, gradient_to_image
from .layers import explanation_mode
from .transforms import AddInverse, TransformConfig, create_transform

__version__ = "0.1.0"

__all__ = [
    "create_model", "list_models", "is_model", "model_entrypoint", "register_model", "explain", "Explanation",
    "gradient_to_image", "explanation_mode", "AddInverse", "TransformConfig", "create_transform",
    "CheckpointError", "__version__",
]  # fmt: skip


def create_model(name: str, pretrained: Pretrained = False, **kwargs: Any) -> nn.Module:
    """Build the architecture ``name``.

    Args:
        name: a registered architecture (see :func:`list_models`).
        pretrained: ``False`` (random init) or a path to a ``.safetensors`` / official ``.pth`` file.
        **kwargs: architecture options (``num_classes``, ``in_chans``, ``b``, ``norm_layer``,
            ``logit_bias``, ...); unknown ones raise ``TypeError``.

    Example:
        >>> model = bcos_zoo.create_model("bcos_resnet50", pretrained="resnet_50-ead259efe4.pth")
    """
    return model_entrypoint(name)(pretrained=pretrained, **kwargs)
