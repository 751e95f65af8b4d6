"""Plotting helpers: colour ranges, compositing, figure sizes, files written with Agg, lazy matplotlib."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from bcos_zoo import plotting
from bcos_zoo.plotting import (
    DPI,
    PANEL_INCHES,
    clip_symmetric,
    explanation_figure,
    evidence_rgb,
    explanation_rows,
    explanation_rgb,
    localisation_figure,
    plot_contribution_map,
    plot_explanation,
    save_figure,
    to_numpy_image,
    training_curves_figure,
)  # fmt: skip

PANEL_PX = round(PANEL_INCHES * DPI)


def test_matplotlib_is_imported_lazily_and_pyplot_never():
    tree = ast.parse(Path(plotting.__file__).read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top_level for a in n.names] + [
        n.module or "" for n in top_level if isinstance(n, ast.ImportFrom)
    ]
    assert not any(name.startswith("matplotlib") for name in names)
    every = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    every += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not any("pyplot" in name for name in every)


def test_clip_symmetric_percentile_and_range():
    m = np.linspace(-1, 1, 201).reshape(1, -1).repeat(2, 0)
    m[0, 0] = -100.0  # an outlier is clipped away
    clipped, vrange = clip_symmetric(m, percentile=99)
    cutoff = np.percentile(np.abs(m), 99)
    assert vrange == pytest.approx(cutoff) and clipped.min() == pytest.approx(-cutoff)
    assert np.abs(clipped).max() == pytest.approx(cutoff)
    _, full = clip_symmetric(m, percentile=100)
    assert full == pytest.approx(100.0)
    assert clip_symmetric(np.zeros((3, 3)))[1] == 1e-12  # an empty map still gets a valid range
    with pytest.raises(ValueError, match="2-D"):
        clip_symmetric(np.zeros((1, 3, 3)))


def test_contribution_map_uses_a_symmetric_diverging_range():
    m = torch.tensor([[0.5, -2.0], [1.0, 0.0]])
    ax, im = plot_contribution_map(m, percentile=100)
    assert im.get_clim() == (-2.0, 2.0)
    assert im.get_cmap().name == "bwr"
    assert ax.get_xticks().size == 0


@pytest.mark.parametrize(("channels", "gray"), [(6, False), (2, True), (3, False), (1, True)])
def test_to_numpy_image_drops_inverse_channels(channels, gray):
    x = torch.rand(channels, 5, 7)
    rgb = to_numpy_image(x)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.float32
    own = channels // 2 if channels in (2, 6) else channels
    np.testing.assert_allclose(rgb[..., 0], x[0].numpy())
    if gray:
        np.testing.assert_allclose(rgb[..., 2], x[0].numpy())
    else:
        np.testing.assert_allclose(rgb[..., 2], x[own - 1].numpy())


def test_explanation_rgb_composites_over_background_or_image():
    rgba = np.zeros((2, 2, 4), dtype=np.float32)
    rgba[..., :3] = [1.0, 0.0, 0.0]
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[1, :, 3] = 1.0, 0.5, 0.0
    out = explanation_rgb(rgba)
    np.testing.assert_allclose(out[0, 0], [1, 0, 0])
    np.testing.assert_allclose(out[0, 1], [0.5, 0, 0])
    np.testing.assert_allclose(out[1, 0], [0, 0, 0])  # transparent: the black background
    image = np.full((2, 2, 3), 0.25, dtype=np.float32)
    np.testing.assert_allclose(explanation_rgb(rgba, image)[1, 1], [0.25, 0.25, 0.25])
    with pytest.raises(ValueError, match="does not match"):
        explanation_rgb(rgba, np.zeros((3, 3, 3)))
    ax = plot_explanation(rgba, image=torch.rand(6, 2, 2), title="overlay")
    assert ax.get_title() == "overlay"


def test_explanation_figure_size_and_file(tmp_path, png_size):
    x = torch.rand(6, 24, 24)
    rows = [(torch.rand(24, 24, 4), torch.randn(24, 24)) for _ in range(2)]
    fig = explanation_figure(x, rows, ["cat (p=0.91)", "dog (p=0.05)"], overlay=True, suptitle="model")
    assert [ax.get_title() for ax in fig.axes[:3]] == ["input", "cat (p=0.91)", fig.axes[2].get_title()]
    assert fig.axes[2].get_title().startswith("contributions (sum")
    path = save_figure(fig, tmp_path / "sub" / "fig.png")
    assert png_size(path) == (3 * PANEL_PX, 2 * PANEL_PX)
    with pytest.raises(ValueError, match="one title per explanation"):
        explanation_figure(x, rows, ["only one"])


def test_explanation_rows_and_localisation_figure(tmp_path, png_size):
    rows = [(torch.rand(2, 10, 10), torch.rand(10, 10, 4), torch.randn(10, 10), f"c{i}") for i in range(5)]
    fig = explanation_rows(rows, first_titles=[f"image {i}" for i in range(5)], suptitle="overview")
    assert png_size(save_figure(fig, tmp_path / "rows.png")) == (3 * PANEL_PX, 5 * PANEL_PX)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image 0", "c0", fig.axes[2].get_title()]
    with pytest.raises(ValueError, match="one input title per row"):
        explanation_rows(rows, first_titles=["only one"])
    scores = {"bcos": torch.rand(20), "ixg": torch.rand(20)}
    width, height = png_size(save_figure(localisation_figure(scores, 2), tmp_path / "loc.png"))
    assert width > 0 and height > 0


def test_evidence_heat_map_shows_where_the_contributions_are():
    """Grayscale models: positive evidence is bright and coloured, no evidence leaves the dimmed image."""
    image = torch.full((2, 4, 4), 0.5)
    contributions = torch.zeros(4, 4)
    contributions[1, 2] = 3.0  # all the evidence in one pixel
    contributions[3, 3] = -3.0  # negative evidence is not shown as evidence
    rgb = evidence_rgb(image, contributions, percentile=100)
    assert rgb.shape == (4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    hot, cold, neutral = rgb[1, 2], rgb[3, 3], rgb[0, 0]
    assert hot.sum() > 2 * neutral.sum() and hot[0] > hot[2]  # bright, warm
    np.testing.assert_allclose(cold, neutral)
    np.testing.assert_allclose(neutral, [0.225, 0.225, 0.225], atol=1e-6)  # 0.45 x the gray level


def test_training_curves_figure_plots_each_run_against_minutes(tmp_path, png_size):
    runs = {
        "from scratch": [{"wall_time": 0.0, "test_top1": 9.0}, {"wall_time": 600.0, "test_top1": 85.0},
                         {"wall_time": 1200.0, "test_top1": 90.0}],
        "fine-tuned": [{"wall_time": 0.0, "test_top1": 10.0}, {"wall_time": 300.0, "test_top1": 91.0}],
    }  # fmt: skip
    fig = training_curves_figure(runs, reference=(93.5, "target"), title="curves")
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["from scratch"].get_xdata(), [0, 10, 20])  # minutes
    np.testing.assert_allclose(lines["fine-tuned"].get_ydata(), [10, 91])
    np.testing.assert_allclose(lines["target"].get_ydata(), [93.5, 93.5])
    # the range starts after the near-chance first evaluations, so the ends of the curves are readable
    assert ax.get_ylim() == (84.0, 94.5)
    assert [t.get_text() for t in ax.texts] == ["90.00%", "91.00%"] and ax.get_title() == "curves"
    width, height = png_size(save_figure(fig, tmp_path / "curves.png"))
    assert width > 400 and height > 200
