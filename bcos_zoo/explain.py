"""``explain()``: the model-inherent explanation of a B-cos prediction.

In explanation mode a B-cos network computes ``logit = W(x) · x + b`` exactly, where ``b`` collects
input-independent terms (the logit bias, a ViT's positional embedding). ``explain`` returns W(x)
(``dynamic_linear_weights``), the per-pixel contributions ``Σ_c x·W(x)`` (``contribution_map``),
``b`` (``bias_contribution``) and the RGBA visualisation of the B-cos papers (``explanation``).
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import InputIndependentTerm, LogitLayer, explanation_mode
from .transforms import color_channels, has_inverse

__all__ = ["Explanation", "explain", "explain_topk", "gradient_to_image", "check_input", "Target"]

Target = int | Sequence[int] | Tensor | None

_OFFICIAL_KEYS = {"explained_class_idx": "target"}


@dataclass(frozen=True)
class Explanation(Mapping):
    """Result of :func:`explain` for a batch of B images ``[B, C, H, W]``.

    Attributes:
        logits: ``[B, num_classes]`` model outputs.
        prediction: ``[B]`` arg-max classes.
        target: ``[B]`` explained classes.
        dynamic_linear_weights: ``[B, C, H, W]`` W(x) for each target logit.
        contribution_map: ``[B, H, W]`` ``Σ_c x·W(x)``: how much each pixel adds to the logit.
        bias_contribution: ``[B]`` input-independent part of each target logit (logit bias,
            positional embeddings); ``contribution_map.sum((-2, -1)) + bias_contribution == logit``.
            Exact for bias-free networks (every released B-cos model); norms built with an affine
            bias or a centered running mean (ablation variants) add constants not separated here.
        explanation: ``[B, H, W, 4]`` RGBA image in [0, 1] (:func:`gradient_to_image`).

    Mapping access with the official B-cos key names works too (``out["explanation"]``,
    ``out["explained_class_idx"]``); for a single image it returns the official types
    (``int`` classes, an ``[H, W, 4]`` numpy explanation, a ``[1, H, W]`` contribution map).
    """

    logits: Tensor
    prediction: Tensor
    target: Tensor
    dynamic_linear_weights: Tensor
    contribution_map: Tensor
    bias_contribution: Tensor
    explanation: Tensor

    def __getitem__(self, key: str) -> Any:
        name = _OFFICIAL_KEYS.get(key, key)
        if name not in self._names():
            raise KeyError(f"{key!r}; available keys: {', '.join(self)}")
        value = getattr(self, name)
        if self.logits.shape[0] != 1:
            return value
        if name in ("prediction", "target"):
            return int(value.item())
        if name == "explanation":
            return value[0].cpu().numpy()
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._names() + tuple(_OFFICIAL_KEYS))

    def __len__(self) -> int:
        return len(self._names()) + len(_OFFICIAL_KEYS)

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def check_input(model: nn.Module, x: Tensor) -> Tensor:
    """Validate an input batch for ``model`` and return it as ``[B, C, H, W]``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a tensor, got {type(x).__name__}; preprocess images with model.transform(img)")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected an image batch [B, C, H, W] (or one image [C, H, W]), got shape {tuple(x.shape)}")
    expected = getattr(model, "in_chans", None)
    if expected is not None and x.shape[1] != expected:
        hint = ""
        if has_inverse(expected) and color_channels(expected) == x.shape[1]:
            hint = (
                f" B-cos models take the image and its inverse [x, 1-x]: use model.transform(img) "
                f"or bcos_zoo.AddInverse()(x) to get {expected} channels"
            )
        raise ValueError(f"model expects {expected} input channels, got {x.shape[1]}.{hint}")
    if not x.is_floating_point():
        raise TypeError(f"expected a float tensor, got {x.dtype}; use model.transform(img) to preprocess")
    return x


def _model_input(model: nn.Module, x: Tensor) -> Tensor:
    """A fresh copy of ``x`` in the model's dtype (a float16/float64 batch for a float32 model is cast);
    an input on another device than the model raises, naming both."""
    param = next(model.parameters(), None)
    if param is None:
        return x.detach().clone()
    if x.device != param.device:
        raise ValueError(f"the input is on {x.device} but the model on {param.device}; move one: x.to({str(param.device)!r})")
    return x.detach().to(dtype=param.dtype, copy=True)


