"""Training and fine-tuning with the B-cos recipe, on one process or many (torchrun + DDP).

Recipe (B-cos v2): binary cross-entropy on the logits (the fixed logit bias -log(C-1) is part of
the model), optionally with uniform off-label targets 1/C, Adam, per-step cosine schedule with
linear warmup, random shifts and flips, optional EMA of the weights.

Every epoch, rank 0 writes ``last.safetensors`` (weights), ``last.optim.safetensors`` (optimizer
tensors and EMA weights) and ``last.json`` (epoch, schedule, optimizer hyper-parameters, history,
config) atomically; ``--resume`` continues from them and gives the same result as an
uninterrupted run (the data order and augmentation of each epoch derive from the seed alone).
At the end it writes ``model.safetensors`` (EMA weights if enabled) and a ``README.md`` card.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm import tqdm

from ._checkpoint import read_state_dict
from ._download import atomic_write
from .data import (
    FASHION_MNIST_CLASSES, InMemoryImages, augment_batch, image_folder_loader, load_fashion_mnist, open_dataset,
    to_model_input,
)  # fmt: skip
from .evaluation import evaluate
from .weights import save_weights

__all__ = ["TrainConfig", "train", "bce_loss", "main", "build_parser", "parse_key_values"]

log = logging.getLogger("bcos_zoo.training")


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in its state and card)."""

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


