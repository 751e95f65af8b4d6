"""Datasets for training and evaluation: Fashion-MNIST (idx files) and ImageFolder directories.

Both yield batches ``(x, y)`` with ``x`` float in [0, 1] of the image's own channels (1 for
grayscale, 3 for RGB); ``to_model_input`` then appends the inverse channels a B-cos model expects.
Fashion-MNIST is held in memory as uint8 and augmented batch-wise on the tensor device, which is
far faster on a small CPU than a per-image ``DataLoader`` pipeline.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .transforms import add_inverse, color_channels, has_inverse

__all__ = [
    "FASHION_MNIST_DIR", "FASHION_MNIST_SIZE", "FASHION_MNIST_CLASSES", "read_idx", "load_fashion_mnist", "InMemoryImages",
    "augment_batch", "to_model_input", "image_folder_loader", "DataSpec", "open_dataset",
]  # fmt: skip

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_SIZE = 28
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {arr.size}")
    return arr.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install the Debian package "
        "(apt-get install dataset-fashion-mnist) or pass a folder holding the four idx files."
    )


def load_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> tuple[Tensor, Tensor]:
    """Fashion-MNIST as ``(images uint8 [N, 1, 28, 28], labels int64 [N])``."""
    if split not in _FMNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    images_file, labels_file = (_find_idx(root, stem) for stem in _FMNIST_FILES[split])
    images = torch.from_numpy(read_idx(images_file).copy())[:, None]
    labels = torch.from_numpy(read_idx(labels_file).astype(np.int64))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_file} has {images.shape[0]} images but {labels_file} {labels.shape[0]} labels")
    return images, labels


@dataclass
class InMemoryImages:
    """uint8 images ``[N, C, H, W]`` with labels, batched by index."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batches(self, batch_size: int, order: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Float batches in [0, 1] in the given index ``order`` (default: as stored)."""
        order = torch.arange(len(self)) if order is None else order
        for start in range(0, order.numel(), batch_size):
            idx = order[start : start + batch_size]
            yield self.images[idx].float().div_(255), self.labels[idx]


def augment_batch(x: Tensor, generator: torch.Generator, *, shift: int = 2, flip: bool = True) -> Tensor:
    """Random translation by up to ``shift`` pixels (zero fill) and horizontal flips, per sample."""
    n, _, h, w = x.shape
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    if shift:
        padded = F.pad(x, (shift, shift, shift, shift))
        dy, dx = (torch.randint(0, 2 * shift + 1, (n,), generator=generator).to(x.device) for _ in range(2))
        rows = (torch.arange(h, device=x.device)[None] + dy[:, None])[:, None, :, None]  # [N, 1, H, 1]
        cols = (torch.arange(w, device=x.device)[None] + dx[:, None])[:, None, None, :]  # [N, 1, 1, W]
        batch = torch.arange(n, device=x.device).view(-1, 1, 1, 1)
        chans = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        x = padded[batch, chans, rows, cols]  # [N, C, H, W]
    return x


def to_model_input(x: Tensor, in_chans: int) -> Tensor:
    """Images in [0, 1] (1 or 3 channels) -> the model's channels (gray→RGB, then AddInverse if needed)."""
    color = color_channels(in_chans)
    if x.shape[1] == 1 and color == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != color:
        raise ValueError(f"images have {x.shape[1]} channels but the model takes {in_chans} ({color} + inverse)")
    return add_inverse(x, dim=1) if has_inverse(in_chans) else x


def image_folder_loader(root: str | os.PathLike, *, train: bool, image_size: int, resize_size: int | None,
                        batch_size: int, color_chans: int = 3, workers: int = 2,
                        sampler: object = None) -> torch.utils.data.DataLoader:  # fmt: skip
    """DataLoader over an ImageFolder directory: random-resized crops and flips for training,
    resize + center crop for evaluation; images as float RGB (or grayscale) in [0, 1]."""
    from torchvision import datasets
    from torchvision import transforms as T

    if train:
        steps = [T.RandomResizedCrop(image_size, antialias=True), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(resize_size or image_size, antialias=True), T.CenterCrop(image_size)]
    tf = T.Compose(steps + ([T.Grayscale(1)] if color_chans == 1 else []) + [T.ToTensor()])
    dataset = datasets.ImageFolder(str(root), transform=tf)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None,
                                       sampler=sampler, num_workers=workers, drop_last=train)  # fmt: skip


@dataclass(frozen=True)
class DataSpec:
    """Where a dataset comes from: ``"fashion-mnist"`` (optionally ``fashion-mnist:/dir``) or an ImageFolder path."""

    kind: str
    root: Path | None

    @property
    def is_fashion_mnist(self) -> bool:
        return self.kind == "fashion-mnist"


def open_dataset(spec: str) -> DataSpec:
    """Parse a ``--data`` argument."""
    if spec.startswith("fashion-mnist"):
        _, _, root = spec.partition(":")
        return DataSpec("fashion-mnist", Path(root) if root else None)
    path = Path(spec)
    if (path / "train-images-idx3-ubyte.gz").is_file() or (path / "train-images-idx3-ubyte").is_file():
        return DataSpec("fashion-mnist", path)
    if not path.is_dir():
        raise FileNotFoundError(f"--data {spec!r}: not 'fashion-mnist' and no such directory")
    return DataSpec("image-folder", path)