@contextlib.contextmanager
def _state_kept(model: nn.Module) -> Iterator[None]:
    """Restore every buffer afterwards: a model in training mode updates its batch-norm running statistics
    on a forward pass, and an explanation must not change the model."""
    saved = [(b, b.detach().clone()) for b in model.buffers()] if model.training else []
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@contextlib.contextmanager
def _weights_frozen(model: nn.Module) -> Iterator[None]:
    """No weight gradients while explaining (only the input's are needed), so the layers may use their
    cached eval-mode filters; ``requires_grad`` is restored afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _resolve_target(target: Target, logits: Tensor, kind: str = "class") -> Tensor:
    """Turn ``target`` (None, int, per-sample sequence or tensor) into a ``[B]`` index tensor."""
    batch, num_classes = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"target has {t.numel()} entries for a batch of {batch}: give one class or one per sample")
    if (t < 0).any() or (t >= num_classes).any():
        raise ValueError(f"target {kind} out of range: got {t.tolist()}, valid ones are 0 to {num_classes - 1}")
    return t


def _capture_constant_terms(model: nn.Module, batch: int, store: list[Tensor]) -> list[Any]:
    """Make the outputs of input-independent modules per-sample leaves, so their share of each
    logit can be read off their gradients. Returns the hook handles."""

    def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
        # such modules return an unbatched term that the forward adds by broadcasting
        leaf = output.detach().expand(batch, *output.shape).clone().requires_grad_(True)
        store.append(leaf)
        return leaf

    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, InputIndependentTerm)]


def _logit_bias(model: nn.Module) -> float:
    layers = [m for m in model.modules() if isinstance(m, LogitLayer)]
    return sum(m.logit_bias or 0.0 for m in layers)


def _named_layer(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        close = difflib.get_close_matches(layer, [n for n in modules if n], n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else " See model.named_modules() for the names."
        raise ValueError(f"{type(model).__name__} has no layer {layer!r}.{hint}")
    return modules[layer]


def _channel_totals(outputs: list[Any], layer: str) -> Tensor:
    """The layer's (last) output summed over its spatial (or token) positions: ``[B, num_channels]``."""
    if not outputs:
        raise ValueError(f"layer {layer!r} is not used in the forward pass; pick one that is")
    output = outputs[-1]
    if not isinstance(output, Tensor):
        raise TypeError(
            f"layer {layer!r} returns {type(output).__name__}, not a tensor; pick a layer with a tensor output"
        )
    if output.dim() == 4:  # [B, C, H, W] feature maps
        return output.sum((-2, -1))
    if output.dim() == 3:  # [B, N, D] tokens
        return output.sum(1)
    if output.dim() == 2:  # [B, D] features
        return output
    raise ValueError(
        f"layer {layer!r} output has shape {tuple(output.shape)}; expected [B, C, H, W], [B, N, D] or [B, D]"
    )


def _grads_per_target(chosen: Tensor, inputs: list[Tensor]) -> list[Tensor | None]:
    """Gradients of each column of ``chosen`` ``[B, K]`` w.r.t. ``inputs``, stacked as ``[K, *input.shape]``.

    One backward pass: for K > 1 it is vectorised over the K one-hot output gradients
    (``is_grads_batched``), so the forward pass is never repeated.
    """
    k = chosen.shape[1]
    if k == 1:
        grads = torch.autograd.grad(chosen.sum(), inputs, allow_unused=True)
        return [None if g is None else g[None] for g in grads]
    onehots = torch.eye(k, dtype=chosen.dtype, device=chosen.device)[:, None, :].expand(k, *chosen.shape)  # [K, B, K]
    return list(torch.autograd.grad(chosen, inputs, grad_outputs=onehots, is_grads_batched=True, allow_unused=True))


