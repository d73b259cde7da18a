"""Tests of stem_ae._crystal: where an image is a lattice, and which way its columns look."""

from __future__ import annotations

import numpy as np
import pytest

from stem_ae._crystal import (
    CONTRAST_RANGE,
    cell_asymmetry,
    crystal_map,
    peak_contrast,
    tile_side,
)
from stem_ae.simulate import simulate_mixed_scene, simulate_scene

SPACING = 3.905 / 0.2  # SrTiO3 cell at 0.2 Å/px, px


@pytest.mark.parametrize("dose", [1.0, 16.0])
def test_peak_contrast_separates_lattice_from_amorphous_and_vacuum(dose):
    side = tile_side(SPACING)
    crystal = simulate_scene((side, side), pixel_size=0.2, dose=dose, rng=1).noisy
    assert peak_contrast(crystal.astype(float), SPACING) > CONTRAST_RANGE[1]
    for part in ("amorphous", "vacuum"):
        other = simulate_mixed_scene((side, side), parts=(part,), pixel_size=0.2, dose=dose, rng=1)
        assert peak_contrast(other.noisy.astype(float), SPACING) < CONTRAST_RANGE[1]


def test_crystal_map_finds_the_crystal_half_of_a_mixed_scene():
    scene = simulate_mixed_scene(
        (256, 384), parts=("crystal", "amorphous"), pixel_size=0.2, dose=4.0, rng=3
    )
    truth = scene.metadata["regions"]["crystal_mask"]
    strength = crystal_map(scene.noisy, SPACING)
    assert strength.shape == scene.noisy.shape and strength.dtype == np.float32
    assert 0.0 <= strength.min() and strength.max() <= 1.0
    inner = np.zeros_like(truth)
    inner[:, 64:-64] = True  # away from the left/right edges
    margin = tile_side(SPACING)
    crystal = truth & inner & (np.arange(384) < 192 - margin)[None, :]
    amorphous = ~truth & inner & (np.arange(384) > 192 + margin)[None, :]
    assert strength[crystal].mean() > 0.9
    assert strength[amorphous].mean() < 0.1


def test_crystal_map_of_tiles_equals_the_whole_map_inside():
    scene = simulate_mixed_scene(
        (256, 384), parts=("crystal", "amorphous"), pixel_size=0.2, dose=4.0, rng=3
    )
    whole = crystal_map(scene.noisy, SPACING, localize=True)
    side = tile_side(SPACING)
    start = 3 * (side // 2) + 5  # a tile of the image that starts off the tile grid
    part = crystal_map(scene.noisy[:, start:], SPACING, origin=(0, start), localize=True)
    # two tile sides from the tile's own edge, its map is the whole image's
    np.testing.assert_allclose(part[:, 2 * side :], whole[:, start + 2 * side :], atol=1e-5)


def test_a_weak_uniform_lattice_is_taken_whole():
    rng = np.random.default_rng(0)
    x = np.mgrid[:128, :128][1]
    weak = 0.2 * np.cos(2 * np.pi * x / 12) + rng.normal(0, 1.0, x.shape)
    np.testing.assert_array_equal(crystal_map(weak, 12.0), np.ones(weak.shape, np.float32))


@pytest.mark.parametrize("pixel_size", [0.1, 0.3])
@pytest.mark.parametrize("dose", [2.0, 64.0])
def test_cell_asymmetry_tells_dark_from_bright_columns(pixel_size, dose):
    a = 3.905 / pixel_size
    reciprocal = np.array([[1 / a, 0.0], [0.0, 1 / a]])
    for contrast, dark in (("bright", False), ("dark", True)):
        scene = simulate_scene(
            (192, 192), pixel_size=pixel_size, dose=dose, contrast=contrast, rng=7
        )
        assert (cell_asymmetry(scene.noisy.astype(float), reciprocal) < 0.75) is dark


def test_batched_peak_contrast_equals_one_tile_at_a_time():
    # crystal_map scores a row of tiles in one FFT; each score is the single tile's (batched
    # FFTs may round the last bit differently)
    from stem_ae._crystal import _peak_contrasts

    scene = simulate_mixed_scene((128, 384), pixel_size=0.2, dose=4, rng=5)
    image = scene.noisy.astype(np.float64)
    tiles = np.stack([image[:64, x : x + 64] for x in range(0, 320, 32)] + [np.zeros((64, 64))])
    reciprocal = np.array([[1 / 19.5, 0.0], [0.0, 1 / 19.5]])
    for known in (None, reciprocal):
        batch = _peak_contrasts(tiles, 19.5, known)
        single = [peak_contrast(tile, 19.5, known) for tile in tiles]
        np.testing.assert_allclose(batch, single, rtol=1e-12)
        assert batch[-1] == 0.0 and np.all(batch[:-1] > 0)  # a blank tile has no contrast
