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

A run that was resumed after it had finished, with more ``--epochs`` (its cosine schedule stretched
from then on), is shipped with ``--continues EARLIER_RUN`` (a copy of its directory before the resume), so
the card gives both commands and the accuracy the earlier run ended at.

For B-cosified weights, ``--base RUN`` records the standard network's run (accuracy, wall time,
command) and ``--from-scratch`` a B-cos network trained from scratch on the same data and machine (a
training directory, or shipped weights by name: their record's command, wall time and accuracy); the record
then holds both runs' accuracy-vs-time histories, and ``model_cards/<arch>.<tag>.curves.png`` plots
them side by side (the card shows it):

    python scripts/ship_weights.py --run runs/fmnist_bcosified_resnet20 --tag fmnist_bcosified \
        --base runs/fmnist_std_resnet20 --from-scratch bcos_resnet20_cifar.fmnist
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
from bcos_zoo.plotting import save_figure, training_curves_figure
from bcos_zoo.records import PACKAGE_WEIGHTS_DIR

CARDS_DIR = Path(__file__).resolve().parents[1] / "model_cards"


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


def run_record(run: Path) -> dict[str, object]:
    """What a card says about a training run: its architecture, command, wall time, final test top-1
    and its test top-1 after each epoch (``RUN/summary.json`` and ``RUN/last.json``)."""
    summary = json.loads((run / "summary.json").read_text())
    history = json.loads((run / "last.json").read_text())["history"]
    return {
        "arch": summary["arch"], "command": summary["command"], "epochs": summary["epochs"],
        "wall_time_s": summary["wall_time_s"], "top1": round(summary["test_top1"], 2),
        "test_images": summary["test_samples"], "machine": summary["machine"],
        "history": [{k: round(h[k], 2) for k in ("epoch", "wall_time", "test_top1")} for h in history],
    }  # fmt: skip


def shipped_record(name: str) -> dict[str, object]:
    """What a card says about the run behind already shipped weights (``<arch>.<tag>``), read from its record:
    the from-scratch reference when re-running that training is out of reach. A record written before
    histories were kept gives a one-point history: its final accuracy at its wall time."""
    path = PACKAGE_WEIGHTS_DIR / f"{name}.json"
    if not path.is_file():
        shipped = sorted(f.stem for f in PACKAGE_WEIGHTS_DIR.glob("*.json"))
        raise FileNotFoundError(f"{name!r} is neither a training directory nor shipped weights (shipped: {shipped})")
    record = json.loads(path.read_text())
    training, top1 = record["training"], record["metrics"]["top1"]
    final = [{"epoch": training["epochs"], "wall_time": training["wall_time_s"], "test_top1": top1}]
    return {
        "arch": record["arch"], "command": training["command"], "wall_time_s": training["wall_time_s"], "top1": top1,
        "test_images": record["metrics"]["test_images"], "machine": training["machine"],
        "history": training.get("history", final),
    }  # fmt: skip


def comparison_record(source: str) -> dict[str, object]:
    """``run_record`` of a training directory, or ``shipped_record`` of a shipped weight name."""
    return run_record(Path(source)) if Path(source).is_dir() else shipped_record(source)


def write_curves(name: str, runs: dict[str, list[dict[str, float]]], reference: tuple[float, str]) -> str:
    """Plot ``runs`` (label -> history) into ``model_cards/<name>.curves.png``; returns the file name."""
    path = CARDS_DIR / f"{name}.curves.png"
    fig = training_curves_figure(runs, reference=reference, title=f"{name}: Fashion-MNIST test top-1 vs. wall time")
    save_figure(fig, path)
    return path.name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="training output directory (summary.json, model.safetensors)")
    p.add_argument("--tag", default="fmnist")
    p.add_argument("--dataset", default="fashion_mnist", help="dataset id recorded with the metrics")
    p.add_argument("--grid", type=int, default=2)
    p.add_argument("--n-grids", type=int, default=250)
    p.add_argument("--base", help="B-cosified weights: the run (directory) that trained the standard network")
    p.add_argument("--from-scratch", help="B-cosified weights: a from-scratch B-cos run to compare with, as a training "
                   "directory or the name of shipped weights (bcos_resnet20_cifar.fmnist)")
    p.add_argument("--continues", type=Path, help="the finished run (directory, as it was) that RUN resumed with "
                   "--resume and more --epochs: the card then gives both commands")
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
    if args.continues:
        record["training"]["continues"] = run_record(args.continues)
    if args.base or args.from_scratch or args.continues:
        this = run_record(args.run)
        record["training"]["history"] = this["history"]
        sources = (("base", args.base), ("from_scratch", args.from_scratch))
        record["comparison"] = {k: comparison_record(r) for k, r in sources if r}
        if args.from_scratch:
            scratch = record["comparison"]["from_scratch"]
            curves = {f"from scratch ({scratch['arch']})": scratch["history"], f"B-cosified ({model.arch})": this["history"]}
            final = (scratch["top1"], f"from scratch, final: {scratch['top1']:.2f}%")
            record["curves"] = write_curves(name, curves, final)
    dst.with_suffix(".json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: record[k] for k in ("sha256", "metrics", "localisation")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
