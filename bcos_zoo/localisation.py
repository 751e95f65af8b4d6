"""The grid pointing game: how well attributions localise the class they explain.

Following the B-cos papers (who took it from CoDA-Nets): a model classifies ``g × g`` grids of
images of ``g²`` distinct classes, each image one it classified correctly and confidently on its
own. For the class of each tile an attribution map over the whole grid is computed; after optional
smoothing, negative values are dropped and the score of that tile is the share of the positive
attribution that falls inside it. A method that points at the right object scores 1; a uniform
map scores ``1 / g²``.

Methods: any of :data:`bcos_zoo.attribution.METHODS` (``bcos``, the model-inherent explanation;
``ixg``, ``intgrad``, ``gradcam``, ... post-hoc via captum on the ordinary forward pass), computed by
:func:`bcos_zoo.attribute`, whose docstring describes them and their baselines.

Tiles are laid out column-major as in the reference: image ``k`` sits in row-block ``k mod g`` and
column-block ``k div g``.

Example:
    >>> result = grid_pointing_game(model, images, labels, grid=3, n_grids=100, methods=("bcos", "ixg"))
    >>> summarize(result.scores)["bcos"]["mean"]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attribution import METHODS, attribute
from .data import to_model_input
from .evaluation import predict_logits

__all__ = [
    "METHODS", "make_grid", "cell_shares", "pointing_game_scores", "confident_correct", "sample_grids",
    "grid_pointing_game", "LocalisationResult", "summarize", "default_smoothing", "ImageSource",
    "take_images", "image_batches",
]  # fmt: skip

# ------------------------------------------------------------------------------------------- the metric


def make_grid(images: Tensor, grid: int) -> Tensor:
    """Tile ``g²`` images ``[g², C, h, w]`` into one ``[C, g·h, g·w]`` image, column-major (image k at
    row-block ``k mod g``, column-block ``k div g``)."""
    n, c, h, w = images.shape
    if n != grid * grid:
        raise ValueError(f"a {grid}x{grid} grid needs {grid * grid} images, got {n}")
    tiles = images.reshape(grid, grid, c, h, w)  # [col, row, C, h, w]
    return tiles.permute(2, 1, 3, 0, 4).reshape(c, grid * h, grid * w)  # [C, row, h, col, w] -> [C, gh, gw]


def cell_shares(attributions: Tensor, grid: int, smooth: int = 1) -> Tensor:
    """Share of the positive attribution in each tile: ``[n, gH, gW]`` maps -> ``[n, g²]`` (column-major
    tile order; rows sum to 1, or 0 for a map without positive values).

    ``smooth`` (odd) box-filters the map first (zero padding, as in the reference implementation).
    """
    if attributions.dim() != 3:
        raise ValueError(f"expected attribution maps [n, H, W], got shape {tuple(attributions.shape)}")
    n, height, width = attributions.shape
    if height % grid or width % grid:
        raise ValueError(f"a {height}x{width} map cannot be split into a {grid}x{grid} grid")
    att = attributions.detach().float()[:, None]  # [n, 1, H, W]
    if smooth > 1:
        if smooth % 2 == 0:
            raise ValueError(f"smooth must be odd so the map keeps its size, got {smooth}")
        att = F.avg_pool2d(att, smooth, stride=1, padding=smooth // 2, count_include_pad=True)
    att = att.clamp(min=0)[:, 0]
    cells = att.reshape(n, grid, height // grid, grid, width // grid).sum((2, 4))  # [n, row, col]
    cells = cells.transpose(1, 2).reshape(n, grid * grid)  # column-major tile index k = col * g + row
    total = cells.sum(1, keepdim=True)
    return torch.where(total > 0, cells / total.clamp(min=torch.finfo(cells.dtype).tiny), torch.zeros_like(cells))


def pointing_game_scores(attributions: Tensor, grid: int, smooth: int = 1) -> Tensor:
    """Score of each tile: the share of positive attribution of map ``k`` in tile ``k`` (``[g², gH, gW] -> [g²]``)."""
    shares = cell_shares(attributions, grid, smooth)
    if shares.shape[0] != grid * grid:
        raise ValueError(f"expected one map per tile ({grid * grid}), got {shares.shape[0]}")
    return shares.diagonal()


def default_smoothing(tile_size: int) -> int:
    """The reference's 15-pixel box filter for 224-pixel tiles, scaled to ``tile_size`` (odd, at least 1)."""
    return max(1, round(tile_size * 15 / 224)) | 1


# ------------------------------------------------------------------------------------- choosing images


def confident_correct(logits: Tensor, labels: Tensor, threshold: float = 0.5) -> dict[int, list[int]]:
    """Correctly classified images with ``sigmoid(max logit) > threshold``: indices per class, most confident first."""
    conf, pred = logits.max(1)
    keep = (pred == labels) & (torch.sigmoid(conf) > threshold)
    per_class: dict[int, list[int]] = {}
    for idx in torch.argsort(conf, descending=True).tolist():
        if keep[idx]:
            per_class.setdefault(int(labels[idx]), []).append(idx)
    return per_class


