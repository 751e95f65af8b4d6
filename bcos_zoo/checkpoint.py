"""Reading and writing checkpoint files safely, and loading them strictly.

The format of a file is told by its content, not its name: ``.safetensors`` files are read as they
are; PyTorch files (official B-cos ``.pth``, Lightning ``.ckpt``) with
``torch.load(weights_only=True)``, which never unpickles arbitrary objects. Every failure is a
:class:`~bcos_zoo.errors.CheckpointError` that names the file.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .errors import CheckpointError
from .files import atomic_write, sha256_file
from .records import WeightHeader

__all__ = [
    "checkpoint_format", "read_state_dict", "read_header", "save_weights", "unwrap_state_dict",
    "state_dict_differences", "check_fits", "load_state_dict_strict", "check_finite",
]  # fmt: skip

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit for the JSON header


def checkpoint_format(path: str | os.PathLike) -> str:
    """``"safetensors"`` or ``"torch"`` (zip or legacy pickle), told by the first bytes of the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= _MAX_HEADER:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    raise CheckpointError(
        f"{path} is not a checkpoint (neither safetensors nor a PyTorch file; it starts with {head[:8]!r}). "
        "Pass a .safetensors or .pth file of model weights."
    )


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
    """Read a safetensors or PyTorch checkpoint onto the CPU.

    Example:
        >>> state = read_state_dict("resnet_50-ead259efe4.pth")
    """
    path = Path(path)
    fmt = checkpoint_format(path)
    try:
        if fmt == "safetensors":
            return load_file(str(path), device="cpu")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only=True met a pickled object that is not a tensor
        detail = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), "")[:200]
        raise CheckpointError(
            f"cannot read checkpoint {path} with torch.load(weights_only=True): it pickles objects other than tensors "
            f"({detail or 'refused for safety'}). Lightning .ckpt files keep hyper-parameters and callbacks that way. "
            "If you trust the file, extract its weights once: python -c \"import torch; ckpt = torch.load('"
            f"{path}', weights_only=False); torch.save(ckpt['state_dict'], '{path.with_suffix('.state_dict.pth')}')\" "
            "and pass the new file."
        ) from e
    except Exception as e:  # noqa: BLE001 - the unpickler and the parsers raise anything on a bad file
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {' '.join(str(e).split())[:300]}. The file may be "
            "truncated or corrupt (delete it and fetch it again), or a pickle with objects other than tensors "
            "(refused for safety)."
        ) from e
    try:
        return unwrap_state_dict(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def read_header(path: str | os.PathLike) -> WeightHeader:
    """The :class:`~bcos_zoo.records.WeightHeader` of a safetensors file (empty for PyTorch files)."""
    path = Path(path)
    if checkpoint_format(path) != "safetensors":
        return WeightHeader()
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on a corrupt header
        raise CheckpointError(f"cannot read the safetensors header of {path}: {e}; the file is corrupt") from e
    return WeightHeader.from_header(meta, where=str(path))


def check_finite(state: Mapping[str, Tensor], what: str) -> None:
    """Refuse weights with NaN or infinite values (they would give all-NaN logits), naming the first key."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{what}: tensor {key!r} has NaN or infinite values; these weights are broken")


def save_weights(state: Mapping[str, Tensor], dst: str | os.PathLike, header: WeightHeader | None = None,
                 extra: Mapping[str, str] | None = None) -> str:  # fmt: skip
    """Write ``state`` as a ``.safetensors`` file atomically, with ``header`` in its metadata.

    Args:
        state: name -> tensor (copied to the CPU, shared storage separated).
        dst: the file to write.
        header: what rebuilds the model from the file (see :class:`~bcos_zoo.records.WeightHeader`).
        extra: more ``str -> str`` metadata (e.g. a training run's own bookkeeping).

    Returns:
        The SHA-256 of the written file.

    Example:
        >>> save_weights(model.state_dict(), "model.safetensors", WeightHeader(arch=model.arch))
    """
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    metadata = {"format": "pt", **(extra or {}), **(header.to_header() if header else {})}
    with atomic_write(Path(dst)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        return sha256_file(tmp)


def state_dict_differences(
    own: Mapping[str, Tensor], state_dict: Mapping[str, Tensor]
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


def check_fits(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Raise a :class:`CheckpointError` that lists every key and shape in which ``state_dict`` and ``model``
    differ (works on a model built on the ``meta`` device, so nothing is allocated to find out)."""
    missing, unexpected, shapes = state_dict_differences(model.state_dict(), state_dict)
    if missing or unexpected or shapes:
        parts = [f"{source} does not fit {type(model).__name__}:"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
                parts.append(f"{label}: {shown}")
        parts.append("Check the architecture name and its arguments (num_classes, in_chans, norm_layer, ...).")
        raise CheckpointError("\n  ".join(parts))


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with a :class:`CheckpointError` that lists what differs."""
    check_fits(model, state_dict, source)
    model.load_state_dict(dict(state_dict), strict=True)

