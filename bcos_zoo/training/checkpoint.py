"""The files of a training run, all written atomically by rank 0.

Every epoch: ``last.safetensors`` (the model weights, with a :class:`~bcos_zoo.records.WeightHeader`),
``last.state.pt`` (optimizer, schedule and EMA state dicts, ``torch.save``; read back with
``torch.load(weights_only=True)``) and ``last.json`` (epoch, history, configuration, wall time);
``--resume`` continues from them. At the end: ``model.safetensors`` (EMA weights if enabled, loadable
by header alone with ``bcos_zoo.load_model``), ``summary.json`` and a ``README.md`` model card
rendered by :func:`bcos_zoo.cards.render_card`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..cards import render_card
from ..checkpoint import read_state_dict, save_weights
from ..files import atomic_write
from ..records import UrlFile, WeightHeader, WeightSpec
from ..version import __version__

from .config import TrainConfig
from .data import TrainData
from .distributed import Dist

__all__ = ["Run", "save_epoch", "load_epoch", "save_final", "has_checkpoint"]


class Run(Protocol):
    """What this module reads and restores of a run (:class:`~bcos_zoo.training.Trainer` has it)."""

    cfg: TrainConfig
    data: TrainData
    dist: Dist
    device: torch.device
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: Any
    arch: str
    model_kwargs: dict[str, Any]
    epoch: int
    history: list[dict[str, Any]]
    wall_time: float

    def eval_model(self) -> nn.Module: ...


def _save_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))


def _header(trainer: Run) -> WeightHeader:
    return WeightHeader(arch=trainer.arch, model_kwargs=trainer.model_kwargs, classes=trainer.data.classes,
                        transform=trainer.data.eval_transform(), source=f"trained with bcos-zoo train ({trainer.cfg.data})",
                        bcos_zoo_version=__version__)  # fmt: skip


def has_checkpoint(out: Path) -> bool:
    return (out / "last.json").is_file()


def save_epoch(trainer: Run) -> None:
    """The state after the epoch just finished: enough to resume exactly."""
    out = Path(trainer.cfg.out)
    save_weights(trainer.model.state_dict(), out / "last.safetensors", _header(trainer))
    state = {"optimizer": trainer.opt.state_dict(), "scheduler": trainer.sched.state_dict()}
    state["scheduler"].pop("lr_lambdas", None)  # a lambda; rebuilt from the configuration
    if trainer.ema is not None:
        state["ema"] = trainer.ema.state_dict()
    with atomic_write(out / "last.state.pt") as tmp:
        torch.save(state, tmp)
    _save_json(out / "last.json", {"epoch": trainer.epoch, "history": trainer.history, "wall_time": trainer.wall_time,
                                   "config": dataclasses.asdict(trainer.cfg)})  # fmt: skip


def load_epoch(trainer: Run) -> None:
    """Restore what :func:`save_epoch` wrote into a freshly built trainer of the same configuration."""
    out = Path(trainer.cfg.out)
    progress = json.loads((out / "last.json").read_text())
    trainer.model.load_state_dict(read_state_dict(out / "last.safetensors"))
    state = torch.load(out / "last.state.pt", map_location=trainer.device, weights_only=True)
    trainer.opt.load_state_dict(state["optimizer"])
    trainer.sched.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
    if trainer.ema is not None and "ema" in state:
        trainer.ema.load_state_dict(state["ema"])
    trainer.epoch, trainer.history, trainer.wall_time = progress["epoch"], progress["history"], progress["wall_time"]


def machine() -> str:
    """This machine, for the record of a run."""
    return f"{platform.machine()} {os.cpu_count()} CPU(s), torch {torch.__version__}, {platform.platform(terse=True)}"


def summary(trainer: Run) -> dict[str, Any]:
    """What a run did and measured (``summary.json``; ``scripts/ship_weights.py`` reads it)."""
    last, cfg = trainer.history[-1], trainer.cfg
    return {
        "arch": trainer.arch, "model_kwargs": trainer.model_kwargs, "data": cfg.data, "classes": list(trainer.data.classes),
        "test_top1": last["test_top1"], "test_top5": last["test_top5"], "test_samples": last["test_n"],
        "epochs": cfg.epochs, "seed": cfg.seed, "wall_time_s": round(trainer.wall_time, 1),
        "world_size": trainer.dist.world, "command": " ".join(shlex.quote(a) for a in sys.argv), "machine": machine(),
        "config": dataclasses.asdict(cfg),
    }  # fmt: skip


def _run_spec(trainer: Run, weights: Path, digest: str, s: dict[str, Any]) -> WeightSpec:
    """The run's weights as a record, so its card is rendered like every other card."""
    model = trainer.eval_model()
    return WeightSpec(
        arch=trainer.arch, tag="run", sources=(UrlFile(weights.resolve().as_uri(), sha256=digest),),
        num_classes=len(trainer.data.classes), transform=trainer.data.eval_transform(), classes=trainer.data.classes,
        dataset=s["data"], metrics={s["data"]: {"top1": round(s["test_top1"], 3), "top5": round(s["test_top5"], 3)}},
        num_params=sum(p.numel() for p in model.parameters()),
        model_kwargs={k: v for k, v in trainer.model_kwargs.items() if k != "num_classes"},
        recipe=(f"{s['epochs']} epochs, seed {s['seed']}, {s['world_size']} process(es), wall time "
                f"{s['wall_time_s'] / 60:.1f} min on {s['machine']}. Command: `{s['command']}`. Configuration: "
                f"`{json.dumps(s['config'], sort_keys=True)}`."),
        metrics_note=f"Measured by bcos-zoo train on {s['test_samples']} test images after the last epoch.",
    )  # fmt: skip


def save_final(trainer: Run) -> Path:
    """``model.safetensors``, ``summary.json`` and the card; returns the weights file."""
    out = Path(trainer.cfg.out)
    weights = out / "model.safetensors"
    digest = save_weights(trainer.eval_model().state_dict(), weights, _header(trainer))
    s = summary(trainer)
    _save_json(out / "summary.json", s)
    (out / "README.md").write_text(render_card(_run_spec(trainer, weights, digest, s)))
    return weights
