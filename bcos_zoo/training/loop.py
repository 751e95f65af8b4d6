"""The training loop: model, optimizer, schedule and EMA of one run, and how an epoch goes."""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..builder import create_model
from ..checkpoint import read_state_dict
from ..errors import CheckpointError
from ..evaluation import evaluate
from ..data import to_model_input
from ..layers.bcosified import model_b, set_b_
from . import checkpoint
from .config import TrainConfig
from .data import TrainData
from .distributed import init_distributed

__all__ = ["Trainer", "bce_loss", "scheduled_b", "train"]

log = logging.getLogger(__name__)


def bce_loss(logits: Tensor, labels: Tensor, off_label: bool = False, soft: Tensor | None = None,
             soft_weight: float = 0.5) -> Tensor:  # fmt: skip
    """Binary cross-entropy against one-hot targets; with ``off_label`` the off-targets are 1/C; with ``soft``
    (a teacher's probabilities, distillation) the targets are ``(1 - soft_weight) * one-hot + soft_weight * soft``.

    Example:
        >>> loss = bce_loss(model(x), y)  # B-cos models are trained with BCE, not softmax cross-entropy
    """
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    if off_label:
        targets = targets.clamp(min=1.0 / logits.shape[1])
    if soft is not None:
        targets = torch.lerp(targets, soft.to(logits.dtype), soft_weight)
    return F.binary_cross_entropy_with_logits(logits, targets)


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 1% to 100%, then cosine decay to 0."""
    if step < warmup_steps:
        return 0.01 + 0.99 * step / max(warmup_steps, 1)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def scheduled_b(step: int, total_steps: int, b_final: float) -> float:
    """The linear B schedule: 1 at the first step, ``b_final`` at the last (``total_steps`` in all).

    Example:
        >>> [scheduled_b(s, 5, 2.0) for s in range(5)]
        [1.0, 1.25, 1.5, 1.75, 2.0]
    """
    return 1.0 + (b_final - 1.0) * min(step / max(total_steps - 1, 1), 1.0)


def _init_from_file(cfg: TrainConfig, path: str) -> nn.Module:
    """The model of ``cfg`` with a file's weights for everything but the classifier."""
    model = create_model(cfg.model, **cfg.model_kwargs)
    state = read_state_dict(path)
    classifier = next(name for name, m in model.named_modules() if m is model.get_classifier())
    head = {k for k in model.state_dict() if k.startswith(classifier + ".")}
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    if unexpected or set(missing) - head:
        raise CheckpointError(f"--from {path}: does not fit {cfg.model} (missing {missing}, unexpected {unexpected})")
    return model


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """A fresh model, or one initialised from ``cfg.init_from`` (a weight name or a file) with a new head
    (with ``keep_classifier``, the file's own head when it has ``num_classes`` classes)."""
    if cfg.init_from is None:
        return create_model(cfg.model, num_classes=num_classes, **cfg.model_kwargs)
    if Path(cfg.init_from).is_file() and cfg.keep_classifier:
        model = create_model(cfg.model, pretrained=cfg.init_from, **cfg.model_kwargs)
    elif Path(cfg.init_from).is_file():
        model = _init_from_file(cfg, cfg.init_from)
    else:
        model = create_model(cfg.init_from, pretrained=True, **cfg.model_kwargs)
    if not (cfg.keep_classifier and model.num_classes == num_classes):
        model.reset_classifier(num_classes)
    if cfg.freeze_features:
        model.requires_grad_(False)
        model.get_classifier().requires_grad_(True)
    return model


