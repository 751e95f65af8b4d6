"""``bcos-zoo serve``: a local web demo that classifies an image and explains its top classes, offline.

The page (:func:`build_app`, Gradio) is a thin layout over one plain function, :func:`analyse`
(image, model name, K) -> :class:`DemoResult` (labels, images, message), so the logic is tested
without a browser. Gradio is the optional extra ``bcos-zoo[demo]`` and is imported only when the
page is built. Only weights usable offline are offered (shipped inside the package or already in the
cache); the demo never downloads: ``bcos-zoo download NAME`` fetches more.

Example:
    $ bcos-zoo serve --model bcos_simple9_cifar.fmnist --port 7860
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch import Tensor

import bcos_zoo
from bcos_zoo.explain import Explanation, explain_topk
from bcos_zoo.fetch import cache_state
from bcos_zoo.localisation import default_smoothing
from bcos_zoo.transforms import color_channels

from .common import LoadedModel, UsageError, int_in, model_from_args
from .inference import ASSETS, DEMO_MODEL

__all__ = [
    "MAX_K", "MAX_PIXELS", "MIN_SIDE", "DemoResult", "add_commands", "analyse", "build_app", "bundled_images",
    "contribution_image", "explanation_image", "load_offline", "offline_models", "read_image", "to_uint8",
]  # fmt: skip

log = logging.getLogger("bcos_zoo.cli.serve")

MIN_SIDE = 8  # pixels: smaller images hold too little to classify
MAX_PIXELS = 40_000_000  # larger images would take long to decode and resize (PIL refuses ~180 M as a "bomb")
MAX_K = 10  # classes on the page at most (each adds two pictures)
# Pictures are enlarged without blur (a 28-pixel input stays readable), the input to the width of its box.
PAGE_CSS = """
#bcos-input img, #bcos-gallery img { image-rendering: pixelated; }
#bcos-input img { width: 100%; height: 100%; object-fit: contain; }
#bcos-gallery .grid-wrap { height: auto !important; max-height: none !important; overflow: visible; }
#bcos-gallery .grid-container { padding-top: 2.2rem; }
"""


@dataclass(frozen=True)
class DemoResult:
    """What the page shows for one request.

    Attributes:
        labels: the top-K classes with their probabilities, most likely first (empty on an error).
        images: ``(picture, caption)`` pairs, uint8 RGB ``[H, W, 3]``: the input as the model sees it, then
            per class its explanation and its contribution map.
        message: one Markdown paragraph: what is shown, or what went wrong and how to fix it.
    """

    labels: dict[str, float] = field(default_factory=dict)
    images: list[tuple[np.ndarray, str]] = field(default_factory=list)
    message: str = ""


# ------------------------------------------------------------------------------------------- the models


def offline_models() -> list[str]:
    """The registered weights usable offline: shipped inside the package or already in the cache."""
    return [name for name in bcos_zoo.list_weights() if cache_state(bcos_zoo.get_weights(name)) != "no"]


@functools.lru_cache(maxsize=2)  # switching between two models on the page does not reload them
def load_offline(name: str, device: str = "cpu") -> LoadedModel:
    """The model of a weight name (``arch.tag``, an alias or an architecture), if its weights are local.

    Raises:
        ValueError: for an unknown name (with close matches) or weights that would have to be downloaded.
    """
    spec = bcos_zoo.get_weights(name)
    if cache_state(spec) == "no":
        raise ValueError(
            f"{spec.name} is not available offline: its weights are neither shipped nor in the cache "
            f"({bcos_zoo.cache_dir()}). Fetch them once with 'bcos-zoo download {spec.name}', or pick a model "
            "from the list"
        )
    args = argparse.Namespace(model=spec.name, weights=None, model_kwargs=[], random_init=False, image_size=None)
    return model_from_args(argparse.Namespace(**vars(args), device=device))


# ------------------------------------------------------------------------------------------- the images


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an uploaded file as an image, checking its size before decoding it.

    Raises:
        ValueError: naming the file and the fix, for a file that is not an image, is damaged, or is
            smaller than ``MIN_SIDE`` / larger than ``MAX_PIXELS`` pixels.
    """
    name = Path(path).name
    try:
        with Image.open(path) as img:
            width, height = img.size
            if min(width, height) < MIN_SIDE:
                raise ValueError(
                    f"{name} is {width}x{height} pixels, too small to classify: "
                    f"use an image of at least {MIN_SIDE}x{MIN_SIDE} pixels"
                )
            if width * height > MAX_PIXELS:
                raise ValueError(
                    f"{name} is {width}x{height} pixels, larger than the {MAX_PIXELS // 1_000_000} megapixels "
                    "the demo accepts: scale it down first"
                )
            img.load()
            return img.copy()
    except Image.DecompressionBombError as e:  # PIL refuses even to open images far over MAX_PIXELS
        raise ValueError(f"{name} is too large for the demo ({e}): scale it down first") from None
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image: upload a PNG, JPEG, WebP, BMP or TIFF file") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{name} cannot be read as an image ({e}): is it a complete file?") from None


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """An RGB picture in [0, 1] -> uint8, as PNG stores it (so the page's picture equals this array)."""
    return (np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8)


