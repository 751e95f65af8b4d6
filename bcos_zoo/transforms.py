"""Preprocessing: ``AddInverse`` and the evaluation transform attached to every model.

B-cos models see ``[r, g, b, 1-r, 1-g, 1-b]`` in [0, 1] (no mean/std normalisation), so that an
input and its colour inverse are both encoded and every pixel has the same norm. Standard
(non-B-cos) baselines see ImageNet-normalised RGB.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn

__all__ = [
    "AddInverse", "TransformConfig", "EvalTransform", "create_transform", "load_image", "ImageInput", "has_inverse",
    "color_channels", "add_inverse",
]  # fmt: skip

ImageInput = Union[Image.Image, Tensor, np.ndarray, str, os.PathLike]


def has_inverse(in_chans: int) -> bool:
    """The one rule for B-cos inputs: 2 (gray) or 6 (RGB) channels are an image followed by its inverse."""
    return in_chans in (2, 6)


def color_channels(in_chans: int) -> int:
    """Channels of the image itself for a model taking ``in_chans`` (1 or 3; half of 2 or 6)."""
    return in_chans // 2 if has_inverse(in_chans) else in_chans


def add_inverse(x: Tensor, dim: int = -3) -> Tensor:
    """``[x, 1 - x]`` along ``dim`` (the channels of ``[C, H, W]`` or ``[N, C, H, W]``): the B-cos input encoding."""
    return torch.cat([x, 1 - x], dim=dim)


class AddInverse(nn.Module):
    """Concatenate ``x`` and ``1 - x`` along ``dim`` (channels of a ``[C,H,W]`` or ``[N,C,H,W]`` tensor)."""

    def __init__(self, dim: int = -3) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return add_inverse(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


@dataclass(frozen=True)
class TransformConfig:
    """What the evaluation transform does; stored in every weight's metadata.

    Attributes:
        resize_size: shorter side after resizing (``None``: no resize).
        crop_size: side of the center crop (``None``: no crop).
        interpolation: torchvision interpolation name (``"bilinear"``, ``"bicubic"``, ...).
        in_chans: channels the model expects: 6 (RGB + inverse), 3 (RGB), 2 (gray + inverse), 1 (gray).
        mean, std: per-channel normalisation of the RGB/gray channels, ``None`` for B-cos models.
    """

    resize_size: int | None = 256
    crop_size: int | None = 224
    interpolation: str = "bilinear"
    in_chans: int = 6
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.in_chans not in (1, 2, 3, 6):
            raise ValueError(f"in_chans must be 1, 2, 3 or 6, got {self.in_chans}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together")

    @property
    def add_inverse(self) -> bool:
        return has_inverse(self.in_chans)

    @property
    def color_chans(self) -> int:
        """Channels of the image itself (before AddInverse)."""
        return color_channels(self.in_chans)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TransformConfig:
        """The inverse of :meth:`to_dict` after a JSON round trip (lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def describe(self) -> str:
        """One line a person can read, for model cards and ``--help`` texts."""
        steps = []
        if self.resize_size:
            steps.append(f"resize shorter side to {self.resize_size} ({self.interpolation}, antialias)")
        if self.crop_size:
            steps.append(f"center crop {self.crop_size}")
        steps.append(f"{'RGB' if self.color_chans == 3 else 'grayscale'} scaled to [0, 1]")
        if self.mean is not None:
            steps.append(f"normalise with mean={self.mean}, std={self.std}")
        if self.add_inverse:
            steps.append(f"append the inverse (1 - x) -> {self.in_chans} channels")
        return "; ".join(steps)


def _tf() -> Any:
    """torchvision's functional transforms, imported on first use (``import torchvision`` also loads
    ``torchvision.models``, which ``import bcos_zoo`` does not need)."""
    import torchvision.transforms.functional as TF

    return TF


def _pil_to_float(img: Image.Image, color_chans: int) -> Tensor:
    """Any PIL mode -> float tensor ``[color_chans, H, W]`` in [0, 1].

    16/32-bit integer and float modes are scaled by their range instead of being clipped (PIL's
    own ``convert`` saturates them); transparent pixels are composited over white.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        scale = 65535.0 if img.mode != "F" and arr.max(initial=0) > 255 else (1.0 if img.mode == "F" else 255.0)
        t = torch.from_numpy(np.clip(arr / scale, 0.0, 1.0))[None]
        return t.expand(3, -1, -1).clone() if color_chans == 3 else t
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = img.convert("RGB" if color_chans == 3 else "L")
    TF = _tf()
    return TF.convert_image_dtype(TF.pil_to_tensor(img), torch.float32)


def _tensor_to_float(x: Tensor | np.ndarray, color_chans: int) -> Tensor:
    """uint8 (0..255) or float (0..1) tensor / array, ``[H,W]``, ``[C,H,W]`` or ``[H,W,C]`` numpy -> float ``[c,H,W]``."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
        if x.dim() == 3 and x.shape[-1] in (1, 3, 4) and x.shape[0] not in (1, 3, 4):
            x = x.permute(2, 0, 1)  # numpy images are HWC
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3:
        raise ValueError(f"expected an image tensor [C,H,W] or [H,W], got shape {tuple(x.shape)}; for a batch, map over it")
    if x.shape[0] == 4:
        x = x[:3]  # drop alpha
    if x.shape[0] not in (1, 3):
        raise ValueError(
            f"expected an image with 1, 3 or 4 channels, got {x.shape[0]}; if this tensor is already "
            "preprocessed (e.g. 6 channels with AddInverse), pass it to the model directly"
        )
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"the image is empty (shape {tuple(x.shape)}): it needs at least one pixel")
    low, high = (float(v) for v in torch.aminmax(x)) if x.is_floating_point() else (0.0, 1.0)
    if not (-1e-3 <= low and high <= 1 + 1e-3):
        raise ValueError(
            f"a float image must hold values in [0, 1], got {low:.4g} to {high:.4g}; "
            "for 0..255 values divide by 255 or pass a uint8 tensor"
        )
    TF = _tf()
    x = TF.convert_image_dtype(x, torch.float32) if not x.is_floating_point() else x.float()
    if x.shape[0] == 1 and color_chans == 3:
        x = x.expand(3, -1, -1)
    elif x.shape[0] == 3 and color_chans == 1:
        x = TF.rgb_to_grayscale(x)
    return x


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully (so a truncated file fails here, with its name, not later)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e} (is it a complete JPEG/PNG/... file?)") from e


