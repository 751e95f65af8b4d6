"""Pictures of explanations: the RGBA explanation, the signed contribution map, figures and grids.

matplotlib is an optional dependency (``pip install 'bcos-zoo[plot]'``) and is imported only inside
these functions. Figures are built as ``matplotlib.figure.Figure`` objects, not through pyplot, so
they never open a window or touch the global backend; :func:`save_figure` renders them with Agg.
Every panel is ``PANEL_INCHES`` square at ``DPI``, so a figure of R rows and C columns is exactly
``C * PANEL_INCHES * DPI`` by ``R * PANEL_INCHES * DPI`` pixels.

Example:
    >>> out = bcos_zoo.explain(model, x)
    >>> fig = explanation_figure(x[0], [(out.explanation[0], out.contribution_map[0])], ["Sneaker (p=0.93)"])
    >>> save_figure(fig, "sneaker.png")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from .transforms import color_channels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

__all__ = [
    "PANEL_INCHES", "DPI", "to_numpy_image", "explanation_rgb", "clip_symmetric", "plot_explanation",
    "plot_contribution_map", "evidence_rgb", "explanation_rows", "explanation_figure", "localisation_figure",
    "training_curves_figure", "save_figure",
]  # fmt: skip

PANEL_INCHES = 2.5
DPI = 100
ArrayLike = Tensor | np.ndarray


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float32)


def to_numpy_image(x: ArrayLike) -> np.ndarray:
    """A model input ``[C, H, W]`` (6 = RGB + inverse, 2 = gray + inverse, 3 or 1) -> RGB ``[H, W, 3]`` in [0, 1]."""
    arr = _np(x)
    if arr.ndim != 3:
        raise ValueError(f"expected an image [C, H, W], got shape {arr.shape}")
    arr = arr[: color_channels(arr.shape[0])]  # drop the inverse channels, if any
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return np.clip(arr.transpose(1, 2, 0), 0.0, 1.0)


def explanation_rgb(rgba: ArrayLike, background: ArrayLike | float = 0.0) -> np.ndarray:
    """Composite an explanation ``[H, W, 4]`` over ``background``: a grey level (default black, as in the
    B-cos papers) or an image ``[H, W, 3]`` in [0, 1] (an overlay). Returns ``[H, W, 3]``."""
    rgba = _np(rgba)
    alpha = rgba[..., 3:]
    bg = _np(background) if not isinstance(background, (int, float)) else np.full_like(rgba[..., :3], background)
    if bg.shape != rgba[..., :3].shape:
        raise ValueError(f"background of shape {bg.shape} does not match the explanation {rgba.shape}")
    return np.clip(rgba[..., :3] * alpha + bg * (1 - alpha), 0.0, 1.0)


def clip_symmetric(contribution_map: ArrayLike, percentile: float = 99.5) -> tuple[np.ndarray, float]:
    """Clip a map at the ``percentile`` of its absolute values; returns it and the symmetric range
    (the largest remaining absolute value, at least 1e-12) for a diverging colour map."""
    m = _np(contribution_map)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D contribution map [H, W], got shape {m.shape}")
    cutoff = float(np.percentile(np.abs(m), percentile))
    clipped = np.clip(m, -cutoff, cutoff)
    return clipped, max(float(np.abs(clipped).max(initial=0.0)), 1e-12)


def evidence_rgb(image: ArrayLike, contribution_map: ArrayLike, *, percentile: float = 99.5,
                 cmap: str = "inferno") -> np.ndarray:  # fmt: skip
    """The positive contributions as a heat map over the dimmed input, ``[H, W, 3]`` in [0, 1].

    For grayscale models the RGBA explanation carries no colour, and over black it is as dark as the
    image: this view shows *where* the evidence for the class is instead. Opacity grows with the
    contribution (clipped at its ``percentile``), so zero evidence leaves the image visible.
    """
    from matplotlib import colormaps

    gray = to_numpy_image(image).mean(-1, keepdims=True)  # [H, W, 1]
    positive = np.clip(_np(contribution_map), 0.0, None)
    cutoff = max(float(np.percentile(positive, percentile)), 1e-12)
    level = np.clip(positive / cutoff, 0.0, 1.0)  # [H, W]
    heat = colormaps[cmap](0.35 + 0.65 * level)[..., :3]  # skip the near-black end of the map
    alpha = level[..., None] ** 0.6
    return np.clip(0.45 * gray * (1 - alpha) + heat * alpha, 0.0, 1.0)


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(figsize=(PANEL_INCHES, PANEL_INCHES), dpi=DPI).add_subplot()


def _bare(ax: Axes, title: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def plot_explanation(rgba: ArrayLike, ax: Axes | None = None, *, image: ArrayLike | None = None,
                     background: float = 0.0, title: str | None = None) -> Axes:  # fmt: skip
    """Show an explanation ``[H, W, 4]`` over a neutral ``background`` or, given ``image``, blended on it."""
    ax = _axes(ax)
    ax.imshow(
        explanation_rgb(rgba, to_numpy_image(image) if image is not None else background), interpolation="nearest"
    )
    _bare(ax, title)
    return ax


def plot_contribution_map(contribution_map: ArrayLike, ax: Axes | None = None, *, percentile: float = 99.5,
                          cmap: str = "bwr", title: str | None = None) -> tuple[Axes, AxesImage]:  # fmt: skip
    """Show a signed ``[H, W]`` contribution map with a diverging colour map over a symmetric range
    (positive red, negative blue, zero white), clipped at the ``percentile`` of absolute values."""
    ax = _axes(ax)
    clipped, vrange = clip_symmetric(contribution_map, percentile)
    im = ax.imshow(clipped, cmap=cmap, vmin=-vrange, vmax=vrange, interpolation="nearest")
    _bare(ax, title)
    return ax, im


def _figure(rows: int, cols: int, suptitle: str | None) -> tuple[Figure, np.ndarray]:
    from matplotlib.figure import Figure

    height = rows * PANEL_INCHES
    fig = Figure(figsize=(cols * PANEL_INCHES, height), dpi=DPI)
    axes = fig.subplots(rows, cols, squeeze=False)
    top = 1 - (0.55 if suptitle else 0.3) / height
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.04, hspace=0.3 / (PANEL_INCHES - 0.3))
    if suptitle:
        fig.suptitle(suptitle, fontsize=10, y=1 - 0.08 / height, va="top")
    return fig, axes


def explanation_rows(rows: Sequence[tuple[ArrayLike, ArrayLike, ArrayLike, str]], *, first_titles: Sequence[str] | None = None,
                     overlay: bool = False, suptitle: str | None = None, percentile: float = 99.5) -> Figure:  # fmt: skip
    """One row per explanation: the input, the explanation and the contribution map.

    The explanation panel is the B-cos RGBA view (its colours are the colours the model used) for
    colour models, and for grayscale models, whose RGBA view has no colour to show, the positive
    contributions as a heat map over the image (:func:`evidence_rgb`).

    Args:
        rows: per row, ``(input [C, H, W], rgba [H, W, 4], contribution_map [H, W], title)`` with a
            title such as ``"Sneaker (p=0.93)"``.
        first_titles: titles of the input panels (default ``"input"``).
        overlay: blend the RGBA view on the image instead of a black background.
        suptitle: a line above all panels (model name, ...).
        percentile: clipping of the contribution maps.
    """
    if not rows or (first_titles is not None and len(first_titles) != len(rows)):
        raise ValueError(f"need at least one row and one input title per row, got {len(rows)} rows")
    fig, axes = _figure(len(rows), 3, suptitle)
    for i, (ax_row, (image, rgba, contributions, title)) in enumerate(zip(axes, rows)):
        ax_row[0].imshow(to_numpy_image(image), interpolation="nearest")
        _bare(ax_row[0], first_titles[i] if first_titles else "input")
        if color_channels(_np(image).shape[0]) == 3:
            plot_explanation(rgba, ax_row[1], image=image if overlay else None, title=title)
        else:
            ax_row[1].imshow(evidence_rgb(image, contributions, percentile=percentile), interpolation="nearest")
            _bare(ax_row[1], title)
        total = float(_np(contributions).sum())
        plot_contribution_map(contributions, ax_row[2], percentile=percentile, title=f"contributions (sum {total:.3g})")
    return fig


def explanation_figure(image: ArrayLike, explanations: Sequence[tuple[ArrayLike, ArrayLike]], titles: Sequence[str], *,
                       overlay: bool = False, suptitle: str | None = None, percentile: float = 99.5) -> Figure:  # fmt: skip
    """:func:`explanation_rows` for several targets of one image: ``explanations`` holds per target
    ``(rgba [H, W, 4], contribution_map [H, W])``, ``titles`` one title each."""
    if len(explanations) != len(titles) or not explanations:
        raise ValueError(
            f"need one title per explanation, got {len(explanations)} explanations and {len(titles)} titles"
        )
    rows = [(image, rgba, contributions, title) for (rgba, contributions), title in zip(explanations, titles)]
    return explanation_rows(rows, overlay=overlay, suptitle=suptitle, percentile=percentile)


def localisation_figure(scores: Mapping[str, ArrayLike], grid: int, *, title: str | None = None) -> Figure:
    """Box plots of grid-pointing-game scores per method, with the ``1/g²`` chance level."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 1.3 * len(scores) + 1.5), 3.5), dpi=DPI)
    ax = fig.add_subplot()
    names = list(scores)
    ax.boxplot([_np(scores[n]).ravel() for n in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.axhline(1 / grid**2, color="grey", linestyle="--", linewidth=1, label=f"uniform (1/{grid * grid})")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share of positive attribution in the correct cell")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or f"grid pointing game, {grid}x{grid}", fontsize=10)
    fig.tight_layout()
    return fig


def training_curves_figure(runs: Mapping[str, Sequence[Mapping[str, float]]], *,
                           reference: tuple[float, str] | None = None, title: str | None = None) -> Figure:
    """Test top-1 against wall time, one line per run (``{label: history}``, each entry with
    ``wall_time`` in seconds and ``test_top1`` in percent, as the trainer records them);
    ``reference`` (accuracy, label) draws a horizontal line; a one-entry history (a run known only by its final
    evaluation) is a single larger marker. The y range starts at the lowest accuracy after the first
    evaluation of any run, so the curves' ends stay readable when a run starts near chance."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=DPI)
    ax = fig.add_subplot()
    for label, history in runs.items():
        minutes = [h["wall_time"] / 60 for h in history]
        marker = 3 if len(history) > 1 else 7  # a lone final evaluation must stay visible
        ax.plot(minutes, [h["test_top1"] for h in history], marker="o", markersize=marker, label=label)
        ax.annotate(f"{history[-1]['test_top1']:.2f}%", (minutes[-1], history[-1]["test_top1"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=8)  # fmt: skip
    if reference is not None:
        ax.axhline(reference[0], color="grey", linestyle="--", linewidth=1, label=reference[1])
    settled = [h["test_top1"] for history in runs.values() for h in history[1:]]
    if settled:
        ax.set_ylim(min(settled) - 1, max(settled + ([reference[0]] if reference else [])) + 1)
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "accuracy vs. training time", fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write ``fig`` with the Agg renderer (no display needed) at its own size; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=fig.dpi, **kwargs)
    return path