def explanation_image(x: Tensor, explanation: Explanation, row: int = 0) -> np.ndarray:
    """The explanation panel of :func:`bcos_zoo.plotting.explanation_rows` as an RGB array in [0, 1]:
    the B-cos RGBA view over black for colour models, the evidence heat map for grayscale ones."""
    from bcos_zoo.plotting import evidence_rgb, explanation_rgb

    if color_channels(x.shape[-3]) == 3:
        return explanation_rgb(explanation.explanation[row])
    return evidence_rgb(x[row], explanation.contribution_map[row])


def contribution_image(contribution_map: Tensor, percentile: float = 99.5, cmap: str = "bwr") -> np.ndarray:
    """The signed contribution map as :func:`bcos_zoo.plotting.plot_contribution_map` draws it (red positive,
    blue negative, white zero, symmetric range), as an RGB array in [0, 1]."""
    from matplotlib import colormaps

    from bcos_zoo.plotting import clip_symmetric

    clipped, vrange = clip_symmetric(contribution_map, percentile)
    return colormaps[cmap](0.5 + 0.5 * clipped / vrange)[..., :3]


def _caption(name: str, prob: float) -> str:
    return f"{name} (p={prob:.2f})" if prob >= 0.01 else f"{name} (p={prob:.1e})"


# -------------------------------------------------------------------------------------------- the logic


def _explain(loaded: LoadedModel, img: Image.Image, k: int) -> DemoResult:
    from bcos_zoo.plotting import to_numpy_image

    x = loaded.model.transform(img)[None].to(loaded.device)
    k = min(k, len(loaded.classes))
    expls = explain_topk(loaded.model, x, k, smooth=default_smoothing(min(x.shape[-2:])))
    probs = loaded.probabilities(expls[0].logits.float())[0]
    labels: dict[str, float] = {}
    images = [(to_uint8(to_numpy_image(x[0])), "input, as the model sees it")]
    for e in expls:
        target = int(e.target[0])
        name, prob = loaded.classes[target], float(probs[target])
        labels[name] = prob
        total = float(e.contribution_map[0].sum())
        images.append((to_uint8(explanation_image(x, e)), _caption(name, prob)))
        images.append((to_uint8(contribution_image(e.contribution_map[0])), f"{name}: sum {total:.3g}"))
    sigmoid = hasattr(loaded.model, "to_probabilities")  # as LoadedModel.probabilities decides
    kind = "sigmoid: each class is scored on its own, so they need not sum to 1" if sigmoid else "softmax"
    top = next(iter(labels))
    message = (
        f"**{top}** (p = {labels[top]:.2f}) by `{loaded.describe()}`. Probabilities: {kind}. Explanations: where "
        "the evidence for each class lies; contributions: red adds to the class logit, blue takes away."
    )
    return DemoResult(labels, images, message)


def analyse(image: str | os.PathLike | Image.Image | None, model_name: str | None, k: float,
            *, device: str = "cpu") -> DemoResult:  # fmt: skip
    """Classify ``image`` with the offline model ``model_name`` and explain its ``k`` most likely classes.

    Every error (no image, not an image, a wrong size, an unknown model or one that is not available
    offline) comes back as a readable ``message`` with no labels and no pictures, never as an exception:
    the page shows it as it is.

    Example:
        >>> result = analyse("bcos_zoo/assets/fmnist_test0009_sneaker.png", "bcos_resnet20_cifar.fmnist", 3)
        >>> list(result.labels)[0], len(result.images)
        ('Sneaker', 7)
    """
    try:
        if image is None or image == "":
            return DemoResult(message="Upload an image or pick a bundled one.")
        if not model_name:
            return DemoResult(message="Choose a model.")
        if int(k) != k or not 1 <= k <= MAX_K:
            return DemoResult(message=f"**Error:** K must be a whole number from 1 to {MAX_K}, got {k}.")
        img = image if isinstance(image, Image.Image) else read_image(image)
        return _explain(load_offline(model_name, device), img, int(k))
    except Exception as e:  # the page reports every error as a message; the server log keeps unexpected tracebacks
        log.warning("request failed: %s", e, exc_info=not isinstance(e, ValueError))
        return DemoResult(message=f"**Error:** {' '.join(str(e).split()) or type(e).__name__}")