def _explain_selected(
    model: nn.Module,
    x: Tensor,
    select: Callable[[Tensor], Tensor],
    *,
    layer: str | None,
    smooth: int,
    alpha_percentile: float,
) -> list[Explanation]:
    """One forward pass in explanation mode, ``select(scores) -> [B, K]`` indices, one backward pass;
    one :class:`Explanation` per column. ``scores`` are the logits, or a layer's channel totals."""
    x = check_input(model, x)
    if model.training:
        warnings.warn("explaining a model in training mode (batch statistics); call model.eval() first", stacklevel=3)
    constants: list[Tensor] = []
    layer_out: list[Any] = []
    # explaining works under torch.inference_mode() / no_grad() too, and leaves no trace in the model
    with torch.inference_mode(False), torch.enable_grad(), _state_kept(model), _weights_frozen(model):
        inp = _model_input(model, x).requires_grad_(True)
        handles = _capture_constant_terms(model, inp.shape[0], constants)
        if layer is not None:
            handles.append(_named_layer(model, layer).register_forward_hook(lambda _m, _i, out: layer_out.append(out)))
        try:
            with explanation_mode(model):
                out = model(inp)
                if layer is None and not isinstance(out, Tensor):
                    raise TypeError(f"{type(model).__name__} returns {type(out).__name__}, not logits (features-only?); "
                                    "explain a stage instead: layer=model.feature_info.module_name(i)")  # fmt: skip
                scores = out if layer is None else _channel_totals(layer_out, layer)
                logits = out if isinstance(out, Tensor) else scores  # a features-only model: its stage's totals
                targets = select(scores)  # [B, K]
                grads = _grads_per_target(scores.gather(1, targets), [inp, *constants])
        finally:
            for h in handles:
                h.remove()
    logits = logits.detach()
    bias0 = _logit_bias(model) if layer is None else 0.0
    results = []
    for k in range(targets.shape[1]):
        weights = grads[0][k]
        bias = torch.full((inp.shape[0],), bias0, dtype=logits.dtype, device=logits.device)
        for term, grad in zip(constants, grads[1:]):
            if grad is not None:
                bias = bias + (term.detach() * grad[k]).flatten(1).sum(1)
        results.append(Explanation(
            logits=logits, prediction=logits.argmax(1), target=targets[:, k], dynamic_linear_weights=weights,
            contribution_map=(inp.detach() * weights).sum(1), bias_contribution=bias,
            explanation=gradient_to_image(inp.detach(), weights, smooth=smooth, alpha_percentile=alpha_percentile),
        ))  # fmt: skip
    return results


def explain(
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    *,
    smooth: int = 15,
    alpha_percentile: float = 99.5,
    layer: str | None = None,
    channel: Target = None,
) -> Explanation:
    """Explain the ``target`` logits of ``model`` for the batch ``x`` (``[B, C, H, W]`` or ``[C, H, W]``).

    Runs one forward and one backward pass in explanation mode. The caller's tensor, its
    ``.grad`` and the model's parameter gradients are left untouched, so repeated calls give
    identical results; it works under ``torch.no_grad()`` too.

    With ``layer``, an intermediate quantity is explained instead of a logit: the output of the
    submodule ``layer`` (a name from ``model.named_modules()``, e.g. ``"layer3.1"``) summed over
    its spatial positions (tokens for a ViT), at channel ``channel``. In explanation mode that
    output is dynamic linear in ``x`` too, so ``contribution_map.sum((-2, -1)) + bias_contribution``
    equals it; ``bias_contribution`` then holds only input-independent terms (no logit bias), and
    ``target`` holds the explained channels (``logits`` and ``prediction`` are still the model's).
    The feature stages are named by ``model.feature_info.module_name(i)``; a features-only model
    (``create_model(..., features_only=True)``) can only be explained this way, and its ``logits``
    are then the layer's channel totals.

    Args:
        model: a B-cos model (in eval mode; a warning is given otherwise).
        x: preprocessed input (``model.transform(img)``).
        target: ``None`` for the predicted class, one class for all samples, or one per sample.
        smooth, alpha_percentile: options of the RGBA visualisation (:func:`gradient_to_image`).
        layer: explain this submodule's output instead of the logits.
        channel: with ``layer``: the channel (one for all samples or one per sample); ``None`` for
            each sample's largest channel total.

    Example:
        >>> out = explain(model, model.transform(img)[None])
        >>> out.contribution_map.sum((-2, -1)) + out.bias_contribution  # == the target logit
        >>> out = explain(model, x, layer="layer3.1", channel=5)  # sum of that feature map
    """
    if layer is None and channel is not None:
        raise ValueError("channel= selects a channel of layer=; to explain a class, pass target=")
    if layer is not None and target is not None:
        raise ValueError(f"with layer={layer!r}, select the explained channel with channel=, not target=")
    wanted, kind = (target, "class") if layer is None else (channel, "channel")
    select = lambda scores: _resolve_target(wanted, scores, kind)[:, None]
    return _explain_selected(model, x, select, layer=layer, smooth=smooth, alpha_percentile=alpha_percentile)[0]


