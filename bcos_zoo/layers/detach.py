"""Explanation mode: the switch that turns a B-cos network into an exactly linear map.

In explanation mode every layer treats its input-dependent scalings (the B-cos |cos|^(B-1) factor,
the variance of a norm, the attention matrix of a ViT) as constants. Backpropagating a logit then
yields W(x), the dynamic linear map with ``logit = W(x) · x (+ input-independent terms)``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from torch import nn

__all__ = ["Detachable", "InputIndependentTerm", "explanation_mode", "model_in_explanation_mode"]


class Detachable:
    """Mixin for modules whose forward detaches input-dependent scales in explanation mode.

    The flag lives in ``self.detach`` (the name the official B-cos code uses), with a class-level
    default so that the mixin needs no ``__init__`` of its own.
    """

    detach: bool = False

    def set_explanation_mode(self, active: bool = True) -> None:
        """Turn explanation mode on or off for this module only.

        Off removes the instance attribute (back to the class default) rather than storing False, so a
        module leaving explanation mode looks exactly as before it entered: ``torch.compile`` guards on
        the attribute's presence, and a compiled model then reuses its first plain graph.
        """
        if active:
            self.detach = True
        else:
            self.__dict__.pop("detach", None)

    @property
    def is_in_explanation_mode(self) -> bool:
        """Whether this module (alone) is in explanation mode; see :func:`model_in_explanation_mode`
        for a whole model."""
        return self.detach


class InputIndependentTerm:
    """Marker for modules whose output does not depend on the network input (e.g. a fixed
    positional embedding). Their share of a logit is not part of ``W(x)·x``; ``explain()``
    measures it separately and reports it in ``bias_contribution`` so contributions stay complete.
    """


class explanation_mode(contextlib.ContextDecorator):  # noqa: N801 (reads like a function)
    """Context manager and decorator that puts every detachable submodule of ``model`` in
    explanation mode (or out of it, with ``active=False``).

    Unlike the official implementation, the modules are collected afresh on every entry (so a
    swapped classifier is covered) and each module's previous state is restored on exit, also
    when the body raises. Nested and re-entrant use is safe.

    Example:
        >>> with explanation_mode(model):
        ...     logits = model(x)  # dynamic linear in x
    """

    def __init__(self, model: nn.Module, active: bool = True) -> None:
        self.model = model
        self.active = active
        self._saved: list[list[tuple[Detachable, bool]]] = []

    def __enter__(self) -> nn.Module:
        saved = [(m, m.detach) for m in self.model.modules() if isinstance(m, Detachable)]
        self._saved.append(saved)
        try:
            for module, _ in saved:
                module.set_explanation_mode(self.active)
        except BaseException:  # a module refused (e.g. a centered BatchNorm2d in training mode)
            self.__exit__()  # undo the modules already switched; __exit__ is not called when __enter__ raises
            raise
        return self.model

    def __exit__(self, *exc: Any) -> bool:
        for module, previous in self._saved.pop():
            module.set_explanation_mode(previous)
        return False


def model_in_explanation_mode(model: nn.Module) -> bool:
    """True when ``model`` has detachable submodules and every one of them is in explanation mode
    (unlike the per-module property ``Detachable.is_in_explanation_mode``)."""
    flags = [m.detach for m in model.modules() if isinstance(m, Detachable)]
    return bool(flags) and all(flags)