# --------------------------------------------------------------------------------------------- the page


def bundled_images() -> list[str]:
    """The sample images shipped with the package (their file names)."""
    return sorted(p.name for p in ASSETS.glob("*.png"))


def build_app(models: Sequence[str], model: str, *, device: str = "cpu") -> Any:
    """The Gradio page: an image (upload or bundled), a model, K -> message, top-K classes, pictures."""
    import gradio as gr

    def run(path: str | None, name: str, k: float) -> tuple[Any, ...]:
        result = analyse(path, name, k, device=device)
        input_image = result.images[0][0] if result.images else None
        return result.message, result.labels or None, input_image, result.images[1:]

    with gr.Blocks(title="bcos-zoo: B-cos explanations") as app:
        gr.Markdown(
            "## bcos-zoo: B-cos explanations\nA B-cos network computes each logit as `W(x)·x`: the explanation "
            "shows which input pixels it used. Upload an image or pick a bundled one."
        )
        current = gr.State(None)  # the path of the image explained: the last upload or bundled pick
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                upload = gr.File(label="Upload an image", file_count="single", type="filepath", height=110,
                                 elem_id="bcos-upload")  # fmt: skip
                bundled = gr.Dropdown(bundled_images(), value=None, label="or pick a bundled image",
                                      elem_id="bcos-bundled")  # fmt: skip
                chosen = gr.Dropdown(list(models), value=model, label="Model (usable offline)", allow_custom_value=True)
                k = gr.Slider(1, MAX_K, value=3, step=1, label="K: classes to explain", elem_id="bcos-k")
                button = gr.Button("Explain", variant="primary")
            with gr.Column(scale=1, min_width=260):
                message = gr.Markdown("Upload an image or pick a bundled one.", elem_id="bcos-message")
                labels = gr.Label(label="Top-K classes", num_top_classes=MAX_K)
                seen = gr.Image(label="Input, as the model sees it", format="png", height=220, interactive=False,
                                elem_id="bcos-input", buttons=["download"])  # fmt: skip
            with gr.Column(scale=2, min_width=420):
                gallery = gr.Gallery(label="Per class: explanation | contributions", format="png", columns=2,
                                     object_fit="contain", height="auto", elem_id="bcos-gallery",
                                     allow_preview=False)  # fmt: skip
        outputs = [message, labels, seen, gallery]
        inputs = [current, chosen, k]
        upload.upload(lambda path: path, upload, current).then(run, inputs, outputs)
        bundled.input(lambda name: str(ASSETS / name) if name else None, bundled, current).then(run, inputs, outputs)
        for trigger in (button.click, chosen.input):
            trigger(run, inputs, outputs)
        k.input(run, inputs, outputs, trigger_mode="always_last")  # dragging runs only the latest K
    return app


def cmd_serve(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the demo is offline
    os.environ.setdefault("BCOS_ZOO_OFFLINE", "1")  # nothing is downloaded, even by accident
    model = bcos_zoo.get_weights(args.model).name if args.model else DEMO_MODEL
    load_offline(model, args.device)  # a model that cannot be served fails here, before Gradio is even loaded
    try:
        import gradio as gr
    except ImportError:
        raise UsageError("the web demo needs Gradio: pip install 'bcos-zoo[demo]'") from None
    app = build_app([model] + [m for m in offline_models() if m != model], model, device=args.device)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts: offline
    app.queue().launch(server_name=args.host, server_port=args.port, css=PAGE_CSS, theme=theme, ssr_mode=False,
                       max_file_size="50mb", show_error=False, footer_links=[])  # fmt: skip
    return 0


def add_commands(add: Any) -> None:
    """Register ``serve`` with ``add(name, help) -> parser``."""
    p = add("serve", "Start the web demo on this machine: upload an image, see its top classes and their explanations.")
    p.add_argument("--model", "-m", help=f"the model selected at start (default: {DEMO_MODEL}); weights must be local")
    p.add_argument("--port", type=int_in(1, 65535), default=7860, help="port (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.set_defaults(func=cmd_serve)