def bce_loss(logits: Tensor, labels: Tensor, off_label: bool = False) -> Tensor:
    """Binary cross-entropy against one-hot targets; with ``off_label`` the off-targets are 1/C."""
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    if off_label:
        targets = targets.clamp(min=1.0 / logits.shape[1])
    return F.binary_cross_entropy_with_logits(logits, targets)


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 1% to 100%, then cosine decay to 0."""
    if step < warmup_steps:
        return 0.01 + 0.99 * step / max(warmup_steps, 1)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# ---------------------------------------------------------------------------------------------- io


def _save_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able rest."""
    tensors, scalars = {}, {}
    for idx, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in rest["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


# ---------------------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()


def _init_distributed() -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Dist(), torch.device("cuda" if cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Dist(dist.get_rank(), dist.get_world_size()), device


# ------------------------------------------------------------------------------------------- data


class _Data:
    """Training/test batches for Fashion-MNIST (in memory) or an ImageFolder tree (train/, val/)."""

    in_chans = 6  # of the model; decides grayscale or RGB for ImageFolder images (set by the Trainer)

    def __init__(self, cfg: TrainConfig, d: Dist) -> None:
        spec = open_dataset(cfg.data)
        self.cfg, self.d = cfg, d
        if spec.is_fashion_mnist:
            self.train_set = InMemoryImages(*load_fashion_mnist(spec.root, "train"), FASHION_MNIST_CLASSES)
            self.test_set = InMemoryImages(*load_fashion_mnist(spec.root, "test"), FASHION_MNIST_CLASSES)
            self.classes = FASHION_MNIST_CLASSES
            self.folder = None
        else:
            from torchvision.datasets import ImageFolder

            train_dir = spec.root / "train" if (spec.root / "train").is_dir() else spec.root
            test_dir = next((spec.root / n for n in ("val", "test") if (spec.root / n).is_dir()), train_dir)
            self.folder = (train_dir, test_dir)
            self.classes = tuple(ImageFolder(str(train_dir)).classes)

    @property
    def num_train(self) -> int:
        return len(self.train_set) if self.folder is None else len(self._folder_loader(True).dataset)

    def _folder_loader(self, train: bool, sampler: Any = None) -> torch.utils.data.DataLoader:
        cfg = self.cfg
        root = self.folder[0] if train else self.folder[1]
        in_chans = self.in_chans
        return image_folder_loader(root, train=train, image_size=cfg.image_size, resize_size=int(cfg.image_size * 256 / 224),
                                   batch_size=cfg.batch_size // self.d.world, sampler=sampler,
                                   color_chans=in_chans // 2 if in_chans in (2, 6) else in_chans)  # fmt: skip

    def train_epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's shard of the epoch, in an order (and with augmentation) fixed by seed and epoch."""
        cfg, d = self.cfg, self.d
        if self.folder is not None:
            sampler = torch.utils.data.DistributedSampler(
                self._folder_loader(True).dataset, d.world, d.rank, shuffle=True, seed=cfg.seed, drop_last=True
            )
            sampler.set_epoch(epoch)
            yield from self._folder_loader(True, sampler)
            return
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_set), generator=gen)
        per_rank = cfg.batch_size // d.world
        usable = (order.numel() // cfg.batch_size) * cfg.batch_size  # drop the last partial batch
        shard = order[:usable].view(-1, d.world, per_rank)[:, d.rank].reshape(-1)  # [steps * per_rank]
        aug_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 101 + d.rank + 1)
        self.last_shard = shard
        for x, y in self.train_set.batches(per_rank, shard):
            yield augment_batch(x, aug_gen, shift=cfg.shift, flip=cfg.flip), y

    def steps_per_epoch(self) -> int:
        n = (self.num_train // self.cfg.batch_size) if self.folder is None else len(self._folder_loader(True))
        n = n if self.folder is None else n // self.d.world
        return min(n, self.cfg.max_steps_per_epoch or n)

    def test_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.folder is not None:
            yield from self._folder_loader(False)
            return
        limit = self.cfg.eval_limit or len(self.test_set)
        yield from self.test_set.batches(self.cfg.eval_batch_size, torch.arange(limit))


# ------------------------------------------------------------------------------------------ model


def _build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """A fresh model, or one initialised from ``cfg.init_from`` (a weight name or a file) with a new head."""
    import bcos_zoo

    if cfg.init_from is None:
        return bcos_zoo.create_model(cfg.model, num_classes=num_classes, **cfg.model_kwargs)
    if Path(cfg.init_from).is_file():
        model = bcos_zoo.create_model(cfg.model, **cfg.model_kwargs)
        state = read_state_dict(cfg.init_from)
        head = {k for k in model.state_dict() if k.startswith(model._classifier_path + ".")}
        missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
        if unexpected or set(missing) - head:
            raise ValueError(f"--from {cfg.init_from}: does not fit {cfg.model} (missing {missing}, unexpected {unexpected})")
    else:
        model = bcos_zoo.create_model(cfg.init_from, pretrained=True, **cfg.model_kwargs)
    model.reset_classifier(num_classes)
    if cfg.freeze_features:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
    return model


def _identity(model: nn.Module, cfg: TrainConfig) -> tuple[str, dict[str, Any]]:
    """Architecture name and the keyword arguments that rebuild ``model`` (those of the weights it
    was fine-tuned from included), as recorded in the checkpoint header and summary."""
    spec = getattr(model, "pretrained_cfg", None)
    kwargs = {**(dict(spec.model_kwargs) if spec is not None else {}), **cfg.model_kwargs}
    return getattr(model, "arch", cfg.model), {**kwargs, "num_classes": model.num_classes}


# ------------------------------------------------------------------------------------------- loop


class Trainer:
    """Holds model, optimizer, schedule and EMA of one run; ``run()`` trains to the last epoch."""

    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.d, self.device = _init_distributed()
        torch.manual_seed(cfg.seed)
        self.data = _Data(cfg, self.d)
        self.model = _build_model(cfg, len(self.data.classes)).to(self.device)
        self.arch, self.model_kwargs = _identity(self.model, cfg)
        self.data.in_chans = self.model.in_chans
        self.net: nn.Module = self.model
        if self.d.world > 1:
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps = self.data.steps_per_epoch()
        total, warmup = self.steps * cfg.epochs, int(self.steps * cfg.warmup_epochs)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: _lr_factor(s, warmup, total))
        self.ema = None
        if cfg.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        self.out = Path(cfg.out)
        self.epoch, self.history = 0, []
        self.wall_time = 0.0
        if resume and (self.out / "last.json").is_file():
            self._load_state()
        elif resume:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.out)

    # -- checkpoints
    def _save_state(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        opt_tensors, opt_rest = _optimizer_tensors(self.opt.state_dict())
        if self.ema is not None:
            opt_tensors.update({f"ema.{k}": v for k, v in self.ema.module.state_dict().items()})
            opt_tensors["ema.n_averaged"] = self.ema.n_averaged
        save_weights(self.model.state_dict(), self.out / "last.safetensors", {"arch": self.arch})
        save_weights(opt_tensors, self.out / "last.optim.safetensors")
        state = {"epoch": self.epoch, "scheduler": self.sched.state_dict(), "optimizer": opt_rest,
                 "history": self.history, "config": dataclasses.asdict(self.cfg), "wall_time": self.wall_time}  # fmt: skip
        state["scheduler"].pop("lr_lambdas", None)
        _save_json(self.out / "last.json", state)

    def _load_state(self) -> None:
        state = json.loads((self.out / "last.json").read_text())
        self.model.load_state_dict(load_file(str(self.out / "last.safetensors")))
        tensors = load_file(str(self.out / "last.optim.safetensors"))
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        self.opt.load_state_dict(_optimizer_state({k: v for k, v in tensors.items() if not k.startswith("ema.")}, state["optimizer"]))
        self.sched.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
        if self.ema is not None and ema:
            n = ema.pop("n_averaged")
            self.ema.module.load_state_dict(ema)
            self.ema.n_averaged.copy_(n)
        self.epoch, self.history, self.wall_time = state["epoch"], state["history"], state.get("wall_time", 0.0)

    # -- one epoch
    def _train_epoch(self) -> dict[str, float]:
        cfg, in_chans = self.cfg, self.model.in_chans
        torch.manual_seed(cfg.seed * 7919 + self.epoch)  # stochastic depth etc.: reproducible on resume
        self.net.train()
        sums = [0.0, 0.0, 0.0]  # loss * n, correct, n
        bar = tqdm(total=self.steps, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not self.d.main,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)  # fmt: skip
        for step, (x, y) in enumerate(self.data.train_epoch(self.epoch)):
            if step >= self.steps:
                break
            x, y = to_model_input(x.to(self.device), in_chans), y.to(self.device)
            logits = self.net(x)
            loss = bce_loss(logits, y, cfg.off_label)
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
        loss_sum, correct, n = self.d.sum(sums, self.device)
        return {"train_loss": loss_sum / n, "train_acc": 100 * correct / n, "train_samples": int(n)}

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train until the configured last epoch (or, to simulate an interruption, for at most
        ``stop_after`` epochs in this call); the final weights and card are written at the end."""
        cfg, stop = self.cfg, self.epoch + (stop_after or self.cfg.epochs)
        while self.epoch < min(cfg.epochs, stop):
            start = time.time()
            metrics = self._train_epoch()
            metrics.update({f"test_{k}": v for k, v in evaluate(self.eval_model(), self.data.test_batches()).items()})
            self.wall_time += time.time() - start
            metrics.update(epoch=self.epoch + 1, lr=self.sched.get_last_lr()[0], wall_time=self.wall_time)
            metrics["shards"] = self._shard_digests()
            self.epoch += 1
            self.history.append(metrics)
            if self.d.main:
                log.info("epoch %d: %s", self.epoch, {k: v for k, v in metrics.items() if k != "shards"})
                self._save_state()
            if self.d.world > 1:
                dist.barrier()
        if self.d.main and self.epoch == cfg.epochs:
            self._save_final()
        return self.history[-1] if self.history else {}

    def _shard_digests(self) -> list[str]:
        """A digest of the sample indices each rank trained on this epoch (to show the shards differ)."""
        shard = getattr(self.data, "last_shard", None)
        digest = hashlib.sha1(shard.numpy().tobytes()).hexdigest()[:12] if shard is not None else ""
        if self.d.world == 1:
            return [digest]
        gathered: list[Any] = [None] * self.d.world
        dist.all_gather_object(gathered, digest)
        return gathered

    def _save_final(self) -> None:
        model = self.eval_model()
        metadata = {"arch": self.arch, "model_kwargs": json.dumps(self.model_kwargs),
                    "classes": json.dumps(list(self.data.classes))}  # fmt: skip
        save_weights(model.state_dict(), self.out / "model.safetensors", metadata)
        _save_json(self.out / "summary.json", self.summary())
        (self.out / "README.md").write_text(self.card())

    def summary(self) -> dict[str, Any]:
        last = self.history[-1]
        return {
            "arch": self.arch, "model_kwargs": self.model_kwargs, "data": self.cfg.data,
            "classes": list(self.data.classes), "test_top1": last["test_top1"], "test_top5": last["test_top5"],
            "test_samples": last["test_n"], "epochs": self.cfg.epochs, "seed": self.cfg.seed,
            "wall_time_s": round(self.wall_time, 1), "world_size": self.d.world,
            "command": " ".join(shlex.quote(a) for a in sys.argv), "machine": _machine(),
            "config": dataclasses.asdict(self.cfg),
        }  # fmt: skip

    def card(self) -> str:
        s = self.summary()
        lines = [
            f"# {s['arch']} trained on {s['data']}", "",
            f"- test top-1: **{s['test_top1']:.2f} %**, top-5: {s['test_top5']:.2f} % ({s['test_samples']} test images)",
            f"- epochs: {s['epochs']}, seed: {s['seed']}, processes: {s['world_size']}",
            f"- wall time: {s['wall_time_s'] / 60:.1f} min on {s['machine']}",
            f"- command: `{s['command']}`", "", "## Configuration", "", "```json",
            json.dumps(s["config"], indent=2, sort_keys=True), "```", "",
        ]  # fmt: skip
        return "\n".join(lines)


def _machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} CPU(s), torch {torch.__version__}, {platform.platform(terse=True)}"


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train according to ``cfg``; returns the last epoch's metrics."""
    return Trainer(cfg, resume).run()


# -------------------------------------------------------------------------------------------- cli


def parse_key_values(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs with JSON values where they parse (``in_chans=2``, ``norm_layer=bnu-linear``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Command-line options of ``bcos-zoo train`` (also ``scripts/train.py``)."""
    p = parser or argparse.ArgumentParser(prog="bcos-zoo train", description=__doc__.split("\n\n")[0])
    d = TrainConfig()
    p.add_argument("--model", default=d.model, help="architecture name (default: %(default)s)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="architecture options, e.g. in_chans=2 norm_layer=bnu-linear")
    p.add_argument("--data", default=d.data, help="'fashion-mnist', 'fashion-mnist:DIR', a folder of idx files, or an ImageFolder root (with train/ and val/)")
    p.add_argument("--out", default=d.out, help="output directory (checkpoints, final weights, card)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--off-label", action="store_true", help="uniform off-label targets 1/C in the BCE loss")
    p.add_argument("--ema-decay", type=float, default=None, help="keep an EMA of the weights with this decay (per step)")
    p.add_argument("--shift", type=int, default=d.shift, help="max random translation in pixels (Fashion-MNIST)")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="disable random horizontal flips")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--from", dest="init_from", default=None, help="fine-tune: a registered weight name or a checkpoint file")
    p.add_argument("--freeze-features", action="store_true", help="fine-tune only the classifier")
    p.add_argument("--image-size", type=int, default=d.image_size, help="crop size for ImageFolder data")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (smoke tests)")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.* if present")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["model_kwargs"] = parse_key_values(args.model_kwargs)
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train(config_from_args(args), resume=args.resume)
    if dist.is_initialized():
        dist.destroy_process_group()
    print(json.dumps({k: v for k, v in result.items() if k != "shards"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
