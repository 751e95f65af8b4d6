"""Glue for evaluation toolkits that perturb the input: Quantus' ``explain_func`` and an image-input model.

B-cos models take an image with its inverse, ``[x, 1 - x]`` (2 or 6 channels). A toolkit that
perturbs inputs (Quantus' pixel flipping, region perturbation, noise; pytorch-grad-cam's smoothing)
changes channels independently: flipping a pixel of the 6-channel tensor to 0 gives
``[0, 0, 0, 0, 0, 0]``, which is the encoding of no image at all. So the toolkit should see the
*image* (1 or 3 channels) and the model should add the inverse itself: :class:`ImageInputModel`.

Explanations stay exact: :func:`quantus_explain_func` unwraps an :class:`ImageInputModel`, encodes
the image, and explains in the 6-channel space, where the contributions of a pixel (its channels and
their inverses) sum to the logit. Differentiating through the wrapper instead would give
``x·(W_x − W_inv)``, which misses the inverse channels' ``W_inv`` and does not sum to the logit.

Example (Quantus):
    >>> wrapped = bcos_zoo.ImageInputModel(model).eval()        # takes [N, 1, H, W] images
    >>> metric = quantus.PixelFlipping(features_in_step=28)
    >>> metric(wrapped, x_batch=images, y_batch=labels, explain_func=bcos_zoo.quantus_explain_func)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .attribution import attribute
from .transforms import add_inverse, color_channels, has_inverse

__all__ = ["ImageInputModel", "quantus_explain_func"]


class ImageInputModel(nn.Module):
    """``model`` for the image itself, ``[N, c, H, W]`` in [0, 1] (``c`` = 1 or 3): the inverse channels
    ``1 - x`` are added inside. For tools that perturb inputs channel by channel (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        in_chans = getattr(model, "in_chans", None)
        if in_chans is None or not has_inverse(in_chans):
            raise ValueError(
                f"{type(model).__name__} (in_chans={in_chans}) takes no inverse channels; use the model itself"
            )
        self.model = model
        self.in_chans = color_channels(in_chans)
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(add_inverse(x, dim=1))


def _as_tensor(values: Any, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    return torch.as_tensor(np.asarray(values) if not isinstance(values, Tensor) else values).to(device, dtype)


def quantus_explain_func(
    model: nn.Module, inputs: np.ndarray | Tensor, targets: np.ndarray | Tensor | int, **kwargs: Any
) -> np.ndarray:
    """Quantus' ``explain_func`` contract: ``(model, inputs, targets, **kwargs) -> np.ndarray`` maps ``N×1×H×W``.

    Args:
        model: an :class:`ImageInputModel` (then ``inputs`` are images, 1 or 3 channels) or a B-cos
            model (then ``inputs`` are its own 2/6-channel encoding).
        inputs: channel-first batch ``[N, C, H, W]`` (numpy, as Quantus passes it, or a tensor).
        targets: one class per sample (or one for all).
        kwargs: ``method`` (default ``"bcos"``; any of :data:`bcos_zoo.attribution.METHODS`) and the
            options of :func:`bcos_zoo.attribute` (``baseline``, ``n_steps``, ``in_explanation_mode``).
            Quantus' own ``device`` is accepted; the inputs go to the model's device.

    The map of a pixel is the sum over its channels *and their inverses* (see the module docstring),
    so for ``method="bcos"`` the maps sum to the logits minus their bias terms.
    """
    kwargs.pop("device", None)
    method = kwargs.pop("method", "bcos")
    param = next(model.parameters())
    x = _as_tensor(inputs, param.device, param.dtype)
    if isinstance(model, ImageInputModel):
        model, x = model.model, add_inverse(x, dim=1)
    maps = attribute(model, x, _as_tensor(targets, param.device).long(), method, **kwargs)
    return maps[:, None].float().cpu().numpy()
