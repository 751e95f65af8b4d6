"""The configuration of a training run (stored in its checkpoints and card)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Everything that determines a training run.

    Attributes:
        model: architecture name (or, with ``init_from``, the architecture of those weights).
        model_kwargs: architecture options (``in_chans``, ``norm_layer``, ...).
        data: ``"fashion-mnist"``, ``"fashion-mnist:DIR"``, a folder of idx files, or an ImageFolder root.
        out: output directory (checkpoints, final weights, card).
        epochs, batch_size, lr, weight_decay, warmup_epochs: the optimisation (global batch size).
        off_label: uniform off-label targets 1/C in the BCE loss.
        ema_decay: keep an EMA of the weights with this per-step decay.
        shift, flip: Fashion-MNIST augmentation (max translation in pixels, horizontal flips).
        seed: fixes initialisation, data order and augmentation of every epoch.
        init_from: fine-tune from a registered weight name or a checkpoint file (new classifier).
        freeze_features: train the classifier only.
        image_size: crop size for ImageFolder data.
        max_steps_per_epoch, eval_batch_size, eval_limit: caps for smoke tests and evaluation.
        keep_classifier: with ``init_from`` a file: keep its classifier when it has as many classes as the data.
        optimizer: ``"adam"`` or ``"adamw"`` (decoupled weight decay; the B-cosification recipe for CNNs).
        b_schedule: ``"linear"`` raises the B of every B-cos unit linearly from 1 (first step) to the
            model's own B (last step), as in the B-cosification ablation; ``None`` keeps it fixed.
        eval_at_start: evaluate before the first step too (history entry ``epoch: 0``, ``wall_time: 0``).
        distill_from: fine-tuning a B-cosified model, also fit the sigmoid outputs of this standard network (the
            one it was made from; a ``bcos_zoo.bcosification.load_standard`` source): knowledge distillation.
        distill_weight: the BCE targets are ``(1 - w) * one-hot + w * sigmoid(teacher logits)``.
    """

    model: str = "bcos_resnet20_cifar"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "fashion-mnist"
    out: str = "runs/train"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_epochs: float = 1.0
    off_label: bool = False
    ema_decay: float | None = None
    shift: int = 2
    flip: bool = True
    seed: int = 0
    init_from: str | None = None
    freeze_features: bool = False
    image_size: int = 224
    max_steps_per_epoch: int | None = None
    eval_batch_size: int = 500
    eval_limit: int | None = None
    keep_classifier: bool = False
    optimizer: str = "adam"
    b_schedule: str | None = None
    eval_at_start: bool = False
    distill_from: str | None = None
    distill_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.b_schedule not in (None, "linear"):
            raise ValueError(f"b_schedule must be None (fixed B) or 'linear' (1 to the model's B): {self.b_schedule!r}")
        if not 0.0 < self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight is the teacher's share of the targets, in (0, 1]: {self.distill_weight}")
