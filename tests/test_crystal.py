"""Tests of stem_ae._crystal: where an image is a lattice, and which way its columns look."""

from __future__ import annotations

import numpy as np
import pytest

from stem_ae._crystal import (
    CONTRAST_RANGE,
    _fractions,
    cell_asymmetry,
    cell_bins,
    crystal_map,
    erased_columns,
    local_fractions,
    nearest_neighbour,
    peak_contrast,
    periodic_image,
    periodic_part,
    restore_sites,
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


# ---------------------------------------------------------------------------------------------
# motif columns an estimate erased (a weak sublattice), and the data put back at their sites

HONEYCOMB = np.array([[1 / 16, 0.0], [1 / 32, np.sqrt(3) / 32]])  # g1, g2 (1/px): a = 18.5 px


def _honeycomb(shape, weak, vacancies=(), width=1.6):
    """Strong columns at fractions (0, 0), weak ones (height ``weak``) at (1/3, 2/3) of a
    hexagonal lattice (a honeycomb, like MoS2's Mo and S2), without the weak columns of the
    cells in ``vacancies``."""
    direct = np.linalg.inv(HONEYCOMB)
    image = np.zeros(shape)
    yy, xx = np.indices(shape, dtype=float)
    for n1 in range(-4, 40):
        for n2 in range(-40, 40):
            for frac, height in (((0.0, 0.0), 1.0), ((1 / 3, 2 / 3), weak)):
                if height != 1.0 and (n1, n2) in vacancies:
                    continue
                y, x = direct @ (np.array([n1, n2]) + frac)
                if -8 < y < shape[0] + 8 and -8 < x < shape[1] + 8:
                    image += height * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * width**2))
    return image


def test_erased_columns_finds_the_weak_sublattice_only_when_it_is_lost():
    rng = np.random.default_rng(0)
    truth = _honeycomb((192, 192), weak=0.35)
    noisy = truth + rng.normal(0, 0.5, truth.shape)  # weak columns 0.7σ: lost to the eye
    strong_only = _honeycomb((192, 192), weak=0.0)
    fractions, nn = erased_columns(noisy, strong_only, HONEYCOMB)
    assert fractions.shape == (1, 2)
    delta = (fractions[0] - [1 / 3, 2 / 3] + 0.5) % 1 - 0.5
    assert np.abs(delta).max() < 0.03
    assert nn == pytest.approx(32 / 3, rel=0.03)  # a / √3, a = 16 px × 2 / √3
    # kept (even at 60 % of its relative height) or never shown by the data: nothing to do
    assert len(erased_columns(noisy, truth, HONEYCOMB)[0]) == 0
    assert len(erased_columns(noisy, strong_only + 0.6 * (truth - strong_only), HONEYCOMB)[0]) == 0
    data_without = strong_only + rng.normal(0, 0.5, truth.shape)
    assert len(erased_columns(data_without, strong_only, HONEYCOMB)[0]) == 0
    # the same cells seen from another origin (a tile of a larger image) give the same site
    shifted, _ = erased_columns(noisy[40:, 30:], strong_only[40:, 30:], HONEYCOMB, origin=(40, 30))
    assert np.abs((shifted - fractions + 0.5) % 1 - 0.5).max() < 0.03


def test_restore_sites_brings_back_columns_the_data_show_and_invents_none():
    rng = np.random.default_rng(1)
    vacancy = (5, 3)
    truth = _honeycomb((192, 192), weak=0.35, vacancies=[vacancy])
    noisy = truth + rng.normal(0, 0.2, truth.shape)
    strong_only = _honeycomb((192, 192), weak=0.0)
    site = np.array([[1 / 3, 2 / 3]])
    nn = nearest_neighbour(np.array([[0, 0], [1 / 3, 2 / 3]]), HONEYCOMB)
    assert nn == pytest.approx(32 / 3)
    restored = restore_sites(noisy, strong_only, HONEYCOMB, site, nn)
    assert restored.dtype == np.float32 and restored.shape == truth.shape
    direct = np.linalg.inv(HONEYCOMB)
    here = np.rint(direct @ (np.array([4, 2]) + site[0])).astype(int)  # a weak column
    empty = np.rint(direct @ (np.array(vacancy) + site[0])).astype(int)  # its vacancy
    assert restored[tuple(here)] > 0.6 * 0.35 and strong_only[tuple(here)] < 0.01
    assert restored[tuple(empty)] < 0.3 * 0.35  # low-passed noise, no column, at the vacancy
    strong = np.rint(direct @ np.array([4.0, 2.0])).astype(int)
    assert restored[tuple(strong)] == pytest.approx(strong_only[tuple(strong)], abs=1e-3)
    # a tile gives the same values as the whole image inside it
    tile = restore_sites(
        noisy[50:150, 60:160], strong_only[50:150, 60:160], HONEYCOMB, site, nn, origin=(50, 60)
    )
    assert np.abs(tile[10:-10, 10:-10] - restored[60:140, 70:150]).max() < 1e-5


# ---------------------------------------------------------------------------------------------
# the network's periodic error (residual="periodic")

SQUARE = np.array([[1 / 16, 0.0], [0.0, 1 / 16]])  # the nominal lattice: 16 px


def test_local_fractions_follow_a_strained_shifted_lattice_where_the_global_ones_drift():
    # columns every 16.5 px (3 % strain against the nominal 16 px), shifted by (3, -2) px
    yy, xx = np.indices((256, 256), dtype=float)
    centres = [(3 + 16.5 * i, -2 + 16.5 * j) for i in range(-1, 17) for j in range(-1, 17)]
    image = sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 2.0**2)) for y, x in centres)
    local = local_fractions(image, SQUARE, 16.0)
    plain = _fractions(image.shape, SQUARE)
    inside = [(round(y), round(x)) for y, x in centres if 48 < y < 208 and 48 < x < 208]
    assert len(inside) > 50

    def off_integer(fractions):
        return max(
            abs((f[p] + 0.5) % 1 - 0.5) for f in fractions for p in inside
        )  # cells, at the columns

    assert off_integer(local) < 0.06  # each column sits on an integer fraction
    assert off_integer(plain) > 0.3  # the nominal lattice has drifted by a third of a cell


def test_periodic_part_recovers_an_error_repeated_in_every_cell_from_noise():
    rng = np.random.default_rng(3)
    fractions = _fractions((256, 256), SQUARE)
    pattern = 0.3 * np.cos(2 * np.pi * fractions[0]) * np.cos(2 * np.pi * fractions[1])
    residual = pattern + rng.normal(0, 1.0, pattern.shape)  # the error hidden under noise σ = 1
    bins = cell_bins(SQUARE)
    table = periodic_part(residual, fractions, bins)
    assert table.shape == tuple(bins)
    laid = periodic_image(table, fractions)
    assert laid.dtype == np.float32 and laid.shape == pattern.shape
    # the error's RMS is 0.15, the noise's 1: the cell average leaves 1/20 of the noise
    assert np.sqrt(np.mean((laid - pattern) ** 2)) < 0.05
    # too few pixels to fill every bin of the cell: no table
    corner = np.zeros(pattern.shape, bool)
    corner[:6, :6] = True
    assert periodic_part(residual, fractions, bins, where=corner) is None
