"""``bcos-zoo predict | explain | demo``: classify and explain images, write their pictures."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from bcos_zoo.explain import Explanation, explain, explain_topk
from bcos_zoo.localisation import default_smoothing
from bcos_zoo.transforms import load_image

from .common import LoadedModel, UsageError, add_model_options, int_in, model_from_args, shape_batches

__all__ = ["add_commands", "ASSETS", "DEMO_MODEL", "DEMO_MODEL_ENV"]

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEMO_MODEL_ENV = "BCOS_ZOO_DEMO_MODEL"
DEMO_MODEL = "bcos_resnet20_cifar.fmnist"


def _load_images(paths: Sequence[str]) -> list[Image.Image]:
    """Open every image first, so a bad file fails before the model is built."""
    return [load_image(p) for p in paths]


def _output_paths(images: Sequence[str], out: str, suffix: str) -> list[Path]:
    """``OUT.png`` for a single image, else ``OUT/<image stem><suffix>.png`` (numbered if stems repeat)."""
    out_path = Path(out)
    if out_path.suffix.lower() == ".png":
        if len(images) != 1:
            raise UsageError(f"-o {out} names one file, but {len(images)} images were given; pass a directory")
        return [out_path]
    seen: dict[str, int] = {}
    paths = []
    for image in images:
        stem = Path(image).stem
        seen[stem] = seen.get(stem, 0) + 1
        paths.append(out_path / f"{stem}{suffix}{'' if seen[stem] == 1 else f'_{seen[stem]}'}.png")
    return paths


def _predict_batches(loaded: LoadedModel, inputs: list[Tensor], batch_size: int) -> Iterator[tuple[list[int], Tensor]]:
    with torch.no_grad():
        for indices in shape_batches(inputs, batch_size):
            yield indices, loaded.model(torch.stack([inputs[i] for i in indices]).to(loaded.device)).float().cpu()


def cmd_predict(args: argparse.Namespace) -> int:
    images = _load_images(args.images)
    loaded = model_from_args(args)
    inputs = [loaded.model.transform(img) for img in images]
    k = min(args.top_k, len(loaded.classes))
    results: list[dict[str, Any]] = [{} for _ in images]
    for indices, logits in _predict_batches(loaded, inputs, args.batch_size):
        probs = loaded.probabilities(logits)
        top = logits.topk(k, dim=1).indices
        for row, i in enumerate(indices):
            preds = [{"rank": r + 1, "index": c, "class": loaded.classes[c], "probability": probs[row, c].item(),
                      "logit": logits[row, c].item()} for r, c in enumerate(top[row].tolist())]  # fmt: skip
            results[i] = {
                "image": args.images[i],
                "model": loaded.label,
                "random_init": loaded.random_init,
                "predictions": preds,
            }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    kind = "sigmoid" if hasattr(loaded.model, "to_probabilities") else "softmax"
    print(f"model: {loaded.describe()} ({kind} probabilities)")
    for result in results:
        print(result["image"])
        for p in result["predictions"]:
            print(f"  {p['rank']:>2}. {p['class']:<24} p={p['probability']:.4f}  logit={p['logit']:+.4f}")
    return 0


def _row_title(loaded: LoadedModel, e: Explanation, row: int, layer: str | None) -> str:
    target = int(e.target[row])
    if layer is not None:
        total = float(e.contribution_map[row].sum() + e.bias_contribution[row])
        return f"{layer} channel {target} (sum {total:.3g})"
    prob = float(loaded.probabilities(e.logits[row : row + 1].float())[0, target])
    return f"{loaded.classes[target]} (p={prob:.2f})" if prob >= 0.01 else f"{loaded.classes[target]} (p={prob:.1e})"


def _explain_images(loaded: LoadedModel, paths: Sequence[str], images: Sequence[Image.Image], outputs: Sequence[Path],
                    args: argparse.Namespace) -> list[tuple[Tensor, Explanation, int, str]]:  # fmt: skip
    """Explain every image (in batches) and write one figure each.

    Returns:
        Per image, (input, explanation, row in it, title) of its first explained target.
    """
    from bcos_zoo.plotting import explanation_figure, save_figure

    targets = [loaded.class_index(t) for t in args.target] if args.target else None
    inputs = [loaded.model.transform(img) for img in images]
    firsts = []
    for indices in shape_batches(inputs, args.batch_size):
        x = torch.stack([inputs[i] for i in indices]).to(loaded.device)
        smooth = default_smoothing(min(x.shape[-2:]))  # the papers' 15 pixels at 224, scaled to the image
        if args.layer:
            expls = [explain(loaded.model, x, layer=args.layer, channel=args.channel, smooth=smooth)]
        else:
            expls = explain_topk(
                loaded.model, x, args.top_k or 1, targets=[targets] if targets else None, smooth=smooth
            )
        for row, i in enumerate(indices):
            titles = [_row_title(loaded, e, row, args.layer) for e in expls]
            panels = [(e.explanation[row], e.contribution_map[row]) for e in expls]
            fig = explanation_figure(x[row], panels, titles, overlay=args.overlay,
                                     suptitle=f"{Path(paths[i]).name} | {loaded.describe()}")  # fmt: skip
            print(save_figure(fig, outputs[i]))
            firsts.append((x[row].cpu(), expls[0], row, titles[0]))
    return firsts


def _check_explain_args(args: argparse.Namespace) -> None:
    if args.target and args.top_k:
        raise UsageError("pass either --target or --top-k, not both")
    if args.layer and (args.target or args.top_k):
        raise UsageError("--layer explains a channel (--channel C); it cannot be combined with --target or --top-k")
    if args.channel is not None and not args.layer:
        raise UsageError("--channel needs --layer NAME")


def cmd_explain(args: argparse.Namespace) -> int:
    _check_explain_args(args)
    outputs = _output_paths(args.images, args.output, "_explained")
    images = _load_images(args.images)
    loaded = model_from_args(args)
    _explain_images(loaded, args.images, images, outputs, args)
    return 0


def _demo_model(args: argparse.Namespace) -> LoadedModel:
    """``--model``/``--weights`` if given, else the default demo model (shipped, so offline)."""
    if args.weights or args.model:
        return model_from_args(args)
    name = os.environ.get(DEMO_MODEL_ENV) or DEMO_MODEL
    return model_from_args(argparse.Namespace(**{**vars(args), "model": name}))


def cmd_demo(args: argparse.Namespace) -> int:
    from bcos_zoo.plotting import explanation_rows, save_figure

    bundled = sorted(str(p) for p in ASSETS.glob("*.png"))
    paths = bundled + list(args.images)
    images = _load_images(paths)
    loaded = _demo_model(args)
    args.target, args.layer, args.channel = None, None, None
    outputs = _output_paths(paths, args.output, "_explained")
    firsts = _explain_images(loaded, paths, images, outputs, args)
    rows = [(x, e.explanation[r], e.contribution_map[r], title) for x, e, r, title in firsts]
    overview = explanation_rows(rows, first_titles=[Path(p).name for p in paths], overlay=args.overlay,
                                suptitle=f"{loaded.describe()}: input | explanation | contributions")  # fmt: skip
    print(save_figure(overview, Path(args.output) / "overview.png"))
    return 0


def _explain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top-k", type=int_in(1, 1000), metavar="K", help="explain the K most likely classes (default: the top one)")
    p.add_argument("--overlay", action="store_true", help="blend the explanation on the image instead of black")


def add_commands(add: Any) -> None:
    """Register the subcommands with ``add(name, help) -> parser``."""
    p = add("predict", "Classify images: top classes with probabilities (sigmoid for B-cos models) and logits.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    add_model_options(p)
    p.add_argument("--top-k", type=int_in(1, 1000), default=5, metavar="K", help="classes per image (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_predict)

    p = add("explain", "Write a PNG per image: the input, the B-cos explanation and the contribution map per class.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    add_model_options(p)
    p.add_argument("--target", action="append", metavar="CLASS", help="class index or name (repeat for several)")
    _explain_options(p)
    p.add_argument("--layer", metavar="NAME", help="explain a channel of this layer (a name from model.named_modules())")
    p.add_argument("--channel", type=int_in(0), metavar="C", help="with --layer: the channel (default: the most active)")
    p.add_argument("-o", "--output", default="explanations", metavar="OUT", help="directory, or a .png for one image")
    p.set_defaults(func=cmd_explain)

    p = add("demo", "Explain the bundled sample images (and yours) with the default model; works offline.")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="more images to explain")
    add_model_options(p)
    _explain_options(p)
    p.add_argument("-o", "--output", default="bcos_zoo_demo", metavar="DIR", help="output directory (default: %(default)s)")
    p.set_defaults(func=cmd_demo)