class Trainer:
    """Holds model, optimizer, schedule and EMA of one run; ``run()`` trains to the last epoch."""

    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.dist, self.device = init_distributed()
        torch.manual_seed(cfg.seed)
        self.data = TrainData(cfg, self.dist)
        self.model = build_model(cfg, len(self.data.classes)).to(self.device)
        self.data.in_chans = self.model.in_chans
        self.teacher = self._teacher()
        self.arch, self.model_kwargs = self._identity()
        self.net: nn.Module = self.model
        if self.dist.world > 1:
            ids = [self.device] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        optimizer = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.opt = optimizer([p for p in self.model.parameters() if p.requires_grad], lr=cfg.lr,
                             weight_decay=cfg.weight_decay)  # fmt: skip
        self.b_final = model_b(self.model) if cfg.b_schedule else None
        self.steps = self.data.steps_per_epoch()
        total, warmup = self.steps * cfg.epochs, int(self.steps * cfg.warmup_epochs)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: _lr_factor(s, warmup, total))
        self.ema = None
        if cfg.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        self.epoch, self.history, self.wall_time = 0, [], 0.0
        if resume and checkpoint.has_checkpoint(Path(cfg.out)):
            checkpoint.load_epoch(self)
        elif resume:
            log.warning("--resume: no checkpoint in %s, starting from scratch", cfg.out)

    def _teacher(self) -> nn.Module | None:
        """The frozen standard network to distil from (``cfg.distill_from``), reading the model's input."""
        if self.cfg.distill_from is None:
            return None
        from ..bcosification import StandardTeacher, load_standard

        return StandardTeacher(load_standard(self.cfg.distill_from), self.model).to(self.device)

    def _loss(self, logits: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """BCE of a step, with the teacher's sigmoid outputs mixed into the targets when distilling."""
        soft = None
        if self.teacher is not None:
            with torch.no_grad():
                soft = torch.sigmoid(self.teacher(x))
        return bce_loss(logits, y, self.cfg.off_label, soft, self.cfg.distill_weight)

    def _identity(self) -> tuple[str, dict[str, Any]]:
        """Architecture name and the keyword arguments that rebuild the model (those of the weights it
        was fine-tuned from included), as recorded in the weight headers and the summary."""
        spec = getattr(self.model, "pretrained_cfg", None)
        kwargs = {**(dict(spec.model_kwargs) if spec is not None else {}), **self.cfg.model_kwargs}
        return self.model.arch, {**kwargs, "num_classes": self.model.num_classes}

    def _train_epoch(self) -> dict[str, float]:
        cfg, in_chans = self.cfg, self.model.in_chans
        torch.manual_seed(cfg.seed * 7919 + self.epoch)  # stochastic depth etc.: reproducible on resume
        self.net.train()
        sums = [0.0, 0.0, 0.0]  # loss * n, correct, n
        bar = tqdm(total=self.steps, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not self.dist.main,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)  # fmt: skip
        for step, (x, y) in enumerate(self.data.train_epoch(self.epoch)):
            if step >= self.steps:
                break
            x, y = to_model_input(x.to(self.device), in_chans), y.to(self.device)
            self._schedule_b(self.epoch * self.steps + step)
            logits = self.net(x)
            loss = self._loss(logits, x, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            n = y.numel()
            sums = [sums[0] + loss.item() * n, sums[1] + (logits.argmax(1) == y).sum().item(), sums[2] + n]
            bar.update()
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.4f}", acc=f"{100 * sums[1] / sums[2]:.2f}")
        bar.close()
        loss_sum, correct, n = self.dist.sum(sums, self.device)
        return {"train_loss": loss_sum / n, "train_acc": 100 * correct / n, "train_samples": int(n)}

    def _schedule_b(self, step: int) -> None:
        """Set B for the global ``step`` (a function of the step alone, so a resumed run continues the schedule)."""
        if self.b_final is not None:
            b = scheduled_b(step, self.steps * self.cfg.epochs, self.b_final)
            for model in (self.model, self.ema.module if self.ema is not None else None):
                if model is not None:
                    set_b_(model, b)

    def _evaluate_start(self) -> None:
        """History entry ``epoch 0``: the model before any step (at the schedule's first B), wall time 0."""
        self._schedule_b(0)
        metrics = {f"test_{k}": v for k, v in evaluate(self.eval_model(), self.data.test_batches()).items()}
        self.history.append({**metrics, "epoch": 0, "wall_time": 0.0})
        if self.dist.main:
            log.info("before training: %s", metrics)

    def eval_model(self) -> nn.Module:
        """The model that is evaluated and saved: the EMA weights if kept."""
        return self.ema.module if self.ema is not None else self.model

    def _shard_digests(self) -> list[str]:
        """A digest of the sample indices each process trained on this epoch (to show the shards differ)."""
        order = self.data.last_order
        return self.dist.gather(hashlib.sha1(order.numpy().tobytes()).hexdigest()[:12] if order is not None else "")

    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train until the configured last epoch (or, to simulate an interruption, for at most
        ``stop_after`` epochs in this call); the final weights and card are written at the end."""
        cfg, stop = self.cfg, self.epoch + (stop_after or self.cfg.epochs)
        if cfg.eval_at_start and self.epoch == 0 and not self.history:
            self._evaluate_start()
        while self.epoch < min(cfg.epochs, stop):
            start = time.time()
            metrics = self._train_epoch()
            metrics.update({f"test_{k}": v for k, v in evaluate(self.eval_model(), self.data.test_batches()).items()})
            self.wall_time += time.time() - start
            metrics.update(epoch=self.epoch + 1, lr=self.sched.get_last_lr()[0], wall_time=self.wall_time,
                           shards=self._shard_digests())  # fmt: skip
            self.epoch += 1
            self.history.append(metrics)
            if self.dist.main:
                log.info("epoch %d: %s", self.epoch, {k: v for k, v in metrics.items() if k != "shards"})
                checkpoint.save_epoch(self)
            self.dist.barrier()
        if self.dist.main and self.epoch == cfg.epochs:
            checkpoint.save_final(self)
        return self.history[-1] if self.history else {}


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train according to ``cfg``; returns the last epoch's metrics.

    Example:
        >>> train(TrainConfig(model="bcos_resnet20_cifar", model_kwargs={"in_chans": 2}, epochs=1, out="runs/try"))
    """
    return Trainer(cfg, resume).run()
