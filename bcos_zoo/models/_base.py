"""What every B-cos classifier in the zoo offers, whatever its family."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..explain import Explanation, Target, check_input, explain
from ..layers import ConvFactory, LogitLayer, default_logit_bias, explanation_mode, init_bcos_weights_
from ..layers.fold import link_conv_norm_pairs
from ._features import FeaturesMixin

__all__ = ["BcosFeaturesClassifier", "BcosModelMixin"]


class BcosModelMixin(FeaturesMixin):
    """Mixin for B-cos classifiers: the classifier head, explanation API, probabilities and fine-tuning.

    A family's ``__init__`` calls :meth:`_init_bcos` right after ``nn.Module.__init__``, builds its
    layers with the conv factory ``self._conv`` and its classifier with ``self._new_classifier``,
    sets ``num_features`` (channels entering the classifier) and ends with
    ``init_bcos_weights_(self)``. It implements ``forward_features`` and ``get_feature_extractor``,
    declares its feature stages (see :class:`~bcos_zoo.models._features.FeaturesMixin`) and says
    where its head is: ``_head_path`` names the module applied to the features *before*
    pooling (the classifier, or an ``nn.Sequential`` ending in it), ``_classifier_path`` the
    classifier itself, which ``reset_classifier`` replaces.
    """

    in_chans: int
    num_classes: int
    num_features: int
    logit_layer: LogitLayer
    _conv: ConvFactory
    _head_path: str
    _classifier_path: str

    def _init_bcos(self, *, num_classes: int, in_chans: int, conv: ConvFactory, logit_bias: float | None,
                   logit_temperature: float | None) -> None:  # fmt: skip
        """Set what every family has: class and input-channel counts, the conv factory, the global
        average pool and the logit layer (bias ``-log(C - 1)`` unless ``logit_bias`` is given)."""
        self.num_classes, self.in_chans, self._conv = num_classes, in_chans, conv
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.logit_layer = LogitLayer.for_classes(num_classes, logit_bias, logit_temperature)

    def forward_head(self, x: Tensor) -> Tensor:
        """Classifier (B-cos convs *before* pooling), global average pool, logit transform:
        ``[N, num_features, h, w] -> [N, num_classes]``."""
        head = self.get_submodule(self._head_path)  # type: ignore[attr-defined]
        return self.logit_layer(self.avgpool(head(x)).flatten(1))

    def explain(self, x: Tensor, target: Target = None, **kwargs: Any) -> Explanation:
        """Explain ``target`` logits of the batch ``x``; see :func:`bcos_zoo.explain`."""
        return explain(self, x, target, **kwargs)  # type: ignore[arg-type]

    def explanation_mode(self, active: bool = True) -> explanation_mode:
        """Context manager / decorator: inside it the model is exactly dynamic-linear."""
        return explanation_mode(self, active)  # type: ignore[arg-type]

    def train(self, mode: bool = True) -> Any:
        """``nn.Module.train``; entering eval mode also links each B-cos conv to the uncentred norm that
        follows it, so the norm is folded into the conv's cached filters (``layers.fastpath``)."""
        if not mode:
            link_conv_norm_pairs(self)  # type: ignore[arg-type]
        return super().train(mode)  # type: ignore[misc]

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
        """A freshly initialised 1×1 conv (from the family's conv factory ``_conv``) from
        ``num_features`` channels to ``num_classes``; ViTs override it."""
        classifier = self._conv(self.num_features, num_classes, kernel_size=1)
        init_bcos_weights_(classifier)
        return classifier

    def get_feature_extractor(self) -> nn.Module:
        raise NotImplementedError


class BcosFeaturesClassifier(BcosModelMixin, nn.Module):
    """The layout of the B-cos DenseNets, VGGs and ConvNeXts (torchvision's split): ``features``,
    then ``classifier`` (B-cos convs applied *before* pooling), global average pool, logit layer.

    A subclass builds ``self.features`` and ``self.classifier`` (whose last module is
    ``self._new_classifier(num_classes)``; ``_classifier_path`` names it); ``features`` is a
    :class:`~bcos_zoo.models._features.BlockSequence`, so gradient checkpointing covers it.
    """

    features: nn.Module
    classifier: nn.Module
    _head_path = "classifier"
    _head_modules = ("classifier",)

    def forward_features(self, x: Tensor) -> Tensor:
        """The ``features`` module: ``[N, in_chans, H, W] -> [N, C, H/32, W/32]``."""
        return self.features(x)

    def get_feature_extractor(self) -> nn.Module:
        """The ``features`` module (no classifier, no pooling)."""
        return self.features
