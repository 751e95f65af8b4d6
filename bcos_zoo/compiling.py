"""Compiled inference with the weights frozen into the graph, never stale.

``torch.compile(model)`` keeps the weights as graph inputs, so the normalised (and BN-scaled) filters
of every B-cos layer are recomputed inside the graph on each call: a pass over all weights per forward.
Inductor's *freezing* treats the weights as constants instead: the filter normalisation is folded at
compile time and the convolutions use weights prepacked once for the CPU kernels. Frozen constants go
stale when a weight changes, so :func:`compile_for_inference` compiles a private copy of the model and
checks, before each call, that no parameter or buffer of the original changed (same storage, same
version counter: in-place updates, ``load_state_dict`` and ``.to()`` all show); if one did, it compiles a
fresh copy (a float64 model is compiled without freezing: the prepacked CPU kernels have no float64).
Predictions run without autograd; explanations need gradients and use the model itself
(or ``torch.compile(model)``, which builds one graph per mode).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from .layers.fastpath import version_key

__all__ = ["FrozenInference", "compile_for_inference"]


class FrozenInference:
    """``model`` compiled for no-grad predictions with frozen weights (see the module docstring).

    Calling it runs the compiled copy under ``torch.no_grad()``; ``recompiles`` counts how often a changed
    weight made it compile a new copy. Other attributes (``transform``, ``pretrained_cfg``, ...) are the
    model's own.
    """

    def __init__(self, model: nn.Module, **compile_kwargs: Any) -> None:
        self.model, self._compile_kwargs = model, compile_kwargs
        self._key: tuple[object, ...] | None = None
        self._compiled: Any = None
        self._freeze = True
        self.recompiles = -1  # the first compilation is not a recompilation

    def _refresh(self) -> None:
        key = version_key([*self.model.parameters(), *self.model.buffers()])
        if key != self._key:
            frozen = copy.deepcopy(self.model).eval().requires_grad_(False)
            self._compiled = torch.compile(frozen, **self._compile_kwargs)
            self._key, self.recompiles = key, self.recompiles + 1
            # inductor's prepacked CPU convolutions take float32 and lower precisions only
            self._freeze = all(t.dtype != torch.float64 for t in frozen.parameters())

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        import torch._inductor.config as inductor_config  # imported on use: it loads the compiler stack

        self._refresh()
        # compilation happens lazily, on this call or a later one with new input shapes; torch.compile's
        # options={"freezing": True} does not reach inductor's freezing pass, the config does
        with torch.no_grad(), inductor_config.patch(freezing=self._freeze):
            return self._compiled(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("model", "recompiles"):
            raise AttributeError(name)
        return getattr(self.model, name)


def compile_for_inference(model: nn.Module, **compile_kwargs: Any) -> FrozenInference:
    """Compile ``model`` for fast no-grad predictions, weights frozen into the graph and never stale.

    ``compile_kwargs`` go to ``torch.compile`` (``mode``, ``dynamic``, inductor ``options``; inductor's
    ``freezing`` is always on). The model is compiled in eval mode whatever its own mode; it compiles on
    the first call, and again after any of its weights changed.

    Example:
        >>> fast = bcos_zoo.compile_for_inference(bcos_zoo.create_model("bcos_resnet18", pretrained=True))
        >>> logits = fast(images)              # no autograd; explain with the model itself
    """
    return FrozenInference(model, **compile_kwargs)
