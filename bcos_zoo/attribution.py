"""One function for every attribution of a prediction: the B-cos explanation and post-hoc methods (captum).

:func:`attribute` returns contribution maps ``[N, H, W]`` (summed over the input channels) for a
batch, whichever the method:

- ``bcos``: the model-inherent explanation ``Σ_c x·W(x)`` in explanation mode (:func:`bcos_zoo.explain`).
- ``ixg``: Input×Gradient, ``Σ_c x·∂f/∂x``.
- ``saliency``: the plain gradient ``Σ_c ∂f/∂x`` (signed).
- ``intgrad``: Integrated Gradients from a baseline (see below).
- ``deeplift``: DeepLift from the same baseline: ``(x − baseline) ×`` a gradient in which captum rewrites
  the backward pass of the nonlinearities it knows (ReLU, sigmoid, max-pool, ...). B-cos layers hold
  none of them, so on B-cos models it is ``Σ_c (x − baseline)·∂f/∂x``.
- ``gradcam``: Grad-CAM on the model's default CAM layer (:func:`cam_target_layers`), upsampled to the input.

The post-hoc methods run on the ordinary forward pass by default, as a user of a B-cos model would
apply them; ``in_explanation_mode=True`` runs them with the dynamic weights detached instead, where
``ixg`` *is* the B-cos explanation (B-cos-v2#6).

Baselines (``intgrad``, ``deeplift``) live in the model's input encoding. A B-cos input is
``[x, 1 - x]`` (2 or 6 channels), so the choice matters:

- ``"black"`` (default): the encoding of a black image, 0 in the image channels and 1 in the inverse ones.
- ``"grey"``: 0.5 in every channel, the encoding of a mid-grey image (``1 - 0.5 = 0.5``).
- ``"zero"``: 0 in every channel. This is *not* the encoding of any image (its inverse channels would be
  1), and a B-cos network without biases is positively homogeneous, ``f(a·x) = a·f(x)``, so Integrated
  Gradients from zero is Input×Gradient (up to the logit bias). Offered for comparison with papers.
- a tensor broadcastable to ``x``.

Black and grey are inverse-consistent (each is ``[b, 1 - b]``), so the path from baseline to input
stays inside the set of images. For models without inverse channels all three are plain constant images.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .explain import Target, _resolve_target, _state_kept, check_input, explain, explain_topk
from .layers import explanation_mode
from .transforms import color_channels, has_inverse

__all__ = ["BASELINES", "METHODS", "attribute", "baseline_input", "cam_target_layers", "tokens_to_map"]

METHODS = ("bcos", "ixg", "saliency", "intgrad", "deeplift", "gradcam")
BASELINES = ("black", "grey", "zero")

Baseline = str | Tensor


def _captum_attr() -> Any:
    try:
        import captum.attr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("post-hoc attribution methods need captum: pip install 'bcos-zoo[captum]'") from e
    return captum.attr


def baseline_input(x: Tensor, baseline: Baseline = "black") -> Tensor:
    """The baseline ``[N, C, H, W]`` for ``x`` in the model's encoding (see the module docstring)."""
    if isinstance(baseline, Tensor):
        return baseline.to(x).expand_as(x).clone()
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "grey":
        return torch.full_like(x, 0.5)
    if baseline == "black":
        black = torch.zeros_like(x)
        if has_inverse(x.shape[1]):
            black[:, color_channels(x.shape[1]) :] = 1
        return black
    raise ValueError(f"unknown baseline {baseline!r}; choose from {', '.join(BASELINES)} or pass a tensor")


# ------------------------------------------------------------------------------------ CAM target layers


def cam_target_layers(model: nn.Module) -> list[nn.Module]:
    """The modules Grad-CAM should look at: ``[model.<default_cam_layer>]``, for pytorch-grad-cam's
    ``GradCAM(model, target_layers=cam_target_layers(model))`` and ``attribute(..., method="gradcam")``.

    Each model family names its layer in the class attribute ``default_cam_layer``: a submodule name,
    or names in order of preference (the first the model has is used; the CIFAR ResNets have no
    ``layer4``). It is the last stage of features before the classifier. Token models (ViTs) need
    ``reshape_transform=tokens_to_map`` in pytorch-grad-cam.
    """
    names = getattr(model, "default_cam_layer", None)
    if names is None:
        raise ValueError(
            f"{type(model).__name__} names no default_cam_layer; pass the layer yourself, e.g. "
            f"target_layers=[model.get_submodule(name)] with a name from model.named_modules()"
        )
    for name in (names,) if isinstance(names, str) else names:
        parent, _, child = name.rpartition(".")  # dotted names reach into wrapped models
        module = getattr(model.get_submodule(parent), child, None) if parent else getattr(model, name, None)
        if isinstance(module, nn.Module):  # CIFAR ResNets set layer4 = None
            return [module]
    raise ValueError(f"{type(model).__name__} has none of its default CAM layers {names!r}")


def tokens_to_map(tokens: Tensor) -> Tensor:
    """Grad-CAM's ``reshape_transform`` for token models: ``[N, h·w, D]`` tokens -> ``[N, D, h, w]`` maps
    of a square grid (``[N, C, H, W]`` maps pass unchanged, so it suits every family)."""
    if tokens.dim() == 4:
        return tokens
    if tokens.dim() != 3:
        raise ValueError(f"expected tokens [N, L, D] or maps [N, C, H, W], got shape {tuple(tokens.shape)}")
    side = round(tokens.shape[1] ** 0.5)
    if side * side != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} tokens do not form a square grid; reshape them to [N, D, h, w] yourself")
    return tokens.transpose(1, 2).unflatten(2, (side, side))


