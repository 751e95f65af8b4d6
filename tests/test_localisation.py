"""The grid pointing game: the metric on maps with known answers, grid layout, sampling, attribution methods."""

from __future__ import annotations

import pytest
import torch

import bcos_zoo
from bcos_zoo.localisation import (
    cell_shares,
    confident_correct,
    default_smoothing,
    grid_pointing_game,
    make_grid,
    pointing_game_scores,
    sample_grids,
    summarize,
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("single_thread")


def _tile_maps(grid: int, tile: int, value_in_own_cell: float, value_elsewhere: float) -> torch.Tensor:
    """Map k: ``value_in_own_cell`` in tile k (column-major), ``value_elsewhere`` everywhere else."""
    n = grid * grid
    maps = torch.full((n, grid * tile, grid * tile), value_elsewhere)
    for k in range(n):
        row, col = k % grid, k // grid
        maps[k, row * tile : (row + 1) * tile, col * tile : (col + 1) * tile] = value_in_own_cell
    return maps


@pytest.mark.parametrize("grid", [2, 3])
def test_uniform_map_scores_one_over_cells(grid):
    maps = torch.ones(grid * grid, grid * 8, grid * 8)
    torch.testing.assert_close(pointing_game_scores(maps, grid), torch.full((grid * grid,), 1 / grid**2))


@pytest.mark.parametrize("grid", [2, 3])
def test_all_mass_in_correct_cell_scores_one(grid):
    torch.testing.assert_close(pointing_game_scores(_tile_maps(grid, 6, 2.0, 0.0), grid), torch.ones(grid * grid))


def test_negative_attribution_is_ignored_and_empty_maps_score_zero():
    grid = 2
    maps = _tile_maps(grid, 4, 1.0, -5.0)  # strongly negative elsewhere: still all positive mass is correct
    torch.testing.assert_close(pointing_game_scores(maps, grid), torch.ones(4))
    torch.testing.assert_close(pointing_game_scores(-maps.abs(), grid), torch.zeros(4))


def test_partial_share_and_column_major_order():
    grid, tile = 2, 4
    maps = torch.zeros(4, 8, 8)
    maps[:, :4, :4] = 3.0  # top-left cell: tile 0
    maps[:, 4:, :4] = 1.0  # bottom-left cell: tile 1 (column-major: row 1, column 0)
    shares = cell_shares(maps, grid)
    torch.testing.assert_close(shares[0], torch.tensor([0.75, 0.25, 0.0, 0.0]))
    torch.testing.assert_close(pointing_game_scores(maps, grid), torch.tensor([0.75, 0.25, 0.0, 0.0]))
    assert tile == maps.shape[-1] // grid


def test_smoothing_keeps_size_and_symmetric_uniform_score():
    maps = torch.ones(4, 16, 16)
    torch.testing.assert_close(pointing_game_scores(maps, 2, smooth=5), torch.full((4,), 0.25))
    # smoothing spreads a one-cell map into its neighbours, lowering the score below 1
    assert (pointing_game_scores(_tile_maps(2, 8, 1.0, 0.0), 2, smooth=5) < 1).all()
    with pytest.raises(ValueError, match="odd"):
        cell_shares(maps, 2, smooth=4)


def test_make_grid_layout_matches_scoring():
    grid, tile = 3, 5
    images = torch.arange(9.0).view(9, 1, 1, 1).expand(9, 2, tile, tile)
    tiled = make_grid(images, grid)
    assert tiled.shape == (2, 15, 15)
    for k in range(9):
        row, col = k % grid, k // grid
        assert (tiled[:, row * tile : (row + 1) * tile, col * tile : (col + 1) * tile] == k).all()
    indicator = torch.stack([(tiled[0] == k).float() for k in range(9)])  # map k = where image k is
    torch.testing.assert_close(pointing_game_scores(indicator, grid), torch.ones(9))
    with pytest.raises(ValueError, match="needs 9 images"):
        make_grid(images[:4], grid)


def test_default_smoothing():
    assert default_smoothing(224) == 15
    assert default_smoothing(28) == 3
    assert default_smoothing(8) == 1


def test_confident_correct_and_sample_grids():
    logits = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 4.0], [5.0, 0, 0], [0, -1.0, -2.0], [0, 0, -3.0]])
    labels = torch.tensor([0, 1, 2, 0, 1, 0])  # 4: sigmoid(0) = 0.5 is not > 0.5; 5: wrong
    per_class = confident_correct(logits, labels, 0.5)
    assert per_class == {0: [3, 0], 1: [1], 2: [2]}
    many = {c: list(range(10 * c, 10 * c + 3)) for c in range(5)}  # 5 classes, 3 images each
    grids = sample_grids(many, 2, n_grids=100, seed=0)
    assert grids == sample_grids(many, 2, n_grids=100, seed=0)
    used = [i for g in grids for i in g]
    assert len(used) == len(set(used))
    for g in grids:
        assert len({i // 10 for i in g}) == 4  # distinct classes
    for c, indices in many.items():  # most confident first
        mine = [i for i in used if i // 10 == c]
        assert mine == indices[: len(mine)]
    assert len(sample_grids(many, 3, n_grids=100)) == 0  # only 5 classes for 9 cells
    assert len(sample_grids(many, 2, n_grids=2)) == 2


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return bcos_zoo.create_model("bcos_resnet20_cifar", in_chans=2, norm_layer="bnu-linear").eval()


def test_grid_pointing_game_end_to_end_with_known_labels(tiny_model):
    """Labels set to the model's own predictions make every image 'correct'; the run must be complete."""
    images = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = tiny_model(torch.cat([images, 1 - images], 1)).argmax(1)
    if labels.unique().numel() < 4:
        pytest.skip("random model predicts fewer than 4 classes on this pool")
    result = grid_pointing_game(tiny_model, images, labels, grid=2, n_grids=2, methods=("bcos", "ixg"), conf_thresh=0.0)
    assert len(result.grids) == 2
    for scores in result.scores.values():
        assert scores.shape == (8,) and ((scores >= 0) & (scores <= 1)).all()
    summary = summarize(result.scores)
    assert summary["bcos"]["n"] == 8 and 0 <= summary["bcos"]["mean"] <= 1
    with pytest.raises(ValueError, match="unknown attribution method"):
        grid_pointing_game(tiny_model, images, labels, methods=("nope",))
