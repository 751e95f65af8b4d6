"""timm-style feature extraction and gradient checkpointing, shared by every model family.

A family names its feature stages (:meth:`FeaturesMixin._feature_stages`: the submodule whose output
is the stage, its channels and reduction) and its head modules; from that alone this module derives,
for all families alike:

- ``forward_intermediates(x, indices=...)`` with timm's signature and return convention (the stage
  outputs are read with forward hooks during the family's own ``forward_features``, so hooks that
  users put on the same modules, e.g. ``explain(layer=...)``'s or pytorch-grad-cam's, see the same),
- ``feature_info`` (a :class:`FeatureInfo`: ``.channels()``, ``.reduction()``, ``.module_name()``),
- the features-only mode of ``create_model(name, features_only=True, out_indices=...)``, whose
  forward returns the list of selected feature maps and stops after the last one,
- ``set_grad_checkpointing``: the families run their blocks through :func:`run_block` (or hold them
  in a :class:`BlockSequence`), which recomputes each block's activations in the backward pass.

Every stage is a B-cos computation, so in explanation mode each feature map is dynamic linear in the
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

__all__ = ["BlockSequence", "FeatureInfo", "FeatureStage", "FeaturesMixin", "feature_take_indices", "run_block"]

Indices = int | Sequence[int] | None


@dataclass(frozen=True)
class FeatureStage:
    """One feature stage: the name of the submodule whose output it is, its channels and its
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


def run_block(block: Callable[..., Tensor], *inputs: Tensor, enabled: bool, owner: nn.Module | None = None) -> Tensor:
    """``block(*inputs)``; when ``enabled`` (and gradients are on) as a non-reentrant activation
    checkpoint, whose recomputation leaves the buffers of ``owner`` (default: ``block``) as they were."""
    if not (enabled and torch.is_grad_enabled()):
        return block(*inputs)
    module = block if owner is None else owner
    restore = lambda: (contextlib.nullcontext(), _buffers_restored(module))
    return checkpoint(block, *inputs, use_reentrant=False, context_fn=restore)


class BlockSequence(nn.Sequential):
    """An ``nn.Sequential`` of blocks (same state-dict keys) that checkpoints each block when
    ``grad_checkpointing`` is set; a block that checkpoints its own parts is called as it is."""

    grad_checkpointing: bool = False

    def forward(self, x: Tensor) -> Tensor:
        for block in self:
            x = run_block(block, x, enabled=self.grad_checkpointing and not hasattr(block, "grad_checkpointing"))
        return x


class _StopForward(Exception):
    """Raised by the stage hook once the last requested stage has run (``stop_early``)."""


class FeaturesMixin:
    """``forward_intermediates``, ``feature_info``, features-only mode and gradient checkpointing
    from a family's declared stages (see the module docstring).

    A family implements ``forward_features``, ``forward_head`` and ``_feature_stages``, names its head
    modules in ``_head_modules`` (dropped in features-only mode) and registers its submodules in
    forward order (what features-only mode relies on to drop the unused ones); a family whose stage
    outputs are tokens overrides ``_to_map`` and adds ``"NLC"`` to ``_output_formats``.
    """

    _head_modules: tuple[str, ...]
    _output_formats: tuple[str, ...] = ("NCHW",)
    _final_norm: str | None = None  # what forward_intermediates(norm=True) applies (ViTs: the final token norm)
    grad_checkpointing: bool = False
    _out_indices: tuple[int, ...] | None = None  # features-only mode: the stages forward returns
    _kept_stages: list[FeatureStage] | None = None  # features-only mode: the stages as built (before pruning)

    def _feature_stages(self) -> list[FeatureStage]:
        """The stages, in forward order."""
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
        for module in self.modules():  # type: ignore[attr-defined]
            if hasattr(module, "grad_checkpointing"):
                module.grad_checkpointing = bool(enable)

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
        outputs = self._stage_outputs(x, [stages[i].module for i in take], stop_early)
        final = outputs.pop()
        input_hw = (x.shape[-2], x.shape[-1])
        intermediates = []
        for i, out in zip(take, outputs):
            out = final_norm(out) if final_norm is not None else out
            intermediates.append(out if output_fmt == "NLC" else self._to_map(out, input_hw, stages[i]))
        return intermediates if intermediates_only else (final, intermediates)

    def _stage_outputs(self, x: Tensor, names: list[str], stop_early: bool) -> list[Tensor]:
        """The outputs of the modules ``names`` during ``forward_features(x)``, then its result (with
        ``stop_early``: the last module's output; the rest of the network does not run)."""
        captured: dict[str, Tensor] = {}

        def hook(name: str, output: Tensor) -> None:
            captured[name] = output
            if stop_early and name == names[-1]:
                raise _StopForward

        handles = [self.get_submodule(n).register_forward_hook(lambda _m, _i, out, n=n: hook(n, out)) for n in names]  # type: ignore[attr-defined]
        try:
            final = self.forward_features(x)  # type: ignore[attr-defined]
        except _StopForward:
            final = captured[names[-1]]
        finally:
            for handle in handles:
                handle.remove()
        return [captured[n] for n in names] + [final]

    def set_features_only(self, out_indices: Indices = None) -> nn.Module:
        """Turn this model into a feature extractor, in place: ``forward`` returns the ``out_indices``
        stages' maps and stops after the last one; the head and every module registered after that
        stage are dropped (so they hold no parameters). ``create_model(..., features_only=True)`` calls it."""
        if self._out_indices is not None:
            raise ValueError("this model is features-only already; build a new one for other out_indices")
        stages = self._feature_stages()
        take, last = feature_take_indices(len(stages), out_indices)
        module: nn.Module = self  # type: ignore[assignment]
        path = stages[last].module.split(".")
        for depth in range(len(path)):  # the later siblings of the stage module and of each of its parents
            parent = module.get_submodule(".".join(path[:depth]))
            names = list(parent._modules)
            for name in names[names.index(path[depth]) + 1 :]:
                if parent._modules[name] is not None:
                    setattr(parent, name, nn.Identity())
        for name in self._head_modules:
            if getattr(module, name.split(".")[0], None) is not None:
                module.set_submodule(name, nn.Identity())
        self._out_indices, self._kept_stages = tuple(take), stages
        return module