class EvalTransform:
    """The evaluation preprocessing of a model: resize, center crop, [0,1], (normalise), (AddInverse).

    Accepts a PIL image of any mode, a file path, a uint8 or float tensor / numpy array, and
    always returns a float tensor ``[in_chans, crop, crop]``. A plain callable, not an
    ``nn.Module``, so attaching it as ``model.transform`` does not add it to the module tree.
    """

    def __init__(self, config: TransformConfig) -> None:
        self.config = config

    def __call__(self, img: ImageInput) -> Tensor:
        cfg = self.config
        if isinstance(img, (str, os.PathLike)):
            img = load_image(img)
        if isinstance(img, Image.Image):
            img = self._resize_crop(img)
            x = _pil_to_float(img, cfg.color_chans)
        elif isinstance(img, (Tensor, np.ndarray)):
            x = self._resize_crop(_tensor_to_float(img, cfg.color_chans))
        else:
            raise TypeError(f"expected a PIL image, a path or an image tensor, got {type(img).__name__}")
        if cfg.mean is not None:
            x = _tf().normalize(x, list(cfg.mean), list(cfg.std))
        return add_inverse(x, dim=0) if cfg.add_inverse else x

    def _resize_crop(self, img: Any) -> Any:
        cfg, TF = self.config, _tf()
        if cfg.resize_size:
            interpolation = TF.InterpolationMode(cfg.interpolation)
            img = TF.resize(img, [cfg.resize_size], interpolation=interpolation, antialias=True)
        if cfg.crop_size:
            img = TF.center_crop(img, [cfg.crop_size, cfg.crop_size])
        return img

    def __repr__(self) -> str:
        return f"EvalTransform({self.config.describe()})"


def create_transform(config: TransformConfig | None = None, **overrides: Any) -> EvalTransform:
    """Build the evaluation transform for a config (default: B-cos ImageNet, 256 -> 224, 6 channels).

    Example:
        >>> t = create_transform(in_chans=6)
        >>> t(PIL.Image.open("cat.jpg")).shape
        torch.Size([6, 224, 224])
    """
    config = config or TransformConfig()
    if overrides:
        config = TransformConfig(**{**config.to_dict(), **overrides})
    return EvalTransform(config)
