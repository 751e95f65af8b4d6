"""Training and fine-tuning with the B-cos recipe, on one process or many (torchrun + DDP).

Recipe (B-cos v2): binary cross-entropy on the logits (the fixed logit bias -log(C-1) is part of
the model), optionally with uniform off-label targets 1/C, Adam, per-step cosine schedule with
linear warmup, random shifts and flips, optional EMA of the weights.

- :mod:`.config`: :class:`TrainConfig`, everything that determines a run;
- :mod:`.data`: the training and test batches of a run (:class:`TrainData`);
- :mod:`.loop`: :class:`Trainer` (model, optimizer, schedule, EMA, one epoch, the run) and :func:`bce_loss`;
- :mod:`.checkpoint`: the files a run writes (every epoch, and at the end) and reads on ``--resume``.

The command line (``bcos-zoo train`` / ``finetune``, ``scripts/train.py``) is in :mod:`bcos_zoo.cli.train`.
"""

from __future__ import annotations

from .config import TrainConfig
from .loop import Trainer, bce_loss, train

__all__ = ["TrainConfig", "Trainer", "bce_loss", "train"]
