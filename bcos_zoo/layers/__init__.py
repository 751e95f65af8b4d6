"""B-cos building blocks: layers, norms, the logit layer and explanation mode."""

from .bcos import (
    BcosConv2d,
    BcosLinear,
    ConvFactory,
    NormedConv2d,
    NormedLinear,
    bcos_conv_factory,
    bcos_scale,
    init_bcos_weights_,
    patch_norms,
)
from .dau import DAU_NORMS, CoDAConv2d, DAUWeights
from .detach import Detachable, InputIndependentTerm, explanation_mode, model_in_explanation_mode
from .logit import LogitLayer, default_logit_bias
from .norms import (
    NORM_NAMES,
    AllNorm2d,
    AllNormUncentered2d,
    BatchNorm2d,
    BatchNormUncentered2d,
    DetachableGNInstanceNorm2d,
    DetachableGNLayerNorm2d,
    DetachableGroupNorm2d,
    DetachableLayerNorm,
    DetachablePositionNorm2d,
    GNInstanceNormUncentered2d,
    GNLayerNormUncentered2d,
    GroupNormUncentered2d,
    NormFactory,
    PositionNormUncentered2d,
    get_norm_layer,
)
from .stochastic_depth import StochasticDepth, linear_drop_probs

__all__ = [
    "BcosConv2d", "BcosLinear", "ConvFactory", "NormedConv2d", "NormedLinear", "bcos_conv_factory", "bcos_scale",
    "init_bcos_weights_", "patch_norms", "Detachable", "InputIndependentTerm", "explanation_mode",
    "model_in_explanation_mode", "LogitLayer", "default_logit_bias", "StochasticDepth", "linear_drop_probs",
    "NORM_NAMES", "AllNorm2d", "AllNormUncentered2d", "BatchNorm2d", "BatchNormUncentered2d",
    "DetachableGNInstanceNorm2d", "DetachableGNLayerNorm2d", "DetachableGroupNorm2d", "DetachableLayerNorm",
    "DetachablePositionNorm2d", "GNInstanceNormUncentered2d", "GNLayerNormUncentered2d", "GroupNormUncentered2d",
    "NormFactory", "PositionNormUncentered2d", "get_norm_layer", "CoDAConv2d", "DAUWeights", "DAU_NORMS",
]  # fmt: skip