def explain_topk(
    model: nn.Module,
    x: Tensor,
    k: int = 5,
    *,
    targets: Tensor | Sequence[Sequence[int]] | None = None,
    smooth: int = 15,
    alpha_percentile: float = 99.5,
    layer: str | None = None,
) -> list[Explanation]:
    """Explain the ``k`` highest logits of every image (or the given ``targets``) at once.

    Costs one forward pass and one batched backward pass, not K of each; ``result[j]`` equals
    ``explain(model, x, target=result[j].target)``, i.e. it explains the ``j``-th highest logit
    (or ``targets[:, j]``) of every image in the batch.

    Args:
        model, x, smooth, alpha_percentile: as for :func:`explain`.
        k: how many of the highest logits to explain (ignored when ``targets`` is given).
        targets: ``[B, K]`` classes to explain per image (a nested list or a tensor; ``[K]`` is
            used for every image).
        layer: explain the channel totals of this submodule instead (see :func:`explain`).

    Example:
        >>> top3 = explain_topk(model, x, 3)
        >>> [e.target for e in top3]  # the three most likely classes of each image
    """

    def select(scores: Tensor) -> Tensor:
        kind = "class" if layer is None else "channel"
        if targets is None:
            if not 1 <= k <= scores.shape[1]:
                raise ValueError(f"k must be between 1 and {scores.shape[1]} (the number of {kind} scores), got {k}")
            return scores.topk(k, dim=1).indices  # [B, K]
        t = torch.as_tensor(targets, device=scores.device).long()
        t = t.expand(scores.shape[0], -1) if t.dim() == 1 else t
        if t.dim() != 2 or t.shape[0] != scores.shape[0]:
            raise ValueError(f"targets must be [B, K] (or [K]) for a batch of {scores.shape[0]}, got {tuple(t.shape)}")
        return torch.stack([_resolve_target(col, scores, kind) for col in t.unbind(1)], 1)

    return _explain_selected(model, x, select, layer=layer, smooth=smooth, alpha_percentile=alpha_percentile)


def _quantile_rows(values: Tensor, q: float) -> Tensor:
    """Per-row quantile with linear interpolation (as ``torch.quantile``), without its input-size limit."""
    n = values.shape[1]
    pos = q * (n - 1)
    lo, hi = int(pos), min(int(pos) + 1, n - 1)
    v_lo = values.kthvalue(lo + 1, dim=1).values
    v_hi = values.kthvalue(hi + 1, dim=1).values
    return v_lo + (v_hi - v_lo) * (pos - lo)


def _box_smooth(x: Tensor, k: int) -> Tensor:
    """The ``k``×``k`` mean filter ``F.avg_pool2d(x, k, stride=1, padding=(k - 1) // 2)`` (zeros counted), as a
    ``k``×1 then a 1×``k`` pass: 2k additions per pixel instead of k² (15×15: about 4x faster on a CPU)."""
    pad = (k - 1) // 2
    return F.avg_pool2d(F.avg_pool2d(x, (k, 1), 1, (pad, 0)), (1, k), 1, (0, pad))


def gradient_to_image(
    image: Tensor, linear_mapping: Tensor, *, smooth: int = 15, alpha_percentile: float = 99.5
) -> Tensor:
    """The B-cos RGBA visualisation of dynamic linear weights, batched.

    ``image`` and ``linear_mapping`` are ``[B, 2k, H, W]`` (image and inverse channels, k = 3 or
    1) or a single ``[2k, H, W]``. Colour: per pixel, the weight vector is scaled to max-abs 1,
    clamped at 0, and each channel pair (c, 1-c) normalised to sum 1 (inputs without inverse
    channels, e.g. 3-channel RGB, keep the clamped scaled weights as colour). Opacity: the weight norm,
    zero where the contribution is negative, box-smoothed with kernel ``smooth``, divided by its
    ``alpha_percentile`` percentile and clipped to [0, 1]. Returns ``[B, H, W, 4]`` (or ``[H, W, 4]``).
    """
    single = image.dim() == 3
    if single:
        image, linear_mapping = image[None], linear_mapping[None]
    w = linear_mapping.detach()
    contribs = (image.detach() * w).sum(1, keepdim=True)  # [B, 1, H, W]
    rgb = (w / (w.abs().amax(1, keepdim=True) + 1e-12)).clamp(min=0)
    if has_inverse(w.shape[1]):  # image + inverse channels
        k = color_channels(w.shape[1])
        rgb = rgb[:, :k] / (rgb[:, :k] + rgb[:, k:] + 1e-12)  # [B, k, H, W]
    rgb = rgb[:, :3] if rgb.shape[1] >= 3 else rgb[:, :1].expand(-1, 3, -1, -1)
    alpha = w.square().sum(1, keepdim=True).sqrt()  # the channel norm; vector_norm(dim=1) is ~20x slower here
    alpha = torch.where(contribs < 0, torch.full_like(alpha, 1e-12), alpha)
    if smooth:
        alpha = _box_smooth(alpha, smooth)
    cutoff = _quantile_rows(alpha.flatten(1), alpha_percentile / 100)
    alpha = (alpha / cutoff.view(-1, 1, 1, 1)).clamp(0, 1)
    # an even smoothing kernel shrinks alpha by one pixel, as in the reference implementation
    out = torch.cat([rgb[..., : alpha.shape[-2], : alpha.shape[-1]], alpha], 1).permute(0, 2, 3, 1)  # [B, H, W, 4]
    return out[0] if single else out
