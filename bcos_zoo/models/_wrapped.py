"""Checkpoints of models that the official code wrapped in an ``nn.Sequential``.

The official B-cos v2 ViTs are ``BcosSequential(vit, LogitLayer)`` and the B-cos v1 ImageNet models
``Sequential(net, pool, FinalLayer)``, so their checkpoint keys start with ``0.``. Our models own
their logit layer and pooling, so the keys lose that prefix.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

__all__ = ["WrappedCheckpointMixin"]


class WrappedCheckpointMixin:
    """Maps between our state-dict keys and the official ``0.``-prefixed ones.

    ``convert_state_dict`` is the hook ``bcos_zoo`` calls when loading a checkpoint: official
    (prefixed) dicts are converted, dicts in our own layout pass through unchanged.
    """

    official_prefix = "0."

    def convert_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Official layout (``0.``-prefixed keys) -> ours; our own layout is returned as is.

        Example:
            >>> model.load_state_dict(model.convert_state_dict(torch.load("official.pth")))
        """
        p = self.official_prefix
        if state_dict and all(k.startswith(p) for k in state_dict):
            return {k[len(p) :]: v for k, v in state_dict.items()}
        return dict(state_dict)

    def to_official_state_dict(self, state_dict: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Our layout (default: this model's ``state_dict()``) -> the official one.

        Example:
            >>> torch.save(model.to_official_state_dict(), "for_the_official_code.pth")
        """
        sd = self.state_dict() if state_dict is None else state_dict  # type: ignore[attr-defined]
        return {self.official_prefix + k: v for k, v in sd.items()}
