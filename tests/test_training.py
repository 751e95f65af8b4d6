"""Training: smoke test, exact resume, DDP with two processes, fine-tuning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bcos_zoo
from bcos_zoo.training import TrainConfig, Trainer, bce_loss, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(in_chans=2, norm_layer="bnu-linear", max_out=1)


def _cfg(tmp_path: Path, name: str, **overrides: object) -> TrainConfig:
    base = dict(model="bcos_resnet20_cifar", model_kwargs=SMALL, out=str(tmp_path / name), epochs=2, batch_size=32,
                max_steps_per_epoch=6, eval_limit=256, seed=3, warmup_epochs=0.5)  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def test_bce_loss_targets() -> None:
    logits = torch.zeros(2, 4)
    labels = torch.tensor([0, 3])
    plain = bce_loss(logits, labels)
    assert plain.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())  # sigmoid(0) = 0.5 everywhere
    # with uniform off-labels the targets are max(one_hot, 1/C): the loss at logit 0 is unchanged
    assert bce_loss(logits, labels, off_label=True).item() == pytest.approx(plain.item())
    confident = torch.full((2, 4), -5.0)
    confident[0, 0] = confident[1, 3] = 5.0
    assert bce_loss(confident, labels, off_label=True) > bce_loss(confident, labels)


def test_loss_decreases(tmp_path: Path) -> None:
    trainer = Trainer(_cfg(tmp_path, "smoke", epochs=3, max_steps_per_epoch=15, lr=3e-3))
    trainer.run()
    losses = [h["train_loss"] for h in trainer.history]
    assert losses[-1] < losses[0] - 0.01, losses
    out = tmp_path / "smoke"
    for name in ("last.safetensors", "last.state.pt", "last.json", "model.safetensors", "summary.json", "README.md"):
        assert (out / name).is_file(), name
    state = json.loads((out / "last.json").read_text())
    assert state["epoch"] == 3 and len(state["history"]) == 3
    card = (out / "README.md").read_text()  # rendered like every model card, from the run's own record
    assert f"| fashion-mnist | {trainer.history[-1]['test_top1']:.3f} |" in card and "# bcos_resnet20_cifar.run" in card
    # the final weights rebuild the model from their header alone: architecture, arguments, classes, preprocessing
    model = bcos_zoo.load_model(out / "model.safetensors")
    assert model.arch == "bcos_resnet20_cifar" and model.in_chans == 2 and model.num_classes == 10
    assert model.pretrained_cfg.classes[0] == "T-shirt/top" and model.transform.config.crop_size == 28
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, msg=k)


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = _cfg(tmp_path, "full", ema_decay=0.9)
    train(full)
    Trainer(_cfg(tmp_path, "split", ema_decay=0.9)).run(stop_after=1)  # "killed" after epoch 1
    assert not (tmp_path / "split" / "model.safetensors").exists()
    resumed = Trainer(_cfg(tmp_path, "split", ema_decay=0.9), resume=True)
    assert resumed.epoch == 1
    resumed.run()
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)


@pytest.mark.slow
def test_ddp_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "scripts" / "train.py"), "--model", "bcos_resnet20_cifar", "--model-kwargs",
           *[f"{k}={v}" for k, v in SMALL.items()], "--epochs", "1", "--batch-size", "32",
           "--max-steps-per-epoch", "4", "--eval-limit", "128", "--out", str(out), "--threads", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "last.json").read_text())
    shards = state["history"][0]["shards"]
    assert len(shards) == 2 and shards[0] != shards[1], "both ranks must see different samples"
    assert state["history"][0]["train_samples"] == 4 * 32, "metrics are reduced over both ranks"
    # same checkpoint format as a single-process run
    single = tmp_path / "single"
    train(_cfg(tmp_path, "single", epochs=1, max_steps_per_epoch=2))
    for name in ("last.safetensors", "model.safetensors"):
        ddp_sd, one_sd = load_file(str(out / name)), load_file(str(single / name))
        assert ddp_sd.keys() == one_sd.keys()
        assert all(ddp_sd[k].shape == one_sd[k].shape for k in ddp_sd)
    assert not any(p.name.startswith(".") for p in out.iterdir()), "no temporary files left behind"
