"""Reading checkpoint files safely and loading them strictly.

``.safetensors`` files are read as they are; official B-cos ``.pth`` files (and PyTorch Lightning
checkpoints) are read with ``torch.load(weights_only=True)``, which never unpickles arbitrary
objects.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

__all__ = ["CheckpointError", "read_state_dict", "load_state_dict_strict", "state_dict_differences", "unwrap_state_dict"]


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, corrupt or does not fit the model."""


def unwrap_state_dict(obj: object) -> dict[str, Tensor]:
    """Find the model weights in a loaded ``.pth`` object: a plain state dict, a
    ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper, or a Lightning checkpoint (``model.`` prefix)."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError("the file does not hold a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("model.") or k.startswith("ema.") for k in obj):
        obj = {k[len("model.") :]: v for k, v in obj.items() if k.startswith("model.")}
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return dict(obj)


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt``/``.ckpt`` file onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError) as e:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {e}. The file may be truncated or corrupt (delete it and "
            "download it again), or a pickle with objects other than tensors (refused for safety)."
        ) from e
    return unwrap_state_dict(obj)


def state_dict_differences(
    own: dict[str, Tensor], state_dict: dict[str, Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Keys missing from ``state_dict``, keys it has in excess, and shape mismatches (sorted)."""
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if state_dict[k].shape != own[k].shape
    )
    return missing, unexpected, shapes


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with an error that lists what differs."""
    missing, unexpected, shapes = state_dict_differences(model.state_dict(), state_dict)
    if missing or unexpected or shapes:
        parts = [f"{source} does not fit {type(model).__name__}:"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
                parts.append(f"{label}: {shown}")
        parts.append("Check the architecture name and its arguments (num_classes, in_chans, norm_layer, ...).")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state_dict, strict=True)
