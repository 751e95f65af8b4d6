"""The layout shared by the B-cos DenseNets, VGGs and ConvNeXts (torchvision's ``features`` /
``classifier`` split): ``features`` → ``classifier`` (B-cos convs applied *before* pooling) →
global average pool → fixed logit layer."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..layers import LogitLayer, default_logit_bias
from ..layers import init_bcos_weights_
from ._base import BcosModelMixin

__all__ = ["BcosFeaturesClassifier", "ConvFactory"]

ConvFactory = Callable[..., nn.Module]


class BcosFeaturesClassifier(BcosModelMixin, nn.Module):
    """Base of the families whose model is ``features`` plus a pre-pooling ``classifier``.

    A subclass builds ``self.features`` and ``self.classifier`` (whose last module is
    ``self._new_classifier(num_classes)``), sets ``num_features`` (channels entering that last
    1×1 B-cos conv) and ``_conv`` (the B-cos conv factory), then calls :meth:`_finish`.
    """

    features: nn.Module
    classifier: nn.Module
    num_features: int
    _conv: ConvFactory

    def _finish(self, num_classes: int, logit_bias: float | None, logit_temperature: float | None) -> None:
        """Add pooling and the logit layer (bias ``-log(C - 1)`` unless given), then initialise the weights."""
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        bias = default_logit_bias(num_classes) if logit_bias is None else logit_bias
        self.logit_layer = LogitLayer(logit_temperature, bias)
        init_bcos_weights_(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """The ``features`` module: ``[N, in_chans, H, W] -> [N, C, H/32, W/32]``."""
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """B-cos classifier, global average pool, logit bias: ``-> [N, num_classes]``."""
        return self.logit_layer(self.avgpool(self.classifier(x)).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_feature_extractor(self) -> nn.Module:
        """The ``features`` module (no classifier, no pooling)."""
        return self.features