def sample_grids(per_class: dict[int, list[int]], grid: int, n_grids: int, seed: int = 0) -> list[list[int]]:
    """Up to ``n_grids`` lists of ``g²`` image indices of distinct classes; each draw picks random
    classes among those with images left and takes each class's most confident unused image."""
    rng = np.random.default_rng(seed)
    queues = {c: list(idx) for c, idx in per_class.items() if idx}
    grids: list[list[int]] = []
    while len(grids) < n_grids and len(queues) >= grid * grid:
        classes = rng.choice(sorted(queues), size=grid * grid, replace=False)
        grids.append([queues[c].pop(0) for c in classes.tolist()])
        queues = {c: q for c, q in queues.items() if q}
    return grids


# ------------------------------------------------------------------------------------------ the analysis


class ImageSource(Protocol):
    """Images addressed by index lists, e.g. a ``[N, c, h, w]`` tensor, or a lazily loading folder."""

    def __len__(self) -> int: ...

    def __getitem__(self, indices: list[int]) -> Tensor: ...


def take_images(images: ImageSource, indices: Sequence[int]) -> Tensor:
    """``images[indices]`` as float ``[n, c, h, w]`` in [0, 1] (uint8 images are scaled)."""
    batch = images[list(indices)]
    return batch if batch.is_floating_point() else batch.float() / 255


def image_batches(images: ImageSource, labels: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``(images in [0, 1], labels)`` in order, ``batch_size`` at a time."""
    for start in range(0, len(labels), batch_size):
        indices = list(range(start, min(start + batch_size, len(labels))))
        yield take_images(images, indices), labels[indices]


@dataclass
class LocalisationResult:
    """Per-method scores (one per tile of every grid), the grids (image indices) and the settings."""

    scores: dict[str, Tensor]
    grids: list[list[int]]
    grid: int
    smooth: int
    conf_thresh: float
    n_candidates: int = 0
    per_class: dict[int, int] = field(default_factory=dict)


def grid_pointing_game(
    model: nn.Module,
    images: ImageSource,
    labels: Tensor,
    *,
    grid: int = 3,
    n_grids: int = 500,
    methods: Iterable[str] = ("bcos",),
    smooth: int | None = None,
    conf_thresh: float = 0.5,
    seed: int = 0,
    batch_size: int = 64,
    progress: Callable[..., Iterable] | None = None,
) -> LocalisationResult:
    """Run the grid pointing game on ``images`` (``[N, c, h, w]``, the image's own channels, in [0, 1] or uint8).

    Args:
        model: the classifier (switched to eval mode).
        images, labels: the pool to draw confidently and correctly classified images from; ``images``
            is a tensor or anything that returns a batch for a list of indices (:class:`ImageSource`).
        grid: ``g`` (2 or 3 in the papers): grids hold ``g²`` images.
        n_grids: how many grids at most (fewer if the confident images run out).
        methods: names in :data:`METHODS`.
        smooth: box-filter size; default :func:`default_smoothing` of the tile size.
        conf_thresh: minimum sigmoid probability of an image on its own.
        seed: for the choice of classes per grid.
        batch_size: for the confidence pass.
        progress: optional progress bar, called as ``progress(iterable, total=..., desc=...)`` (e.g. ``tqdm``)
            for the confidence pass and for the grids.

    Returns:
        A :class:`LocalisationResult` with ``scores[method]`` of shape ``[n_grids_used * g²]``.
    """
    methods = list(methods)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    model.eval()
    in_chans = getattr(model, "in_chans", 6)
    wrap = progress or (lambda iterable, **_: iterable)
    batches = image_batches(images, labels, batch_size)
    logits, labels = predict_logits(model, wrap(batches, total=math.ceil(len(labels) / batch_size), desc="confidence"))
    per_class = confident_correct(logits, labels, conf_thresh)
    grids = sample_grids(per_class, grid, n_grids, seed)
    smooth = default_smoothing(take_images(images, [0]).shape[-1]) if smooth is None else smooth
    device = next(model.parameters()).device
    scores: dict[str, list[Tensor]] = {m: [] for m in methods}
    for indices in wrap(grids, total=len(grids), desc="grids"):
        x = to_model_input(make_grid(take_images(images, indices), grid)[None].to(device), in_chans)  # [1, C, gH, gW]
        targets = labels[indices].tolist()
        xs = x.expand(len(targets), -1, -1, -1)  # one copy of the grid per tile's class
        for method in methods:
            scores[method].append(pointing_game_scores(attribute(model, xs, targets, method), grid, smooth).cpu())
    empty = torch.zeros(0)
    return LocalisationResult(
        scores={m: torch.cat(s) if s else empty for m, s in scores.items()}, grids=grids, grid=grid, smooth=smooth,
        conf_thresh=conf_thresh, n_candidates=sum(map(len, per_class.values())),
        per_class={c: len(v) for c, v in sorted(per_class.items())},
    )  # fmt: skip


def summarize(scores: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """Mean and quartiles of each method's scores (NaN for a method without scores)."""
    out = {}
    for method, s in scores.items():
        if s.numel() == 0:
            out[method] = {
                "mean": float("nan"),
                "p25": float("nan"),
                "median": float("nan"),
                "p75": float("nan"),
                "n": 0,
            }
            continue
        q = torch.quantile(s.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.double)).tolist()
        out[method] = {"mean": s.double().mean().item(), "p25": q[0], "median": q[1], "p75": q[2], "n": s.numel()}
    return out
