"""What every B-cos classifier in the zoo offers, whatever its family."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..explain import Explanation, Target, check_input, explain
from ..layers import LogitLayer, default_logit_bias, explanation_mode
from ..layers import init_bcos_weights_

__all__ = ["BcosModelMixin"]


class BcosModelMixin:
    """Mixin for B-cos classifiers: explanation API, probabilities and the fine-tuning API.

    A family sets ``in_chans`` and ``num_classes``, owns a ``logit_layer`` and implements
    ``get_classifier``, ``_new_classifier`` and ``get_feature_extractor``; ``_classifier_path`` names
    the attribute holding the classifier so ``reset_classifier`` can replace it.
    """

    in_chans: int
    num_classes: int
    logit_layer: LogitLayer
    _classifier_path: str

    def explain(self, x: Tensor, target: Target = None, **kwargs: Any) -> Explanation:
        """Explain ``target`` logits of the batch ``x``; see :func:`bcos_zoo.explain`."""
        return explain(self, x, target, **kwargs)  # type: ignore[arg-type]

    def explanation_mode(self, active: bool = True) -> explanation_mode:
        """Context manager / decorator: inside it the model is exactly dynamic-linear."""
        return explanation_mode(self, active)  # type: ignore[arg-type]

    @staticmethod
    def to_probabilities(logits: Tensor) -> Tensor:
        """B-cos models are trained with binary cross-entropy: class probabilities are sigmoids."""
        return torch.sigmoid(logits)

    def check_input(self, x: Tensor) -> Tensor:
        return check_input(self, x)  # type: ignore[arg-type]

    def get_classifier(self) -> nn.Module:
        """The classifier (a 1×1 B-cos conv before pooling for CNNs)."""
        return self.get_submodule(self._classifier_path)  # type: ignore[attr-defined]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` classes and set
        the matching logit bias ``-log(C - 1)``, keeping device and dtype."""
        old = self.get_classifier()
        ref = next(old.parameters())
        new = self._new_classifier(num_classes).to(device=ref.device, dtype=ref.dtype)
        parent_name, _, child = self._classifier_path.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self  # type: ignore[attr-defined]
        setattr(parent, child, new)
        self.num_classes = num_classes
        self.logit_layer.logit_bias = default_logit_bias(num_classes)

    def _new_classifier(self, num_classes: int) -> nn.Module:
        """A freshly initialised 1×1 B-cos conv from ``num_features`` channels (built with the
        family's conv factory ``_conv``) to ``num_classes``; ViTs override it."""
        classifier = self._conv(self.num_features, num_classes, kernel_size=1)  # type: ignore[attr-defined]
        init_bcos_weights_(classifier)
        return classifier

    def get_feature_extractor(self) -> nn.Module:
        raise NotImplementedError
