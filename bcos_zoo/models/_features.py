"""timm-style feature extraction and gradient checkpointing, shared by every model family.

A family describes its ``forward_features`` once, as an ordered list of named steps
(:meth:`FeaturesMixin._feature_steps`, usually its own submodules), and names the steps whose outputs
are its feature stages (:meth:`FeaturesMixin._feature_stages`: module name, channels, reduction). From
that alone this module derives, for all families alike:

- ``forward_features`` (the steps in order, each under activation checkpointing when
  :meth:`~FeaturesMixin.set_grad_checkpointing` is on),
- ``forward_intermediates(x, indices=...)`` with timm's signature and return convention,
- ``feature_info`` (a :class:`FeatureInfo`: ``.channels()``, ``.reduction()``, ``.module_name()``),
- the features-only mode of ``create_model(name, features_only=True, out_indices=...)``, whose
  forward returns the list of selected feature maps.

Every step is a B-cos computation, so in explanation mode each feature map is dynamic linear in the
input, as the logits are: ``explain(model, x, layer=model.feature_info.module_name(i))`` explains it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["FeatureInfo", "FeatureStage", "FeaturesMixin", "feature_take_indices"]

Indices = int | Sequence[int] | None
Step = tuple[str, Callable[[Tensor], Tensor]]


@dataclass(frozen=True)
class FeatureStage:
    """One feature stage: the step (a module name) whose output it is, its channels and its
    reduction (the input's side over the map's, nominally)."""

    module: str
    num_chs: int
    reduction: int


def feature_take_indices(num_stages: int, indices: Indices) -> tuple[list[int], int]:
    """timm's index rule: ``None`` takes every stage, an int ``n`` the last ``n``, a sequence those
    stages (negative ones count from the end). Returns the sorted indices and the largest one.

    Example:
        >>> feature_take_indices(5, 2)
        ([3, 4], 4)
    """
    if indices is None:
        take = list(range(num_stages))
    elif isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(
                f"indices={indices} asks for the last {indices} of {num_stages} stages; give 1 to {num_stages}"
            )
        take = list(range(num_stages - indices, num_stages))
    else:
        take = []
        for i in indices:
            if not -num_stages <= int(i) < num_stages:
                raise ValueError(f"feature index {i} is out of range: this model has stages 0 to {num_stages - 1}")
            take.append(int(i) % num_stages)
        if not take:
            raise ValueError("indices is empty; give at least one stage index (or None for all)")
        take = sorted(set(take))
    return take, max(take)


class FeatureInfo:
    """The feature stages of a model and the ones it outputs (timm's ``FeatureInfo`` API subset).

    ``channels()``, ``reduction()`` and ``module_name()`` list the selected stages' values (or one
    stage's, given its position in ``out_indices``); ``info[i]`` is a timm-style dict
    ``{"module", "num_chs", "reduction", "index"}``; iterating yields the selected stages' dicts.
    """

    def __init__(self, stages: Sequence[FeatureStage], out_indices: Sequence[int]) -> None:
        self.stages = tuple(stages)
        self.out_indices = tuple(out_indices)

    def _selected(self, idx: int | None) -> list[FeatureStage]:
        chosen = [self.stages[i] for i in self.out_indices]
        return chosen if idx is None else [chosen[idx]]

    def _get(self, key: str, idx: int | None) -> Any:
        values = [getattr(s, key) for s in self._selected(idx)]
        return values if idx is None else values[0]

    def channels(self, idx: int | None = None) -> list[int] | int:
        return self._get("num_chs", idx)

    def reduction(self, idx: int | None = None) -> list[int] | int:
        return self._get("reduction", idx)

    def module_name(self, idx: int | None = None) -> list[str] | str:
        return self._get("module", idx)

    def get_dicts(self) -> list[dict[str, Any]]:
        return [self[i] for i in range(len(self))]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        stage = self._selected(idx)[0]
        return {
            "module": stage.module,
            "num_chs": stage.num_chs,
            "reduction": stage.reduction,
            "index": self.out_indices[idx],
        }

    def __len__(self) -> int:
        return len(self.out_indices)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.get_dicts())

    def __repr__(self) -> str:
        return f"FeatureInfo({self.get_dicts()})"


@contextlib.contextmanager
def _buffers_restored(module: object) -> Iterator[None]:
    """Undo buffer updates of a checkpoint's recomputation (batch-norm running statistics would
    otherwise be updated twice per training step)."""
    buffers = list(module.buffers()) if isinstance(module, nn.Module) and module.training else []
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


class FeaturesMixin:
    """``forward_features``, ``forward_intermediates``, ``feature_info``, features-only mode and
    gradient checkpointing from a family's declared steps and stages (see the module docstring).

    A family implements ``_feature_steps``, ``_feature_stages`` and ``forward_head`` and names its
    head modules in ``_head_modules`` (dropped in features-only mode); a family whose stage outputs
    are tokens overrides ``_to_map`` and adds ``"NLC"`` to ``_output_formats``.
    """

    _head_modules: tuple[str, ...]
    _output_formats: tuple[str, ...] = ("NCHW",)
    _final_norm: str | None = None  # what forward_intermediates(norm=True) applies (ViTs: the final token norm)
    grad_checkpointing: bool = False
    _out_indices: tuple[int, ...] | None = None  # features-only mode: the stages forward returns
    _kept_stages: list[FeatureStage] | None = None  # features-only mode: the stages as built (before pruning)

    def _feature_steps(self) -> list[Step]:
        """``forward_features`` as ordered ``(name, step)`` pairs; a step named after a submodule is that module."""
        raise NotImplementedError

    def _feature_stages(self) -> list[FeatureStage]:
        """The stages, in forward order; each ``module`` is the name of one of the steps."""
        raise NotImplementedError

    def _to_map(self, out: Tensor, input_hw: tuple[int, int], stage: FeatureStage) -> Tensor:
        """A stage output as an ``[N, C, H, W]`` map (CNN stages already are one)."""
        return out

    def _stages(self) -> list[FeatureStage]:
        return self._kept_stages if self._kept_stages is not None else self._feature_stages()

    @property
    def feature_info(self) -> FeatureInfo:
        """The feature stages (all of them, or those a features-only model outputs)."""
        stages = self._stages()
        return FeatureInfo(stages, self._out_indices or range(len(stages)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them: less
        memory for training and explaining, same gradients, about one more forward pass of compute."""
        self.grad_checkpointing = bool(enable)

    def _run_step(self, step: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """One step; with gradient checkpointing, as one checkpoint (called as a whole, so hooks on
        the step's module, e.g. ``explain(layer=...)``'s, still see its output)."""
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return step(x)
        restore = lambda: (contextlib.nullcontext(), _buffers_restored(step))
        return checkpoint(step, x, use_reentrant=False, context_fn=restore)

    def forward_features(self, x: Tensor) -> Tensor:
        """Every step in order: the features the head classifies (``[N, C, h, w]``; ViTs: ``[N, tokens, dim]``)."""
        for _, step in self._feature_steps():
            x = self._run_step(step, x)
        return x

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits ``[N, num_classes]``; in features-only mode the list of selected feature maps."""
        if self._out_indices is not None:
            return self.forward_intermediates(x, list(self._out_indices), stop_early=True, intermediates_only=True)
        return self.forward_head(self.forward_features(x))  # type: ignore[attr-defined]

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Indices = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Intermediate feature maps, timm's way.

        Args:
            x: input batch ``[N, in_chans, H, W]``.
            indices: stages to return (see :func:`feature_take_indices`): ``None`` all, ``n`` the last ``n``.
            norm: apply the final norm to each output (ViTs only, as in timm).
            stop_early: stop after the last requested stage (the returned features are then its output).
            output_fmt: ``"NCHW"`` maps; ViTs also ``"NLC"`` (their tokens as they are).
            intermediates_only: return only the list.

        Returns:
            ``intermediates``, a list of ``[N, C, H/r, W/r]`` tensors, or ``(features, intermediates)``
            where ``features`` is ``forward_features(x)`` (what ``forward_head`` takes).

        Example:
            >>> final, maps = model.forward_intermediates(x, indices=(1, 2))
            >>> [m.shape[1] for m in maps] == model.feature_info.channels()[1:3]
        """
        stages = self._stages()
        take, last = feature_take_indices(len(stages), indices)
        if self._out_indices is not None and last > max(self._out_indices):
            raise ValueError(f"this features-only model keeps stages up to {max(self._out_indices)}, not {last}; "
                             "build it with those out_indices")  # fmt: skip
        if output_fmt not in self._output_formats:
            raise ValueError(
                f"output_fmt={output_fmt!r}: {type(self).__name__} supports {', '.join(self._output_formats)}"
            )
        final_norm = self.get_submodule(self._final_norm) if norm and self._final_norm else None  # type: ignore[attr-defined]
        if norm and final_norm is None:
            raise ValueError(f"norm=True: {type(self).__name__} has no final norm to apply to its intermediates")
        wanted = {stages[i].module: i for i in take}
        input_hw = (x.shape[-2], x.shape[-1])
        intermediates = []
        for name, step in self._feature_steps():
            x = self._run_step(step, x)
            if name in wanted:
                out = final_norm(x) if final_norm is not None else x
                intermediates.append(out if output_fmt == "NLC" else self._to_map(out, input_hw, stages[wanted[name]]))
                if stop_early and wanted[name] == last:
                    break
        return intermediates if intermediates_only else (x, intermediates)

    def set_features_only(self, out_indices: Indices = None) -> nn.Module:
        """Turn this model into a feature extractor, in place: ``forward`` returns the ``out_indices``
        stages' maps, the head and the stages after the last index are dropped (so they hold no
        parameters). ``create_model(name, features_only=True, out_indices=...)`` calls it."""
        if self._out_indices is not None:
            raise ValueError("this model is features-only already; build a new one for other out_indices")
        stages = self._feature_stages()
        take, last = feature_take_indices(len(stages), out_indices)
        module: nn.Module = self  # type: ignore[assignment]
        steps = self._feature_steps()
        end = next(i for i, (name, _) in enumerate(steps) if name == stages[last].module)
        for name, step in steps[end + 1 :]:
            if _is_submodule(module, name, step):
                module.set_submodule(name, nn.Identity())
        for name in self._head_modules:
            if getattr(module, name.split(".")[0], None) is not None:
                module.set_submodule(name, nn.Identity())
        self._out_indices, self._kept_stages = tuple(take), stages
        return module


def _is_submodule(module: nn.Module, name: str, step: object) -> bool:
    try:
        return module.get_submodule(name) is step
    except AttributeError:
        return False
