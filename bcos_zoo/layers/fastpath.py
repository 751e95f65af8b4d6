"""The eval-mode fast path of the B-cos layers: cached normalised filters and BN folding.

Normalising the filters of a B-cos layer on every forward pass costs a pass over all weights; in eval
mode, when no gradient for the weights is needed, the normalised filters are computed once and reused
until a tensor they were computed from changes. The cache key holds each source tensor (so its storage
cannot be freed and its address reused), its ``_version`` counter (bumped by every in-place change,
``load_state_dict`` included), dtype and device: moving the model, loading weights or writing to them
invalidates the cache, and training mode never uses it.

BN folding: a B=2, MaxOut-1 unit with unit-norm filter ``ŵ`` followed by a bias-free uncentred batch
norm in eval mode (scale ``c = γ / sqrt(running_var + eps)`` per channel) computes
``c · (ŵ·x)|ŵ·x| / ‖x‖``. With ``w' = sign(c)·sqrt(|c|)·ŵ`` the unit alone computes
``(w'·x)|w'·x| / ‖x‖ = sign(c)|c| (ŵ·x)|ŵ·x| / ‖x‖``, the same map (also at ``c = 0``). In explanation
mode the detached factor becomes ``sqrt(|c|)|ŵ·x| / ‖x‖``, so the gradient w.r.t. ``x`` is again the
same. The identity needs B = 2 (``|cos|`` enters linearly) and MaxOut 1 (a negative ``c`` would swap
max for min); a norm bias is not folded. Which norm follows which conv is read off the structure
(``bcos_zoo.layers.fold``); the norm recognises the folded output by identity and passes it through.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["FilterCache", "FoldedOutput", "version_key", "weights_frozen"]


def weights_frozen(*tensors: Tensor | None) -> bool:
    """Whether a cached value derived from ``tensors`` may stand in for recomputing it: no autograd graph
    through them is needed, none is an inference tensor (they have no version counter) and we are not
    being traced by ``torch.compile`` (which fuses the normalisation itself) or by ``torch.jit.trace`` / the
    ONNX exporter (a cached tensor would be recorded as a constant of the exported graph)."""
    present = [t for t in tensors if t is not None]
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or any(t.is_inference() for t in present):
        return False
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in present)


def version_key(tensors: Iterable[Tensor | None]) -> tuple[object, ...]:
    """Storage, version counter, dtype, device and shape of each tensor: equal keys mean none of them was
    written to (in place, ``load_state_dict``) or replaced (``.to()``) in between."""
    return tuple(None if t is None else (t.data_ptr(), t._version, t.dtype, t.device, t.shape) for t in tensors)


class FilterCache:
    """One cached tensor computed from some source tensors, valid while none of them changed."""

    def __init__(self) -> None:
        self._sources: tuple[Tensor | None, ...] = ()
        self._key: tuple[object, ...] = ()
        self._value: Tensor | None = None

    def get(self, sources: tuple[Tensor | None, ...], compute: Callable[[], Tensor], extra: tuple = ()) -> Tensor:
        """The cached value if ``sources`` are the same unchanged tensors (and ``extra`` the same plain
        values, e.g. an eps) as last time, else ``compute()`` (stored for next time)."""
        value = self.peek(sources, extra)
        if value is None:
            with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable later with autograd
                value = self._value = compute()
            # detached aliases: they share storage and version counter, and keep the storage alive
            self._sources = tuple(None if t is None else t.detach() for t in sources)
            self._key = version_key(sources) + extra
        return value

    def peek(self, sources: tuple[Tensor | None, ...], extra: tuple = ()) -> Tensor | None:
        """The cached value if it was computed from these unchanged ``sources`` (and ``extra``), else None."""
        return self._value if self._value is not None and version_key(sources) + extra == self._key else None

    def clear(self) -> None:
        self._sources, self._key, self._value = (), (), None

    def __deepcopy__(self, memo: dict) -> FilterCache:
        return FilterCache()  # a copy starts empty (its tensors are new)

    def __getstate__(self) -> dict:
        return {}  # pickled modules do not carry the cache

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class FoldedOutput:
    """The link from a conv to the norm it is folded with: the norm passes the conv's last folded output
    through unchanged (recognised by identity, held weakly)."""

    def __init__(self) -> None:
        self._ref: Callable[[], Tensor | None] = lambda: None

    def mark(self, out: Tensor) -> Tensor:
        self._ref = weakref.ref(out)
        return out

    def take(self, x: Tensor) -> bool:
        """Whether ``x`` is the folded output (consumed: a second use is normalised normally)."""
        hit = self._ref() is x
        if hit:
            self._ref = lambda: None
        return hit

    def __deepcopy__(self, memo: dict) -> FoldedOutput:
        return FoldedOutput()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
