#!/usr/bin/env python
"""Ship the weights of a finished training run inside the package, with measured metrics.

    python scripts/ship_weights.py --run runs/fmnist_resnet20 --tag fmnist

Loads ``RUN/model.safetensors`` by its header (``bcos_zoo.load_model``), measures top-1/top-5 on the
full Fashion-MNIST test set with ``bcos_zoo.evaluation.evaluate`` and the grid pointing game
(2×2 grids, B-cos explanation vs. Input×Gradient) with ``bcos_zoo.localisation``, then writes
``bcos_zoo/assets/weights/<arch>.<tag>.safetensors`` and a ``.json`` record next to it (SHA-256,
dataset, classes, preprocessing, metrics, training command, seed, wall time, machine).
``bcos_zoo/pretrained/shipped.py`` registers every such record; nothing in them is typed by hand.
Regenerate the cards afterwards with ``scripts/gen_model_cards.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

import bcos_zoo
from bcos_zoo.checkpoint import check_finite
from bcos_zoo.data import load_fashion_mnist
from bcos_zoo.evaluation import evaluate
from bcos_zoo.localisation import grid_pointing_game, summarize
from bcos_zoo.records import PACKAGE_WEIGHTS_DIR


def measure(model: torch.nn.Module, grid: int, n_grids: int) -> tuple[dict[str, float], dict[str, object]]:
    """Test-set accuracy and pointing-game scores of ``model`` on Fashion-MNIST."""
    images, labels = load_fashion_mnist(split="test")
    batches = ((images[i : i + 500].float() / 255, labels[i : i + 500]) for i in range(0, len(labels), 500))
    acc = evaluate(model, batches)
    result = grid_pointing_game(model, images, labels, grid=grid, n_grids=n_grids, methods=("bcos", "ixg"))
    summary = summarize(result.scores)
    loc = {"grid": grid, "n_grids": len(result.grids), "smooth": result.smooth, "conf_thresh": result.conf_thresh,
           **{f"{m}_mean": round(s["mean"], 4) for m, s in summary.items()}}  # fmt: skip
    return acc, loc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="training output directory (summary.json, model.safetensors)")
    p.add_argument("--tag", default="fmnist")
    p.add_argument("--dataset", default="fashion_mnist", help="dataset id recorded with the metrics")
    p.add_argument("--grid", type=int, default=2)
    p.add_argument("--n-grids", type=int, default=250)
    args = p.parse_args(argv)
    summary = json.loads((args.run / "summary.json").read_text())
    model = bcos_zoo.load_model(args.run / "model.safetensors").eval()
    header = bcos_zoo.read_header(args.run / "model.safetensors")
    state = model.state_dict()
    check_finite(state, str(args.run / "model.safetensors"))
    acc, loc = measure(model, args.grid, args.n_grids)
    name = f"{model.arch}.{args.tag}"
    dst = PACKAGE_WEIGHTS_DIR / f"{name}.safetensors"
    digest = bcos_zoo.save_weights(state, dst, dataclasses.replace(header, weight=name))
    kwargs = {k: v for k, v in header.model_kwargs.items() if k != "num_classes"}  # the record has the classes
    record = {
        "arch": model.arch, "tag": args.tag, "filename": dst.name, "sha256": digest, "model_kwargs": kwargs,
        "num_params": sum(p.numel() for p in model.parameters()), "classes": list(header.classes),
        "dataset": args.dataset, "transform": model.transform.config.to_dict(), "license": "apache-2.0",
        "metrics": {"top1": round(acc["top1"], 2), "top5": round(acc["top5"], 2), "test_images": acc["n"]},
        "localisation": loc,
        "training": {k: summary[k] for k in ("command", "seed", "epochs", "wall_time_s", "machine", "world_size", "config")},
    }  # fmt: skip
    dst.with_suffix(".json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: record[k] for k in ("sha256", "metrics", "localisation")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
