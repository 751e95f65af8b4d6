"""bcos-zoo: B-cos networks, their pretrained weights and their explanations.

Example:
    >>> import bcos_zoo
    >>> model = bcos_zoo.create_model("bcos_resnet18").eval()
    >>> out = model.explain(model.transform("cat.jpg")[None])
    >>> out.contribution_map.sum((-2, -1)) + out.bias_contribution  # == out.logits[0, out.target]

The layers point one way: ``layers`` <- ``models`` <- ``builder`` <- ``registry`` / ``records`` /
``fetch``; the command line, training and evaluation sit on top and use only this public API.
"""

from __future__ import annotations

from . import models  # noqa: F401  (registers the architectures)
from . import pretrained as _pretrained_tables  # noqa: F401  (registers the official and shipped weights)
from .bcosification import bcosify
from .builder import Pretrained, create_model, load_model
from .checkpoint import read_header, read_state_dict, save_weights
from .compiling import FrozenInference, compile_for_inference
from .errors import CheckpointError, DownloadError, HashMismatchError, OfflineError, TrustOnFirstUseWarning
from .explain import Explanation, explain, explain_topk, gradient_to_image
from .export import export_onnx, onnx_max_deviation
from .fetch import cache_dir
from .layers import explanation_mode
from .records import HubFile, PackageFile, UrlFile, WeightHeader, WeightSpec, release_file
from .registry import (
    default_weights, get_weights, is_model, list_models, list_weights, model_entrypoint, register_model,
    register_weights,
)  # fmt: skip
from .transforms import AddInverse, TransformConfig, create_transform
from .attribution import attribute, cam_target_layers, tokens_to_map  # captum, Grad-CAM
from .interop import ImageInputModel, quantus_explain_func  # Quantus
from .version import __version__

__all__ = [
    "__version__", "create_model", "load_model", "Pretrained", "list_models", "is_model", "model_entrypoint",
    "register_model", "list_weights", "get_weights", "default_weights", "register_weights", "WeightSpec",
    "WeightHeader", "HubFile", "UrlFile", "PackageFile", "release_file", "read_header", "read_state_dict",
    "save_weights", "cache_dir", "explain", "explain_topk", "Explanation", "gradient_to_image", "explanation_mode",
    "AddInverse", "TransformConfig", "create_transform", "CheckpointError", "DownloadError", "HashMismatchError",
    "OfflineError", "TrustOnFirstUseWarning", "bcosify",
    "export_onnx", "onnx_max_deviation", "compile_for_inference", "FrozenInference",
]  # fmt: skip
__all__ += ["attribute", "cam_target_layers", "tokens_to_map", "ImageInputModel", "quantus_explain_func"]
