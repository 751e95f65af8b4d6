"""The batches of a training run: Fashion-MNIST in memory, or an ImageFolder tree (``train/``, ``val/``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ..data import (
    FASHION_MNIST_CLASSES, FASHION_MNIST_SIZE, InMemoryImages, augment_batch, image_folder_loader,
    load_fashion_mnist, open_dataset,
)  # fmt: skip
from ..transforms import TransformConfig, color_channels
from .config import TrainConfig
from .distributed import Dist

__all__ = ["TrainData"]


class TrainData:
    """Training and test batches of one run, for one process of ``shard.world``.

    Fashion-MNIST is held in memory as uint8 and augmented batch-wise (much faster on a small CPU
    than a per-image ``DataLoader``); the order and augmentation of each epoch derive from the
    seed and the epoch alone, so a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, cfg: TrainConfig, shard: Dist, in_chans: int = 6) -> None:
        # in_chans: of the model (2 or 6 with the inverse); the Trainer sets it once the model is built
        source = open_dataset(cfg.data)
        self.cfg, self.shard, self.in_chans = cfg, shard, in_chans
        self.last_order: Tensor | None = None
        self.folder = None if source.is_fashion_mnist else self._folders(source.root)
        if self.folder is None:
            self.train_set = InMemoryImages(*load_fashion_mnist(source.root, "train"), FASHION_MNIST_CLASSES)
            self.test_set = InMemoryImages(*load_fashion_mnist(source.root, "test"), FASHION_MNIST_CLASSES)
            self.classes = FASHION_MNIST_CLASSES
        else:
            from torchvision.datasets import ImageFolder

            self.classes = tuple(ImageFolder(str(self.folder[0])).classes)

    @staticmethod
    def _folders(root: Any) -> tuple[Any, Any]:
        train_dir = root / "train" if (root / "train").is_dir() else root
        test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), train_dir)
        return train_dir, test_dir

    def eval_transform(self) -> TransformConfig:
        """The preprocessing that turns a user's image into what the test batches hold."""
        if self.folder is None:
            return TransformConfig(resize_size=FASHION_MNIST_SIZE, crop_size=FASHION_MNIST_SIZE, in_chans=self.in_chans)
        size = self.cfg.image_size
        return TransformConfig(resize_size=int(size * 256 / 224), crop_size=size, in_chans=self.in_chans)

    def _folder_loader(self, train: bool, sampler: Any = None) -> torch.utils.data.DataLoader:
        transform = self.eval_transform()
        return image_folder_loader(self.folder[0] if train else self.folder[1], train=train, image_size=transform.crop_size,
                                   resize_size=transform.resize_size, batch_size=self.cfg.batch_size // self.shard.world,
                                   sampler=sampler, color_chans=color_channels(self.in_chans))  # fmt: skip

    def train_epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """This process's shard of the epoch, in an order (and with augmentation) fixed by seed and epoch."""
        cfg, shard = self.cfg, self.shard
        if self.folder is not None:
            dataset = self._folder_loader(True).dataset
            sampler = torch.utils.data.DistributedSampler(dataset, shard.world, shard.rank, shuffle=True, seed=cfg.seed,
                                                          drop_last=True)  # fmt: skip
            sampler.set_epoch(epoch)
            yield from self._folder_loader(True, sampler)
            return
        order = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        per_rank = cfg.batch_size // shard.world
        usable = (order.numel() // cfg.batch_size) * cfg.batch_size  # drop the last partial batch
        mine = order[:usable].view(-1, shard.world, per_rank)[:, shard.rank].reshape(-1)  # [steps * per_rank]
        aug_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 101 + shard.rank + 1)
        self.last_order = mine
        for x, y in self.train_set.batches(per_rank, mine):
            yield augment_batch(x, aug_gen, shift=cfg.shift, flip=cfg.flip), y

    def steps_per_epoch(self) -> int:
        if self.folder is None:
            n = len(self.train_set) // self.cfg.batch_size
        else:
            n = len(self._folder_loader(True)) // self.shard.world
        return min(n, self.cfg.max_steps_per_epoch or n)

    def test_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.folder is not None:
            yield from self._folder_loader(False)
            return
        limit = self.cfg.eval_limit or len(self.test_set)
        yield from self.test_set.batches(self.cfg.eval_batch_size, torch.arange(limit))