# --------------------------------------------------------------------------------------------- methods


def _ixg(model: nn.Module, xs: Tensor, targets: list[int], **_: Any) -> Tensor:
    return _captum_attr().InputXGradient(model).attribute(xs, target=targets)


def _saliency(model: nn.Module, xs: Tensor, targets: list[int], **_: Any) -> Tensor:
    return _captum_attr().Saliency(model).attribute(xs, target=targets, abs=False)


def _intgrad(model: nn.Module, xs: Tensor, targets: list[int], *, baseline: Baseline, n_steps: int) -> Tensor:
    ig = _captum_attr().IntegratedGradients(model)
    base = baseline_input(xs, baseline)
    return ig.attribute(xs, base, target=targets, n_steps=n_steps, internal_batch_size=len(targets))


def _deeplift(model: nn.Module, xs: Tensor, targets: list[int], *, baseline: Baseline, **_: Any) -> Tensor:
    with warnings.catch_warnings():  # captum announces, on every call, that it hooks the nonlinearities
        warnings.filterwarnings("ignore", "Setting forward, backward hooks", UserWarning)
        return _captum_attr().DeepLift(model).attribute(xs, baseline_input(xs, baseline), target=targets)


def _gradcam(model: nn.Module, xs: Tensor, targets: list[int], **_: Any) -> Tensor:
    attr = _captum_attr()
    (layer,) = cam_target_layers(model)
    cam = attr.LayerGradCam(model, layer).attribute(xs, target=targets)  # [N, 1, h, w]
    if cam.dim() != 4:
        raise ValueError(
            f"gradcam needs a layer with [N, C, h, w] output; {type(model).__name__}'s gives tokens: use "
            "pytorch-grad-cam's GradCAM(model, cam_target_layers(model), reshape_transform=bcos_zoo.tokens_to_map)"
        )
    return attr.LayerAttribution.interpolate(cam, tuple(xs.shape[-2:]))


_POST_HOC: dict[str, Callable[..., Tensor]] = {
    "ixg": _ixg, "saliency": _saliency, "intgrad": _intgrad, "deeplift": _deeplift, "gradcam": _gradcam,
}  # fmt: skip


def _bcos(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    """The B-cos contribution maps; one image expanded to a batch (stride 0, as the grid pointing game
    passes it with one target per tile) costs one forward pass and one batched backward pass."""
    if isinstance(x, Tensor) and x.dim() == 4 and x.shape[0] > 1 and x.stride(0) == 0 and target is not None:
        targets = torch.as_tensor(target).reshape(-1)
        if targets.numel() in (1, x.shape[0]):  # otherwise explain() names the mismatch
            per_tile = targets.expand(x.shape[0]).tolist()
            return torch.cat([e.contribution_map for e in explain_topk(model, x[:1], targets=[per_tile])])
    return explain(model, x, target).contribution_map


def _targets(model: nn.Module, x: Tensor, target: Target) -> list[int]:
    """One class per sample (``None``: the predicted ones, which cost a forward pass), checked against
    the number of classes."""
    num_classes = getattr(model, "num_classes", None)
    if target is None or num_classes is None:
        with torch.no_grad():
            logits = model(x)
    else:
        logits = x.new_zeros(x.shape[0], num_classes)  # only its shape is read
    return _resolve_target(target, logits).tolist()


def attribute(
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    method: str = "bcos",
    *,
    baseline: Baseline = "black",
    n_steps: int = 20,
    in_explanation_mode: bool = False,
) -> Tensor:
    """Contribution maps ``[N, H, W]`` of ``target`` for the batch ``x`` (``[N, C, H, W]``), summed over channels.

    Args:
        model: a classifier (B-cos or standard; ``bcos`` needs a B-cos model).
        x: the model's input (6 or 2 channels for B-cos models: ``model.transform(img)``).
        target: ``None`` for the predicted classes, one class for all samples, or one per sample.
        method: one of :data:`METHODS`.
        baseline: for ``intgrad`` and ``deeplift``: ``"black"``, ``"grey"``, ``"zero"`` or a tensor
            (see the module docstring for why the choice matters in B-cos's ``[x, 1 - x]`` encoding).
        n_steps: Integrated Gradients' steps.
        in_explanation_mode: run a post-hoc method with the dynamic weights detached (``ixg`` then
            equals ``bcos``); by default they see the ordinary forward pass.

    Like :func:`bcos_zoo.explain`, it leaves ``x``, the model's gradients and its state untouched.

    Example:
        >>> maps = attribute(model, x, target=3, method="intgrad", baseline="grey")  # [N, H, W]
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    if method == "bcos":
        return _bcos(model, x, target)
    x = check_input(model, x)
    mode = explanation_mode(model, active=in_explanation_mode)
    with torch.inference_mode(False), torch.enable_grad(), _state_kept(model), mode:
        xs = x.detach().clone().requires_grad_(True)
        targets = _targets(model, xs, target)
        maps = _POST_HOC[method](model, xs, targets, baseline=baseline, n_steps=n_steps)
    return maps.detach().sum(1)
